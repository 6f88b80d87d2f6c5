"""Review: a filtered, paged queue; one conversation at a time with its passages; actions saved at once.

Keyboard speed: the open conversation and its action buttons are one ``st.fragment``, so a key press (J, K,
1–5, A, U) reruns only that panel, not the sidebar, filter and queue; and what a conversation shows (turns,
grounding, rendered HTML, history) is cached per conversation under a stamp of everything that changes it.
"""

import pandas as pd
import streamlit as st

from core.review import evidence

from core import quality, ui_cache
from core.quality import verify
from core.errors import GroundworkError
from core.generation.retrieval import found_by_label
from core.review.store import (DISCARD_REASONS, MAX_REVIEWS_NEEDED, QUALITY_CHOICES, STATUS_CHOICES, ReviewFilter,
                         ReviewStore, escape_markdown)
from core.turn_labels import turn_label, turn_number

PAGE_SIZE = 25
AVATARS = {"user": ":material/person:", "assistant": ":material/smart_toy:"}
ANY = ""
ss = st.session_state

st.title("Review")
try:
    wb = ui_cache.workbench()
    store = ReviewStore(wb.db)
    options = store.filter_options()
except Exception as e:
    ui_cache.show_error(e)
    st.stop()


def flash(kind: str, message: str) -> None:
    ss["review.flash"] = (kind, message)


def report(e: Exception) -> None:
    flash("error", str(e) if isinstance(e, GroundworkError) else f"Something went wrong: {type(e).__name__}: "
                                                                   f"{str(e)[:300]}")


ss.pop("review.dialog_done", None)  # a whole-page run: no dialog is left to close

# ---- reviewer (the signed-in user, else a name kept for this browser) ----------------------------------
signed_in = ui_cache.signed_in_user()
if signed_in:
    reviewer = signed_in
    st.sidebar.caption(f"Reviewing as **{escape_markdown(signed_in)}** (signed in)")
else:
    if "review.reviewer_input" not in ss:  # widget state is dropped on other pages; the name is not
        ss["review.reviewer_input"] = ui_cache.reviewer_name()
    st.sidebar.text_input("Reviewer name", key="review.reviewer_input", max_chars=80,
                          on_change=lambda: ui_cache.set_reviewer_name(ss["review.reviewer_input"]),
                          help="Recorded with every action you take; kept for this browser.")
    ui_cache.write_reviewer_cookie()
    reviewer = ui_cache.reviewer_name().strip()
if not reviewer:
    st.sidebar.warning("Type your name to review: every action records who did it.")

# ---- filter ------------------------------------------------------------------------------------------
saved = ReviewFilter.from_dict(ss.get("review.filter") or {"status": "new"})
run_ids = [ANY] + [r["id"] for r in options["runs"]]
run_labels = {r["id"]: f"{r['id']} · {r['kind']} · {r['saved']} saved · {r['created_at'][:16]}"
              for r in options["runs"]}
version_ids = [0] + [v["id"] for v in options["prompt_versions"]]  # 0: any
version_labels = {v["id"]: f"{v['kind']} v{v['version']} · {v['name'] or ''}" for v in options["prompt_versions"]}
comparison_ids = [ANY] + [c["id"] for c in options["comparisons"]]
comparison_labels = {c["id"]: f"{c['name'] or c['id']}" for c in options["comparisons"]}
ratings = [0, 1, 2, 3, 4, 5]  # 0: any (None would show the select box's "Choose an option")
widgets = {  # key -> (saved value, allowed values or None)
    "review.f.status": (saved.status, STATUS_CHOICES),
    "review.f.run": (saved.run_id, run_ids),
    "review.f.min_rating": (saved.min_rating or 0, ratings),
    "review.f.max_rating": (saved.max_rating or 0, ratings),
    "review.f.tag": (saved.tag, [ANY] + options["tags"]),
    "review.f.version": (saved.prompt_version or 0, version_ids),
    "review.f.model": (saved.model, [ANY] + options["models"]),
    "review.f.comparison": (saved.comparison_id, comparison_ids),
    "review.f.search": (saved.search, None),
    "review.f.quality": (saved.quality, list(QUALITY_CHOICES)),
}
for key, (value, allowed) in widgets.items():
    if key not in ss or (allowed is not None and ss[key] not in allowed):
        ss[key] = value if allowed is None or value in allowed else allowed[0]

with st.sidebar:
    st.subheader("Queue filter")
    st.selectbox("Status", STATUS_CHOICES, key="review.f.status")
    st.text_input("Text contains", key="review.f.search", placeholder="words in any message")
    c1, c2 = st.columns(2)
    fmt_rating = lambda r: f"{r}★" if r else "any"  # noqa: E731
    c1.selectbox("Min rating", ratings, key="review.f.min_rating", format_func=fmt_rating)
    c2.selectbox("Max rating", ratings, key="review.f.max_rating", format_func=fmt_rating)
    st.selectbox("Tag", [ANY] + options["tags"], key="review.f.tag", format_func=lambda t: t or "any")
    st.selectbox("Run", run_ids, key="review.f.run", format_func=lambda r: run_labels.get(r, "any"))
    st.selectbox("Prompt version", version_ids, key="review.f.version",
                 format_func=lambda v: version_labels.get(v, str(v)) if v else "any")
    st.selectbox("Model", [ANY] + options["models"], key="review.f.model", format_func=lambda m: m or "any")
    st.selectbox("A/B comparison", comparison_ids, key="review.f.comparison",
                 format_func=lambda c: comparison_labels.get(c, "any"))
    st.selectbox("Quality flag", QUALITY_CHOICES, key="review.f.quality",
                 help="set by the quality checks (Dashboard → Score grounding and find near-duplicates)")
    auto_advance = st.checkbox("Open the next when done", value=True, key="review.auto_advance",
                               help="after approve or discard, open the next conversation of the queue")
    st.subheader("Team")
    mine = st.checkbox("Only conversations assigned to me", key="review.f.mine", disabled=not reviewer,
                       help="after the queue was split between reviewers (Team review, below the conversation)")
    undecided = st.checkbox("Hide conversations I decided", key="review.f.undecided", disabled=not reviewer,
                            help="with several reviews needed a conversation stays new after your decision")

f = ReviewFilter(status=ss["review.f.status"], run_id=ss["review.f.run"],
                 min_rating=ss["review.f.min_rating"] or None, max_rating=ss["review.f.max_rating"] or None,
                 tag=ss["review.f.tag"], prompt_version=ss["review.f.version"] or None,
                 model=ss["review.f.model"], comparison_id=ss["review.f.comparison"],
                 search=ss["review.f.search"].strip(), quality=ss["review.f.quality"],
                 assigned_to=reviewer if mine and reviewer else "",
                 not_decided_by=reviewer if undecided and reviewer else "")
try:
    f.validate()
except GroundworkError as e:
    st.error(str(e))
    st.stop()
if ss.get("review.filter_full") is not None and ss["review.filter_full"] != f.as_dict():
    ss["review.current"] = None  # a new filter starts at its first conversation
    ss["review.page"] = 1
ss["review.filter_full"] = f.as_dict()
# The Export page starts from this: what you see is what you export, less this reviewer's own view of it.
ss["review.filter"] = {**f.as_dict(), "assigned_to": "", "not_decided_by": ""}

# ---- queue (drawn with the page: it follows the filter, not each key press) -----------------------------
# Expanders that hold fields are keyed and tracked: a whole-page run can remount them (the panel below is a
# fragment), and an untracked expander would then close under the reviewer's hands.
with st.expander("Queue: browse the filter's conversations page by page and open one", key="review.queue_open",
                 on_change="rerun"):
    matching_now = store.count(f)
    pages = max(1, -(-matching_now // PAGE_SIZE))
    ss.setdefault("review.page", 1)
    ss["review.page"] = min(max(1, ss["review.page"]), pages)
    page_no = st.number_input(f"Page (of {pages:,})", 1, pages, key="review.page")
    rows = store.page(f, limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE)
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        pick = st.selectbox("Open", [r["id"] for r in rows], key="review.open_from_page",
                            format_func=lambda i: next(f"{r['id'][:10]} · {r['status']} · {r['question']}"
                                                       for r in rows if r["id"] == i))
        st.button("Open this conversation", key="review.open", on_click=lambda: ss.update({"review.current": pick}))
    jump = st.text_input("Go to conversation id", key="review.jump")
    if jump.strip() and st.button("Go", key="review.go"):
        if store.exists(jump.strip()):
            ss["review.current"] = jump.strip()
            st.rerun()
        st.error(f"No conversation {jump.strip()!r} in this data dir.")


# ---- team review: split the queue ------------------------------------------------------------------------------
with st.expander("Team review: split this queue between reviewers", key="review.team_open", on_change="rerun"):
    st.caption("Every conversation matching the filter goes to reviewers in turn (round robin, in queue order); each "
               "reviewer then ticks 'Only conversations assigned to me'. With more than one review needed, a "
               "conversation is approved or discarded only once that many reviewers decided it the same way; the "
               "Dashboard shows how well reviewers agree.")
    names = st.text_input("Reviewers (comma-separated)", key="review.team_names", placeholder="ana, ben")
    k_needed = st.number_input("Reviews needed per conversation", 1, MAX_REVIEWS_NEEDED, 1, key="review.team_k")
    if st.button("Split the queue", key="review.team_split", icon=":material/group:"):
        try:
            shares = store.split_queue(f, [n.strip() for n in names.split(",")], reviewer, reviews_needed=int(k_needed))
            flash("success", "Queue split: " + ", ".join(f"{escape_markdown(n)} {k:,}" for n, k in shares.items())
                  + f" conversation(s); {int(k_needed)} review(s) needed each.")
            st.rerun()
        except GroundworkError as e:
            st.error(str(e))

# ---- bulk actions on the whole filter ------------------------------------------------------------------
with st.expander("Bulk actions on every conversation matching the filter", key="review.bulk_open",
                 on_change="rerun"):
    b1, b2 = st.columns([1, 2])
    action = b1.selectbox("Action", ["approve", "discard", "restore", "tag"], key="review.bulk_action")
    argument = ""
    if action == "discard":
        argument = b2.selectbox("Reason", DISCARD_REASONS, key="review.bulk_reason", index=None,
                                placeholder="pick a reason") or ""
    elif action == "tag":
        argument = b2.text_input("Tag", key="review.bulk_tag")
    if st.button(f"{action.capitalize()} the matching conversations…", key="review.bulk_prepare"):
        ss["review.bulk_pending"] = {"action": action, "argument": argument, "count": store.count(f),
                                     "filter": f.as_dict(),
                                     "flagged": store.flagged_count(f) if action == "approve" else 0}
    pending = ss.get("review.bulk_pending")
    if pending and pending["filter"] == f.as_dict():
        st.warning(f"{pending['action'].capitalize()} **{pending['count']:,}** conversations matching "
                   f"{escape_markdown(f.describe())}"
                   + (f" with {escape_markdown(pending['argument'])}" if pending["argument"] else "")
                   + f"? Recorded under your name ({escape_markdown(reviewer or 'not set')})."
                   + (f" **{pending['flagged']:,}** of them are flagged by the grounding checks (weakly grounded or "
                      "identifiers absent from their passages)." if pending.get("flagged") else ""),
                   icon=":material/warning:")
        k1, k2 = st.columns(2)
        if k1.button("Confirm", key="review.bulk_confirm", type="primary"):
            try:
                if pending["action"] == "tag":
                    n = store.bulk_tag(f, pending["argument"], reviewer, expected=pending["count"])
                else:
                    status = {"approve": "approved", "discard": "discarded", "restore": "new"}[pending["action"]]
                    n = store.bulk_status(f, status, reviewer, reason=pending["argument"], expected=pending["count"])
                ss.pop("review.bulk_pending", None)
                ss["review.current"] = None  # start again at the top of what the filter now matches
                flash("success", f"{pending['action'].capitalize()}: {n:,} conversations updated.")
                st.rerun()
            except GroundworkError as e:
                st.error(str(e))
        if k2.button("Cancel", key="review.bulk_cancel"):
            ss.pop("review.bulk_pending", None)
            st.rerun()


# ---- actions (callbacks: they run before the panel draws, so it shows the new state) ---------------------
def _go(target: str | None, edge: str) -> None:
    ss.pop("review.ask_approve", None)  # moving on answers "keep reviewing"
    if target:
        ss["review.current"] = target
    else:
        flash("info", f"This is the {edge} conversation of the queue.")


def go_next() -> None:
    _go(store.next_id(f, ss["review.current"]), "last")


def go_prev() -> None:
    _go(store.prev_id(f, ss["review.current"]), "first")


def open_conversation(target: str) -> None:
    ss["review.current"] = target


def act(action: str, cid: str, *args) -> None:
    try:
        nxt = None
        if action == "rate":
            store.rate(cid, args[0], reviewer)
        elif action == "approve":
            store.approve(cid, reviewer)
            nxt = store.next_id(f, cid)
        elif action == "discard":  # the reason is always the reviewer's pick, never a default
            detail = ss.get("review.discard_detail", "").strip()
            reason = args[0] + (f": {detail}" if detail else "")
            store.discard(cid, reason, reviewer)
            ss["review.discard_detail"] = ""
            nxt = store.next_id(f, cid)
        elif action == "restore":
            store.restore(cid, reviewer)
        elif action == "note":
            store.note(cid, ss.get(f"review.note.{cid}", ""), reviewer)
            flash("success", "Note saved.")
        elif action == "tag":
            store.tag(cid, ss.get("review.new_tag", ""), reviewer)
            ss["review.new_tag"] = ""
        elif action == "untag":
            store.untag(cid, args[0], reviewer)
        elif action == "edit":
            idx, label = args
            changed = store.edit_message(cid, idx, ss.get(f"review.edit.{cid}.{idx}", ""), reviewer)
            flash("success" if changed else "info", f"{label.capitalize()} saved." if changed else "Nothing changed.")
            if changed:
                quality.regrade_stale(wb.db, wb.embedder, cid)  # the score must describe the new text
        elif action == "revert":
            store.revert_message(cid, args[0], reviewer)
            ss.pop(f"review.edit.{cid}.{args[0]}", None)
            quality.regrade_stale(wb.db, wb.embedder, cid)
        elif action == "verify":
            factory, settings = ui_cache.provider_factory()
            flash("success", verify.verify_stored(wb.db, settings.resolved_provider, factory, cid))
        elif action == "mark":
            store.mark_turn(cid, args[0], args[1], reviewer)
        elif action == "prefer":
            store.prefer(cid, args[0], reviewer)
            flash("success", "Preference saved: it goes into the DPO export.")
        elif action == "needed":
            store.set_reviews_needed(cid, int(ss.get(f"review.needed.{cid}") or 1), reviewer)
        if nxt and auto_advance:
            ss["review.current"] = nxt
    except Exception as e:  # shown at the top of the panel, never as a traceback
        report(e)


def approve_clicked(cid: str, flagged: int, status: str) -> None:
    """A: approve at once, or ask first when the checks flagged an answer (the panel opens the dialog)."""
    if flagged and reviewer and status != "approved":  # no name: act() says so first
        ss["review.ask_approve"] = cid
    else:
        act("approve", cid)


# Keyboard picks for the discard reasons (free letters: J K A D U and 1–5 are the page's own keys).
REASON_KEYS = dict(zip(DISCARD_REASONS, "GWNOPT"))


def finish(action: str, cid: str, *args) -> None:
    """A dialog's button: act, then close the dialog (its next draw reruns the whole page)."""
    act(action, cid, *args)
    ss["review.dialog_done"] = True


def close_if_done() -> None:
    if ss.pop("review.dialog_done", False):
        st.rerun()  # the whole page: the dialog is not drawn again and the page shows the new state


@st.dialog("Why discard this conversation?")
def discard_dialog(cid: str) -> None:
    close_if_done()
    st.caption("Pick a reason (or press its key). The reason goes into the KTO labels and the history.")
    st.text_input("Details (optional)", key="review.discard_detail", placeholder="what exactly is wrong")
    for reason, letter in REASON_KEYS.items():
        st.button(reason, key=f"review.discard_as.{letter}", shortcut=letter, width="stretch",  # key shown by Streamlit
                  on_click=finish, args=("discard", cid, reason))


def approve_confirmed(cid: str) -> None:
    ss.pop("review.ask_approve", None)
    act("approve", cid)


# ---- one conversation, cached ------------------------------------------------------------------------------
def stamp(cid: str) -> tuple | None:
    """Everything that changes what a conversation shows: a review action (each writes an event or touches
    reviewed_at), a verdict, an assignment, a grading, a near-duplicate link, a regenerated child."""
    row = wb.db.one(
        "SELECT status, rating, note, reviewed_at, grounded_at, grounding, dup_of, reviews_needed, "
        "(SELECT MAX(id) FROM events e WHERE e.conversation_id = c.id) AS last_event, "
        "(SELECT MAX(updated_at) FROM reviewer_verdicts v WHERE v.conversation_id = c.id) AS last_verdict, "
        "(SELECT MAX(assigned_at) FROM review_assignments a WHERE a.conversation_id = c.id) AS last_assigned, "
        "(SELECT COUNT(*) FROM conversations k WHERE k.parent_id = c.id) AS children "
        "FROM conversations c WHERE c.id = ?", [cid])
    return tuple(row.values()) if row else None


@st.cache_data(max_entries=64, show_spinner=False)
def conversation_view(db_path: str, cid: str, version: tuple) -> dict:
    """What the panel shows of one conversation, computed once per (data dir, conversation, version)."""
    c = store.get(cid)
    grounding = {g["idx"]: g for g in quality.grounding_details(wb.db, cid)}
    roles = [t["role"] for t in c["turns"]]
    for t in c["turns"]:
        t["label"] = turn_label(roles, t["idx"])
        t["number"] = turn_number(roles, t["idx"])
        checked = grounding.get(t["idx"]) if t["role"] == "assistant" else None
        t["checked"] = checked
        fresh = bool(checked and checked["sentences"] and not checked["stale"])
        t["answer_html"] = quality.grounding_html(t["content"], checked["sentences"]) if fresh else None
        t["evidence_html"] = quality.evidence_html(checked["sentences"], t["retrieval"] or []) if fresh else ""
    flag_below = evidence.conversation_threshold(wb.db, c)  # fitted to reviewers for its prompt version, or default
    for t in c["turns"]:
        t["flag_below"] = flag_below
    return {"c": c, "flagged": evidence.flagged_answers(list(grounding.values()), flag_below),
            "near": quality.near_duplicates_of(wb.db, cid), "history": store.history(cid),
            "verdicts": store.verdicts(cid), "assignees": store.assignees(cid)}


# Narrower than 900 px (1024 px windows with the sidebar open): each row becomes the verdict and the sentence on
# one line with its evidence below at full width, instead of three columns of a few words each.
EVIDENCE_CSS = ("<style>.gw-evidence{container-type:inline-size}"
                "@container (max-width: 900px){.gw-evidence tr{display:grid;grid-template-columns:max-content 1fr;"
                "column-gap:.75em}.gw-evidence td:nth-child(3){grid-column:1 / -1;padding:0 0 .6em 1.5em}"
                ".gw-evidence tr:first-child{display:none}}</style>")


def draw_turn(cid: str, t: dict, last_answer: int) -> None:
    idx, label = t["idx"], t["label"]
    checked = t["checked"]
    threshold = t.get("flag_below", evidence.WEAKLY_GROUNDED_BELOW)
    badge = evidence.turn_badge(checked, threshold) if t["role"] == "assistant" else None
    if t["role"] == "assistant":
        left, right = st.columns([3, 2])
    else:
        left, right = st.container(), None
    with left:
        # Neutral icons: the default avatars colour the user red, which reads as an error.
        with st.chat_message(t["role"], avatar=AVATARS.get(t["role"])):
            if badge:
                st.badge(badge.label, icon=badge.icon, color=badge.colour)
            if t["answer_html"] is not None:
                st.html(f"<div style='white-space: pre-wrap'>{t['answer_html']}</div>")
            else:
                st.markdown(escape_markdown(t["content"]))
            notes = [label]
            if checked and checked["score"] is not None and not checked["stale"]:
                notes.append(f"grounding {checked['score']:.2f} ({escape_markdown(str(checked['method'] or ''))})")
            for flag in (checked or {}).get("citations", []):
                notes.append(f":material/warning: {escape_markdown(str(flag.get('text', '')))} is in none of this "
                             "turn's passages")
            if t["edited"]:
                notes.append(f"edited by {escape_markdown(t['edited_by'] or '?')} at {(t['edited_at'] or '')[:19]}")
            if t["role"] == "assistant" and not t["weight"]:
                notes.append("**marked bad** (exported with weight 0)")
            st.caption(" · ".join(notes))
            if t["edited"]:
                with st.expander("Original text"):
                    st.markdown(escape_markdown(t["original_content"]))
            with st.expander(f"Edit {label}"):
                st.text_area("Message", value=t["content"], key=f"review.edit.{cid}.{idx}", height=160,
                             label_visibility="collapsed")
                with st.container(horizontal=True):
                    st.button("Save edit", key=f"review.save_edit.{idx}", on_click=act, args=("edit", cid, idx, label),
                              icon=":material/save:")
                    st.button("Revert to original", key=f"review.revert.{idx}", on_click=act,
                              args=("revert", cid, idx), disabled=not t["edited"], icon=":material/undo:")
            b1 = b2 = st.container(horizontal=True)
            if t["role"] == "assistant":
                bad = not t["weight"]
                b1.button("Mark good" if bad else "Mark bad", key=f"review.mark.{idx}", on_click=act,
                          args=("mark", cid, idx, not bad),
                          help="a bad answer is exported with weight 0 (OpenAI) or cut off (other formats)")
            if idx < last_answer and b2.button("Regenerate after this message", key=f"review.regen.{idx}",
                                               help="keeps the conversation up to here and writes the rest again"):
                try:
                    factory, settings = ui_cache.provider_factory()
                    with st.spinner("Regenerating the rest of the conversation…"):
                        new_id = store.regenerate(cid, idx, reviewer, settings=settings, corpus=wb.corpus,
                                                  provider_factory=factory)
                    ss["review.current"] = new_id
                    flash("success", f"Regenerated from turn {t['number']}, after its {label.rsplit(' ', 1)[-1]}, "
                                     "as a new conversation; the earlier version is discarded (restore it any time).")
                    st.rerun()
                except GroundworkError as e:
                    st.error(str(e))
                except Exception as e:  # a provider failure must not take the page down
                    ui_cache.show_error(e)
    if right is not None:
        with right:
            passages = t["retrieval"] or []
            st.markdown(f":material/search: **Search query:** {escape_markdown(t.get('query') or '')}"
                        if t.get("query") else ":material/search: **Search query:** the user's message as written")
            carried = sum(1 for p in passages if p.get("carried"))
            st.caption(f"{len(passages) - carried} passage(s) retrieved for this answer"
                       + (f", {carried} carried from earlier turns" if carried else ""))
            for i, p in enumerate(passages, 1):
                origin = (f"carried from turn {p.get('from_turn', '?')}" if p.get("carried")
                          else found_by_label(p.get("ranks") or {}) or "new")
                head = (f"[{i}] {float(p.get('score') or 0):.3f} · {p.get('title') or p.get('document_id') or ''}"
                        f" · {origin}")
                with st.expander(escape_markdown(head)):
                    st.caption(f"id `{p.get('id')}` · {escape_markdown(str(p.get('source_path') or ''))} "
                               f"(chunk {p.get('position', '?')})")
                    st.markdown(escape_markdown(p.get("text") or ""))
    if t["evidence_html"]:
        # Full width under the answer and its passages: in the passages' column it was squeezed to one word
        # per line at 1024 px. Wide enough to read, and it scrolls sideways rather than being cut off.
        with st.expander(f"Unsupported sentences of the {label} beside their passages" if badge and badge.flagged
                         else f"Evidence for each sentence of the {label}", expanded=bool(badge and badge.flagged),
                         icon=":material/plagiarism:"):
            st.html(EVIDENCE_CSS + f"<div class='gw-evidence' style='overflow-x:auto'>{t['evidence_html']}</div>")


@st.fragment
def review_panel() -> None:
    if "review.flash" in ss:  # the outcome of the last action (set by a callback or before a rerun)
        kind, message = ss.pop("review.flash")
        getattr(st, kind)(message)
    counts = store.status_counts(f)
    matching = counts[f.status]
    with st.container(horizontal=True, gap="large"):  # content-wide: labels are never cut at narrow widths
        st.metric("Matching the filter", f"{matching:,}", width="content")
        for status in ("new", "approved", "discarded"):
            st.metric(status.capitalize(), f"{counts[status]:,}", width="content")
    current = ss.get("review.current")
    if current and not store.exists(current):
        current = None
    if not current:
        current = store.first(f)
        ss["review.current"] = current
    if not current:
        st.info("No conversations match this filter. Widen it in the sidebar, or generate conversations on the "
                "Generate page.")
        return
    try:
        # Evidence first: a conversation never checked (or edited since) is graded offline before it shows.
        evidence.ensure_grounded(wb.db, wb.embedder, current)
    except Exception as e:  # grounding is advisory: the conversation still opens
        st.caption(f"Grounding check unavailable: {type(e).__name__}: {str(e)[:200]}")
    try:
        view = conversation_view(str(wb.settings.db_path), current, stamp(current))
    except GroundworkError as e:
        st.error(str(e))
        return
    c, flagged = view["c"], view["flagged"]
    cid = c["id"]
    position = store.position(f, cid)

    with st.container(horizontal=True, gap="small"):  # wraps instead of squeezing labels at narrow widths
        st.button("Prev", key="review.prev", on_click=go_prev, shortcut="K", help="previous (K)",
                  icon=":material/chevron_left:")
        st.button("Next", key="review.next", on_click=go_next, shortcut="J", help="next (J)",
                  icon=":material/chevron_right:")
        for n in range(1, 6):
            st.button(f"{n}★", key=f"review.rate{n}", on_click=act, args=("rate", cid, n), shortcut=str(n),
                      type="primary" if c["rating"] == n else "secondary", help=f"rate {n} ({n})")
        asking = ss.get("review.ask_approve") == cid
        if asking:  # asked in the panel itself, not a dialog: closing a dialog costs a whole-page run
            st.button("Approve anyway", key="review.approve_confirm", type="primary", shortcut="A",
                      icon=":material/check:", on_click=approve_confirmed, args=(cid,),
                      help="approve although the checks flagged it (A again)")
            st.button("Keep reviewing", key="review.approve_cancel",
                      on_click=lambda: ss.pop("review.ask_approve", None))
        else:
            st.button("Approve", key="review.approve", shortcut="A", icon=":material/check:",
                      type="primary" if c["status"] == "approved" else "secondary", on_click=approve_clicked,
                      args=(cid, flagged, c["status"]),
                      help="approve (A); asks first when the checks flagged an answer")
        if st.button("Discard", key="review.discard", shortcut="D", icon=":material/delete:",
                     type="primary" if c["status"] == "discarded" else "secondary",
                     help="discard (D): asks for the reason; undo with Restore"):
            discard_dialog(cid)
        st.button("Restore", key="review.restore", on_click=act, args=("restore", cid), shortcut="U",
                  disabled=c["status"] == "new", help="back to new: undoes approve or discard (U)",
                  icon=":material/undo:")
    if asking:
        st.warning(f"The grounding checks flagged **{flagged}** of this conversation's answers (red or amber badges "
                   "below): sentences no passage supports, or identifiers none contains. Approve anyway (A again), "
                   "or keep reviewing.", icon=":material/warning:")
    st.caption("Keys: J next · K previous · 1–5 rate · A approve · D discard (then a reason's letter) · U restore "
               "(not while typing in a field).")

    where = f"{position:,} of {matching:,}" if position else "not in the current filter"
    status_line = c["status"] + (f" ({c['discard_reason']})" if c["discard_reason"] else "")
    st.subheader(f"Conversation {where}")
    st.caption(f"`{cid}` · **{escape_markdown(status_line)}** · rating {c['rating'] or '–'} · "
               f"{c['num_turns']} turn(s) · "
               f"{escape_markdown(c['provider'] or '')}/{escape_markdown(c['model'] or '')} · run `{c['run_id']}` · "
               f"{(c['created_at'] or '')[:19]}"
               + (f" · last action by {escape_markdown(c['reviewed_by'])} at {(c['reviewed_at'] or '')[:19]}"
                  if c["reviewed_by"] else ""))

    # ---- team review: every reviewer's own verdict, and how many this conversation needs --------------------
    needed = c.get("reviews_needed") or 1
    decided = [v for v in view["verdicts"] if v["decision"]]
    if needed > 1 or len(view["verdicts"]) > 1 or view["assignees"]:
        with st.container(horizontal=True, vertical_alignment="bottom"):
            ss[f"review.needed.{cid}"] = needed
            st.number_input("Reviews needed", 1, MAX_REVIEWS_NEEDED, key=f"review.needed.{cid}", width=140,
                            on_change=act, args=("needed", cid),
                            help="the status is set once this many reviewers decided, all the same way")
            st.caption(f"{len(decided)} of {needed} decision(s)"
                       + (f" · assigned to {escape_markdown(', '.join(view['assignees']))}"
                          if view["assignees"] else "")
                       + "".join(f" · **{escape_markdown(v['reviewer'])}**: {v['decision'] or 'undecided'}"
                                 + (f" {v['rating']}★" if v["rating"] else "")
                                 + (f", {v['edits']} edit(s)" if v["edits"] else "") for v in view["verdicts"]))

    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.text_input("Add tag", key="review.new_tag", placeholder="e.g. citation-error", width=260)
        st.button("Add", key="review.add_tag", on_click=act, args=("tag", cid), icon=":material/sell:")
        for tag in c["tags"]:
            st.button(tag, key=f"review.untag.{tag}", on_click=act, args=("untag", cid, tag), help="remove this tag",
                      icon=":material/close:")

    meta = c["question_meta"] or {}
    versions = ", ".join(f"{v['kind']} v{v['version']}" for v in c["prompt_version_rows"]) or "unknown"
    st.caption(f"Prompt versions: {escape_markdown(versions)} · tokens: {c['prompt_tokens'] or 0:,} prompt, "
               f"{c['completion_tokens'] or 0:,} completion, {c['thinking_tokens'] or 0:,} thinking · "
               f"{(c['latency_ms'] or 0) / 1000:.1f} s"
               + (f" · question: {escape_markdown(str(meta.get('persona', '')))}, "
                  f"{escape_markdown(str(meta.get('type', '')))}, {escape_markdown(str(meta.get('difficulty', '')))}, "
                  f"{'answerable' if meta.get('answerable', True) else 'unanswerable'}" if meta.get("persona") else ""))
    with st.expander("Briefing that seeded the question"):
        st.markdown(escape_markdown(c["briefing"] or "(no briefing stored)"))

    # ---- A/B and regenerated versions -------------------------------------------------------------------
    if c["twins"] or c["parent_id"] or c["children"]:
        with st.container(border=True):
            for twin in c["twins"]:
                t1, t2, t3 = st.columns([3, 2, 2])
                chosen = twin["id"] in c["preferred_over"]
                t1.markdown(f"A/B: this is arm **{escape_markdown(c['arm'] or '?')}**; arm "
                            f"**{escape_markdown(twin['arm'] or '?')}** answered the same question"
                            + (" · **you preferred this arm**" if chosen else ""))
                t2.button(f"Prefer this arm over {twin['arm'] or 'the other'}", key=f"review.prefer.{twin['id']}",
                          on_click=act, args=("prefer", cid, twin["id"]), disabled=chosen)
                t3.button(f"Open arm {twin['arm'] or ''}", key=f"review.open_twin.{twin['id']}",
                          on_click=open_conversation, args=(twin["id"],))
            if c["parent_id"]:
                p1, p2, p3 = st.columns([3, 2, 2])
                p1.markdown(f"Regenerated from `{c['parent_id']}`"
                            + (" · **preferred over it**" if c["parent_id"] in c["preferred_over"] else ""))
                p2.button("Prefer this version", key="review.prefer_parent", on_click=act,
                          args=("prefer", cid, c["parent_id"]))
                p3.button("Open the earlier version", key="review.open_parent", on_click=open_conversation,
                          args=(c["parent_id"],))
            for child in c["children"]:
                st.button(f"Open regenerated version {child['id'][:10]} ({child['status']})",
                          key=f"review.open_child.{child['id']}", on_click=open_conversation, args=(child["id"],))

    # ---- near-duplicates ---------------------------------------------------------------------------------------
    for twin in view["near"]:
        st.button(f"Near-duplicate of {twin['id'][:10]} ({twin['status']}, "
                  f"{'★' * (twin['rating'] or 0) or 'unrated'}): open it", key=f"review.twin.{twin['id']}",
                  on_click=open_conversation, args=(twin["id"],))

    # ---- turns, each answer beside its passages -------------------------------------------------------------
    st.caption(evidence.OFFLINE_NOTE)
    st.button("Verify grounding with the LLM", key="review.verify", on_click=act, args=("verify", cid),
              icon=":material/fact_check:",
              help="one call per answer: each sentence's verdict with a quote from its passages, checked to be "
                   "really there (cached: asking again is free)")
    last_answer = max((t["idx"] for t in c["turns"] if t["role"] == "assistant"), default=-1)
    for t in c["turns"]:
        draw_turn(cid, t, last_answer)

    # ---- note, calls, history ---------------------------------------------------------------------------------
    st.text_area("Note", value=c["note"] or "", key=f"review.note.{cid}", height=80)
    st.button("Save note", key="review.save_note", on_click=act, args=("note", cid))
    with st.expander("LLM calls"):
        if c["calls"]:
            st.dataframe(pd.DataFrame(c["calls"]), hide_index=True, width="stretch")
        else:
            st.caption("No calls stored for this conversation.")
    with st.expander("History"):
        history = view["history"]
        if history:
            st.dataframe(pd.DataFrame([{"time": h["ts"][:19], "who": h["actor"], "action": h["kind"],
                                        "details": ", ".join(f"{k}={str(v)[:60]}" for k, v in h["payload"].items())}
                                       for h in history]), hide_index=True, width="stretch")
        else:
            st.caption("No review actions yet.")


# Last on the page, in a container of its own: the team and bulk tools sit above it, so a whole-page run never
# moves (and remounts) a field that is being typed in below a panel whose length varies per conversation.
with st.container():
    review_panel()
