"""mdcm Streamlit app: draw a causal graph, see the training plan, train in the background,
intervene, check the model. Run with ``streamlit run app.py``.

One navigation scheme: ``st.navigation`` over the page scripts in ``pages/``. Session state keys
and on-disk layout are documented in :mod:`mdcm_app.state`. Before any page,
:func:`mdcm_app.auth.gate` decides who the visitor is: nobody signs in while the app listens on
loopback only (the default, ``.streamlit/config.toml``); on a network address the app is in shared
mode and shows only a sign-in screen until the visitor signs in (README, "Running for a group").
"""

import streamlit as st

from mdcm_app import auth

st.set_page_config(
    page_title="mdcm: causal questions with images", page_icon=":material/explore:", layout="wide"
)

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/graph.py", title="Graph & plan", icon=":material/hub:", url_path="graph"),
    st.Page("pages/data.py", title="Data", icon=":material/folder_open:", url_path="data"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("pages/intervene.py", title="Intervene", icon=":material/tune:", url_path="intervene"),
    st.Page("pages/counterfactual.py", title="Counterfactual", icon=":material/alt_route:"),
    st.Page("pages/checks.py", title="Checks", icon=":material/fact_check:", url_path="checks"),
    st.Page(
        "pages/workspace.py", title="Workspace", icon=":material/inventory_2:", url_path="workspace"
    ),
]

user = auth.gate()  # stops here with a sign-in screen in shared mode until someone signs in
auth.start_dispatcher(auth.settings())
auth.sidebar(user)
auth.refuse_foreign_study()
st.navigation(PAGES).run()
