"""Dashboard: how runs went and what the data looks like, as charts with their data downloadable as CSV."""

import pandas as pd
import plotly.express as px
import streamlit as st

from core.review import analytics

from core import quality, ui_cache
from core.corpus.documents import plural
from core.quality import calibration, reviewer_fit
from core.quality.trained import TrainedVerifierStore

st.title("Dashboard")
try:
    wb = ui_cache.workbench()
    runs = analytics.run_choices(wb.db)
except Exception as e:
    ui_cache.show_error(e)
    st.stop()

if not runs:
    st.info("No conversations yet: generate some on the Generate page, or load the example set from Home.")
    st.stop()

labels = {None: "All runs", **{r["id"]: f"{r['id']} · {r['kind']} · {r['status']} · {r['saved']}/{r['num_dialogs']}"
                                          f" · {r['created_at'][:16]}" for r in runs}}
run_id = st.selectbox("Run", list(labels), format_func=labels.get, key="dashboard.run")


def chart(title: str, rows: list[dict], make, key: str, empty: str) -> None:
    """One chart with its data as a CSV download; a short note when there is nothing to draw."""
    with st.container(border=True):
        st.markdown(f"**{title}**")
        if not rows:
            st.caption(empty)
            return
        frame = pd.DataFrame(rows)
        fig = make(frame)
        if not fig.layout.height:
            fig.update_layout(height=320)
        fig.update_layout(margin=dict(t=20, b=10))
        st.plotly_chart(fig, width="stretch", key=f"dashboard.chart.{key}")
        st.download_button("Data as CSV", frame.to_csv(index=False).encode(), f"{key}.csv", "text/csv",
                           key=f"dashboard.csv.{key}")


left, right = st.columns(2)
with left:
    # Minutes as categories: plotly would read one or two timestamps as a date axis zoomed to milliseconds.
    chart("Conversations per minute", analytics.conversations_per_minute(wb.db, run_id),
          lambda f: px.bar(f, x="minute", y="conversations").update_xaxes(type="category", title="minute (UTC)"),
          "per_minute", "No conversations.")
    chart("Tokens per conversation", analytics.tokens_per_conversation(wb.db, run_id),
          lambda f: px.histogram(f, x="total_tokens", nbins=30).update_yaxes(rangemode="nonnegative"), "tokens",
          "No token counts: only generated conversations have them (the example set's were written, not "
          "generated).")
    chart("Rating distribution per respondent prompt version", analytics.ratings_by_prompt_version(wb.db),
          lambda f: px.bar(f, x="rating", y="n", color="respondent_version", barmode="group"), "ratings",
          "No ratings yet: rate conversations on the Review page.")
with right:
    outcomes = analytics.run_outcomes(wb.db)
    chart("Outcome of every run (cancelled and failed ones too)", outcomes,
          lambda f: px.bar(f, y="run", x=["saved", "failed", "not_done"], orientation="h", barmode="stack",
                           color_discrete_map={"saved": "#2e9e5b", "failed": "#c8553d", "not_done": "#b8c0cc"},
                           hover_data=["status", "reason", "success_rate"]).update_layout(
              yaxis_title=None, xaxis_title="conversations", legend_title=None), "outcomes",
          "No generation runs.")
    stopped = [r for r in outcomes if r["status"] not in ("completed", "running")]
    if stopped:
        st.caption("Stopped runs: " + " · ".join(f"`{r['run_id']}` {r['status']}"
                                                 + (f" ({r['reason']})" if r["reason"] else "") for r in stopped[-5:]))
    chart("Turn-count distribution", analytics.turn_counts(wb.db, run_id),
          lambda f: px.bar(f, x="turns", y="conversations"), "turns", "No conversations.")
    chart("Judge scores (every attempt)", analytics.judge_scores(wb.db, run_id),
          lambda f: px.histogram(f, x="overall", color="kept", nbins=17, range_x=[1, 5]), "judge",
          "No judged conversations: turn on auto-improve with a capable model.")
with st.container(border=True):
    st.markdown("**Quality checks** — grounding of every answer sentence in its turn's passages (no LLM), "
                "identifiers absent from the passages, near-duplicate conversations.")
    summary = quality.quality_summary(wb.db, run_id=run_id)
    with st.container(horizontal=True, gap="large"):
        st.metric("Scored conversations", summary.get("scored") or 0, width="content")
        st.metric("Weakly grounded", summary.get("weakly_grounded") or 0, width="content")
        st.metric("With unverified identifiers", summary.get("with_citation_flags") or 0, width="content")
        st.metric("Near-duplicates", summary.get("near_duplicates") or 0, width="content")
    st.caption("New conversations are scored when their run ends and when Review opens them; this button scores "
               "any left over and finds near-duplicates.")
    if st.button("Score grounding and find near-duplicates", key="dashboard.score", icon=":material/fact_check:"):
        bar = st.progress(0.0, text="scoring")
        try:
            scored = quality.score_conversations(
                wb.db, wb.embedder, run_id=run_id,
                progress=lambda done, total: bar.progress(done / max(total, 1), text=f"grounding {done}/{total}"))
            clusters = quality.mark_near_duplicates(wb.db, wb.embedder, run_id=run_id)
            st.success(f"Scored {scored} conversations; {len(clusters)} near-duplicate clusters.")
            st.rerun()
        except Exception as e:
            ui_cache.show_error(e)
chart("Grounding scores", quality.grounding_scores(wb.db, run_id=run_id),
      lambda f: px.histogram(f, x="grounding", nbins=20, range_x=[0, 1]), "grounding",
      "No grounding scores yet: press the button above.")
with st.container(border=True):
    st.markdown("**Do the scores agree with reviewers?** Per respondent prompt version: Spearman rank correlation "
                "of the judge's and the grounding scores with approve (1) / discard (0) and with ratings; the "
                "confusion table at the current threshold (pass = at or above it); and the threshold that best "
                "matches reviewers (highest balanced accuracy).")
    agreement = calibration.reviewer_agreement(wb.db, run_id=run_id)
    if agreement:
        st.dataframe(pd.DataFrame(agreement), hide_index=True, width="stretch")
    else:
        st.caption("No reviewed conversations with a judge or grounding score yet.")
with st.container(border=True):
    st.markdown("**Grounding threshold learned from reviewers.** Approvals, discards with reason \"ungrounded\" "
                f"and answers marked bad are labels. With {reviewer_fit.MIN_LABELS} or more for a respondent prompt "
                "version, the cut on the grounding score that agrees best with them is fitted, and used by Review "
                "and Export for that version only if it agrees better than the default (a check flagged "
                "something). A re-indexed corpus sets a fit aside until it is fitted again.")
    if st.button("Fit the grounding threshold to reviewers", key="dashboard.fit_threshold",
                 icon=":material/tune:"):
        try:
            st.session_state["dashboard.fit"] = reviewer_fit.fit_thresholds(wb.db)
        except Exception as e:
            ui_cache.show_error(e)
    fitted = st.session_state.get("dashboard.fit")
    if fitted:
        st.dataframe(pd.DataFrame(fitted), hide_index=True, width="stretch")
    reviewer_fit.set_aside_stale(wb.db)  # a corpus re-indexed since a fit: that fit no longer applies
    stored = reviewer_fit.calibrations(wb.db)
    if stored:
        st.caption("Stored fits (labels used; agreement = balanced accuracy before and after; active = in use):")
        st.dataframe(pd.DataFrame(stored), hide_index=True, width="stretch")
    elif not fitted:
        st.caption("No fit yet.")
with st.container(border=True):
    st.markdown("**A verifier trained on this corpus** (try it): a cross-encoder from the packaged MiniLM, trained "
                "in a few minutes from your documents' own sentences — each against its passage, and against "
                "copies with a figure, date, name or outcome changed. `groundwork grade --trained` uses it; the "
                "offline checks stay the default (README, \"Grounding checks\", says how it compared on the "
                "held-out sets). Re-indexing the corpus sets it aside.")
    trained_store = TrainedVerifierStore(wb.db, wb.settings.data_path)
    trained_status = trained_store.status()
    if trained_status["state"] == "current":
        st.caption(f"Trained {trained_status['trained_at'][:16]} on {trained_status['sentences']:,} sentences "
                   f"({trained_status['pairs']:,} pairs, {trained_status['seconds']:.0f} s).")
    elif trained_status["state"] == "stale":
        st.caption("Trained on an earlier version of the corpus: set aside since the re-index.")
    if st.button("Train it now" if trained_status["state"] != "current" else "Train it again",
                 key="dashboard.train_verifier", icon=":material/model_training:"):
        bar = st.progress(0.0, text="Training the verifier on this corpus…")
        try:
            meta = trained_store.train(progress=lambda done, total, what: bar.progress(
                done / max(total, 1), text=f"Training the verifier: step {done} of {total} ({what})"))
            st.success(f"Trained on {meta['sentences']:,} sentences in {meta['seconds']:.0f} s.")
        except Exception as e:
            ui_cache.show_error(e)
report = quality.coverage(wb.db, collection=wb.settings.collection, run_id=run_id)
def coverage_chart(frame):
    # Horizontal bars: long document titles stay readable, one row each, most used first.
    frame = frame.assign(document=frame["title"].str.slice(0, 60)).sort_values("retrieved_uses")
    fig = px.bar(frame, y="document", x=["briefing_uses", "retrieved_uses"], orientation="h", barmode="group")
    return fig.update_layout(height=max(320, 22 * len(frame)), yaxis_title=None, xaxis_title="uses",
                             legend_title=None)


chart("Coverage: how often each document was sampled for briefings and retrieved for answers",
      report.documents, coverage_chart, "coverage", "No indexed documents.")
if report.uncovered:
    with st.expander(f"{plural(len(report.uncovered), 'document')} never sampled nor retrieved"):
        st.dataframe(pd.DataFrame(report.uncovered), hide_index=True, width="stretch")

# ---- team review: agreement between reviewers (core.review.team) ----------------------------------------------
with st.container(border=True):
    st.markdown("**Agreement between reviewers** — Krippendorff's alpha over every reviewer (1: full agreement, "
                "0: no better than chance) on approve/discard and on ratings, Cohen's kappa per pair, and the "
                "conversations they disagree on (different decisions, or ratings 2★ or more apart).")
    from core.review import team

    try:
        team_report = team.agreement(wb.db)
    except Exception as e:
        ui_cache.show_error(e)
        team_report = None
    if team_report is None or len(team_report["reviewers"]) < 2:
        st.caption("Fewer than two reviewers have reviewed here: split a queue between reviewers on the Review page.")
    else:
        fmt = lambda a: "n/a" if a is None else f"{a:.2f}"  # noqa: E731
        with st.container(horizontal=True, gap="large"):
            st.metric("Alpha on decisions", fmt(team_report["decision_alpha"]), width="content",
                      help=f"over {team_report['decision_units']} conversations decided by two or more reviewers")
            st.metric("Alpha on ratings", fmt(team_report["rating_alpha"]), width="content",
                      help=f"over {team_report['rating_units']} conversations rated by two or more reviewers")
            st.metric("Disagreements", len(team_report["disagreements"]), width="content")
        st.dataframe(pd.DataFrame(team_report["pairs"]), hide_index=True, width="stretch")
        if team_report["disagreements"]:
            from core.review.store import escape_markdown

            shown = team_report["disagreements"][:50]
            st.markdown("Conversations the reviewers disagree on (open one in Review → Queue → Go to conversation "
                        "id):\n\n" + "\n".join(f"- `{d['conversation_id']}` ({d['status']}): "
                                                f"{escape_markdown(d['verdicts'])} — "
                                                f"{escape_markdown(d['question'] or '')}"
                                                for d in shown))
            if len(team_report["disagreements"]) > len(shown):
                st.caption(f"and {len(team_report['disagreements']) - len(shown):,} more")
