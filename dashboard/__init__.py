"""Streamlit-side helpers of the dashboard (`app.py`, `pages/`): the URL-kept view, the
sidebar, cached loaders over the cache directory, and the ranked galleries.

Everything retrieval-related is computed by `cbir`; this package only loads, caches and
draws. It imports streamlit; `cbir` never imports it.
"""
