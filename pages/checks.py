"""checks page (placeholder while being written)."""

import streamlit as st

from mdcm_app import ui


def main() -> None:
    meta = ui.require_study()
    ui.sidebar(meta)
    st.title("checks")


ui.guard(main)
