"""Groundwork core: corpus, providers, generation, review and export, with no UI inside.

Subsystem packages, each importing only those listed before it (``tests/test_architecture.py`` checks):

- foundations, at the top: ``errors``, ``config``, ``schema``, ``db``, ``ids``, ``readonly``, ``access``,
  ``turn_labels``;
- ``corpus`` (documents in, passages out) and ``providers`` (LLMs behind one interface);
- ``quality`` (grounding checks, judge, duplicates);
- ``generation`` (runs, turns, retrieval, prompts);
- ``review`` (queue, team review, dashboard numbers);
- ``export`` (datasets for trainers).

Wiring and entry points sit at the top too: ``workbench`` (the long-lived parts, after corpus), ``examples`` (the
demo data dir), ``cli`` and ``ui_cache`` (the one module that imports Streamlit).
"""
