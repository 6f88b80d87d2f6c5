"""The prompt workshop: retrieval preview, a step-by-step dry run, and prompt A/B on identical questions.

Everything here reuses the engine's Simulator, so what the workshop shows is exactly what a run
would send. Nothing is stored unless asked: a dry run is saved only on request, and A/B saves both
arms into one comparison the review page can filter by.
"""

from __future__ import annotations

import html
import random
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from core.generation import prompts as prompt_lib
from core.corpus.collection import Passage
from core.db import dumps, loads, new_id, now
from core.generation.briefing import BriefingSampler
from core.generation.conversation_store import store_conversation
from core.generation.retrieval import Retriever
from core.generation.retrieval import search as hybrid_search
from core.generation.run_config import RunConfig
from core.generation.simulator import CallRecord, Question, Simulator, format_briefing, format_passages
from core.errors import GroundworkError, ValidationError
from core.providers.base import CallGate, LLMError, LLMProvider
from core.workbench import Workbench

ProviderFactory = Callable[[CallGate], LLMProvider]
_WORD = re.compile(r"[A-Za-z0-9§][A-Za-z0-9§.\-']*")
_STOPWORDS = set("""a an and are as at be by can did do does for from had has have how i if in is it its may
of on or the this that to was were what when where which who why will with would you your my me about under
their there they them than then into not no yes""".split())


def query_terms(question: str) -> list[str]:
    terms = []
    for w in _WORD.findall(question):
        w = w.strip(".-'")
        if len(w) > 2 and w.lower() not in _STOPWORDS and w.lower() not in terms:
            terms.append(w.lower())
    return terms


def highlight_html(text: str, terms: list[str]) -> str:
    """``text`` escaped as HTML with the question's terms wrapped in <mark>: corpus text never becomes markup."""
    escaped = html.escape(text)
    if not terms:
        return escaped
    pattern = re.compile(r"\b(" + "|".join(re.escape(html.escape(t)) for t in sorted(terms, key=len, reverse=True))
                         + r")", re.IGNORECASE)
    return pattern.sub(r"<mark>\1</mark>", escaped)


@dataclass
class RetrievalPreview:
    passages: list[Passage]
    terms: list[str]
    system_prompt: str


@dataclass
class Step:
    """One thing the dry run did, as the page shows it."""

    kind: str  # briefing | questions | retrieval | answer | follow_up | error
    title: str
    system_prompt: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    reply: str = ""
    passages: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    latency_ms: int = 0
    query: str = ""  # retrieval: the search query used; follow-up: the one the simulated user proposed


@dataclass
class DryRunResult:
    steps: list[Step]
    question: Question | None = None
    turns: list[dict[str, Any]] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    prompt_versions: dict[str, int] = field(default_factory=dict)
    provider: str = ""
    model: str = ""
    error: str = ""

    @property
    def complete(self) -> bool:
        return bool(self.turns) and not self.error


class DryRun:
    """A dry run in progress: each :meth:`next_step` makes the next call (or retrieval) and returns its step."""

    def __init__(self, result: DryRunResult, steps: Iterator[Step]):
        self.result = result
        self._steps = steps

    @property
    def done(self) -> bool:
        return self.result.complete or bool(self.result.error)

    def next_step(self) -> Step | None:
        """The next step, recorded in ``result.steps``; None once the dry run has finished."""
        if self.done:
            self._steps.close()  # runs the generator's cleanup: the provider is closed
            return None
        try:
            step = next(self._steps)
        except StopIteration:
            return None
        self.result.steps.append(step)
        if self.done:
            self._steps.close()
        return step

    def run_to_end(self) -> None:
        while self.next_step() is not None:
            pass


def tokens_text(tokens: dict[str, int]) -> str:
    """Token counts as words: "1,204 prompt · 88 completion" (thinking only when there was some)."""
    parts = [f"{tokens.get('prompt', 0):,} prompt", f"{tokens.get('completion', 0):,} completion"]
    if tokens.get("thinking"):
        parts.append(f"{tokens['thinking']:,} thinking")
    return " · ".join(parts) + " tokens"


def _tokens(record: CallRecord) -> dict[str, int]:
    r = record.result
    return {"prompt": r.prompt_tokens, "completion": r.completion_tokens, "thinking": r.thinking_tokens}


class Workshop:
    """Args:
        wb: the workbench (database, corpus).
        provider_factory: builds the LLM provider (with its gate) for dry runs and A/B.
        provider_name, model: recorded on saved conversations.
    """

    def __init__(self, wb: Workbench, provider_factory: ProviderFactory, provider_name: str = "", model: str = ""):
        self.wb = wb
        self.provider_factory = provider_factory
        self.provider_name = provider_name
        self.model = model
        self.library = prompt_lib.PromptLibrary(wb.db)

    def _texts(self, versions: dict[str, int] | None) -> tuple[dict[str, str], dict[str, int]]:
        texts, ids = {}, {}
        for kind in prompt_lib.KINDS:
            row = self.library.get(versions[kind]) if versions and versions.get(kind) else self.library.current(kind)
            texts[kind], ids[kind] = row["text"], row["id"]
        return texts, ids

    def _require_corpus(self) -> None:
        if not self.wb.corpus.stats()["chunks"]:
            raise ValidationError("No corpus is indexed yet: ingest documents on the Corpus page (or run "
                                  "`groundwork index sample_data/corpus`) before previewing or generating.")
        self.wb.corpus.verify()  # the configured embedding model must be the collection's, before any LLM call

    def preview_retrieval(self, question: str, k: int = 3, respondent_version: int | None = None
                          ) -> RetrievalPreview:
        """Top-k passages for a question and the exact respondent system prompt built from them."""
        if not question.strip():
            raise ValidationError("Type a question to preview what retrieval returns for it.")
        self._require_corpus()
        passages = hybrid_search(self.wb.corpus, question, k=k)
        text = (self.library.get(respondent_version) if respondent_version else self.library.current("respondent"))
        return RetrievalPreview(passages, query_terms(question),
                                prompt_lib.render(text["text"], context=format_passages(passages)))

    def dry_run(self, turns: int = 2, top_k: int = 3, seed: int = 0, versions: dict[str, int] | None = None,
                temperature: float = 0.7, max_tokens: int = 512, question: str = "",
                on_step: Callable[[Step], None] | None = None) -> DryRunResult:
        """One conversation, step by step. LLM errors end the dry run with an error step; nothing is stored."""
        run = self.start_dry_run(turns=turns, top_k=top_k, seed=seed, versions=versions, temperature=temperature,
                                 max_tokens=max_tokens, question=question)
        while (step := run.next_step()) is not None:
            if on_step:
                on_step(step)
        return run.result

    def start_dry_run(self, turns: int = 2, top_k: int = 3, seed: int = 0, versions: dict[str, int] | None = None,
                      temperature: float = 0.7, max_tokens: int = 512, question: str = "") -> "DryRun":
        """A dry run that advances one step per :meth:`DryRun.next_step` (the Workshop's "Next step")."""
        self._require_corpus()
        texts, ids = self._texts(versions)
        result = DryRunResult(steps=[], prompt_versions=ids, provider=self.provider_name, model=self.model)
        config = RunConfig(num_dialogs=1, max_turns=turns, top_k=top_k, temperature=temperature,
                           max_tokens=max_tokens, instructions_per_sample=1, seed=seed)
        return DryRun(result, self._dry_run_steps(result, config, texts, turns, seed, question))

    def _dry_run_steps(self, result: DryRunResult, config: RunConfig, texts: dict[str, str], turns: int, seed: int,
                       question: str) -> Iterator[Step]:
        rng = random.Random(seed)
        provider = None
        try:
            retriever = Retriever(self.wb.corpus, snapshot=False)
            provider = self.provider_factory(CallGate(self.wb.settings.rpm_limit))
            sim = Simulator(provider, retriever, config, texts)
            sampler = BriefingSampler(self.wb.db, self.wb.corpus.collection, config.briefing_passages, rng)
            briefing = retriever.passages_by_id(sampler.sample())
            yield Step("briefing", "Sampled briefing", passages=[p.as_dict() for p in briefing])
            if question.strip():
                q = Question(question.strip(), {"source": "typed"}, [p.id for p in briefing],
                             format_briefing(briefing), briefing_passages=briefing)
            else:
                questions, record = sim.write_questions(briefing, 1, rng)
                q = questions[0]
                result.calls.append(record)
                yield Step("questions", "Turn 1: question written by the instruction prompt", record.system_prompt, record.messages,
                           "\n".join(x.text for x in questions), tokens=_tokens(record),
                           latency_ms=record.result.latency_ms)
            result.question = q
            state = sim.start(q)
            for t in range(turns):
                started = time.monotonic()
                passages = sim.passages_for(state)
                yield Step("retrieval", f"Turn {t + 1}: retrieval for “{state.history[-1].content[:80]}”",
                           passages=[p.as_dict() for p in [*passages.new, *passages.carried]],
                           latency_ms=int((time.monotonic() - started) * 1000), query=passages.query or "")
                turn = sim.answer(state, seed=rng.randrange(2**31), passages=passages)
                answer = turn["call"]
                result.calls.append(answer)
                if t + 1 == turns:  # the last step: the result is complete as it is shown
                    result.turns = state.turns
                yield Step("answer", f"Turn {t + 1}: answer", answer.system_prompt, answer.messages,
                           answer.text, tokens=_tokens(answer), latency_ms=answer.result.latency_ms)
                if t + 1 < turns:
                    follow = sim.ask(state, seed=rng.randrange(2**31))["call"]
                    result.calls.append(follow)
                    # The follow-up opens the next turn (core.turn_labels: turn N is a question and its answer).
                    yield Step("follow_up", f"Turn {t + 2}: question from the simulated user", follow.system_prompt,
                               follow.messages, follow.text, tokens=_tokens(follow),
                               latency_ms=follow.result.latency_ms, query=follow.query)
            result.turns = state.turns
        except (LLMError, GroundworkError) as e:
            result.error = str(e)
            yield Step("error", "The dry run stopped", reply=str(e))
        finally:
            if provider is not None:
                provider.close()

    def _new_run(self, kind: str, config: dict[str, Any]) -> str:
        run_id = new_id()[:12]
        with self.wb.db.write() as w:
            w["runs"].insert({"id": run_id, "kind": kind, "status": "completed", "reason": "", "num_dialogs": 0,
                              "saved": 0, "failed": 0, "provider": self.provider_name, "model": self.model,
                              "recipe": dumps({"config": config, "settings": self.wb.settings.public_dict()}),
                              "created_at": now(), "finished_at": now()})
        return run_id

    def save_dry_run(self, result: DryRunResult) -> str:
        """Store a finished dry run like any generated conversation; returns its id."""
        if not result.complete:
            raise ValidationError("Only a dry run that finished can be saved: run it again.")
        run_id = self._new_run("dryrun", {"prompt_versions": result.prompt_versions})
        with self.wb.db.write() as w:
            cid = store_conversation(w, run_id=run_id, work_item_id=None, provider=result.provider,
                                     model=result.model, prompt_versions=result.prompt_versions,
                                     question=result.question, result={"turns": result.turns, "calls": result.calls},
                                     turns=sum(t["role"] == "assistant" for t in result.turns))
            w.execute("UPDATE runs SET saved=1, num_dialogs=1 WHERE id=?", [run_id])
        return cid

    def run_ab(self, kind: str, version_a: int, version_b: int, n: int = 3, max_turns: int = 2, seed: int = 0,
               top_k: int = 3, temperature: float = 0.7, max_tokens: int = 512, name: str = "",
               progress: Callable[[int, int], None] | None = None) -> str:
        """Run the same sampled briefings and questions through two versions of one prompt; returns the comparison id.

        Both arms of a pair share the question, the turn count and the random seed, so the only
        difference between them is the prompt version under test.
        """
        if kind not in ("respondent", "correspondent"):
            raise ValidationError("A/B compares respondent or correspondent prompts (the question stays fixed).")
        a, b = self.library.get(version_a), self.library.get(version_b)
        if a["kind"] != kind or b["kind"] != kind:
            raise ValidationError(f"Both versions must be {kind} prompts.")
        if version_a == version_b:
            raise ValidationError("Pick two different versions to compare.")
        if not 1 <= n <= 50:
            raise ValidationError("Compare between 1 and 50 questions at a time.")
        self._require_corpus()
        base_texts, base_ids = self._texts(None)
        arms = {}
        for arm, row in (("A", a), ("B", b)):
            texts, ids = dict(base_texts), dict(base_ids)
            texts[kind], ids[kind] = row["text"], row["id"]
            arms[arm] = (texts, ids)
        config = RunConfig(num_dialogs=n, max_turns=max_turns, top_k=top_k, temperature=temperature,
                           max_tokens=max_tokens, instructions_per_sample=1, seed=seed, kind="ab")
        rng = random.Random(seed)
        retriever = Retriever(self.wb.corpus, snapshot=False)
        provider = self.provider_factory(CallGate(self.wb.settings.rpm_limit))
        comparison_id = new_id()[:12]
        run_id = self._new_run("ab", {**config.to_json(), "kind": kind, "version_a": version_a,
                                      "version_b": version_b})
        try:
            sampler = BriefingSampler(self.wb.db, self.wb.corpus.collection, config.briefing_passages, rng)
            question_sim = Simulator(provider, retriever, config, arms["A"][0])
            questions = []
            for i in range(n):
                qs, record = question_sim.write_questions(retriever.passages_by_id(sampler.sample()), 1, rng)
                questions.append((qs[0], rng.randrange(2**62)))
            with self.wb.db.write() as w:
                w["comparisons"].insert({"id": comparison_id, "name": name or f"{kind} v{a['version']} vs v{b['version']}",
                                         "kind": kind, "version_a": version_a, "version_b": version_b,
                                         "created_at": now()})

            def simulate(job: tuple[int, str]) -> None:
                i, arm = job
                question, pair_seed = questions[i]
                pair_rng = random.Random(pair_seed)
                turns = pair_rng.randint(1, max_turns)
                texts, ids = arms[arm]
                result = Simulator(provider, retriever, config, texts).converse(question, turns, pair_rng)
                with self.wb.db.write() as w:
                    store_conversation(w, run_id=run_id, work_item_id=f"{comparison_id}-{i}",
                                       provider=self.provider_name, model=self.model, prompt_versions=ids,
                                       question=question, result=result, turns=turns,
                                       comparison_id=comparison_id, arm=arm)
                    w.execute("UPDATE runs SET saved = saved + 1, num_dialogs = ? WHERE id=?", [2 * n, run_id])

            jobs = [(i, arm) for i in range(n) for arm in ("A", "B")]
            done = 0
            with ThreadPoolExecutor(max_workers=4) as pool:
                for _ in pool.map(simulate, jobs):
                    done += 1
                    if progress:
                        progress(done, len(jobs))
        finally:
            provider.close()
        return comparison_id

    def comparison_pairs(self, comparison_id: str) -> list[dict[str, Any]]:
        """Pairs of conversations (A, B) that share a question, with any pick already made."""
        rows = self.wb.db.rows("SELECT id, work_item_id, arm, question FROM conversations WHERE comparison_id=? "
                               "ORDER BY work_item_id, arm", [comparison_id])
        picks = {p["pair"]: p for p in self.wb.db.rows(
            "SELECT json_extract(payload,'$.pair') AS pair, json_extract(payload,'$.winner') AS winner "
            "FROM events WHERE kind='ab_pick' AND json_extract(payload,'$.comparison_id')=? ORDER BY id",
            [comparison_id])}
        pairs: dict[str, dict[str, Any]] = {}
        for r in rows:
            pair = pairs.setdefault(r["work_item_id"], {"pair": r["work_item_id"], "question": r["question"]})
            pair[r["arm"]] = r["id"]
            pair["winner"] = picks.get(r["work_item_id"], {}).get("winner")
        return [p for p in pairs.values() if "A" in p and "B" in p]

    def pick(self, comparison_id: str, pair: str, winner: str, actor: str = "") -> None:
        """Record which arm of a pair is better ('A' or 'B'); the export turns picks into preference pairs."""
        if winner not in ("A", "B"):
            raise ValidationError("Pick A or B.")
        match = [p for p in self.comparison_pairs(comparison_id) if p["pair"] == pair]
        if not match:
            raise ValidationError(f"Pair {pair} is not part of comparison {comparison_id}.")
        loser = "B" if winner == "A" else "A"
        with self.wb.db.write() as w:
            w["events"].insert({"ts": now(), "actor": actor or "reviewer", "kind": "ab_pick",
                                "conversation_id": match[0][winner],
                                "payload": dumps({"comparison_id": comparison_id, "pair": pair, "winner": winner,
                                                  "chosen": match[0][winner], "rejected": match[0][loser]})})


def regenerate_with_versions(workshop: Workshop, conversation_ids: list[str], versions: dict[str, int],
                             temperature: float = 0.7, max_tokens: int = 1024,
                             progress: Callable[[int, int], None] | None = None) -> list[tuple[str, str]]:
    """Regenerate conversations from their own briefings and questions with other prompt versions.

    The new conversation keeps the question, briefing and turn count of the old one and points at it
    through ``parent_id``, so the two can be shown side by side and exported as a preference pair.

    Returns:
        (old id, new id) pairs, in the order given.
    """
    if not conversation_ids:
        raise ValidationError("Select at least one conversation to regenerate.")
    db = workshop.wb.db
    workshop.wb.corpus.verify()  # before the run row and any LLM call
    texts, ids = workshop._texts(versions)
    config = RunConfig(num_dialogs=len(conversation_ids), temperature=temperature, max_tokens=max_tokens,
                       kind="regenerate", prompt_versions=ids)
    run_id = workshop._new_run("regenerate", {**config.to_json(), "parents": conversation_ids})
    retriever = Retriever(workshop.wb.corpus, snapshot=False)
    provider = workshop.provider_factory(CallGate(workshop.wb.settings.rpm_limit))
    pairs = []
    try:
        sim = Simulator(provider, retriever, config, texts)
        for i, old_id in enumerate(conversation_ids, 1):
            old = db.one("SELECT * FROM conversations WHERE id=?", [old_id])
            if not old:
                raise ValidationError(f"Conversation {old_id} does not exist.")
            briefing_ids = loads(old["briefing_ids"], [])
            question = Question(old["question"], loads(old["question_meta"], {}), briefing_ids, old["briefing"],
                                briefing_passages=retriever.passages_by_id(briefing_ids))
            rng = random.Random(old_id)
            result = sim.converse(question, old["num_turns"], rng)
            with db.write() as w:
                new_id_ = store_conversation(w, run_id=run_id, work_item_id=None, provider=workshop.provider_name,
                                             model=workshop.model, prompt_versions=ids, question=question,
                                             result=result, turns=old["num_turns"], parent_id=old_id)
                w.execute("UPDATE runs SET saved = saved + 1, num_dialogs = ? WHERE id=?",
                          [len(conversation_ids), run_id])
            pairs.append((old_id, new_id_))
            if progress:
                progress(i, len(conversation_ids))
    finally:
        provider.close()
    return pairs


def low_rated(db, max_rating: int = 2, limit: int = 50) -> list[dict[str, Any]]:
    """Conversations rated at most ``max_rating``: the usual candidates for regeneration."""
    return db.rows("SELECT id, question, rating, prompt_versions FROM conversations WHERE rating IS NOT NULL "
                   "AND rating <= ? ORDER BY rating, created_at DESC LIMIT ?", [max_rating, limit])
