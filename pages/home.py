"""Home: the pipeline with live counts, the latest run, a one-click demo batch, and the example set."""

from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from core import ui_cache
from core.analytics import STAGES, conversations_by_status, latest_run, pipeline_counts
from core.run_config import RunConfig
from core.examples import EXAMPLES_FILE, load_example_workspace
from core.providers.registry import provider_info

SMALL_MODEL_NOTE = (
    "What the offline model can do: write short, readable questions and answers that reuse the passages' "
    "words — enough to see the pipeline, the review and the export work end to end. What it cannot do: reason "
    "across passages, stay accurate over several turns, or refuse well when the passages do not answer; its "
    "replies are checked and retried, and expect many to be flagged in Review. For a dataset you would train "
    "on, choose Gemini or an OpenAI-compatible server on the Settings page.")
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data" / "corpus"
DEMO_RUN_KEY = "home.demo_run_id"
# Neutral for "new" (nothing is wrong with it yet); green and red only for a reviewer's decision.
STATUS_COLOURS = {"new": "#8a94a6", "approved": "#2e9e5b", "discarded": "#c8553d"}

st.title("Groundwork")
st.caption("Turn a document corpus into grounded, multi-turn SFT conversations — then review and export them.")


def progress_bar():
    bar = st.progress(0.0, text="reading files")

    def show(stage: str, done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{stage}: {done}/{total}")

    return show


try:
    wb = ui_cache.workbench()
    stats = wb.corpus.stats()
    if (stats["documents"] == 0 and wb.settings.auto_index_sample and SAMPLE_DIR.is_dir()
            and not st.session_state.get("home.sample_failed")):
        st.info("First open: indexing the fictional case-law sample corpus in `sample_data/corpus` …")
        try:
            report = wb.corpus.ingest_path(SAMPLE_DIR, progress=progress_bar())
            st.success(f"Sample corpus ready: {report.summary()}")
        except Exception as e:
            st.session_state["home.sample_failed"] = True
            ui_cache.show_error(e)
        stats = wb.corpus.stats()
except Exception as e:
    ui_cache.show_error(e)
    st.stop()

if stats["pending"]:
    st.warning(f"{stats['pending']} documents were interrupted mid-ingest: index the same files again to finish them.")
if stats["warning"]:
    st.warning(stats["warning"])

st.subheader("Pipeline")
counts = pipeline_counts(wb.db, wb.corpus.collection, wb.settings.exports_path)
with st.container(horizontal=True, gap="medium"):  # wraps at narrow widths instead of cutting labels
    for stage in STAGES:
        with st.container(width="content"):
            st.metric(f"{stage.capitalize()} →" if stage != STAGES[-1] else stage.capitalize(),
                      f"{counts[stage]['value']:,}", help=counts[stage]["detail"], width="content")
            st.caption(counts[stage]["detail"])

left, right = st.columns(2)
with left:
    by_status = conversations_by_status(wb.db)
    if by_status:
        fig = px.bar(pd.DataFrame(by_status), x="status", y="conversations", color="status",
                     title="Conversations by review status", color_discrete_map=STATUS_COLOURS, text_auto=True)
        fig.update_layout(showlegend=False, height=300, margin=dict(t=40, b=10))
        st.plotly_chart(fig, width="stretch")
    else:
        st.caption("No conversations yet: run the demo batch, or load the example set.")
with right:
    run = latest_run(wb.db)
    st.markdown("**Latest run**")
    if run:
        st.progress(min(run["saved"] / max(run["num_dialogs"], 1), 1.0),
                    text=f"{run['id']} · {run['status']} · {run['saved']}/{run['num_dialogs']} · "
                         f"{run['provider']} {run['model']}")
        if run["reason"]:
            st.caption(run["reason"])
    else:
        st.caption("No generation run yet.")

st.subheader("See it work")
factory, settings = ui_cache.provider_factory()
info = provider_info(settings, api_key=ui_cache.session_api_key())
demo_col, example_col = st.columns(2)
with demo_col:
    local = info.name == "local"
    st.markdown(f"**Demo batch** — 3 short conversations on the current corpus with **{info.name}** `{info.model}`"
                + (" (the offline model: about a minute per conversation on a laptop CPU)" if local else "") + ".")
    st.caption(SMALL_MODEL_NOTE)
    if st.button("Run a demo batch", type="primary", key="home.demo", disabled=stats["chunks"] == 0,
                 icon=":material/play_arrow:"):
        config = RunConfig(num_dialogs=3, max_turns=2, max_concurrency=1 if local else 4,
                           max_tokens=300 if local else 1024)
        try:
            st.session_state[DEMO_RUN_KEY] = ui_cache.jobs().start(config, factory, settings=settings)
            st.session_state.pop("home.demo_seen", None)
        except Exception as e:
            ui_cache.show_error(e)

    def demo_progress() -> None:
        run_id = st.session_state.get(DEMO_RUN_KEY)
        if not run_id:
            return
        job = ui_cache.jobs().get(run_id)
        progress = ui_cache.jobs().progress(run_id)
        if progress is None:
            return
        # Each saved conversation and the end of the run redraw the whole page: the pipeline counts and
        # the latest run above must agree with this bar.
        seen = (progress.status, progress.saved, bool(job and job.alive))
        if st.session_state.get("home.demo_seen") not in (None, seen):
            st.session_state["home.demo_seen"] = seen
            st.rerun()
        st.session_state["home.demo_seen"] = seen
        st.progress(progress.fraction, text=f"demo {run_id}: {progress.saved}/{progress.target} · {progress.status}")
        if job and job.alive:
            return
        if progress.status == "completed":
            st.success("Demo done: open the Review page to read the conversations.")
        elif progress.reason:
            st.warning(progress.reason)
        if progress.saved and st.button("Open in Review", key="home.open_review", icon=":material/rate_review:"):
            ui_cache.open_run_in_review(run_id)
            st.switch_page("pages/review.py")

    demo_job = ui_cache.jobs().get(st.session_state[DEMO_RUN_KEY]) if st.session_state.get(DEMO_RUN_KEY) else None
    ui_cache.draw_polled(demo_progress, active=bool(demo_job and demo_job.alive))  # live while the demo runs
with example_col:
    st.markdown("**Example set** — reviewed conversations over the sample corpus, written for the project, "
                "loaded into a separate data dir so your own data is untouched.")
    if st.session_state.get("app.data_dir"):
        st.caption("You are viewing the example set (see the sidebar to go back).")
    elif EXAMPLES_FILE.exists() and st.button("Load the example set", key="home.examples",
                                              icon=":material/library_books:"):
        try:
            target, added = load_example_workspace(ui_cache.main_data_dir(), ui_cache.workbench, SAMPLE_DIR,
                                                   progress=progress_bar())
            st.session_state["app.data_dir"] = str(target)
            st.rerun()
        except Exception as e:
            ui_cache.show_error(e)
