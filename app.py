"""Groundwork's entry point: page config and navigation, nothing else."""

import streamlit as st

st.set_page_config(page_title="Groundwork", page_icon="🧱", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/corpus.py", title="Corpus", icon="📚"),
    st.Page("pages/prompts.py", title="Prompts", icon="✍️"),
    st.Page("pages/workshop.py", title="Workshop", icon="🔬"),
    st.Page("pages/generate.py", title="Generate", icon="🧪"),
    st.Page("pages/settings.py", title="Settings", icon="🔑"),
]
st.navigation(pages).run()
