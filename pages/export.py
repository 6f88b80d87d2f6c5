"""Export: the reviewed selection as training JSONL (several formats), split without leaks, manifest and card."""

from pathlib import Path

import json

import pandas as pd
import streamlit as st

from core.review import evidence

from core import quality, ui_cache
from core.access import confine_path
from core.errors import GroundworkError
from core.export import (CONTEXT_HELP, CONTEXTS, FORMAT_HELP, FORMATS, NO_CONTEXT_WARNING, PROFILE_HELP, PROFILES,
                         SPLIT_GROUPS, TRAINERS, ExportOptions, default_out_dir, export, reason_table, zip_export)
from core.review.analytics import run_choices
from core.export.preview import preview_export
from core.export.selection import DEFAULT_STATUS, split_sides
from core.export.selection import selection_summary as export_selection_summary
from core.review.store import QUALITY_CHOICES, STATUS_CHOICES, ReviewFilter, ReviewStore, escape_markdown

ss = st.session_state

st.title("Export")
try:
    wb = ui_cache.workbench()
    store = ReviewStore(wb.db)
except Exception as e:
    ui_cache.show_error(e)
    st.stop()

# The export's own selection: approved conversations unless changed here, never the Review page's queue filter
# (what a reviewer is looking at is not what they approved for training).
ss.setdefault("export.out", str(default_out_dir(wb.settings)))
if ss.pop("export.fresh_out", False):
    ss["export.out"] = str(default_out_dir(wb.settings))
runs = {r["id"]: r for r in run_choices(wb.db)}
tags = [r["tag"] for r in wb.db.rows("SELECT DISTINCT tag FROM tags ORDER BY tag")]
with st.container(border=True):
    st.markdown("**What to export**")
    c1, c2, c3, c4 = st.columns(4)
    status = c1.selectbox("Status", STATUS_CHOICES, index=STATUS_CHOICES.index(DEFAULT_STATUS), key="export.status",
                          help="approved by default: only what a reviewer approved is written")
    run_id = c2.selectbox("Run", [""] + list(runs), key="export.run_id",
                          format_func=lambda r: "all runs" if not r else
                          f"{r} · {runs[r]['kind']} · {runs[r]['created_at'][:16]}")
    tag = c3.selectbox("Tag", [""] + tags, key="export.tag", format_func=lambda t: t or "any tag")
    quality_choice = c4.selectbox("Quality", QUALITY_CHOICES, key="export.quality",
                                  help="any, or only the conversations the grounding checks flagged")
    agreed = st.checkbox("Only conversations the reviewers agree on", key="export.require_agreement",
                         help="two or more reviewers (at least as many as a conversation needs) decided it, all "
                              "the same way (team review; the Dashboard shows agreement)")
    selection = ReviewFilter(status=status, run_id=run_id, tag=tag, quality=quality_choice, require_agreement=agreed)
    try:
        summary = export_selection_summary(wb.db, selection)
    except GroundworkError as e:
        st.error(str(e))
        st.stop()
    selected = summary["selected"]
    st.markdown(escape_markdown(summary["line"]))

c1, c2 = st.columns(2)
formats = c1.multiselect("Formats", FORMATS, default=["openai"], key="export.formats",
                         help="\n".join(f"- **{k}**: {v}" for k, v in FORMAT_HELP.items()))
context = c2.selectbox("Retrieved passages go", CONTEXTS, key="export.context",
                       help="per turn: each answer's passages come before it, never a later turn's")
c2.caption(CONTEXT_HELP[context])  # the description below the short name: a select box would cut it off
if context == "none":
    st.warning(NO_CONTEXT_WARNING)
c1, c2, c3 = st.columns(3)
profile = c1.selectbox("Profile", PROFILES, key="export.profile")
c1.caption(PROFILE_HELP[profile])
k = c2.number_input("RAFT distractors per answer (k)", 1, 20, 3, key="export.raft_k", disabled=profile != "raft")
no_oracle = c3.number_input("RAFT share of distractor-only rows", 0.0, 0.95, 0.2, 0.05, key="export.raft_share",
                            disabled=profile != "raft")
c1, c2 = st.columns(2)
with_system = c1.checkbox("Start rows with the respondent prompt", key="export.with_system",
                          help="the system prompt (pinned version) each conversation was generated with")
do_split = c2.checkbox("Train/validation split", value=True, key="export.do_split",
                       help="grouped by every document whose text reaches a row (briefing and passages): no validation "
                            "document in a training row; stable as the data grows")
c1, c2 = st.columns(2)
ratio = c1.number_input("Train share", 0.01, 0.99, 0.9, 0.05, key="export.ratio", disabled=not do_split)
seed = c2.number_input("Split seed", 0, 2**31 - 1, 0, key="export.seed", disabled=not do_split)
split_group = st.radio("Group the split by", SPLIT_GROUPS, key="export.split_group", horizontal=True,
                       disabled=not do_split, help="answers: briefing + the passages each answer draws on (other "
                       "passages from the other side are withheld); passages: every document shown (may leave "
                       "validation empty on a small corpus)")
c1, c2 = st.columns(2)
tokenizer = c1.text_input("Tokenizer", key="export.tokenizer", placeholder="offline model's (default)",
                          help="a .gguf file or a Hugging Face tokenizer folder; empty: the offline model's")
max_tokens = c2.number_input("Max tokens per row (0: no limit)", 0, 10_000_000, 0, 256, key="export.max_tokens")
dedupe = st.checkbox("Remove exact duplicates", value=True, key="export.dedupe")
drop_near = st.checkbox("Keep only the best-rated of each near-duplicate cluster", key="export.drop_near",
                        help="clusters come from Dashboard → Score grounding and find near-duplicates")
with st.expander("Which trainer reads what, and how answers marked bad stay untrained"):
    st.dataframe(pd.DataFrame([{"format": f, "trainer": t, "reads": what} for f in (formats or FORMATS)
                               for t, what in TRAINERS[f]]), hide_index=True, width="stretch")
with st.expander("KTO labels: review reasons → label"):
    st.caption("Only reasons about the answer give a label; a duplicate or off-topic conversation gives no row.")
    st.dataframe(pd.DataFrame(reason_table()), hide_index=True, width="stretch")
out_dir = st.text_input("Output folder", key="export.out", help="created if needed; files of the same names are "
                                                                "replaced")

options = ExportOptions(formats=list(formats), context=context, filter=selection,
                        profile=profile, raft_distractors=int(k), raft_no_oracle_share=float(no_oracle),
                        split=float(ratio) if do_split else None, seed=int(seed), split_group=split_group,
                        with_system_prompt=with_system,
                        dedupe=dedupe, tokenizer=tokenizer.strip(), max_tokens=int(max_tokens),
                        drop_near_duplicates=drop_near)
unchecked = store.unchecked_ids(selection) if selected else []
if unchecked:  # their flags are unknown, not absent: offer the check before counting flags
    st.info(f"**{len(unchecked):,}** of the {selected:,} selected conversations were never checked for grounding "
            "(a run stopped before its checks): the flagged count below leaves them out.", icon=":material/help:")
    if st.button(f"Check {len(unchecked):,} now", key="export.grade", icon=":material/fact_check:"):
        bar = st.progress(0.0, text="grounding checks")
        try:
            quality.score_ids(wb.db, wb.embedder, unchecked, progress=lambda done, total: bar.progress(
                done / total, text=f"grounding checks: {done:,}/{total:,}"))
        except Exception as e:
            ui_cache.show_error(e)
        else:
            st.rerun()
flagged = store.flagged_count(selection) if selected else 0
if flagged:
    st.warning(f"**{flagged:,}** of the {selected:,} selected conversations are flagged by the grounding checks "
               "(weakly grounded, or identifiers none of their passages contain). Open them on the Review page "
               "with the Quality flag filter, or export them anyway.", icon=":material/warning:")
    st.caption(evidence.OFFLINE_NOTE)

with st.container(horizontal=True):
    preview_clicked = st.button("Preview first rows", key="export.preview", icon=":material/preview:",
                                help="runs the export into a scratch folder and shows the first rows of each file")
    export_clicked = st.button("Export", type="primary", key="export.run", icon=":material/download:",
                               help="asks first when the selection holds flagged conversations")


@st.dialog("Export these conversations?")
def confirm_export(count: int, empty_validation: bool) -> None:
    if ss.pop("export.dialog_done", False):
        st.rerun()  # the whole page, which runs the export below
    if count:
        st.write(f"**{count:,}** of the {selected:,} conversations to export are flagged by the grounding checks.")
    if empty_validation:
        st.write(f"**The validation side would be empty**: the {selected:,} conversations share their documents, so "
                 "every one lands in train. Export without a validation set, or cancel and change the split (seed, "
                 "ratio, grouping) or the selection.")
    with st.container(horizontal=True):
        # Callbacks, not return values: they take effect whichever way the dialog's click reruns the page.
        st.button(f"Export all {selected:,}" if count else "Export with an empty validation side",
                  key="export.confirm", type="primary",
                  on_click=lambda: ss.update({"export.go": True, "export.dialog_done": True}))
        st.button("Cancel", key="export.cancel", on_click=lambda: ss.update({"export.dialog_done": True}))


empty_validation = False
if export_clicked and options.split is not None and selected:
    try:  # asked before anything is written: the split's sides, computed as the export will
        empty_validation = split_sides(wb.db, options)["validation"] == 0
    except GroundworkError:
        empty_validation = False  # the export itself reports the problem below
if export_clicked and (flagged or empty_validation):
    confirm_export(flagged, empty_validation)
else:
    ss.pop("export.dialog_done", None)


def show_row(row: dict) -> None:
    """One exported row, readable: chat rows as chat bubbles, anything else as indented JSON."""
    messages = row.get("messages") or [{"role": {"human": "user", "gpt": "assistant"}.get(m.get("from"), m.get("from")),
                                        "content": m.get("value", "")} for m in row.get("conversations") or []]
    if messages:
        with st.container(border=True):
            for m in messages:
                role = m.get("role") or "user"
                content = m.get("content")
                if not isinstance(content, str):  # a tool call: its arguments as JSON
                    content = json.dumps(m.get("tool_calls") or content, ensure_ascii=False, indent=2)
                with st.chat_message("assistant" if role == "assistant" else "user" if role == "user" else "ai",
                                     avatar=":material/build:" if role in ("tool", "system") else None):
                    st.caption(role)
                    st.text(content)  # row text is shown as it is written, never as Markdown or links
            extra = {k: v for k, v in row.items() if k not in ("messages", "conversations")}
            if extra:
                st.code(json.dumps(extra, ensure_ascii=False, indent=2), language="json", wrap_lines=True)
    else:
        st.code(json.dumps(row, ensure_ascii=False, indent=2), language="json", wrap_lines=True)


if preview_clicked:
    try:
        if options.tokenizer:
            options.tokenizer = str(confine_path(options.tokenizer, wb.settings, "tokenizer path"))
        with st.spinner("Building a preview …"):
            preview = preview_export(wb.db, options, settings=wb.settings)
        for name, info in preview["files"].items():
            with st.expander(f"{name} · first {len(info['rows'])} of {info['total']:,} rows", expanded=True,
                             icon=":material/description:"):
                for row in info["rows"]:
                    show_row(row)
        if not preview["files"]:
            st.info("No rows would be written: see the warnings.")
        for warning in preview["warnings"]:
            st.warning(escape_markdown(warning))
    except GroundworkError as e:
        st.error(str(e))
    except Exception as e:
        ui_cache.show_error(e)

if (export_clicked and not flagged and not empty_validation) or ss.pop("export.go", False):
    try:
        # Paths typed in the browser: only under the data dir, sample_data/ or GROUNDWORK_ALLOWED_ROOTS.
        if options.tokenizer:
            options.tokenizer = str(confine_path(options.tokenizer, wb.settings, "tokenizer path"))
        target = confine_path(out_dir, wb.settings, "export folder") if out_dir.strip() else default_out_dir(wb.settings)
        with st.spinner(f"Exporting {selected:,} conversations…"):
            result = export(wb.db, options, target, settings=wb.settings)
        ss["export.result"] = {"dir": str(result.out_dir), "manifest": result.manifest}
        ss["export.fresh_out"] = True  # the next export gets its own folder
    except GroundworkError as e:
        st.error(str(e))
    except Exception as e:
        ui_cache.show_error(e)

done = ss.get("export.result")
if done:
    manifest = done["manifest"]
    st.success(f"Exported to `{done['dir']}` — manifest.json lists the files, counts and checksums; README.md is "
               "the dataset card.")
    table = []
    for fmt, counts in manifest["counts"].items():
        table.append({"format": fmt, **{k: v for k, v in counts.items() if isinstance(v, int)},
                      "skipped": sum(counts["skipped"].values()),
                      "tokens p50": manifest["token_stats"][fmt].get("p50"),
                      "tokens max": manifest["token_stats"][fmt].get("max")})
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
    for warning in manifest["warnings"]:
        st.warning(escape_markdown(warning))
    skipped = {f"{fmt}: {reason}": n for fmt, c in manifest["counts"].items() for reason, n in c["skipped"].items()}
    if skipped:
        with st.expander("Skipped rows"):
            st.dataframe(pd.DataFrame([{"why": k, "rows": v} for k, v in skipped.items()]), hide_index=True)
    with st.expander("Files"):
        st.dataframe(pd.DataFrame([{"file": name, **info} for name, info in manifest["files"].items()]),
                     hide_index=True, width="stretch")
    folder = Path(done["dir"])
    if (folder / "manifest.json").exists():
        st.download_button("Download as zip", data=lambda: zip_export(folder, manifest).read_bytes(),
                           file_name=f"{folder.name}.zip", mime="application/zip", key="export.download",
                           on_click="ignore")
