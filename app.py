"""mdcm Streamlit app: draw a causal graph, see the training plan, train in the background,
intervene, check the model. Run with ``streamlit run app.py``.

One navigation scheme: ``st.navigation`` over the page scripts in ``pages/``. Session state keys
and on-disk layout are documented in :mod:`mdcm_app.state`.
"""

import streamlit as st

st.set_page_config(page_title="mdcm: causal questions with images", page_icon="🧭",
                   layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/graph.py", title="Graph & plan", icon="🕸️", url_path="graph"),
    st.Page("pages/data.py", title="Data", icon="🗂️", url_path="data"),
    st.Page("pages/train.py", title="Train", icon="🏋️", url_path="train"),
    st.Page("pages/intervene.py", title="Intervene", icon="🎛️", url_path="intervene"),
    st.Page("pages/checks.py", title="Checks", icon="🔍", url_path="checks"),
]

st.navigation(PAGES).run()
