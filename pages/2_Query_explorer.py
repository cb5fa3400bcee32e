"""Query explorer: one query, up to three methods side by side, each a framed ranked gallery."""
import streamlit as st

from cbir.cache import CacheError
from dashboard import gallery, loaders, sidebar, state, upload

view = sidebar.open_page("Query explorer")
dataset = view.dataset
q = sidebar.query_select(view)
query = dataset.queries[q]


def pick(name: str) -> None:
    st.session_state["w_query"] = name


with st.expander("All queries (click one to explore it)", expanded=False):
    with st.container(horizontal=True):
        for i, other in enumerate(dataset.queries):
            with st.container(width=130):
                st.image(gallery.thumbnail(dataset, view.key, other.path, other.name, 120, other.bbox),
                         width=120)
                st.button(other.name, key=f"pick_{i}", on_click=pick, args=(other.name,),
                          type="primary" if i == q else "secondary")

top = state.slider("Results shown", "top", 5, 50, 10, 1)
head, info = st.columns([1, 3])
with head:
    st.image(gallery.framed(gallery.thumbnail(dataset, view.key, query.path, query.name, 240, query.bbox),
                            "query"), caption=f"query {query.name} ({dataset.labels[query.index]})"
             if query.index >= 0 else f"query {query.name}")
with info:
    gnd = view.gnd[q]
    st.markdown(f"**{len(gnd['ok'])}** positives, **{len(gnd.get('junk', []))}** junk "
                f"({view.protocol} protocol). Frames: green = positive, red = negative, "
                "grey = junk (neither hit nor miss). The box is the query region that was described.")

for column, method in zip(st.columns(len(view.methods)), view.methods):
    with column:
        st.markdown(f"**{method.label()}**")
        try:
            report = loaders.report(view.key, method, view.protocol)
            ranking = loaders.ranks(view.key, method)[q]
        except CacheError as exc:
            st.error(str(exc))
            continue
        ap = report["per_query"][q]["ap"]
        st.metric("AP", "n/a (no positives)" if ap is None else f"{100 * ap:.2f}",
                  help="reference AP of this query, percent")
        gallery.draw(dataset, view.key, gallery.tiles(ranking, gnd, len(dataset.images), top))

st.divider()
st.subheader("Your own image as a query")
if not upload.can_upload():
    st.info("Describing an uploaded image needs a CNN: install openvino (enough for entries that carry "
            "their converted model, as bundles built from OpenVINO extractions do) or torch and timm "
            "(`pip install torch timm`), then reload. Everything else works without them.")
else:
    file = st.file_uploader("Image (JPEG, PNG, WebP)", type=["jpg", "jpeg", "png", "webp"], key="upload")
    if file is not None:
        try:
            image = upload.read_upload(file.getvalue(), file.name)
        except ValueError as exc:
            st.error(str(exc))
        else:
            width, height = image.size
            x = st.slider("Region: x range (pixels)", 0, width, (0, width), key="upload_x")
            y = st.slider("Region: y range (pixels)", 0, height, (0, height), key="upload_y")
            box = (x[0], y[0], x[1], y[1])
            if x[1] - x[0] < 8 or y[1] - y[0] < 8:
                st.error(f"{file.name}: the region {box} is too small (at least 8 x 8 pixels)")
            else:
                st.image(gallery.framed(image.crop(box), "query"), caption="region used", width=240)
                method = view.methods[0]
                search = (view.key, loaders.method_id(method), file.file_id, box, top)
                if st.button(f"Search with {method.label()}"):
                    from cbir.rerank import rerank
                    with st.spinner("Describing the image..."):
                        try:
                            found = loaders.entry(view.key, method)
                            desc = upload.describe(file.getvalue(), file.name, box, method, found)
                            graph = (loaders.ranker(view.key, method, method.k, method.gamma)
                                     if method.rerank == "diffusion" else None)
                            ranking = rerank(method, found.db, desc, ranker=graph)[0]
                        except (ValueError, RuntimeError) as exc:
                            st.error(str(exc))
                        else:
                            st.session_state["upload_results"] = (search, [
                                gallery.Tile(int(i), r + 1, "unjudged") for r, i in enumerate(ranking[:top])])
                searched, results = st.session_state.get("upload_results", (None, None))
                if searched == search:
                    st.caption("No ground truth for an uploaded image: frames are amber (unjudged).")
                    gallery.draw(dataset, view.key, results)
