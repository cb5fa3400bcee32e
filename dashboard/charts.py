"""Plotly figures the pages share (no Streamlit here: the pages draw them)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from cbir.method import POOLING_NAMES, POOLINGS, RERANKINGS, short_backbone

POOLING_COLOURS = {"mac": "#4C78A8", "spoc": "#F58518", "gem": "#54A24B", "rmac": "#B279A2"}
RERANK_NAMES = {"none": "no re-ranking", "qe": "QE", "aqe": "alpha-QE", "diffusion": "diffusion",
                "fsr": "FSR", "kreciprocal": "k-reciprocal"}
RERANK_PATTERNS = {"none": "", "qe": ".", "aqe": "/", "diffusion": "x", "fsr": "-", "kreciprocal": "|"}


def category(row) -> str:
    name = POOLING_NAMES.get(row["pooling"], row["pooling"])
    return name if row["whitening"] == "none" else f"{name} +{row['whitening']}"


def map_bars(table: pd.DataFrame) -> go.Figure:
    """mAP per method: grouped by backbone, one group per pooling coloured by it, each re-ranking
    a hatched bar beside its base method; `customdata` holds the method id a click opens."""
    order = table.assign(_b=table["backbone"].map(short_backbone),
                         _p=table["pooling"].map({p: i for i, p in enumerate(POOLINGS)}))
    order = order.sort_values(["_b", "_p", "whitening"], kind="stable")
    categories = list(dict.fromkeys(zip(order["_b"], [category(r) for _, r in order.iterrows()])))
    figure = go.Figure()
    shown = [r for r in RERANKINGS if r in set(order["re-ranking"])]
    for rerank in shown:
        for pooling in POOLINGS:
            part = order[(order["re-ranking"] == rerank) & (order["pooling"] == pooling)]
            if part.empty:
                continue
            figure.add_bar(
                x=[list(part["_b"]), [category(r) for _, r in part.iterrows()]], y=part["mAP"],
                offsetgroup=rerank, name=f"{POOLING_NAMES[pooling]} {RERANK_NAMES[rerank]}", showlegend=False,
                marker_color=POOLING_COLOURS[pooling], marker_pattern_shape=RERANK_PATTERNS[rerank],
                marker_pattern_fillmode="overlay", marker_pattern_fgcolor="white", customdata=part["id"], text=part["method"],
                hovertemplate="%{text}<br>mAP %{y:.2f}<extra>click to open in the Query explorer</extra>")
    for pooling in POOLINGS:  # legend: colour = pooling, hatching = re-ranking
        figure.add_bar(x=[[categories[0][0]], [categories[0][1]]], y=[None], name=POOLING_NAMES[pooling],
                       marker_color=POOLING_COLOURS[pooling], legendgroup="pooling",
                       legendgrouptitle_text="pooling", offsetgroup=shown[0], hoverinfo="skip")
    for rerank in shown:
        figure.add_bar(x=[[categories[0][0]], [categories[0][1]]], y=[None], name=RERANK_NAMES[rerank],
                       marker_color="#999999", marker_pattern_shape=RERANK_PATTERNS[rerank],
                       marker_pattern_fillmode="overlay", marker_pattern_fgcolor="white",
                       legendgroup="rerank", legendgrouptitle_text="re-ranking", offsetgroup=rerank,
                       hoverinfo="skip")
    figure.update_layout(barmode="group", bargroupgap=0.05, yaxis_title="mAP (%)", yaxis_range=[0, 100],
                         height=460, margin=dict(t=20, b=50), clickmode="event+select",
                         legend=dict(groupclick="toggleitem"))
    figure.update_xaxes(categoryorder="array", categoryarray=categories)
    return figure
