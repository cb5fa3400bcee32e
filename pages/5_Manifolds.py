"""Manifolds: UMAP of the database before and after diffusion, aligned, coloured by landmark.

Layouts are read from the entry directory; computing them (UMAP: seconds to minutes)
happens only when asked, with progress. Select points (lasso, box or click) to see the images.
"""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cbir.cache import CacheError
from dashboard import gallery, loaders, sidebar, state, stored_topk

view = sidebar.open_page("Manifolds")
stored_topk.refuse_descriptor_page(view, "The Manifolds page")
dataset = view.dataset
q = sidebar.query_select(view)
method = view.methods[0]
base = method.with_rerank("none")
params = sidebar.diffusion_params(len(dataset.images))
k, gamma, alpha = params["k"], params["gamma"], params["alpha"]
st.caption(f"Descriptors: {base.label()}; diffusion graph k={k}, gamma={gamma:g}, alpha={alpha:g} "
           "(the Diffusion lab's values). Overlays use the ranking of "
           f"{method.label()}.")


def compute(recompute: bool) -> None:
    with st.status("Computing layouts (UMAP)...", expanded=True) as status:
        bar = st.progress(0.0)
        try:
            loaders.layouts(view.key, base, k, gamma, alpha, compute=True, recompute=recompute,
                            progress=lambda done, total, stage: bar.progress(done / total, text=stage))
        except ImportError as exc:
            status.update(label=f"UMAP is not installed ({exc}): pip install umap-learn", state="error")
        except (ValueError, RuntimeError) as exc:
            status.update(label=f"Layouts failed: {exc}", state="error")
        else:
            status.update(label="Layouts stored next to the descriptors", state="complete")


try:
    found = loaders.layouts(view.key, base, k, gamma, alpha)
except (CacheError, ValueError) as exc:
    st.error(str(exc))
    st.stop()
if found is None:
    st.info("The layouts for these descriptors and graph are not computed yet. UMAP takes seconds for "
            "a few hundred images and about a minute for Paris6k; the result is stored in the cache.")
    if st.button("Compute layouts", type="primary"):
        compute(recompute=False)
        found = loaders.layouts(view.key, base, k, gamma, alpha)
    if found is None:
        st.stop()
elif st.button("Recompute layouts"):
    compute(recompute=True)
    found = loaders.layouts(view.key, base, k, gamma, alpha)

top = state.slider("Top-k shown", "top", 5, 50, 10, 1)
ranking = loaders.query_ranks(view.key, method, q)
query = dataset.queries[q]
positives = np.asarray(view.gnd[q]["ok"], dtype=np.int64)
labels = np.asarray(dataset.labels)


def scatter(layout: np.ndarray, title: str) -> go.Figure:
    fig = go.Figure()
    for label in sorted(set(dataset.labels)):
        idx = np.flatnonzero(labels == label)
        fig.add_scattergl(x=layout[idx, 0], y=layout[idx, 1], mode="markers", name=label,
                          marker={"size": 5, "opacity": 0.7}, customdata=idx[:, None],
                          text=[dataset.images[i] for i in idx], hovertemplate="%{text}<extra></extra>")
    fig.add_scattergl(x=layout[positives, 0], y=layout[positives, 1], mode="markers", name="positives",
                      marker={"size": 11, "color": "rgba(0,0,0,0)", "line": {"color": "#22a03c", "width": 2}},
                      hoverinfo="skip")
    shown = ranking[:top]
    fig.add_scattergl(x=layout[shown, 0], y=layout[shown, 1], mode="markers", name=f"top {top}",
                      marker={"size": 9, "symbol": "diamond-open", "color": "#111", "line": {"width": 2}},
                      hoverinfo="skip")
    if query.index >= 0:
        fig.add_scattergl(x=[layout[query.index, 0]], y=[layout[query.index, 1]], mode="markers", name="query",
                          marker={"size": 18, "symbol": "star", "color": "#1f5ad8"}, hoverinfo="skip")
    fig.update_layout(title=title, height=520, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.05})
    return fig


left, right = st.columns(2)
events = {}
with left:
    events["before"] = st.plotly_chart(scatter(found["before"], "Before: UMAP of the descriptors"),
                                       key="manifold_before", on_select="rerun",
                                       selection_mode=("points", "box", "lasso"))
with right:
    events["after"] = st.plotly_chart(scatter(found["after"], "After: UMAP of the diffusion affinities"),
                                      key="manifold_after", on_select="rerun",
                                      selection_mode=("points", "box", "lasso"))

selected = []
for event in events.values():
    for point in (event or {}).get("selection", {}).get("points", []):
        if point.get("customdata"):
            selected.append(int(point["customdata"][0]))
selected = list(dict.fromkeys(selected))
if selected:
    st.subheader(f"{len(selected)} selected images")
    relevance = gallery.relevance(view.gnd[q], len(dataset.images))
    rank_of = gallery.positions(ranking)
    gallery.draw(dataset, view.key, [gallery.Tile(i, int(rank_of[i]), relevance[i]) for i in selected[:40]],
                 as_query="manifold")
else:
    st.caption("Select points with the lasso, the box or a click to see those images here "
               "(frames relative to the chosen query; # is the image's rank for it); \"use as query\" under an "
               "image opens it as the query in the Query explorer.")
