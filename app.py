"""Groundwork's entry point: page config and navigation, nothing else."""

import streamlit as st

from core import ui_cache

st.set_page_config(page_title="Groundwork", page_icon="🧱", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/corpus.py", title="Corpus", icon="📚"),
    st.Page("pages/prompts.py", title="Prompts", icon="✍️"),
    st.Page("pages/workshop.py", title="Workshop", icon="🔬"),
    st.Page("pages/generate.py", title="Generate", icon="🧪"),
    st.Page("pages/review.py", title="Review", icon="📝"),
    st.Page("pages/export.py", title="Export", icon="📦"),
    st.Page("pages/dashboard.py", title="Dashboard", icon="📊"),
    st.Page("pages/settings.py", title="Settings", icon="🔑"),
]
# With Streamlit's OIDC login configured ([auth] in .streamlit/secrets.toml), nothing shows until signed in.
if ui_cache.auth_configured() and not st.user.is_logged_in:
    st.title("Groundwork")
    st.button("Log in", on_click=st.login, type="primary")
    st.stop()
page = st.navigation(pages)
ui_cache.sidebar()
page.run()
