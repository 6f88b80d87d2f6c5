"""Corpus: stats, paged browse of documents and chunks (filter by folder and tag; tag and delete documents),
semantic search, and the ingest form."""

from pathlib import Path

import pandas as pd
import streamlit as st

from core import ui_cache
from core.corpus.documents import (count_documents, delete_documents, folders, list_documents, plural, tag_counts,
                            tag_documents, untag_documents)
from core.errors import GroundworkError
from core.corpus.loaders import SUPPORTED_EXTENSIONS, safe_upload_name
from core.generation.retrieval import found_by_label
from core.generation.retrieval import search as hybrid_search
from core.access import confine_path
from core.corpus.lexical import query_terms
from core.corpus.readable import readable_html
from core.review.store import escape_markdown

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
        st.caption(f"Search index: ready · {plural(status['points'], 'chunk')} · {mode}.")


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


# One element whatever it holds: the elements after it (the tabs) keep their place in the page, or the
# browser would take them for new ones and jump back to the first tab.
index_area = st.empty()


def draw_index_status(after_change: bool = False) -> None:
    """The index caption; drawn again after an ingest or a delete so its count matches the stats above."""
    if stats["engine"] != "edge":
        return
    with index_area.container():
        index = st.session_state["corpus.index_status"] = read_index_status()
        if index and index["state"] == "building" and not after_change:
            follow_index_build()
        else:
            show_index_status(index)


draw_index_status()
if stats["warning"]:
    st.warning(stats["warning"])
if stats["pending"]:
    st.warning(f"{plural(stats['pending'], 'document')} interrupted mid-ingest: ingest the same files again to finish.")

browse, search, ingest = st.tabs(["Browse", "Search", "Ingest"])


def _progress_bar():
    bar = st.progress(0.0, text="starting")

    def show(stage: str, done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{stage}: {done:,}/{total:,}")

    return show


def _show_report(report) -> None:
    show_stats(corpus.stats())
    draw_index_status(after_change=True)
    st.success(report.summary())
    for line in report.problems:
        st.warning(line)
    for line in report.duplicates:
        st.info(line)
    if report.skipped:
        st.caption(f"Skipped (unsupported type): {', '.join(report.skipped[:20])}")


DELETE_KEY = "corpus.delete_pending"  # the documents a Delete click asked about, until confirmed or dismissed


# Opened from state, not from the click's return value: any rerun while it is open (a field committing its
# value, a poll) draws it again instead of closing it.
@st.dialog("Delete documents?", on_dismiss=lambda: st.session_state.pop(DELETE_KEY, None))
def confirm_delete(ids: list[str], titles: list[str]) -> None:
    n = len(ids)
    st.write(f"Delete **{plural(n, 'document')}** from the corpus: their chunks leave the search index and the "
             "full-text index. Conversations keep the passages they quoted. This cannot be undone.")
    st.caption("; ".join(escape_markdown(t) for t in titles[:8]) + (" …" if n > 8 else ""))
    with st.container(horizontal=True):
        if st.button(f"Delete {plural(n, 'document')}", type="primary", key="corpus.delete_confirm"):
            try:
                done = delete_documents(corpus, ids)
                st.session_state["corpus.flash"] = (f"Deleted {plural(done['documents'], 'document')} "
                                                    f"({plural(done['chunks'], 'chunk')}).")
            except Exception as e:
                st.session_state["corpus.flash_error"] = str(e)
            st.session_state.pop("corpus.table", None)
            st.session_state.pop(DELETE_KEY, None)
            st.rerun()
        if st.button("Cancel", key="corpus.delete_cancel"):
            st.session_state.pop(DELETE_KEY, None)
            st.rerun()


with browse:
    if flash := st.session_state.pop("corpus.flash", None):
        st.success(flash)
    if flash := st.session_state.pop("corpus.flash_error", None):
        st.error(flash)
    c1, c2, c3 = st.columns([2, 1.2, 1])
    text_filter = c1.text_input("Filter documents (full text)", key="corpus.filter")
    folder_filter = c2.selectbox("Folder", [""] + [f"{f}/" for f in folders(corpus)], key="corpus.folder_filter",
                                 format_func=lambda f: f or "all folders")
    tags_known = tag_counts(corpus)
    tag_filter = c3.selectbox("Tag", [""] + list(tags_known), key="corpus.tag_filter",
                              format_func=lambda t: f"{t} ({tags_known[t]})" if t else "any tag")
    matching = count_documents(corpus, folder=folder_filter.rstrip("/"), tag=tag_filter)
    pages = max(1, -(-matching // PAGE_SIZE))
    # Pages of the folder and tag filter; a word filter ranks by relevance and is not counted ahead.
    page = st.number_input("Page" if text_filter.strip() else f"Page (of {pages})", min_value=1, value=1, step=1,
                           key="corpus.page")
    docs = list_documents(corpus, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, search=text_filter,
                          folder=folder_filter.rstrip("/"), tag=tag_filter)
    if not docs:
        st.info("No documents here. Ingest files in the Ingest tab."
                if not (text_filter or folder_filter or tag_filter) else "No match.")
    else:
        frame = pd.DataFrame(docs).fillna({"tags": ""})
        event = st.dataframe(frame[["title", "source_path", "tags", "n_chars", "n_chunks", "status"]],
                             hide_index=True, on_select="rerun", selection_mode="multi-row",
                             key="corpus.table", width="stretch")
        rows = [r for r in (event.selection.rows if event else []) if r < len(docs)]
        chosen = [docs[r]["id"] for r in rows]
        # Acting on rows: tick them in the table (or take the whole filtered list), then tag or delete.
        with st.container(border=True):
            # One label whatever the filter: a label that changes would make a new widget and drop the tick.
            take_all = st.checkbox("Act on every document this filter lists", key="corpus.act_all",
                                   help="folder and tag filters: every matching document, all pages; a word filter: "
                                        "the documents listed on this page")
            if take_all:
                chosen = ([d["id"] for d in docs] if text_filter else
                          [d["id"] for d in list_documents(corpus, limit=matching or 1, folder=folder_filter.rstrip("/"),
                                                           tag=tag_filter)])
            st.caption(f"{plural(len(chosen), 'document')} chosen" + ("" if chosen else
                       ": tick rows in the table above (the box left of each row)"))
            c1, c2, c3, c4 = st.columns([2, 1, 1, 1], vertical_alignment="bottom")
            tag_text = c1.text_input("Tag to add or remove", key="corpus.tag_text", placeholder="e.g. contracts")
            if c2.button("Add tag", key="corpus.tag_add", icon=":material/sell:", disabled=not chosen):
                try:
                    added = tag_documents(corpus, chosen, tag_text)
                    st.session_state["corpus.flash"] = f"Tagged {plural(added, 'document')} “{tag_text.strip()}”."
                    st.rerun()
                except Exception as e:
                    ui_cache.show_error(e)
            if c3.button("Remove tag", key="corpus.tag_remove", icon=":material/label_off:", disabled=not chosen):
                removed = untag_documents(corpus, chosen, " ".join(tag_text.split()))
                st.session_state["corpus.flash"] = f"Removed “{tag_text.strip()}” from {plural(removed, 'document')}."
                st.rerun()
            if c4.button("Delete", key="corpus.delete", icon=":material/delete:", disabled=not chosen):
                names = {d["id"]: d["title"] for d in docs}
                st.session_state[DELETE_KEY] = (chosen, [names.get(i, i) for i in chosen])
    if st.session_state.get(DELETE_KEY):
        confirm_delete(*st.session_state[DELETE_KEY])
        if len(rows) == 1:
            doc = corpus.document(docs[rows[0]]["id"])
            st.subheader(escape_markdown(doc["title"]))  # corpus text: inert, no links or images
            st.caption(f"{doc['source_path']} · {doc['n_chars']:,} characters · {plural(doc['n_chunks'], 'chunk')}"
                       f" · id {doc['id']}")
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
