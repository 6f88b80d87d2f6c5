"""Small helpers shared by the quality modules."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from core.errors import ValidationError

ProgressFn = Callable[[int, int], None]

# Stored with every result so scores computed by an older method can be found and recomputed.
GROUNDING_METHOD = "offline-checks-v5"

LIST_COLUMNS = ("id, run_id, status, rating, question, grounding, citation_flags, dup_of, dup_similarity, "
                "created_at")


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def validate_threshold(value: float, name: str = "threshold") -> float:
    """A similarity or score threshold from a form: between 0 and 1."""
    if not 0.0 <= value <= 1.0:
        raise ValidationError(f"The {name} must be between 0 and 1 (got {value}).")
    return value
