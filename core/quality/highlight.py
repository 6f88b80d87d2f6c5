"""Answers as escaped HTML with their grounding verdicts marked, and each sentence's evidence (the review page)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from core.quality.verdicts import CHECK_LABELS

# "weak" is what results stored by sentence-windows-v3 and older call a low passage match.
# A sentence the offline checks could not decide is shaded grey: not a flag, but where the LLM verifier helps.
COLOURS = {"unsupported": "#fde2e1", "contradicted": "#f8c4c1", "weak": "#fff3cd", "not_checked": "#eeeeee"}
BADGES = {"supported": ("#1e7b34", "supported"), "weak": ("#8a6d00", "weak"), "unsupported": ("#b42318", "unsupported"),
          "contradicted": ("#7a1010", "contradicted"), "not_checked": ("#666666", "not checked offline")}
CONTEXT_CHARS = 120  # passage text shown on each side of an evidence span


def grounding_html(content: str, sentences: Sequence[dict[str, Any]]) -> str:
    """An answer as escaped HTML with unsupported and contradicted sentences in red, weak ones (older
    results) in amber, and those not checked offline in grey (the title says why).

    The answer text is escaped first, so generated text can never become markup.
    """
    out, pos = [], 0
    for s in sorted((s for s in sentences if s.get("kind") in COLOURS), key=lambda s: s["start"]):
        start, end = max(int(s["start"]), pos), int(s["end"])
        if start >= end:
            continue
        out.append(html.escape(content[pos:start]))
        default = "not checked offline" if s["kind"] == "not_checked" else s["kind"]
        reasons = "; ".join(s.get("reasons") or []) or default
        out.append(f'<span style="background:{COLOURS[s["kind"]]}" title="{html.escape(reasons, quote=True)}">'
                   f"{html.escape(content[start:end])}</span>")
        pos = end
    out.append(html.escape(content[pos:]))
    return "".join(out)


def _evidence_in_context(evidence: str, passage: str | None) -> str:
    """The evidence marked inside a little of its passage (or alone when the passage is not at hand)."""
    at = passage.find(evidence) if passage and evidence else -1
    if at < 0:
        return f"<mark>{html.escape(evidence)}</mark>"
    before = passage[max(0, at - CONTEXT_CHARS):at]
    after = passage[at + len(evidence):at + len(evidence) + CONTEXT_CHARS]
    return (("…" if at > CONTEXT_CHARS else "") + html.escape(before) + f"<mark>{html.escape(evidence)}</mark>"
            + html.escape(after) + ("…" if at + len(evidence) + CONTEXT_CHARS < len(passage) else ""))


def evidence_html(sentences: Sequence[dict[str, Any]], passages: Sequence[dict[str, Any]]) -> str:
    """Each checked sentence beside the passage span behind its verdict, the span highlighted (escaped HTML).

    Args:
        sentences: stored sentence results (``kind``/``verdict``, ``text``, ``passage_id``, ``evidence``,
            ``reasons``).
        passages: the turn's passages, to show each span in its context and number it as the page does.
    """
    number = {str(p.get("id")): i for i, p in enumerate(passages, 1)}
    text_of = {str(p.get("id")): p.get("text") or "" for p in passages}
    rows = []
    for s in sentences:
        kind = s.get("kind") or s.get("verdict")
        if kind not in BADGES:
            continue
        colour, label = BADGES[kind]
        check = s.get("check") or ""
        if check and check not in ("none", "similarity") and kind != "not_checked":
            label = f"{label}<br><small>{html.escape(CHECK_LABELS.get(check, check))}</small>"
        pid = str(s.get("passage_id")) if s.get("passage_id") is not None else None
        evidence = s.get("evidence") or ""
        if evidence:
            where = f"[{number[pid]}] " if pid in number else ""
            right = where + _evidence_in_context(evidence, text_of.get(pid))
        else:
            right = "<i>no passage says this</i>"
        reasons = "; ".join(s.get("reasons") or [])
        rows.append(
            f'<tr><td style="vertical-align:top;white-space:nowrap;color:{colour};font-weight:600">{label}</td>'
            f'<td style="vertical-align:top">{html.escape(s.get("text") or "")}'
            + (f'<br><small style="color:#666">{html.escape(reasons)}</small>' if reasons else "")
            + f'</td><td style="vertical-align:top;font-size:0.9em">{right}</td></tr>')
    if not rows:
        return ""
    return ('<table style="border-collapse:collapse;width:100%"><tr><th align="left">verdict</th>'
            '<th align="left">sentence</th><th align="left">evidence in the passages</th></tr>'
            + "".join(rows) + "</table>")
