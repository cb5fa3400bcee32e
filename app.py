"""Overview (home page): which method wins on the chosen dataset and protocol, and by how much.

Run with `streamlit run app.py`; the other pages live in `pages/`. Reads only the
cache (`CBIR_CACHE_DIR`, default `cache/`) or the embedded demo; never imports torch,
timm or umap.
"""
import streamlit as st

from cbir.study import NOT_COMPARABLE, ODD_ROWS, PUBLISHED, SEED_TABLE
from dashboard import charts, sidebar, state, stored_topk, tables

view = sidebar.open_page("Overview")

dataset = view.dataset
params = sidebar.diffusion_params(len(dataset.images))
methods = list(view.options.values())

if view.source == "demo":
    st.info(sidebar.demo_notice())
st.subheader(f"{view.name}: mAP per method ({view.protocol} protocol)")
against = [e.name for e in stored_topk.evaluations()[0].values() if e.dataset_key == view.key and not view.distractors]
if against:
    st.caption(f"Also evaluated against distractors: {', '.join(against)} (choose it as the Dataset in the sidebar).")
caveats, pending = [], []
if view.distractors:
    table, errors, caveats = tables.distractor_overview(view)
    for error in errors:
        st.error(f"Stored evaluation left out: {error}")
else:
    table, errors, pending = tables.overview(view.key, dataset.name, methods, view.protocol)
    for error in errors:
        st.error(f"Cache entry left out: {error}. Re-extract it on the Data and descriptors page.")
if pending:  # what is ready first, then progress for the rest, then the whole table
    if not table.empty:
        st.caption(f"Ready: {len(table)} of {len(table) + len(pending)} methods.")
        st.dataframe(table[["method", "mAP", "mP@10", "seed mAP (all)"]], hide_index=True, key="ready")
    computed, failed = tables.evaluate_pending(view.key, pending, view.protocol)
    for error in failed:
        st.error(f"Evaluation failed: {error}")
    table, _, _ = tables.overview(view.key, dataset.name, methods, view.protocol, computed)
if table.empty:
    st.warning("No usable cache entry for this dataset.")
    st.stop()

best = table.iloc[0]
runner = table[table["method"] != best["method"]]
st.markdown(f"**{best['method']}** leads with mAP **{best['mAP']:.2f}**"
            + (f", {best['mAP'] - runner.iloc[0]['mAP']:.2f} points ahead of {runner.iloc[0]['method']}"
               if not runner.empty else "") + ".")
clicked = st.plotly_chart(charts.map_bars(table), key="overview_chart", on_select="rerun",
                          selection_mode="points", width="stretch")
chosen = [p["customdata"] for p in (clicked or {}).get("selection", {}).get("points", []) if p.get("customdata")]
if chosen:  # a click on a bar: that method alone in the Query explorer
    state.open_in_explorer(methods=[chosen[0]], image="")
st.caption(("Reference mAP over each stored top-K list (junk removed, trapezoid AP; positives beyond K count as "
            "never retrieved, so a truncated figure is a lower bound)" if view.distractors else
            "Reference mAP (full list, junk removed, trapezoid AP)") + ", in percent. Bars grouped by backbone, "
           "one group per pooling (colour); each re-ranking (hatching, see the legend) stands beside its base "
           "method. Click a bar to open that method in the Query explorer.")

percent = st.column_config.NumberColumn(format="%.2f")
study = st.column_config.NumberColumn(format="%.2f", help="the seed study's published figure for this "
                                      "column (full Paris6k); 'study row' says which row")
st.dataframe(table, hide_index=True, key="overview", column_config={
    "id": None,
    **{column: percent for column in tables.METRICS},
    **{column: study for column in ("study mAP@10", "study mAP@100", "study mAP (all)")},
    "params (M)": st.column_config.NumberColumn(format="%.1f"),
    "published mAP": st.column_config.NumberColumn(format="%.1f", help=NOT_COMPARABLE),
})
st.caption("mAP and mP@k: reference definitions (junk removed, trapezoid AP; mP@k uses "
           "kq = min(rank of the last positive, k), not plain P@k). \"seed\" columns: the seed "
           "study's AP@k, normalised by the positives within the top k, each beside the study's own "
           "published figure (\"study\") for the same backbone, or for the study row named in "
           "\"study row\" where the study did not use this backbone. All in percent. "
           + ("Each query ranked against the database and the distractors by exact search (re-rankings: "
              "query expansion searches exactly again, diffusion runs as its note says); only its top K "
              "items are stored, with the ranks of its positives and junk: the figures equal the full "
              "ranking's when every positive lies within K (\"queries truncated\" = 0)." if view.distractors else
              f"Diffusion rows use alpha={params['alpha']:g}, k={params['k']}, kq={params['kq']}, "
              f"gamma={params['gamma']:g}; FSR rows the same graph from its top-r eigenpairs (r in the label; "
              "r = the database size is the exact solve); k-reciprocal rows Zhong et al.'s k1, k2, lambda."))
for caveat in caveats:
    st.warning(caveat)
st.download_button("Export CSV", table.to_csv(index=False).encode(), file_name=f"{view.url_key}-{view.protocol}.csv",
                   mime="text/csv")

left, right = st.columns(2)
with left:
    st.subheader("Dataset status")
    st.markdown(f"""
- images present: **{len(dataset.images)}** of {dataset.n_images_total} \
({len(dataset.missing)} missing, {len(dataset.unreadable)} unreadable)
- queries present: **{len(dataset.queries)}** of {dataset.n_queries_total}
- protocols: {", ".join(dataset.protocols)}
- images under `{dataset.root or "(bundle thumbnails only)"}`""")
    if view.distractors:
        st.markdown(f"- evaluated as **{view.name}**: each query ranked against the database and the "
                    "distractors; served from the stored top-K lists (no descriptor loaded)")
    if dataset.partial:
        st.warning(f"Partial copy: {dataset.status_line()}. {NOT_COMPARABLE}")
with right:
    st.subheader("Published numbers (full benchmarks)")
    st.dataframe([{"dataset": p.dataset, "backbone": p.backbone, "pooling": p.pooling,
                   "re-ranking": p.rerank, "mAP": p.map, "source": p.source, "note": p.note}
                  for p in PUBLISHED], hide_index=True)
    st.caption(NOT_COMPARABLE)

with st.expander("The seed study's published table (Paris6k, percent, as printed)"):
    st.dataframe([{"model": row.name, "mAP@10": row.map_at_10, "mAP@100": row.map_at_100, "mAP": row.map_all,
                   "dim": row.dim, "params": row.params,
                   "note": ODD_ROWS.get((row.backbone, row.pooling, row.rerank), "")} for row in SEED_TABLE],
                 hide_index=True)
    st.caption("Its mAP@10 and mAP@100 are the study's AP@k (normalised by the positives within the top k): "
               "compare them with our \"seed\" columns, not with the reference mAP.")
