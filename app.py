"""Overview (home page): every cached method's mAP on the chosen dataset and protocol.

Run with `streamlit run app.py`; the other pages live in `pages/`. Reads only the
cache (`CBIR_CACHE_DIR`, default `cache/`); never imports torch, timm or umap.
"""
import streamlit as st

from cbir.study import NOT_COMPARABLE, PUBLISHED
from dashboard import sidebar, tables

view = sidebar.open_page("Overview")

dataset = view.dataset
params = sidebar.diffusion_params(len(dataset.images))
methods = list(view.options.values())

st.subheader(f"{dataset.name}: mAP per method ({view.protocol} protocol)")
table, errors = tables.overview(view.key, dataset.name, methods, view.protocol)
for error in errors:
    st.error(f"Cache entry left out: {error}. Re-extract it on the Data and descriptors page.")
if table.empty:
    st.warning("No usable cache entry for this dataset.")
    st.stop()

percent = st.column_config.NumberColumn(format="%.2f")
st.dataframe(table, hide_index=True, key="overview", column_config={
    **{column: percent for column in tables.METRICS},
    "params (M)": st.column_config.NumberColumn(format="%.1f"),
    "published mAP": st.column_config.NumberColumn(format="%.1f", help=NOT_COMPARABLE),
})
st.caption("mAP and mP@k: reference definitions (junk removed, trapezoid AP; mP@k uses "
           "kq = min(rank of the last positive, k), not plain P@k). \"seed\" columns: the seed "
           "study's AP@k, normalised by the positives within the top k. All in percent. "
           f"Diffusion rows use alpha={params['alpha']:g}, k={params['k']}, kq={params['kq']}, "
           f"gamma={params['gamma']:g}; FSR rows the same graph from its top-r eigenpairs (r in the label; "
           "r = the database size is the exact solve); k-reciprocal rows Zhong et al.'s k1, k2, lambda.")
st.download_button("Export CSV", table.to_csv(index=False).encode(), file_name=f"{view.key}-{view.protocol}.csv",
                   mime="text/csv")

left, right = st.columns(2)
with left:
    st.subheader("Dataset status")
    st.markdown(f"""
- images present: **{len(dataset.images)}** of {dataset.n_images_total} \
({len(dataset.missing)} missing, {len(dataset.unreadable)} unreadable)
- queries present: **{len(dataset.queries)}** of {dataset.n_queries_total}
- protocols: {", ".join(dataset.protocols)}
- images under `{dataset.root}`""")
    if dataset.partial:
        st.warning(f"Partial copy: {dataset.status_line()}. {NOT_COMPARABLE}")
with right:
    st.subheader("Published numbers (full benchmarks)")
    st.dataframe([{"dataset": p.dataset, "backbone": p.backbone, "pooling": p.pooling,
                   "re-ranking": p.rerank, "mAP": p.map, "source": p.source, "note": p.note}
                  for p in PUBLISHED], hide_index=True)
    st.caption(NOT_COMPARABLE)
