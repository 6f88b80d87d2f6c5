"""Generate: configure a batch, start it in the background, watch it live, cancel or resume runs."""

import pandas as pd
import streamlit as st

from core import ui_cache
from core.generation.cost import estimate_run, parse_prices
from core.corpus.documents import folders, list_documents, selection_summary, tag_counts
from core.generation.engine import list_runs, run_errors
from core.generation.jobs import eta_text
from core.generation.run_config import QuestionMix, RunConfig
from core.quality.judge import judge_available
from core.generation.prompts import KINDS, PromptLibrary
from core.providers.registry import provider_info

st.title("Generate")
try:
    wb = ui_cache.workbench()
    manager = ui_cache.jobs()
    factory, settings = ui_cache.provider_factory()
    info = provider_info(settings, api_key=ui_cache.session_api_key())
except Exception as e:
    ui_cache.show_error(e)
    st.stop()

st.caption(f"Provider **{info.name}** · model `{info.model}` — change it on the Settings page.")
if info.note:
    st.info(info.note)
if wb.corpus.stats()["chunks"] == 0:
    st.warning("The corpus is empty: index documents on the Corpus page first.")

library = PromptLibrary(wb.db)
library.ensure_defaults()


def _selectable() -> list[str]:
    """Folders first (each selects everything under it), then every document's source path."""
    return [f"{f}/" for f in folders(wb.corpus)] + [d["source_path"] for d in list_documents(wb.corpus, limit=5000)]


with st.container(border=True):
    c1, c2, c3, c4 = st.columns(4)
    num_dialogs = c1.number_input("Conversations", 1, 100_000, 5, **ui_cache.remembered("generate.num_dialogs"))
    max_turns = c2.number_input("Max turns", 1, 20, 3, **ui_cache.remembered("generate.max_turns"),
                                help="each conversation gets 1..max turns, uniformly")
    concurrency = c3.number_input("Concurrency", 1, 64, 1 if info.name == "local" else 8,
                                  **ui_cache.remembered("generate.concurrency"),
                                  help="LLM calls in flight at most; fewer when the provider answers 429")
    per_sample = c4.number_input("Questions per briefing", 1, 10, 3, **ui_cache.remembered("generate.per_sample"))
    c1, c2, c3, c4 = st.columns(4)
    temperature = c1.slider("Temperature", 0.0, 1.5, 0.7, 0.05, **ui_cache.remembered("generate.temperature"))
    top_k = c2.number_input("Passages per turn (top-k)", 1, 20, 3, **ui_cache.remembered("generate.top_k"))
    max_tokens = c3.number_input("Max tokens per reply", 64, 8192, 400 if info.name == "local" else 1024,
                                 **ui_cache.remembered("generate.max_tokens"))
    seed = c4.number_input("Seed", 0, 2**31 - 1, 0, **ui_cache.remembered("generate.seed"))
    c1, c2, c3 = st.columns(3)
    retrieval = c1.selectbox("Answer context", ["rag", "briefing"], **ui_cache.remembered("generate.retrieval"),
                             format_func=lambda v: {"rag": "retrieve for every turn",
                                                    "briefing": "the sampled briefing"}[v])
    unanswerable = c2.slider("Share of unanswerable questions", 0.0, 0.5, 0.1, 0.05,
                             **ui_cache.remembered("generate.unanswerable"))
    token_budget = c3.number_input("Token budget (0: none)", 0, 10**9, 0, step=10_000,
                                   **ui_cache.remembered("generate.budget"))
    # Which documents briefings come from: all, or a selection by folder, document and tag (Corpus page).
    c1, c2 = st.columns(2)
    selectable, known_tags = _selectable(), list(tag_counts(wb.corpus))
    for key, options in (("generate.documents", selectable), ("generate.tags", known_tags)):
        ui_cache.remember(key)  # a remembered name since deleted would make the widget fail: drop it
        if isinstance(st.session_state.get(key), list):
            st.session_state[key] = [v for v in st.session_state[key] if v in options]
    chosen_names = c1.multiselect("Briefings only from (folders or documents)", selectable,
                                  **ui_cache.remembered("generate.documents"),
                                  help="empty: every indexed document; a folder selects everything under it")
    chosen_tags = c2.multiselect("… or documents tagged", known_tags,
                                 **ui_cache.remembered("generate.tags"),
                                 help="tag documents on the Corpus page; a document matching either side is used")
    try:
        st.caption(selection_summary(wb.db, wb.corpus.collection, chosen_names, chosen_tags))
    except Exception as e:
        ui_cache.show_error(e)
    versions = {}
    cols = st.columns(3)
    for col, kind in zip(cols, KINDS):
        history = library.history(kind)
        versions[kind] = col.selectbox(f"{kind.capitalize()} prompt", [h["id"] for h in history],
                                       format_func=lambda i, h=history: next(
                                           f"v{r['version']} · {r['name']}" for r in h if r["id"] == i),
                                       **ui_cache.remembered(f"generate.version.{kind}",
                                                             [h["id"] for h in history]))
    judge_ok, judge_reason = judge_available(info.name)
    auto_improve = st.checkbox("Auto-improve with an LLM judge", **ui_cache.remembered("generate.auto_improve"),
                               disabled=not judge_ok, help=judge_reason or "judge each conversation; regenerate "
                               "with the judge's feedback when below the threshold (extra calls)")
    c1, c2 = st.columns(2)
    attempts = c1.number_input("Attempts per conversation", 1, 5, 2, **ui_cache.remembered("generate.attempts"),
                               disabled=not auto_improve)
    threshold = c2.slider("Judge threshold", 1.0, 5.0, 3.5, 0.25, **ui_cache.remembered("generate.threshold"),
                          disabled=not auto_improve)
    verify = st.checkbox("Verify grounding with the LLM", **ui_cache.remembered("generate.verify"),
                         disabled=not judge_ok,
                         help=judge_reason or "one extra call per answer: each sentence's verdict with a quote from "
                         "its passages, checked to be really there; shown on the Review page (in the estimate below)")
    if not judge_ok:
        st.caption(f"Judge off: {judge_reason}")
    large = st.checkbox("Large run (Gemini Batch API)", key="generate.batch", disabled=info.name != "gemini",
                        help="each round of calls goes to Gemini as one batch job: half the price, Google's own "
                        "higher limits, but minutes to hours per round; for thousands of conversations. "
                        "Not with the judge or the LLM verifier." if info.name == "gemini" else
                        "needs Gemini: the Batch API is Gemini's")
    config = RunConfig(num_dialogs=int(num_dialogs), max_turns=int(max_turns), max_concurrency=int(concurrency),
                       temperature=float(temperature), top_k=int(top_k), max_tokens=int(max_tokens),
                       instructions_per_sample=int(per_sample), seed=int(seed), retrieval=retrieval,
                       token_budget=int(token_budget), prompt_versions=versions,
                       auto_improve=bool(auto_improve and judge_ok), max_improve_attempts=int(attempts),
                       judge_threshold=float(threshold), verify_grounding=bool(verify and judge_ok),
                       batch=bool(large and info.name == "gemini"),
                       documents=list(chosen_names), tags=list(chosen_tags),
                       question_mix=QuestionMix(unanswerable_share=float(unanswerable)))
    try:
        texts = {kind: library.get(vid)["text"] for kind, vid in versions.items()}
        estimate = estimate_run(wb.db, config, info.model, texts, settings.chunk_size,
                                parse_prices(settings.prices), provider=info.name)
        cost = "free (runs on this machine)" if info.name == "local" else (
            f"≈ ${estimate.cost_usd:,.2f}" if estimate.cost_usd is not None else "no price known for this model "
            "(set GROUNDWORK_PRICES)")
        st.caption(f"Estimate: ≈ {estimate.calls:,.0f} LLM calls, ≈ {estimate.total_tokens:,.0f} tokens, {cost} — "
                   f"from {estimate.basis}.")
    except Exception as e:
        ui_cache.show_error(e)
    submitted = st.button("Start", type="primary", key="generate.start", icon=":material/play_arrow:")

if submitted:
    try:
        st.session_state["generate.run_id"] = manager.start(config, factory, settings=settings)
    except Exception as e:
        ui_cache.show_error(e)


# A run started elsewhere in this app (Home's demo, another tab) is shown here too, with its Cancel button.
# This session's own run keeps the panel while it generates; once it has stopped (its grounding checks may
# still run), a run generating elsewhere takes the panel.
_mine = manager.get(st.session_state["generate.run_id"]) if st.session_state.get("generate.run_id") else None
_others = [r for r in manager.active() if r != st.session_state.get("generate.run_id")]
if not (_mine and _mine.running) and _others:
    st.session_state["generate.run_id"] = _others[-1]
    st.session_state.pop("generate.seen", None)


def run_panel() -> None:
    run_id = st.session_state.get("generate.run_id")
    if not run_id:
        return
    job = manager.get(run_id)
    progress = manager.progress(run_id)
    if progress is None:
        return
    # When the run changes state (or stops), redraw the whole page: the Runs table, the Resume choice
    # and the sidebar must say the same as this header.
    running, checking = bool(job and job.running), bool(job and job.alive and not job.running)
    seen = (progress.status, running, checking)
    if st.session_state.get("generate.seen") not in (None, seen):
        st.session_state["generate.seen"] = seen
        st.rerun()
    st.session_state["generate.seen"] = seen
    m = progress.metrics
    st.subheader(f"Run {run_id}")
    eta = eta_text(progress) if running else ""
    st.progress(progress.fraction, text=f"{m['saved']}/{progress.target} conversations · {progress.status}"
                + (f" · {eta}" if eta else ""))
    # A wrapping row: metrics as wide as their content never cut their labels or values short.
    with st.container(horizontal=True, gap="medium"):
        st.metric("Saved", m["saved"], width="content")
        st.metric("Failed attempts", m["failed_attempts"], width="content")
        st.metric("LLM calls", m["calls"], width="content")
        st.metric("Per minute", m["conversations_per_min"], help="conversations saved per minute", width="content")
        st.metric("Tokens", f"{m['prompt_tokens'] + m['completion_tokens'] + m['thinking_tokens']:,}",
                  width="content",
                  help=f"{m['prompt_tokens']:,} prompt · {m['completion_tokens']:,} completion · "
                       f"{m['thinking_tokens']:,} thinking")
        st.metric("Concurrency", m["concurrency_limit"], width="content",
                  help=f"limit on calls in flight; {m['rate_limited']} calls answered 429")
    for alert in m["alerts"]:
        st.warning(f"alert · {alert['name']}: {alert['message']}")
    if m.get("rejections"):
        st.caption("Replies rejected by the checks and asked again: "
                   + "; ".join(f"{n} × {why}" for why, n in m["rejections"].items()))
    if running:
        # A callback, not the button's return value: the cancel takes effect before this panel redraws, and
        # the message stays from the click until the run has stopped (calls in flight can take seconds).
        if job.cancel_requested or progress.status not in ("running", "pending"):
            st.info("Cancelling: calls in flight finish, everything completed is kept.",
                    icon=":material/hourglass_top:")
        else:
            st.button("Cancel", key="generate.cancel", icon=":material/stop_circle:", on_click=manager.cancel,
                      args=(run_id,))
        return
    if job and job.error:
        st.error(job.error)
    elif progress.status == "completed":
        st.success(f"Completed: {progress.saved} conversations saved.")
    elif progress.reason:
        st.warning(f"Stopped: {progress.reason}. Resume it below.")
    if checking:  # no page-leaving button in a timed fragment (see draw_polled): Open in Review comes after
        done, total = job.grading
        st.caption("Checking the grounding of every saved answer (offline) …"
                   + (f" {done:,}/{total:,} conversations" if total else "") + " Open in Review follows.")
    elif job and job.grounding_error:
        st.caption(f"Grounding checks stopped ({job.grounding_error[:200]}); Review checks each conversation on "
                   "open.")
    if not checking and progress.saved and st.button("Open in Review", key="generate.open_review",
                                                     icon=":material/rate_review:"):
        ui_cache.open_run_in_review(run_id)
        st.switch_page("pages/review.py")


_job = manager.get(st.session_state["generate.run_id"]) if st.session_state.get("generate.run_id") else None
ui_cache.draw_polled(run_panel, active=bool(_job and _job.alive))  # live while the run works

st.subheader("Runs")
runs = list_runs(wb.db)


def runs_table() -> None:
    """Saved counts straight from the runs' rows, redrawn while any run is running (a CLI's too)."""
    st.dataframe(pd.DataFrame(list_runs(wb.db)), hide_index=True, width="stretch")


if not runs:
    st.caption("No runs yet.")
else:
    ui_cache.draw_polled(runs_table, active=any(r["status"] in ("running", "pending") for r in runs), every_s=2.0)
    resumable = [r["id"] for r in runs if r["status"] in ("incomplete", "interrupted", "running", "pending")
                 and r["id"] not in manager.active()]
    if resumable:
        c1, c2 = st.columns([3, 1])
        chosen = c1.selectbox("Resume an incomplete run", resumable, key="generate.resume_choice")
        if c2.button("Resume", key="generate.resume", icon=":material/resume:"):
            try:
                st.session_state["generate.run_id"] = manager.start(None, factory, run_id=chosen,
                                                                    settings=settings)
                st.rerun()
            except Exception as e:
                ui_cache.show_error(e)
        errors = run_errors(wb.db, chosen)
        if errors:
            with st.expander(f"Errors in run {chosen}"):
                st.dataframe(pd.DataFrame(errors), hide_index=True, width="stretch")
