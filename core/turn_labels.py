"""One turn numbering everywhere: Review, the Workshop's dry run, carried passages and export messages.

Turn N is the N-th question of the user and the answer to it, counted from 1, so a two-turn conversation
has turns 1 and 2 (four messages). Its messages are "turn N question" and "turn N answer". A carried
passage's ``from_turn`` counts the same way (the answer it was retrieved for). Machine fields keep their
own meaning: ``turns.idx`` and the grade/export ``retrieved_context[].turn`` are indexes into the messages.
"""

from __future__ import annotations

from collections.abc import Sequence


def turn_number(roles: Sequence[str], idx: int) -> int:
    """The turn message ``idx`` belongs to, given every message's role in order."""
    return max(1, sum(1 for role in roles[:idx + 1] if role == "user"))


def turn_label(roles: Sequence[str], idx: int) -> str:
    """``turn N question`` or ``turn N answer`` for message ``idx``."""
    part = "question" if roles[idx] == "user" else "answer" if roles[idx] == "assistant" else roles[idx]
    return f"turn {turn_number(roles, idx)} {part}"
