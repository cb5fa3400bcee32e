"""Query explorer: one query, up to three methods side by side, each a framed ranked gallery."""
import streamlit as st

from cbir.cache import CacheError
from cbir.metrics import compute_map
from cbir.thumbshard import SHOWN
from cbir.topkstore import StaleTopK
from dashboard import gallery, loaders, sidebar, state, stored_topk, upload

PICKER_PAGE = 48

view = sidebar.open_page("Query explorer")
dataset = view.dataset


def image_query() -> int | None:
    """The database image chosen with "use as query" (kept in the URL as `image=`), if any."""
    def parse(raw: list[str]) -> str:
        if raw[-1] and raw[-1] not in dataset.images:
            raise ValueError(f"no database image {raw[-1]!r} in {dataset.display_name()}")
        return raw[-1]
    name = state.view_value(state.IMAGE_QUERY, "", parse)
    if name and name in dataset.images:
        state.publish(state.IMAGE_QUERY, name)
        return dataset.images.index(name)
    if state.IMAGE_QUERY in st.query_params:
        del st.query_params[state.IMAGE_QUERY]
    return None


def pick(name: str) -> None:
    st.session_state["w_query"] = name
    state.set_view(state.IMAGE_QUERY, "")


def query_page(current: int) -> list[int]:
    """The queries whose name or class matches the search box, one page of PICKER_PAGE at a time
    (a folder where every image is a query has thousands)."""
    text = st.text_input("Search queries by name or class", key="query_search").strip().lower()
    matching = [i for i, other in enumerate(dataset.queries)
                if not text or text in other.name.lower() or text in dataset.query_label(i).lower()]
    pages = max(1, -(-len(matching) // PICKER_PAGE))
    page = 1
    if pages > 1:
        start = matching.index(current) // PICKER_PAGE + 1 if current in matching and not text else 1
        page = st.number_input(f"Page (of {pages}; {len(matching)} queries)", 1, pages, start, key="query_page")
    elif text:
        st.caption(f"{len(matching)} matching queries")
    return matching[(page - 1) * PICKER_PAGE:page * PICKER_PAGE]


top = state.slider("Results shown", "top", 5, SHOWN, 10, 1)  # the thumbnail shard keeps that many places
image = None if view.distractors else image_query()  # a distractor evaluation keeps no descriptor to rank by
head, info = st.columns([1, 3])
if image is None:
    q = sidebar.query_select(view)
    query = dataset.queries[q]
    with st.expander("All queries (click one to explore it)", expanded=False):
        shown = query_page(q)
        with st.container(horizontal=True):
            for i in shown:
                other = dataset.queries[i]
                with st.container(width=130):
                    st.image(gallery.thumbnail(dataset, view.key, other.path, other.name, 120, other.bbox),
                             width=120)
                    st.button(other.name, key=f"pick_{i}", on_click=pick, args=(other.name,),
                              type="primary" if i == q else "secondary")
    gnd = view.gnd[q]
    with head:
        st.image(gallery.framed(gallery.thumbnail(dataset, view.key, query.path, query.name, 240, query.bbox),
                                "query"), caption=f"query {query.name} ({dataset.labels[query.index]})"
                 if query.index >= 0 else f"query {query.name}")
    with info:
        st.markdown(f"**{len(gnd['ok'])}** positives, **{len(gnd.get('junk', []))}** junk "
                    f"({view.protocol} protocol). Frames: green = positive, red = negative, "
                    "grey = junk (neither hit nor miss). The box is the query region that was described. "
                    + (f"Results: the stored top-K list over {view.name}; s = the score."
                       if view.distractors else "\"use as query\" under a result makes that image the query."))
else:
    gnd, judged = dataset.image_as_query_truth(view.protocol, image)
    name = dataset.images[image]
    with head:
        st.image(gallery.framed(gallery.thumbnail(dataset, view.key, dataset.paths[image], name, 240), "query"),
                 caption=f"database image {name} as the query")
    with info:
        st.markdown(f"**Database image {name}** is the query (the whole image). Ranking: each chosen "
                    f"method's descriptor of this image against the database. Frames: {judged}.")
        st.button("Back to the benchmark queries", on_click=state.set_view, args=(state.IMAGE_QUERY, ""))

for m, (column, method) in enumerate(zip(st.columns(len(view.methods)), view.methods)):
    with column:
        st.markdown(f"**{method.label()}**")
        try:
            if view.distractors:
                stored = stored_topk.stored(view, method)
                ranking, judged = stored_topk.judged_ranking(view, method)
                ranking, judged = ranking[q], judged[q]
            else:
                ranking = (loaders.query_ranks(view.key, method, q) if image is None
                           else loaders.image_ranks(view.key, method, image))
                judged = gnd
            ap = None if gnd is None else compute_map(ranking[None, :], [judged])["aps"][0]
        except (CacheError, StaleTopK) as exc:
            st.error(str(exc))
            continue
        if gnd is not None:
            st.metric("AP", "n/a (no positives)" if ap is None or ap != ap else f"{100 * ap:.2f}",
                      help="reference AP of this query, percent" + (
                          "; over its stored top-K list, positives beyond K counted as never retrieved"
                          if view.distractors else ""))
        if view.distractors:
            beyond = int(stored.topk.n_positives[q]) - len(stored.topk.positive_ranks[q])
            st.caption(f"{view.name}: top {stored.topk.k} of {stored.topk.n_ranked} ranked items stored" + (
                f"; {beyond} of its positives lie beyond them (counted as never retrieved)" if beyond else ""))
            gallery.draw(dataset, view.key, stored_topk.tiles(stored, q, top),
                         picture=stored_topk.picture(view, stored))
            continue
        if gnd is not None:
            shown = gallery.tiles(ranking, gnd, len(dataset.images), top)
        else:
            shown = [gallery.Tile(int(i), r + 1, "unjudged") for r, i in enumerate(ranking[:top])]
        gallery.draw(dataset, view.key, shown, as_query=f"use{m}")

st.divider()
st.subheader("Your own image as a query")
if view.distractors:
    st.info(f"Not available for {view.name}: ranking a new image needs the distractors' descriptors, which a "
            "stored evaluation does not load. Choose the benchmark alone in the sidebar to search with your image.")
elif not upload.can_upload():
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
                            ranking = rerank(method, found.db, desc, ranker=loaders.graph_ranker(view.key, method))[0]
                        except (ValueError, RuntimeError) as exc:
                            st.error(str(exc))
                        else:
                            st.session_state["upload_results"] = (search, [
                                gallery.Tile(int(i), r + 1, "unjudged") for r, i in enumerate(ranking[:top])])
                searched, results = st.session_state.get("upload_results", (None, None))
                if searched == search:
                    st.caption("No ground truth for an uploaded image: frames are amber (unjudged).")
                    gallery.draw(dataset, view.key, results)
