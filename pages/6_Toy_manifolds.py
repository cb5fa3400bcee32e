"""Toy manifolds: kNN versus diffusion ranking of one clicked point on 2-D data. Needs no dataset."""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cbir.toy import TOYS, knn_vs_diffusion, make_toy
from dashboard import sidebar, state

sidebar.open_page("Toy manifolds", needs_data=False)
st.markdown("Click a point: it becomes the query. Left: its nearest neighbours by Euclidean distance; "
            "right: its diffusion ranking on the kNN graph (grey lines). The first `n` results, "
            "`n` = the size of the query's cluster, are coloured: orange = same cluster, red = other.")


@st.cache_data(max_entries=32, show_spinner=False)
def toy(kind: str, n: int, noise: float, seed: int):
    return make_toy(kind, n, noise, seed)


@st.cache_data(max_entries=64, show_spinner=False)
def rankings(kind: str, n: int, noise: float, seed: int, query: int, k: int, alpha: float) -> dict:
    X, labels = toy(kind, n, noise, seed)
    return knn_vs_diffusion(X, labels, query, k=k, alpha=alpha)


columns = st.columns(6)
kind = state.select("Toy", "toy", list(TOYS), default="moons", container=columns[0])
n = state.slider("points", "toy_n", 50, 1000, 300, 50, container=columns[1])
noise = state.slider("noise", "toy_noise", 0.0, 0.3, 0.08, 0.01, container=columns[2])
seed = state.slider("seed", "toy_seed", 0, 20, 0, 1, container=columns[3])
k = state.slider("k (graph neighbours)", "toy_k", 2, 30, 10, 1, container=columns[4])
alpha = state.slider("alpha", "toy_alpha", 0.5, 0.999, 0.99, 0.001, container=columns[5], format="%.3f")
X, labels = toy(kind, n, noise, seed)

CHARTS = ("toy_knn", "toy_diffusion")


def clicked_point() -> int | None:
    """The point of a new click on either chart (a selection not handled before), if any."""
    for key in CHARTS:
        points = (st.session_state.get(key) or {}).get("selection", {}).get("points", [])
        chosen = [p["customdata"][0] for p in points if p.get("customdata")]
        if chosen and st.session_state.get(f"_{key}_handled") != chosen:
            st.session_state[f"_{key}_handled"] = chosen
            return int(chosen[0])
    return None


query = state.view_value("toy_query", 0, lambda raw: int(raw[-1]))
if (click := clicked_point()) is not None:
    query = click
if not 0 <= query < n:
    st.warning(f"Point {query} does not exist in a toy of {n} points; using point 0.")
    query = 0


try:
    result = rankings(kind, n, noise, seed, query, k, alpha)
except ValueError as exc:
    st.error(str(exc))
    st.stop()
state.publish("toy_query", query)


def figure(ranks: np.ndarray, edges: np.ndarray | None) -> go.Figure:
    top = ranks[: result["top_n"]]
    colour = np.full(n, "#c8c8c8", dtype=object)
    colour[top] = np.where(labels[top] == labels[query], "#ff7f0e", "#d62728")
    fig = go.Figure()
    fig.add_scatter(x=X[:, 0], y=X[:, 1], mode="markers", marker={"color": colour, "size": 7},
                    customdata=np.arange(n)[:, None], hovertemplate="point %{customdata[0]}<extra></extra>",
                    name="points")
    if edges is not None:
        xs = np.column_stack([X[edges[:, 0], 0], X[edges[:, 1], 0], np.full(len(edges), np.nan)]).ravel()
        ys = np.column_stack([X[edges[:, 0], 1], X[edges[:, 1], 1], np.full(len(edges), np.nan)]).ravel()
        fig.add_scatter(x=xs, y=ys, mode="lines", line={"color": "rgba(120,120,120,0.25)", "width": 0.5},
                        hoverinfo="skip", name="graph")
    fig.add_scatter(x=[X[query, 0]], y=[X[query, 1]], mode="markers", name="query",
                    marker={"symbol": "star", "size": 18, "color": "#1f77b4", "line": {"width": 1}})
    fig.update_layout(height=460, showlegend=False, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      xaxis={"scaleanchor": "y"})
    return fig


left, right = st.columns(2)
with left:
    st.metric("kNN: same-cluster precision", f"{100 * result['knn_score']:.1f} %")
    st.plotly_chart(figure(result["knn_ranks"], None), key="toy_knn", on_select="rerun", selection_mode="points")
with right:
    st.metric("Diffusion: same-cluster precision", f"{100 * result['diffusion_score']:.1f} %")
    st.plotly_chart(figure(result["diffusion_ranks"], result["edges"]), key="toy_diffusion",
                    on_select="rerun", selection_mode="points")
st.caption(f"Query: point {query} (cluster {labels[query]}); precision over the first "
           f"{result['top_n']} results, the query left out.")
