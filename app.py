"""Groundwork's entry point: page config and navigation, nothing else."""

import streamlit as st

from core import ui_cache

st.set_page_config(page_title="Groundwork", page_icon=":material/foundation:", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/corpus.py", title="Corpus", icon=":material/library_books:"),
    st.Page("pages/prompts.py", title="Prompts", icon=":material/edit_note:"),
    st.Page("pages/workshop.py", title="Workshop", icon=":material/science:"),
    st.Page("pages/generate.py", title="Generate", icon=":material/play_circle:"),
    st.Page("pages/review.py", title="Review", icon=":material/rate_review:"),
    st.Page("pages/export.py", title="Export", icon=":material/inventory_2:"),
    st.Page("pages/dashboard.py", title="Dashboard", icon=":material/monitoring:"),
    st.Page("pages/settings.py", title="Settings", icon=":material/settings:"),
]
# With Streamlit's OIDC login configured ([auth] in .streamlit/secrets.toml), nothing shows until signed in.
if ui_cache.auth_configured() and not st.user.is_logged_in:
    st.title("Groundwork")
    st.button("Log in", on_click=st.login, type="primary")
    st.stop()
page = st.navigation(pages)
ui_cache.sidebar()
if problem := ui_cache.data_dir_problem():  # another user's data dir: one line, not a traceback per page
    st.error(problem, icon=":material/lock:")
    st.stop()
page.run()
