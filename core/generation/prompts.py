"""The three prompts (respondent, correspondent, instruction), their domain templates, and their versions.

Every save is a new immutable version; runs record the version ids they used. Placeholders are
filled with ``str.replace`` rather than ``str.format`` so braces in prompts and passages are safe.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from core.db import Database, now
from core.errors import NotFoundError, ValidationError

KINDS = ("respondent", "correspondent", "instruction")
MAX_PROMPT_CHARS = 20_000  # beyond this a system prompt crowds out the passages it is meant to frame

# kind -> (required placeholders, allowed placeholders)
PLACEHOLDERS: dict[str, tuple[set[str], set[str]]] = {
    "respondent": ({"context"}, {"context"}),
    "correspondent": ({"briefing"}, {"briefing", "first_question"}),
    "instruction": ({"briefing", "n"}, {"briefing", "n", "question_plan"}),
}
PLACEHOLDER_HELP = {
    "context": "the passages retrieved for this turn, each with its id and source",
    "briefing": "the sampled corpus passages the simulated user's questions are grounded in",
    "first_question": "the question that opened the conversation",
    "n": "how many questions to write",
    "question_plan": "one line per question: persona, question type, difficulty, answerable or not",
}
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Template:
    name: str
    description: str
    respondent: str
    correspondent: str
    instruction: str


_INSTRUCTION_COMMON = """Below is a briefing: passages from the corpus, each with an id.

{briefing}

Write {n} questions that a real user of this assistant might ask. Follow this plan, one question per line:
{question_plan}

Rules:
- An "answerable" question must be answerable from the briefing alone; mention the concrete names,
  parties, products or terms it uses, so the question is specific rather than generic.
- An "unanswerable" question must stay on the briefing's topic but ask for something the briefing does
  not contain (a detail, outcome or fact that is missing), so the assistant has to say what is missing.
- Write as the persona would: their vocabulary, their stakes. One question each, no numbering, no answers.
- Never invent identifiers (docket numbers, citations, order numbers) that are not in the briefing."""

TEMPLATES: dict[str, Template] = {
    "legal": Template(
        name="Legal research",
        description="A careful legal research assistant answering lawyers and clients from court opinions.",
        respondent="""You are a meticulous senior legal research assistant. You answer only from the court
opinions and excerpts given below; they are your entire library for this conversation.

How to answer:
- Ground every statement in the passages. When you rely on a passage, name the case and keep its
  identifiers exactly as written (case name, court, docket number, date, statute section, amounts).
- Explain the law in plain English first, then the detail a lawyer would want.
- If the passages do not answer the question, or answer only part of it, say so plainly and say what
  is missing. Never fill the gap from memory, and never invent a case, citation or holding.
- You do not give legal advice about anyone's real situation; describe what the opinions held and
  suggest consulting a licensed attorney when the user asks what they should do.

Retrieved passages:
{context}""",
        correspondent="""You play the user in a conversation with a legal research assistant. You are either
a practising lawyer checking authority for a matter or a client trying to understand a dispute.

Your briefing (what you have read; use it as inspiration, do not paste it):
{briefing}

You opened with: {first_question}

Stay in role. Ask one realistic follow-up at a time: press on a holding, compare two cases, ask how
the reasoning applies to a slightly different set of facts, or ask what the assistant left unclear.
Write only your next message, in the first person, briefly. Never invent docket numbers or citations.""",
        instruction="You write realistic opening questions for a legal research assistant.\n\n"
                    + _INSTRUCTION_COMMON,
    ),
    "support": Template(
        name="Customer support",
        description="A support agent answering customers from help-centre articles.",
        respondent="""You are a friendly, precise customer support agent. Answer only from the help-centre
articles below; quote settings, limits, plan names and steps exactly as they appear.

- Give the steps in order, short and concrete.
- If the articles do not cover the customer's case, say so, say what information is missing, and offer
  to escalate instead of guessing.
- Never promise refunds, dates or features the articles do not state.

Help-centre articles:
{context}""",
        correspondent="""You play a customer writing to support. You have a real problem drawn from this
material:
{briefing}

You first wrote: {first_question}

Stay in character: describe what you see, answer the agent's questions, push back when an answer does
not fix your problem. Write only your next message, briefly.""",
        instruction="You write realistic first messages that customers send to a support team.\n\n"
                    + _INSTRUCTION_COMMON,
    ),
    "tutoring": Template(
        name="Domain tutoring",
        description="A tutor explaining course material to a student from textbook sections.",
        respondent="""You are a patient tutor. Teach from the course material below and nothing else.

- Explain the idea simply first, then build up; use the material's own terms and examples.
- Check understanding with a short question when it helps.
- If the material does not cover what the student asks, say so and say what it does cover.

Course material:
{context}""",
        correspondent="""You play a student working through this material:
{briefing}

You first asked: {first_question}

Ask follow-ups a real student would: about a step you did not follow, an example, how two ideas
relate, or whether your own summary is right. Write only your next message, briefly.""",
        instruction="You write realistic questions students ask their tutor.\n\n" + _INSTRUCTION_COMMON,
    ),
}
DEFAULT_TEMPLATE = "legal"


def placeholders_in(text: str) -> set[str]:
    return set(_PLACEHOLDER_RE.findall(text))


def validate(kind: str, text: str) -> None:
    """Raise ValidationError naming what is wrong with a prompt of this kind."""
    if kind not in KINDS:
        raise ValidationError(f"Unknown prompt kind {kind!r}: use one of {', '.join(KINDS)}.")
    if not text.strip():
        raise ValidationError(f"The {kind} prompt is empty: write the instructions, or restore a version.")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValidationError(f"The {kind} prompt is {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}. "
                              "A system prompt that long crowds out the passages: shorten it.")
    required, allowed = PLACEHOLDERS[kind]
    found = placeholders_in(text)
    unknown = sorted(found - allowed)
    if unknown:
        raise ValidationError(f"The {kind} prompt uses unknown placeholder(s) "
                              f"{', '.join('{' + u + '}' for u in unknown)}. Allowed: "
                              f"{', '.join('{' + a + '}' for a in sorted(allowed))}.")
    missing = sorted(required - found)
    if missing:
        raise ValidationError(f"The {kind} prompt is missing placeholder(s) "
                              f"{', '.join('{' + m + '}' for m in missing)}: "
                              + "; ".join(f"{{{m}}} is {PLACEHOLDER_HELP[m]}" for m in missing) + ".")


def render(text: str, **values: Any) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


class PromptLibrary:
    """Versioned prompts in SQLite. Version 1 of each kind is the default template."""

    def __init__(self, db: Database):
        self.db = db

    def ensure_defaults(self, template: str = DEFAULT_TEMPLATE) -> None:
        for kind in KINDS:
            if not self.db.scalar("SELECT COUNT(*) FROM prompt_versions WHERE kind=?", [kind]):
                self.save(kind, getattr(TEMPLATES[template], kind), name=f"{TEMPLATES[template].name} template",
                          note="starting template", template=template)

    def save(self, kind: str, text: str, name: str = "", note: str = "", template: str = "") -> dict[str, Any]:
        validate(kind, text)
        with self.db.write() as w:
            latest = w.execute("SELECT MAX(version) FROM prompt_versions WHERE kind=?", [kind]).fetchone()[0] or 0
            row = {"kind": kind, "version": latest + 1, "name": name or f"{kind} v{latest + 1}", "text": text,
                   "note": note, "template": template, "created_at": now()}
            w["prompt_versions"].insert(row)
            row["id"] = w.execute("SELECT last_insert_rowid()").fetchone()[0]
        return row

    def restore(self, version_id: int, note: str = "") -> dict[str, Any]:
        old = self.get(version_id)
        return self.save(old["kind"], old["text"], name=f"restore of v{old['version']}",
                         note=note or f"restored from version {old['version']}", template=old["template"])

    def get(self, version_id: int) -> dict[str, Any]:
        row = self.db.one("SELECT * FROM prompt_versions WHERE id=?", [version_id])
        if not row:
            raise NotFoundError(f"Prompt version {version_id} does not exist.")
        return row

    def current(self, kind: str) -> dict[str, Any]:
        self.ensure_defaults()
        return self.db.one("SELECT * FROM prompt_versions WHERE kind=? ORDER BY version DESC LIMIT 1", [kind])

    def history(self, kind: str) -> list[dict[str, Any]]:
        return self.db.rows("SELECT * FROM prompt_versions WHERE kind=? ORDER BY version DESC", [kind])

    def diff(self, version_id: int) -> str:
        """Unified diff of a version against the one before it (empty for the first)."""
        row = self.get(version_id)
        prev = self.db.one("SELECT * FROM prompt_versions WHERE kind=? AND version<? ORDER BY version DESC LIMIT 1",
                           [row["kind"], row["version"]])
        if not prev:
            return ""
        return "\n".join(difflib.unified_diff(prev["text"].splitlines(), row["text"].splitlines(),
                                              f"v{prev['version']}", f"v{row['version']}", lineterm=""))
