"""Generation: from a briefing to a saved, grounded multi-turn conversation.

The run (:mod:`~core.generation.run_config`, :mod:`~core.generation.engine` for exact-N resumable runs under a
lease, :mod:`~core.generation.batch_run` for Gemini's Batch API, :mod:`~core.generation.jobs` for the app's
background runs), what each turn does (:mod:`~core.generation.briefing`, :mod:`~core.generation.question_pool`,
:mod:`~core.generation.simulator`, :mod:`~core.generation.reply_checks`), its retrieval
(:mod:`~core.generation.retrieval`, :mod:`~core.generation.standalone_query`, :mod:`~core.generation.anchoring`,
:mod:`~core.generation.turn_context`), the prompts and their versions (:mod:`~core.generation.prompts`), the
call gate and monitor (:mod:`~core.generation.gate`, :mod:`~core.generation.monitor`, :mod:`~core.generation.cost`),
storing (:mod:`~core.generation.conversation_store`) and the prompt workshop (:mod:`~core.generation.workshop`).

May import: the foundations, :mod:`core.corpus`, :mod:`core.providers`, :mod:`core.quality` (checks at save)
and :mod:`core.workbench` (the wired parts a run uses) — never review or export.
"""
