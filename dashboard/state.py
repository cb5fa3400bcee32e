"""The view (dataset, protocol, methods, query, alpha, k, ...) kept in the URL.

Every widget that is part of the view goes through `select`, `multiselect` or
`slider` here: a value given in the URL (a deep link, or a link edited by hand)
wins over the session's value, an invalid URL value shows a warning and falls
back to the default, and the current value is written back to the URL so a
copied link reproduces the view. The session keeps the values across pages
(`_view`), because switching pages drops widget state and query parameters.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import streamlit as st

VIEW = "_view"
SEEN = "_url_seen"
SERVED = "_served_root"
OPEN_PAGE = "_open_page"  # set by a callback: the page to switch to on the next run
IMAGE_QUERY = "image"  # view key: a database image used as the query
EXPLORER = "pages/2_Query_explorer.py"


def data_root() -> Path:
    return Path(os.environ.get("CBIR_DATA_DIR", "data"))


def user_cache_root() -> Path:
    """The user's own cache (`CBIR_CACHE_DIR`, default `cache/`): where extraction writes."""
    return Path(os.environ.get("CBIR_CACHE_DIR", "cache"))


def cache_root() -> Path:
    """The cache (or bundle) the pages serve: the user's own, or the embedded demo when chosen."""
    return Path(st.session_state.get(SERVED, user_cache_root()))


def serve(root: Path) -> None:
    """Make `root` the cache every loader and gallery of this run reads."""
    st.session_state[SERVED] = str(root)


def _as_url(value: Any) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [f"{v:g}" if isinstance(v, float) else str(v) for v in values]


def _fresh_url_value(key: str) -> list[str] | None:
    """The URL's value for `key` if it is new to this session (not what the app wrote itself)."""
    raw = st.query_params.get_all(key)
    seen = st.session_state.setdefault(SEEN, {})
    if not raw or raw == seen.get(key):
        return None
    seen[key] = raw
    return raw


def publish(key: str, value: Any) -> None:
    """Write a view value to the URL (only when it changed, to avoid needless messages)."""
    st.session_state.setdefault(VIEW, {})[key] = value
    raw = _as_url(value)
    st.session_state.setdefault(SEEN, {})[key] = raw
    if st.query_params.get_all(key) != raw:
        st.query_params[key] = raw if isinstance(value, (list, tuple)) else raw[0]


def open_in_explorer(**values: Any) -> None:
    """Switch to the Query explorer with these view values (e.g. a clicked method)."""
    for key, value in values.items():
        st.session_state.setdefault(VIEW, {})[key] = value
        st.session_state.pop(f"w_{key}", None)
    st.switch_page(EXPLORER)


def set_view(key: str, value: Any) -> None:
    """Change a view value from a callback (e.g. a chart click): the widget takes it on the next run."""
    st.session_state.setdefault(VIEW, {})[key] = value
    st.session_state[f"w_{key}"] = value


def view_value(key: str, default: Any, parse: Callable[[list[str]], Any]) -> Any:
    """A view parameter without a widget on this page (e.g. alpha on the explorer).

    `parse` receives the URL's raw values and raises ValueError with a readable reason.
    """
    view = st.session_state.setdefault(VIEW, {})
    raw = _fresh_url_value(key)
    if raw is not None:
        try:
            view[key] = parse(raw)
        except ValueError as exc:
            st.warning(f"Link parameter `{key}={','.join(raw)}` ignored: {exc}. "
                       f"Using {view.get(key, default)!r}.")
    return view.get(key, default)


def _one_of(options: Sequence, what: str) -> Callable[[list[str]], Any]:
    by_text = {str(o): o for o in options}

    def parse(raw: list[str]):
        if raw[-1] not in by_text:
            raise ValueError(f"unknown {what} {raw[-1]!r}")
        return by_text[raw[-1]]
    return parse


def _prepare(key: str, default: Any, parse, valid: Callable[[Any], bool]) -> str:
    """Seed the widget's state: its own last value, then a fresh URL value, then the session's."""
    widget_key = f"w_{key}"
    view = st.session_state.setdefault(VIEW, {})
    if widget_key in st.session_state and valid(st.session_state[widget_key]):
        view[key] = st.session_state[widget_key]
    value = view_value(key, default, parse)
    st.session_state[widget_key] = value if valid(value) else default
    return widget_key


def select(label: str, key: str, options: Sequence, *, what: str | None = None,
           default: Any = None, container=st, **kwargs) -> Any:
    """A selectbox whose value lives in the URL under `key`."""
    options = list(options)
    if not options:
        return None
    default = options[0] if default is None or default not in options else default
    widget_key = _prepare(key, default, _one_of(options, what or key), lambda v: v in options)
    value = container.selectbox(label, options, key=widget_key, **kwargs)
    publish(key, value)
    return value


def multiselect(label: str, key: str, options: Sequence, *, what: str | None = None,
                default: Sequence = (), container=st, **kwargs) -> list:
    """A multiselect whose values live in the URL as a repeated parameter."""
    options = list(options)
    limit = kwargs.get("max_selections") or len(options)
    default = [d for d in default if d in options][:limit]

    def parse(raw: list[str]) -> list:
        unknown = [r for r in raw if r not in options]
        if unknown:
            raise ValueError(f"unknown {what or key} {', '.join(map(repr, unknown))}")
        chosen = list(dict.fromkeys(raw))
        if len(chosen) > limit:
            raise ValueError(f"at most {limit} allowed")
        return chosen

    widget_key = _prepare(key, default, parse,
                          lambda v: len(v) <= limit and all(x in options for x in v))
    value = container.multiselect(label, options, key=widget_key, **kwargs)
    publish(key, value)
    return value


def number(kind: type, lo, hi) -> Callable[[list[str]], Any]:
    """A URL parser for a number of type `kind` in [lo, hi]."""
    def parse(raw: list[str]):
        try:
            value = kind(raw[-1])
        except ValueError:
            raise ValueError(f"not a{'n integer' if kind is int else ' number'}") from None
        if not lo <= value <= hi:
            raise ValueError(f"outside [{lo}, {hi}]")
        return value
    return parse


def slider(label: str, key: str, lo, hi, default, step, *, container=st, **kwargs):
    """A numeric slider whose value lives in the URL; out-of-range values fall back."""
    kind = float if isinstance(step, float) else int
    widget_key = _prepare(key, default, number(kind, lo, hi),
                          lambda v: isinstance(v, (int, float)) and lo <= v <= hi)
    value = container.slider(label, lo, hi, step=step, key=widget_key, **kwargs)
    publish(key, value)
    return value
