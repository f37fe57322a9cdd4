"""UI helpers for the mdcm Streamlit app (pages/ and app.py).

Pure helpers (graph editing, pyvis rendering, plotly figures, PIL image grids) live in
:mod:`mdcm_app.graphview` and :mod:`mdcm_app.plots`; :mod:`mdcm_app.state` owns the session state
keys and the on-disk study folders; :mod:`mdcm_app.ui` holds the small Streamlit widgets shared by
pages. The library ``mdcm`` never imports Streamlit.
"""
