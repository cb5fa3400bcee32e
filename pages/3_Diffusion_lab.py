"""Diffusion lab: alpha, k, kq and gamma sliders re-rank every query at once on the cached graph;
the solver is CG (exact) or fast spectral ranking (FSR, the graph's top-r eigenpairs), with its gap to CG."""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cbir.cache import CacheError
from dashboard import gallery, loaders, sidebar, state, stored_topk

view = sidebar.open_page("Diffusion lab", diffusion_caption=False)
stored_topk.refuse_descriptor_page(view, "The Diffusion lab")
dataset = view.dataset
q = sidebar.query_select(view)
base = view.methods[0].with_rerank("none")
n_db = len(dataset.images)
limits = sidebar.diffusion_limits(n_db)
current = sidebar.diffusion_params(n_db)
SOLVERS = {"cg": "CG (exact solve)", "fsr": "FSR (top-r eigenpairs)"}
ranks_offered = sorted({r for r in (64, 128, 256, 512, 1024) if r < n_db} | {min(n_db, 256)})
try:
    before_report = loaders.report(view.key, base, view.protocol)
    before = loaders.ranks(view.key, base)
except CacheError as exc:
    st.error(str(exc))
    st.stop()
if before_report["mAP"] is None:
    st.warning(f"No query has a positive under the {view.protocol} protocol on {dataset.status_line()}: "
               "there is no mAP to tune.")
    st.stop()
st.caption(f"Descriptors: {base.label()} (the first method in the sidebar). Baseline mAP without "
           f"re-ranking: {100 * before_report['mAP']:.2f}. The graph is built once per (k, gamma) and "
           "cached; alpha and kq only re-solve. FSR computes the graph's top-r eigenpairs once per "
           "(k, gamma, r), stores them next to the descriptors, and then costs one dense product per change.")


@st.fragment
def lab() -> None:
    columns = st.columns(4)
    alpha = state.slider("alpha", "alpha", *limits["alpha"], current["alpha"], 0.001, container=columns[0],
                         format="%.3f")
    k = state.slider("k (graph neighbours)", "k", *limits["k"], current["k"], 1, container=columns[1])
    kq = state.slider("kq (query neighbours)", "kq", *limits["kq"], current["kq"], 1, container=columns[2])
    gamma = state.slider("gamma", "gamma", *limits["gamma"], current["gamma"], 0.5, container=columns[3])
    choice, rank_column = st.columns(2)
    solver = state.select("Solver", "solver", list(SOLVERS), container=choice, format_func=SOLVERS.get)
    cg_method = base.with_rerank("diffusion", alpha=alpha, k=k, kq=kq, gamma=gamma)
    cg_report = loaders.report(view.key, cg_method, view.protocol)
    method, after_report, name = cg_method, cg_report, "diffusion (CG)"
    if solver == "fsr":
        rank = state.select("FSR rank r", "rank", ranks_offered, container=rank_column,
                            default=sidebar.fsr_rank(n_db),
                            format_func=lambda r: f"{r} (full)" if r == n_db else str(r))
        method = base.with_rerank("fsr", alpha=alpha, k=k, kq=kq, gamma=gamma, fsr_rank=rank)
        after_report, name = loaders.report(view.key, method, view.protocol), f"FSR (r={rank})"
        rank_column.metric("FSR mAP gap to CG", f"{100 * (after_report['mAP'] - cg_report['mAP']):+.2f}",
                           help=f"CG mAP {100 * cg_report['mAP']:.2f} at the same alpha, k, kq, gamma")
    after = loaders.ranks(view.key, method)
    left, middle, right = st.columns(3)
    left.metric(f"mAP with {name}", f"{100 * after_report['mAP']:.2f}",
                delta=f"{100 * (after_report['mAP'] - before_report['mAP']):+.2f} vs none")
    ap_before, ap_after = before_report["per_query"][q]["ap"], after_report["per_query"][q]["ap"]
    if ap_after is not None:
        middle.metric(f"AP of {dataset.queries[q].name}", f"{100 * ap_after:.2f}",
                      delta=f"{100 * (ap_after - ap_before):+.2f}")
    right.metric(f"mP@10 with {name}", f"{100 * after_report['mP@10']:.2f}",
                 delta=f"{100 * (after_report['mP@10'] - before_report['mP@10']):+.2f}")
    top = 10
    gnd = view.gnd[q]
    st.markdown("**Before** (no re-ranking)")
    gallery.draw(dataset, view.key, gallery.tiles(before[q], gnd, n_db, top,
                                                  gallery.later_notes(before[q][:top], after[q])))
    st.markdown(f"**After** {name}")
    gallery.draw(dataset, view.key, gallery.tiles(after[q], gnd, n_db, top,
                                                  gallery.shift_notes(after[q][:top], before[q])))


lab()

st.subheader("mAP over an (alpha, k) grid")
grid = loaders.diffusion_grid(view.key, base, view.protocol, current["kq"], current["gamma"])
values = 100 * np.asarray(grid["map"])
figure = go.Figure(go.Heatmap(z=values, x=[str(k) for k in grid["ks"]], y=[f"{a:g}" for a in grid["alphas"]],
                              colorscale="Viridis", colorbar={"title": "mAP %"},
                              text=np.round(values, 1), texttemplate="%{text}"))
figure.update_layout(xaxis_title="k", yaxis_title="alpha", xaxis_type="category", yaxis_type="category",
                     height=420, margin={"l": 10, "r": 10, "t": 30, "b": 10})
st.plotly_chart(figure, key="grid")
best = np.unravel_index(np.nanargmax(values), values.shape)
st.caption(f"Reference mAP, {view.protocol} protocol, kq={grid['kq']}, gamma={grid['gamma']:g}; computed once "
           f"and stored next to the descriptors. Best: alpha={grid['alphas'][best[0]]:g}, "
           f"k={grid['ks'][best[1]]} ({values[best]:.2f}).")
