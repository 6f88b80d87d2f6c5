"""Corpus: stats, paged browse of documents and chunks, semantic search, and the ingest form."""

from pathlib import Path

import pandas as pd
import streamlit as st

from core import ui_cache
from core.errors import GroundworkError
from core.loaders import SUPPORTED_EXTENSIONS, safe_upload_name
from core.retrieval import found_by_label
from core.retrieval import search as hybrid_search
from core.access import confine_path
from core.lexical import query_terms
from core.readable import readable_html
from core.review import escape_markdown

PAGE_SIZE = 25

st.title("Corpus")
try:
    wb = ui_cache.workbench()
    corpus = wb.corpus
    stats = corpus.stats()
except Exception as e:
    ui_cache.show_error(e)
    st.stop()

stats_area = st.empty()  # redrawn after an ingest, so the numbers at the top match what was just added


def show_stats(stats: dict) -> None:
    with stats_area.container():
        cols = st.columns([1, 1, 1.2, 1])
        cols[0].metric("Documents", f"{stats['documents']:,}")
        cols[1].metric("Chunks", f"{stats['chunks']:,}")
        cols[2].metric("Characters", f"{stats['chars']:,}")
        cols[3].metric("Store", stats["engine"], help=stats["location"])
        size = f" · {stats['store_mb']:,} MB on disk" if stats["store_mb"] is not None else ""
        # The model name is long: a caption wraps where a metric would cut it off.
        st.caption(f"Embedding model `{stats['embedding_model']}` · {stats['engine_note']}{size} · "
                   f"`{stats['location']}`")


show_stats(stats)
SEARCH_MODES = {"exact": "exact full scan (float32)", "scan": "int8 full scan, top results rescored in float32",
                "hnsw": "HNSW graph (approximate, tuned for recall ≥ 0.99)"}


def show_index_status(status: dict | None) -> None:
    """The Edge store's search index: how searches run now, and a build's progress while one runs."""
    if status is None:
        return
    mode = SEARCH_MODES.get(status["search"], status["search"])
    if status["state"] == "building":
        share = min(status["elapsed_s"] / max(status["estimate_s"], 0.1), 0.99)
        st.progress(share, text=f"Building the search index over {status['points']:,} chunks: "
                                f"{status['elapsed_s']:.0f} s of ~{status['estimate_s']:.0f} s (estimate). "
                                f"Searches keep working meanwhile ({mode}).")
    elif status["state"] == "pending":
        st.caption(f"Search index: a build is due (it starts when writes settle); searches run as {mode}.")
    else:
        st.caption(f"Search index: ready · {status['points']:,} chunks · {mode}.")


def read_index_status() -> dict | None:
    try:
        return corpus.index_status()
    except Exception as e:  # the store is held by another process: say so, keep the page
        st.caption(f"Search index: unavailable right now ({e if isinstance(e, GroundworkError) else type(e).__name__})")
        return None


@st.fragment(run_every=2.0)
def follow_index_build() -> None:
    """Polls only while the build runs: reading the status opens the store, and an open store locks out
    CLI runs. Once it is done the fragment shows the last status without touching the store (a whole-page
    rerun instead would wipe the report of the ingest that started the build)."""
    status = st.session_state.get("corpus.index_status")
    if status is None or status["state"] == "building":
        status = st.session_state["corpus.index_status"] = read_index_status()
    show_index_status(status)


# One container whatever it holds: the elements after it (the tabs) keep their place in the page, or the
# browser would take them for new ones and jump back to the first tab.
with st.container():
    if stats["engine"] == "edge":
        index = st.session_state["corpus.index_status"] = read_index_status()
        if index and index["state"] == "building":
            follow_index_build()
        else:
            show_index_status(index)
if stats["warning"]:
    st.warning(stats["warning"])
if stats["pending"]:
    st.warning(f"{stats['pending']} documents were interrupted mid-ingest: ingest the same files again to finish.")

browse, search, ingest = st.tabs(["Browse", "Search", "Ingest"])


def _progress_bar():
    bar = st.progress(0.0, text="starting")

    def show(stage: str, done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{stage}: {done:,}/{total:,}")

    return show


def _show_report(report) -> None:
    show_stats(corpus.stats())
    st.success(report.summary())
    for line in report.problems:
        st.warning(line)
    for line in report.duplicates:
        st.info(line)
    if report.skipped:
        st.caption(f"Skipped (unsupported type): {', '.join(report.skipped[:20])}")


with browse:
    text_filter = st.text_input("Filter documents (full text)", key="corpus.filter")
    page = st.number_input("Page", min_value=1, value=1, step=1, key="corpus.page")
    docs = corpus.documents(limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, search=text_filter)
    if not docs:
        st.info("No documents here. Ingest files in the Ingest tab." if not text_filter else "No match.")
    else:
        frame = pd.DataFrame(docs)
        event = st.dataframe(frame[["title", "source_path", "n_chars", "n_chunks", "status"]],
                             hide_index=True, on_select="rerun", selection_mode="single-row",
                             key="corpus.table", width="stretch")
        rows = event.selection.rows if event else []
        if rows:
            doc = corpus.document(docs[rows[0]]["id"])
            st.subheader(escape_markdown(doc["title"]))  # corpus text: inert, no links or images
            st.caption(f"{doc['source_path']} · {doc['n_chars']:,} characters · {doc['n_chunks']} chunks · "
                       f"id {doc['id']}")
            if doc["metadata"]:
                st.json(doc["metadata"], expanded=False)
            full, chunked = st.tabs(["Full text", "Chunks"])
            with full:
                with st.container(height=520):
                    st.html(readable_html(doc["text"], query_terms(text_filter) if text_filter else []))
            with chunked:
                for c in corpus.chunks(doc["id"]):
                    with st.expander(f"#{c['position']} · characters {c['start_char']}–{c['end_char']}"
                                     + (" · longer than the model reads" if c["truncated"] else "")):
                        st.text(c["text"])

with search:
    query = st.text_input("Question or keywords", key="corpus.query")
    k = st.slider("Passages", 1, 20, 5, key="corpus.k")
    if query.strip():
        try:
            passages = hybrid_search(corpus, query, k=k)
        except Exception as e:
            ui_cache.show_error(e)
            passages = []
        terms = query_terms(query)
        for p in passages:
            with st.container(border=True):
                st.markdown(f"**{p.score:.3f}** · {escape_markdown(p.title)} · `{p.source_path}` · chunk {p.position}"
                            f" · found by {found_by_label(p.ranks)}")
                st.html(readable_html(p.text, terms))  # matched terms marked; corpus text stays inert

with ingest:
    st.caption(f"Supported: {' '.join(sorted(SUPPORTED_EXTENSIONS))}. Re-ingesting the same files adds nothing; "
               "an interrupted ingest is finished by running it again.")
    text_field = st.text_input("Text field for JSONL/CSV rows", value=wb.settings.content_key,
                               key="corpus.text_field")
    folder = st.text_input("Folder or file on the server", value="sample_data/corpus", key="corpus.folder")
    if st.button("Ingest folder", key="corpus.ingest_folder", icon=":material/upload_file:"):
        try:
            # A path typed in the browser: only under the data dir, sample_data/ or GROUNDWORK_ALLOWED_ROOTS.
            path = confine_path(folder, wb.settings, "ingest folder")
            _show_report(corpus.ingest_path(path, text_field=text_field, progress=_progress_bar()))
        except Exception as e:
            ui_cache.show_error(e)
    uploads = st.file_uploader("Or upload files", accept_multiple_files=True, key="corpus.uploads")
    if uploads and st.button("Ingest uploads", key="corpus.ingest_uploads", icon=":material/upload:"):
        target = wb.settings.uploads_path
        target.mkdir(parents=True, exist_ok=True)
        for f in uploads:
            dest = target / safe_upload_name(f.name)
            dest.write_bytes(f.getvalue())
            try:
                _show_report(corpus.ingest_path(dest, text_field=text_field, progress=_progress_bar()))
            except Exception as e:
                ui_cache.show_error(e)
