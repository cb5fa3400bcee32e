"""Curves: precision@k and precision-recall per query with their mean, per-query AP and its changes."""
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cbir.cache import CacheError
from cbir.metrics import pr_curves, precision_at_k_curves
from cbir.topkstore import StaleTopK
from dashboard import loaders, sidebar, state, stored_topk, tables

KMAX = 100
MANY_QUERIES = 300  # beyond this, per-query lines are sampled and per-query bars aggregate by class
SAMPLED_LINES = 40

view = sidebar.open_page("Curves")
dataset = view.dataset
names = view.query_names
try:  # per method: a ranking and the ground truth in its terms (list positions for stored top-K lists)
    judged = {m: stored_topk.judged_ranking(view, m) if view.distractors else (loaders.ranks(view.key, m), view.gnd)
              for m in view.methods}
    ap = tables.per_query(view, view.methods)
except (CacheError, StaleTopK) as exc:
    st.error(str(exc))
    st.stop()
listed = min(ranks.shape[1] for ranks, _ in judged.values())
kmax = min(KMAX, listed)
if view.distractors:
    st.caption(f"{view.name}: curves from each query's stored top-K list (K = {listed}); positives beyond "
               "K count as never retrieved (their recall stops short of 1).")
colours = ["#1f77b4", "#d62728", "#2ca02c"]
many = len(names) > MANY_QUERIES
drawn = (set(np.random.default_rng(0).choice(len(names), SAMPLED_LINES, replace=False).tolist())
         if many else set(range(len(names))))
if many:
    st.caption(f"{len(names)} queries: the thin lines are {SAMPLED_LINES} sampled queries; the bold means are "
               "over all of them, and per-query AP is summarised per class.")

left, right = st.columns(2)
with left:
    figure = go.Figure()
    for colour, method in zip(colours, view.methods):
        curves = precision_at_k_curves(*judged[method], kmax)
        ks = np.arange(1, kmax + 1)
        for i, (name, curve) in enumerate(zip(names, curves)):
            if i not in drawn:
                continue
            figure.add_scatter(x=ks, y=curve, mode="lines", line={"color": colour, "width": 0.6},
                               opacity=0.25, name=name, legendgroup=method.label(), showlegend=False)
        figure.add_scatter(x=ks, y=np.nanmean(curves, axis=0), mode="lines", line={"color": colour, "width": 3},
                           name=f"mean: {method.label()}", legendgroup=method.label())
    figure.update_layout(title="Precision@k (plain P@k, junk removed)", xaxis_title="k",
                         yaxis_title="precision", yaxis_range=[0, 1.02], height=420,
                         legend={"orientation": "h", "y": -0.25})
    st.plotly_chart(figure, key="pk")
with right:
    figure = go.Figure()
    grid = np.linspace(0, 1, 101)
    for colour, method in zip(colours, view.methods):
        curves = [(i, name, c) for i, (name, c) in enumerate(zip(names, pr_curves(*judged[method])))
                  if c[0].size]
        for i, name, (recall, precision) in curves:
            if i not in drawn:
                continue
            figure.add_scatter(x=recall, y=precision, mode="lines", line={"color": colour, "width": 0.6},
                               opacity=0.25, name=name, legendgroup=method.label(), showlegend=False)
        mean = np.mean([np.interp(grid, r, p, right=0.0) for _, _, (r, p) in curves], axis=0) if curves else grid * 0
        figure.add_scatter(x=grid, y=mean, mode="lines", line={"color": colour, "width": 3},
                           name=f"mean: {method.label()}", legendgroup=method.label())
    figure.update_layout(title="Precision-recall (the curves the reference AP integrates)",
                         xaxis_title="recall", yaxis_title="precision", yaxis_range=[0, 1.02], height=420,
                         legend={"orientation": "h", "y": -0.25})
    st.plotly_chart(figure, key="pr")
    st.caption("Bold: the mean of the per-query curves, linearly interpolated on a recall grid.")

first = view.methods[0].label()
if many:
    st.subheader(f"AP per class ({first}): distribution over each class's queries")
    classes = pd.Series([dataset.query_label(i) for i in range(len(names))], index=names)
    by_class = ap[first].groupby(classes)
    order = by_class.median().sort_values(ascending=False).index
    figure = go.Figure()
    for label in order:
        figure.add_box(y=by_class.get_group(label).values, name=str(label), boxpoints=False, showlegend=False)
    st.plotly_chart(figure.update_layout(yaxis_title="AP %", height=380, margin={"t": 20}), key="ap_bars")
else:
    st.subheader(f"Per-query AP, sorted ({first})")
    order = ap[first].sort_values(ascending=False)
    st.plotly_chart(go.Figure(go.Bar(x=order.index, y=order.values)).update_layout(
        yaxis_title="AP %", height=360, margin={"t": 20}), key="ap_bars")

if len(view.methods) >= 2:
    label = {loaders.method_id(m): m.label() for m in view.methods}
    ids = list(label)
    a = state.select("Method A", "compare_a", ids, default=ids[0], format_func=label.get)
    b = state.select("Method B", "compare_b", ids, default=ids[1], format_func=label.get)
    difference = (ap[label[b]] - ap[label[a]]).dropna().sort_values()
    st.subheader("AP difference B - A per query")
    if many:
        chart = go.Figure(go.Histogram(x=difference.values, nbinsx=60)).update_layout(
            xaxis_title="AP difference (points)", yaxis_title="queries")
    else:
        chart = go.Figure(go.Bar(x=difference.index, y=difference.values,
                                 marker_color=["#2ca02c" if d > 0 else "#d62728" for d in difference.values]
                                 )).update_layout(yaxis_title="AP difference (points)")
    st.plotly_chart(chart.update_layout(height=360, margin={"t": 20}), key="ap_diff")
    st.markdown(f"B better on **{int((difference > 0).sum())}** queries, worse on "
                f"**{int((difference < 0).sum())}**, equal on **{int((difference == 0).sum())}**.")

st.subheader(f"Hardest queries ({first})")
hardest = ap[first].dropna().sort_values().head(10)
links = ["./Query_explorer?" + urlencode([("dataset", view.url_key), ("protocol", view.protocol), ("query", name)]
                                         + [("methods", loaders.method_id(m)) for m in view.methods])
         for name in hardest.index]
st.dataframe(pd.DataFrame({"query": hardest.index, "AP %": hardest.values, "explore": links}),
             hide_index=True, key="hardest", column_config={
                 "AP %": st.column_config.NumberColumn(format="%.2f"),
                 "explore": st.column_config.LinkColumn(display_text="open in explorer")})
