"""Home: where the corpus stands, and the sample corpus indexed on first open."""

from pathlib import Path

import streamlit as st

from core import ui_cache

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data" / "corpus"

st.title("Groundwork")
st.caption("Turn a document corpus into grounded, multi-turn SFT conversations — then review and export them.")

try:
    wb = ui_cache.workbench()
    stats = wb.corpus.stats()
    if stats["documents"] == 0 and SAMPLE_DIR.is_dir() and not st.session_state.get("home.sample_failed"):
        st.info("First open: indexing the fictional case-law sample corpus in `sample_data/corpus` …")
        bar = st.progress(0.0, text="reading files")

        def show(stage: str, done: int, total: int) -> None:
            bar.progress(min(done / max(total, 1), 1.0), text=f"{stage}: {done}/{total}")

        try:
            report = wb.corpus.ingest_path(SAMPLE_DIR, progress=show)
            st.success(f"Sample corpus ready: {report.summary()}")
        except Exception as e:
            st.session_state["home.sample_failed"] = True
            ui_cache.show_error(e)
        stats = wb.corpus.stats()
    cols = st.columns(4)
    cols[0].metric("Documents", f"{stats['documents']:,}")
    cols[1].metric("Chunks", f"{stats['chunks']:,}")
    cols[2].metric("Collection", stats["collection"])
    cols[3].metric("Vector store", stats["engine"])
    if stats["pending"]:
        st.warning(f"{stats['pending']} documents were interrupted mid-ingest: index the same files again to "
                   "finish them.")
    if stats["warning"]:
        st.warning(stats["warning"])
    st.page_link("pages/corpus.py", label="Browse and search the corpus", icon="📚")
except Exception as e:
    ui_cache.show_error(e)
