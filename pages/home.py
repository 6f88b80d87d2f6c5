"""Home: the pipeline with live counts, the latest run, the meeting demo, a demo batch, and the example set."""

import time
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from core import ui_cache
from core.review.analytics import STAGES, conversations_by_status, pipeline_counts
from core.corpus.documents import plural
from core.generation.engine import list_runs
from core.generation.run_config import RunConfig
from core.examples import EXAMPLES_FILE, OFFLINE_LIMITS, demo_config, load_example_workspace
from core.providers.registry import provider_info

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data" / "corpus"
DEMO_RUN_KEY = "home.demo_run_id"
DEMO_STARTED = "home.demo_started"  # monotonic time the whole demo (load + live conversation) was started
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
    # The sample corpus enters the user's own data dir only when asked (a button below, `groundwork index
    # --sample`), or when GROUNDWORK_AUTO_INDEX_SAMPLE=1 says so for every empty data dir.
    asked = st.session_state.pop("home.index_sample_now", False)
    if (stats["documents"] == 0 and SAMPLE_DIR.is_dir() and not st.session_state.get("home.sample_failed")
            and (asked or wb.settings.auto_index_sample)):
        st.info("Indexing the fictional case-law sample corpus in `sample_data/corpus` into this data dir …")
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

if stats["documents"] == 0 and not st.session_state.get("app.data_dir"):
    with st.container(border=True):
        st.markdown("**Your data dir holds no documents yet.** Add yours on the Corpus page (a folder on the "
                    "server, or uploads). To look around first, start the demo below: it runs in a demo data "
                    "dir of its own, so your data dir stays yours. The fictional sample corpus enters this data "
                    "dir only if you ask:")
        st.button("Index the sample corpus into my data dir", key="home.index_sample",
                  icon=":material/library_add:", on_click=lambda: st.session_state.update(
                      {"home.index_sample_now": True}))

if stats["pending"]:
    st.warning(f"{plural(stats['pending'], 'document')} interrupted mid-ingest: index the same files again to "
               "finish them.")
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
    def latest_run_panel() -> None:
        """The newest generation run, kept current while it runs (from this app or a CLI on the same data dir)."""
        run = next((r for r in list_runs(wb.db) if r["kind"] == "generate"), None)
        st.markdown("**Latest run**")
        if not run:
            st.caption("No generation run yet.")
            return
        seen = (run["id"], run["status"], run["saved"])
        # The counts and the chart beside it come from the same rows: redraw the page when the run moves.
        if st.session_state.get("home.latest_seen") not in (None, seen):
            st.session_state["home.latest_seen"] = seen
            st.rerun()
        st.session_state["home.latest_seen"] = seen
        st.progress(min(run["saved"] / max(run["num_dialogs"], 1), 1.0),
                    text=f"{run['id']} · {run['status']} · {run['saved']}/{run['num_dialogs']} · "
                         f"{run['provider']} {run['model']}")
        if run["reason"]:
            st.caption(run["reason"])

    newest = next((r for r in list_runs(wb.db, limit=5) if r["kind"] == "generate"), None)
    ui_cache.draw_polled(latest_run_panel, active=bool(newest and newest["status"] in ("running", "pending")))

st.subheader("See it work")
factory, settings = ui_cache.provider_factory()
info = provider_info(settings, api_key=ui_cache.session_api_key())
local = info.name == "local"
manager = ui_cache.jobs()


def start_demo() -> None:
    """The meeting demo: the demo data dir (sample corpus + example set), then one conversation generated live."""
    st.session_state[DEMO_STARTED] = time.monotonic()
    target, _ = load_example_workspace(ui_cache.main_data_dir(), ui_cache.workbench, SAMPLE_DIR,
                                       progress=progress_bar())
    st.session_state["app.data_dir"] = str(target)  # this session now works in the demo data dir
    demo_factory, demo_settings = ui_cache.provider_factory()
    demo_local = provider_info(demo_settings, api_key=ui_cache.session_api_key()).name == "local"
    st.session_state[DEMO_RUN_KEY] = ui_cache.jobs().start(demo_config(demo_local), demo_factory,
                                                           settings=demo_settings)
    st.session_state.pop("home.demo_seen", None)
    st.rerun()


def demo_progress() -> None:
    """The demo's (or demo batch's) run: live progress, Cancel, and where to look when it is done."""
    run_id = st.session_state.get(DEMO_RUN_KEY)
    if not run_id:
        return
    job = manager.get(run_id)
    progress = manager.progress(run_id)
    if progress is None:
        return
    # Each saved conversation and the end of the run redraw the whole page: the pipeline counts and
    # the latest run above must agree with this bar.
    seen = (progress.status, progress.saved, bool(job and job.alive))
    if st.session_state.get("home.demo_seen") not in (None, seen):
        st.session_state["home.demo_seen"] = seen
        st.rerun()
    st.session_state["home.demo_seen"] = seen
    m = progress.metrics
    tokens = m["prompt_tokens"] + m["completion_tokens"] + m["thinking_tokens"]
    started = st.session_state.get(DEMO_STARTED)
    elapsed = f" · {time.monotonic() - started:.0f} s since the demo started" if started else ""
    # One conversation shows no movement in saved/target: the calls and tokens do.
    st.progress(progress.fraction, text=f"demo {run_id}: {progress.saved}/{progress.target} conversations · "
                                        f"{m['calls']} LLM calls · {tokens:,} tokens · {progress.status}{elapsed}")
    if job and job.running:
        if job.cancel_requested:
            st.info("Cancelling: the call in flight finishes, everything completed is kept.",
                    icon=":material/hourglass_top:")
        else:
            st.button("Cancel the demo run", key="home.demo_cancel", icon=":material/stop_circle:",
                      on_click=manager.cancel, args=(run_id,))
        return
    if job and job.alive:
        st.caption("Checking the grounding of what was saved (offline) …")
        return
    if started:  # the demo's whole time, from the click to the live run's end (README reports it)
        st.session_state["home.demo_seconds"] = time.monotonic() - started
        del st.session_state[DEMO_STARTED]
    took = st.session_state.get("home.demo_seconds")
    if progress.status == "completed":
        st.success("Demo done" + (f" in {took:.0f} s" if took else "") + ": open the Review page to read the "
                   "conversations (the example set's reviewed ones and the new one), then Export and Dashboard.")
    elif progress.reason:
        st.warning(f"Demo run stopped: {progress.reason}")
    if progress.saved and st.button("Open in Review", key="home.open_review", icon=":material/rate_review:"):
        ui_cache.open_run_in_review(run_id)
        st.switch_page("pages/review.py")


demo_job = manager.get(st.session_state[DEMO_RUN_KEY]) if st.session_state.get(DEMO_RUN_KEY) else None
with st.container(border=True):
    st.markdown(f"**The demo** — the whole pipeline in about 3 minutes, no key needed: the sample corpus indexed "
                f"into a demo data dir of its own (your data dir is untouched), the example set of reviewed "
                f"conversations, and one conversation generated live with **{info.name}** `{info.model}` — "
                "progress here and on Generate, cancellable on both. Then Review, Export and the Dashboard.")
    st.caption(OFFLINE_LIMITS)
    if EXAMPLES_FILE.exists() and SAMPLE_DIR.is_dir() and st.button(
            "Start the demo", type="primary", key="home.start_demo", icon=":material/play_arrow:",
            disabled=bool(demo_job and demo_job.running)):
        try:
            start_demo()
        except Exception as e:
            ui_cache.show_error(e)
    ui_cache.draw_polled(demo_progress, active=bool(demo_job and demo_job.alive))  # live while the demo runs

demo_col, example_col = st.columns(2)
with demo_col:
    st.markdown(f"**Demo batch** — 3 short conversations on the current corpus with **{info.name}** `{info.model}`"
                + (" (the offline model: a few minutes per conversation on a busy CPU; cancel here or on "
                   "Generate)" if local else "") + ".")
    if st.button("Run a demo batch", key="home.demo", icon=":material/play_arrow:",
                 disabled=stats["chunks"] == 0 or bool(demo_job and demo_job.running)):
        config = RunConfig(num_dialogs=3, max_turns=2, max_concurrency=1 if local else 4,
                           max_tokens=160 if local else 1024, reply_retries=1 if local else 2)
        try:
            st.session_state[DEMO_RUN_KEY] = manager.start(config, factory, settings=settings)
            st.session_state.pop("home.demo_seen", None)
            st.session_state.pop(DEMO_STARTED, None)
            st.session_state.pop("home.demo_seconds", None)
            st.rerun()  # the panel above follows the new run
        except Exception as e:
            ui_cache.show_error(e)
with example_col:
    st.markdown("**Example set** — reviewed conversations over the sample corpus, written for the project, "
                "in the demo data dir so your own data is untouched.")
    if st.session_state.get("app.data_dir"):
        st.caption("You are in the demo data dir (see the sidebar to go back).")
    elif EXAMPLES_FILE.exists() and st.button("Load the example set", key="home.examples",
                                              icon=":material/library_books:"):
        try:
            target, added = load_example_workspace(ui_cache.main_data_dir(), ui_cache.workbench, SAMPLE_DIR,
                                                   progress=progress_bar())
            st.session_state["app.data_dir"] = str(target)
            st.rerun()
        except Exception as e:
            ui_cache.show_error(e)
