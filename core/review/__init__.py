"""Review: people deciding what the dataset keeps.

The queue, verdicts, edits and tags (:mod:`~core.review.store`), team review and agreement
(:mod:`~core.review.team`), what Review shows first about each answer (:mod:`~core.review.evidence`), and the
numbers Home and the Dashboard draw (:mod:`~core.review.analytics`).

May import: the foundations, :mod:`core.corpus`, :mod:`core.providers`, :mod:`core.quality` and
:mod:`core.generation` (prompt versions, regenerating a conversation) — never export.
"""
