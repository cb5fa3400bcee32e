"""Plotly figures the pages share (no Streamlit here: the pages draw them)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from cbir.method import POOLING_NAMES, POOLINGS, short_backbone

POOLING_COLOURS = {"mac": "#4C78A8", "spoc": "#F58518", "gem": "#54A24B", "rmac": "#B279A2"}
RERANK_ORDER = {"none": 0, "qe": 1, "aqe": 2, "diffusion": 3}
RERANK_PATTERNS = {"none": "", "qe": ".", "aqe": "/", "diffusion": "x"}


def bar_label(row) -> str:
    base = POOLING_NAMES.get(row["pooling"], row["pooling"])
    if row["whitening"] != "none":
        base += f" +{row['whitening']}"
    return base if row["re-ranking"] == "none" else f"{base} +{row['re-ranking']}"


def map_bars(table: pd.DataFrame) -> go.Figure:
    """mAP per method: grouped by backbone, coloured by pooling, each re-ranking beside its base
    method (hatched); `customdata` holds the method id the click opens."""
    order = table.assign(_p=table["pooling"].map({p: i for i, p in enumerate(POOLINGS)}),
                         _r=table["re-ranking"].map(RERANK_ORDER).fillna(9))
    order = order.sort_values(["backbone", "_p", "whitening", "_r"], kind="stable")
    figure = go.Figure()
    for pooling in POOLINGS:
        part = order[order["pooling"] == pooling]
        if part.empty:
            continue
        figure.add_bar(
            x=[[short_backbone(b) for b in part["backbone"]], [bar_label(r) for _, r in part.iterrows()]],
            y=part["mAP"], name=POOLING_NAMES[pooling], marker_color=POOLING_COLOURS[pooling],
            marker_pattern_shape=[RERANK_PATTERNS.get(r, "") for r in part["re-ranking"]],
            customdata=part["id"], text=[f"{v:.1f}" for v in part["mAP"]], textposition="outside",
            hovertemplate="%{x}<br>mAP %{y:.2f}<extra>click to open in the Query explorer</extra>")
    figure.update_layout(barmode="overlay", yaxis_title="mAP (%)", yaxis_range=[0, 105], height=460,
                         margin=dict(t=30, b=150), legend_title_text="pooling", clickmode="event+select")
    figure.update_xaxes(tickangle=-60)
    return figure
