"""Workshop: preview retrieval for a question, dry-run one conversation step by step, and A/B two prompt versions."""

import streamlit as st

from core import ui_cache
from core.generation.prompts import PromptLibrary
from core.providers.registry import provider_info
from core.generation.retrieval import found_by_label
from core.review.store import escape_markdown
from core.generation.workshop import Workshop, highlight_html, low_rated, regenerate_with_versions, tokens_text

st.title("Workshop")
try:
    wb = ui_cache.workbench()
    factory, settings = ui_cache.provider_factory()
    info = provider_info(settings, api_key=ui_cache.session_api_key())
    workshop = Workshop(wb, factory, info.name, info.model)
    library = PromptLibrary(wb.db)
    library.ensure_defaults()
except Exception as e:
    ui_cache.show_error(e)
    st.stop()


def version_picker(kind: str, key: str, label: str | None = None, index: int = 0) -> int:
    history = library.history(kind)
    return st.selectbox(label or f"{kind.capitalize()} prompt", [h["id"] for h in history], key=key,
                        index=min(index, len(history) - 1),
                        format_func=lambda i: next(f"v{h['version']} · {h['name']}" for h in history if h["id"] == i))


def show_passages(passages: list[dict], terms: list[str] | None = None) -> None:
    for i, p in enumerate(passages, 1):
        with st.container(border=True):
            origin = (f"carried from turn {p.get('from_turn', '?')}" if p.get("carried")
                      else found_by_label(p.get("ranks") or {}))
            st.markdown(f"**[{i}] {p['score']:.3f}** · {escape_markdown(p['title'])} · `{p['source_path']}` · "
                        f"chunk {p['position']}" + (f" · {origin}" if origin else ""))
            st.html(f"<div style='white-space: pre-wrap'>{highlight_html(p['text'], terms or [])}</div>")


# Keyed and tracked: the open tab is session state, so an action in a tab (a rerun) does not jump back to the
# first one.
preview, dry, ab, regen = st.tabs(["Retrieval preview", "Dry run", "Prompt A/B", "Regenerate"], key="workshop.tab",
                                  on_change="rerun")

with preview:
    question = st.text_input("Question", key="workshop.question",
                             placeholder="When must a landlord return a security deposit?")
    c1, c2 = st.columns(2)
    k = c1.slider("Passages (k)", 1, 10, 3, key="workshop.k")
    with c2:
        respondent_version = version_picker("respondent", "workshop.preview_version")
    if question.strip():
        try:
            result = workshop.preview_retrieval(question, k=k, respondent_version=respondent_version)
            show_passages([p.as_dict() for p in result.passages], result.terms)
            with st.expander("The exact respondent system prompt built from these passages"):
                st.code(result.system_prompt, language=None, wrap_lines=True)
        except Exception as e:
            ui_cache.show_error(e)

with dry:
    st.caption(f"One conversation, step by step, with **{info.name}** `{info.model}`. Nothing is saved unless "
               "you click Save.")
    c1, c2, c3 = st.columns(3)
    turns = c1.number_input("Turns", 1, 6, 2, key="workshop.dry_turns")
    dry_k = c2.number_input("Passages per turn", 1, 10, 3, key="workshop.dry_k")
    seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="workshop.dry_seed")
    versions = {kind: version_picker(kind, f"workshop.dry_version.{kind}") for kind in
                ("respondent", "correspondent", "instruction")}
    typed = st.text_input("Opening question (empty: let the instruction prompt write one)", key="workshop.dry_q")

    def advance(to_end: bool) -> None:
        """A callback: the step is taken before the page draws, so the buttons show the new state."""
        run = st.session_state.get("workshop.dry_run")
        try:
            # Statements, not a bare conditional expression: Streamlit's magic would st.write the latter's
            # value (a Step, or None) above the page title.
            if to_end:
                run.run_to_end()
            else:
                run.next_step()
        except Exception as e:  # shown below the buttons, never as a traceback
            st.session_state["workshop.dry_error"] = e

    with st.container(horizontal=True):
        if st.button("Start a dry run", key="workshop.dry_start", icon=":material/play_arrow:"):
            try:
                st.session_state["workshop.dry_run"] = workshop.start_dry_run(
                    turns=int(turns), top_k=int(dry_k), seed=int(seed), versions=versions, question=typed,
                    max_tokens=400 if info.name == "local" else 1024)
            except Exception as e:
                ui_cache.show_error(e)
        run = st.session_state.get("workshop.dry_run")
        going = run is not None and not run.done
        st.button("Next step", key="workshop.dry_next", disabled=not going, type="primary" if going else "secondary",
                  icon=":material/skip_next:", help="make the next call (or retrieval) and show it",
                  on_click=advance, args=(False,))
        st.button("Run to end", key="workshop.dry_end", disabled=not going, icon=":material/fast_forward:",
                  on_click=advance, args=(True,))
    if "workshop.dry_error" in st.session_state:
        ui_cache.show_error(st.session_state.pop("workshop.dry_error"))
    result = run.result if run is not None else None
    if result is not None:
        if not result.steps:
            st.caption("Press Next step: the first step samples a briefing from the corpus.")
        for step in result.steps:
            with st.container(border=True):
                st.markdown(f"**{escape_markdown(step.title)}**"
                            + (f" · {step.latency_ms} ms" if step.latency_ms else "")
                            + (f" · {tokens_text(step.tokens)}" if step.tokens else ""))
                if step.kind == "error":
                    st.error(step.reply)
                    continue
                if step.query:
                    st.caption(("Searched with" if step.kind == "retrieval" else "The simulated user's search query")
                               + f": “{escape_markdown(step.query)}”")
                if step.passages:
                    show_passages(step.passages)
                if step.system_prompt:
                    with st.expander("Prompt sent"):
                        st.code(step.system_prompt, language=None, wrap_lines=True)
                        for m in step.messages:
                            st.text(f"{m['role']}: {m['content']}")
                if step.reply:
                    st.text(step.reply)
        if result.complete:
            st.success("Dry run finished.")
            if st.button("Save this conversation", key="workshop.dry_save", icon=":material/save:"):
                try:
                    cid = workshop.save_dry_run(result)
                    st.success(f"Saved as conversation {cid}: it is in the Review queue.")
                    del st.session_state["workshop.dry_run"]
                except Exception as e:
                    ui_cache.show_error(e)

with ab:
    st.caption("The same sampled briefings and questions (same seed) through two versions of one prompt, side by "
               "side. Both arms are saved into one comparison the Review page can filter by.")
    ab_kind = st.radio("Compare", ["respondent", "correspondent"], horizontal=True, key="workshop.ab_kind")
    c1, c2 = st.columns(2)
    # Two different versions to start from: the newest as B, the one before it as A (history is newest first).
    with c1:
        version_a = version_picker(ab_kind, "workshop.ab_a", "Version A", index=1)
    with c2:
        version_b = version_picker(ab_kind, "workshop.ab_b", "Version B", index=0)
    if version_a == version_b:
        st.warning("A and B are the same version: save a second version on the Prompts page, or pick another.",
                   icon=":material/warning:")
    c1, c2, c3 = st.columns(3)
    n = c1.number_input("Questions", 1, 20, 2, key="workshop.ab_n")
    ab_turns = c2.number_input("Max turns", 1, 6, 2, key="workshop.ab_turns")
    ab_seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="workshop.ab_seed")
    if st.button("Run A/B", key="workshop.ab_start", disabled=version_a == version_b,
                 icon=":material/compare_arrows:"):
        bar = st.progress(0.0, text="A/B")
        try:
            st.session_state["workshop.comparison"] = workshop.run_ab(
                ab_kind, version_a, version_b, n=int(n), max_turns=int(ab_turns), seed=int(ab_seed),
                max_tokens=400 if info.name == "local" else 1024,
                progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total} conversations"))
        except Exception as e:
            ui_cache.show_error(e)
    comparison = st.session_state.get("workshop.comparison")
    if comparison:
        st.caption(f"Comparison `{comparison}`")
        for pair in workshop.comparison_pairs(comparison):
            st.markdown(f"**Question:** {escape_markdown(pair['question'])}")  # LLM text: inert
            cols = st.columns(2)
            for col, arm in zip(cols, ("A", "B")):
                with col:
                    picked = " · :material/check_circle: picked" if pair.get("winner") == arm else ""
                    st.markdown(f"**{arm}**{picked}")
                    for t in wb.db.rows("SELECT role, content FROM turns WHERE conversation_id=? ORDER BY idx",
                                        [pair[arm]]):
                        st.text(f"{t['role']}: {t['content']}")
                    if st.button(f"{arm} is better", key=f"workshop.pick.{pair['pair']}.{arm}"):
                        workshop.pick(comparison, pair["pair"], arm,
                                      actor=ui_cache.reviewer_name())
                        st.rerun()
            st.divider()

with regen:
    st.caption("Regenerate low-rated conversations from their own briefings and questions with other prompt "
               "versions; old and new side by side. The new ones join the Review queue.")
    max_rating = st.slider("Rated at most", 1, 5, 2, key="workshop.regen_max")
    candidates = low_rated(wb.db, max_rating)
    if not candidates:
        st.caption("No conversation is rated that low yet: rate some on the Review page.")
    else:
        chosen = st.multiselect("Conversations", [c["id"] for c in candidates], default=[c["id"] for c in candidates],
                                key="workshop.regen_ids",
                                format_func=lambda i: next(f"★{c['rating']} · {c['question'][:80]}"
                                                           for c in candidates if c["id"] == i))
        regen_versions = {kind: version_picker(kind, f"workshop.regen_version.{kind}") for kind in
                          ("respondent", "correspondent", "instruction")}
        if st.button("Regenerate", key="workshop.regen_start", disabled=not chosen):
            bar = st.progress(0.0, text="regenerating")
            try:
                st.session_state["workshop.regen_pairs"] = regenerate_with_versions(
                    workshop, chosen, regen_versions, max_tokens=400 if info.name == "local" else 1024,
                    progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total}"))
            except Exception as e:
                ui_cache.show_error(e)
    for old_id, new_id in st.session_state.get("workshop.regen_pairs", []):
        cols = st.columns(2)
        for col, cid, label in ((cols[0], old_id, "Before"), (cols[1], new_id, "After")):
            with col:
                st.markdown(f"**{label}** · `{cid[:8]}`")
                for t in wb.db.rows("SELECT role, content FROM turns WHERE conversation_id=? ORDER BY idx", [cid]):
                    st.text(f"{t['role']}: {t['content']}")
        st.divider()
