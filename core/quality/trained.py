"""A verifier trained on the user's own corpus: a cross-encoder from the packaged MiniLM (the FactCC recipe).

No registry package ships an NLI model, but every corpus carries its own supervision: a passage sentence is
supported by the window it sits in, and the same sentence with its negation toggled, an outcome or a role
swapped, or a figure, date or name replaced by another of the same document, is not; nor is a sentence of
another document. :func:`training_pairs` writes those pairs, :func:`train_pair_scorer` fine-tunes the packaged
MiniLM with a one-logit head on them (a few minutes on two CPU cores), and :class:`TrainedVerifierStore` keeps
the model in the data dir under the corpus fingerprint: reused while the corpus is unchanged, set aside (and
replaced at the next training) when a re-index changes it.

:class:`TrainedVerifier` runs the offline checks first (their flags stand: each shows its evidence) and asks
the trained model about the claims they left unflagged: below :data:`FLAG_BELOW` it flags the sentence
(check ``trained``) with the window it scored best as the evidence, and its probability is the sentence's
confidence either way, so reviewers' threshold fits and the benchmark's AUROC rank by it.

Whether it is used is decided by measurement, not by hope: ``bench/grounding.py --trained`` compares it with
the rules on the held-out sets (README, "Grounding checks"); the default verifier stays the rules unless the
trained one wins there.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.db import Database, now
from core.quality.common import GROUNDING_METHOD
from core.quality.grounding import OfflineVerifier, TurnInput
from core.quality.lexical import _content_words
from core.quality.sentences import sentence_kind, split_sentences
from core.quality.verdicts import FLAGGED, TurnVerdict, turn_score

TRAINED_VERSION = "factcc-minilm-v1"  # change when the pairs or the training change: stored models retrain
FLAG_BELOW = 0.1  # fixed on the development sets (bench/grounding.py --trained --dev), never on a held-out one
MAX_ANCHORS = 400  # passage sentences turned into pairs: ~1,600 pairs, about two minutes per epoch on 2 cores
MIN_ANCHORS = 200  # a corpus with fewer sentences is topped up from the packaged sample corpus
EPOCHS = 2
MAX_LENGTH = 192  # tokens of window + claim: a two-sentence window and a sentence fit
CANDIDATES = 3  # windows per claim the model scores: those sharing most content words with it
ProgressFn = Callable[[int, int, str], None]

_AUX = re.compile(r"\b(is|was|are|were|has|have|had|will|would|can|could|should|must|may|did|does|do)\b")
_NEG = re.compile(r"\b(?:not|never|no longer)\s+|n['’]t\b|\bcannot\b", re.I)
# Outcomes and roles whose swap reverses a sentence (both directions).
_SWAPS = [("granted", "denied"), ("affirmed", "reversed"), ("increased", "decreased"), ("accepted", "rejected"),
          ("allowed", "prohibited"), ("before", "after"), ("higher", "lower"), ("more", "less"),
          ("plaintiff", "defendant"), ("buyer", "seller"), ("employer", "employee"), ("landlord", "tenant"),
          ("liable", "not liable"), ("valid", "invalid"), ("upheld", "struck down"), ("won", "lost"),
          ("required", "optional"), ("included", "excluded"), ("maximum", "minimum"), ("first", "last"),
          ("always", "never"), ("approved", "refused"), ("enforceable", "unenforceable"), ("rises", "falls"),
          ("above", "below"), ("early", "late"), ("guilty", "not guilty"), ("appellant", "appellee")]
_SWAP_OF = {**{a: b for a, b in _SWAPS}, **{b: a for a, b in _SWAPS}}
_SWAP_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _SWAP_OF), key=len, reverse=True)) + r")\b", re.I)
_NUMBER = re.compile(r"(?<![\w.])\$?\d[\d,]*(?:\.\d+)?%?(?![\w])")
_PLAIN_OPENERS = frozenset("The A An This That These Those It In On At For Under After Before When If Because "
                           "Each Every Some All No Its Their His Her".split())
_NAME = re.compile(r"(?<=[a-z,;] )[A-Z][a-z]{2,}(?:\s[A-Z][a-z]{2,})?")


@dataclass(frozen=True)
class Pair:
    window: str
    claim: str
    label: int  # 1: the window supports the claim; 0: it does not
    kind: str  # how the claim was made (for the bench's breakdown)


def _sentences(text: str) -> list[str]:
    return [s.text.strip() for s in split_sentences(text) if 6 <= len(s.text.split()) <= 60
            and sentence_kind(s.text) == "claim"]


def _toggle_negation(s: str) -> str | None:
    m = _NEG.search(s)
    if m:
        word = m.group(0).lower()
        start, repl = m.start(), "can" if word == "cannot" else ""
        if word in ("n't", "n’t"):  # "didn't" → "did", but "can't" → "can" and "won't" → "will"
            stem = s[:start].rsplit(" ", 1)[-1].lower()
            if stem in ("ca", "wo"):
                start, repl = start - 2, s[start - 2] + ("an" if stem == "ca" else "ill")
        out = s[:start] + repl + s[m.end():]
        return re.sub(r"\s{2,}", " ", out).strip()
    m = _AUX.search(s)
    if m:
        return s[:m.end()] + " not" + s[m.end():]
    return None


def _swap_outcome(s: str) -> str | None:
    m = _SWAP_RE.search(s)
    if not m:
        return None
    word = m.group(0)
    other = _SWAP_OF[word.lower()]
    if word[0].isupper():
        other = other[0].upper() + other[1:]
    return s[:m.start()] + other + s[m.end():]


def _swap_figure(s: str, doc_numbers: Sequence[str], rng: random.Random) -> str | None:
    found = list(_NUMBER.finditer(s))
    if not found:
        return None
    m = rng.choice(found)
    others = [n for n in doc_numbers if n != m.group(0) and n.strip("$%") != m.group(0).strip("$%")]
    if others:
        new = rng.choice(others)
    else:
        digits = m.group(0).strip("$%").replace(",", "")
        try:
            value = float(digits)
        except ValueError:
            return None
        bumped = value + rng.choice([1, 2, 3, 5]) if 1900 <= value <= 2100 else value * rng.choice([2, 3, 0.5])
        new = m.group(0).replace(m.group(0).strip("$%"), f"{bumped:,.0f}" if bumped >= 1 else f"{bumped:g}")
    return s[:m.start()] + new + s[m.end():]


def _swap_name(s: str, doc_names: Sequence[str], rng: random.Random) -> str | None:
    found = list(_NAME.finditer(s))
    if not found:
        return None
    m = rng.choice(found)
    others = [n for n in doc_names if n not in s]
    if not others:
        return None
    return s[:m.start()] + rng.choice(others) + s[m.end():]


def _rewrite(s: str, rng: random.Random) -> str:
    """A light rewrite that keeps the meaning: a parenthetical or a leading clause dropped, or a lead-in."""
    options = []
    no_paren = re.sub(r"\s*\([^)]*\)", "", s)
    if no_paren != s and len(no_paren.split()) >= 6:
        options.append(no_paren)
    head, sep, rest = s.partition(", ")
    if sep and len(head.split()) <= 8 and len(rest.split()) >= 6:
        options.append(rest[0].upper() + rest[1:])
    first = s.split(" ", 1)[0]
    lead = s[0].lower() + s[1:] if first in _PLAIN_OPENERS else s  # never lower-case a name
    options.append(rng.choice(["The passage says that ", "According to the source, ", "It states that "]) + lead)
    return rng.choice(options)


def training_pairs(documents: dict[str, str], seed: int = 0, max_anchors: int = MAX_ANCHORS,
                   top_up: dict[str, str] | None = None, min_anchors: int = MIN_ANCHORS) -> list[Pair]:
    """Supported and unsupported (window, claim) pairs from the documents' own sentences.

    For each anchor sentence: its window (the sentence before it and itself) supports it and a light rewrite
    of it; a corrupted copy (negation toggled, an outcome or role swapped, a figure, date or name from the
    same document put in) and a sentence of another document do not. Balanced: two of each per anchor.
    A corpus with fewer than ``min_anchors`` sentences keeps all of its own and takes the rest from ``top_up``.
    """
    rng = random.Random(seed)
    own = {doc: _sentences(text) for doc, text in documents.items()}
    extra = {doc: _sentences(text) for doc, text in (top_up or {}).items() if doc not in own}
    per_doc = {d: s for d, s in {**extra, **own}.items() if s}
    anchors = [(d, i) for d in own for i in range(len(per_doc.get(d, [])))]
    rng.shuffle(anchors)
    anchors = anchors[:max_anchors]
    if len(anchors) < min_anchors and extra:
        more = [(d, i) for d in extra for i in range(len(per_doc.get(d, [])))]
        rng.shuffle(more)
        anchors += more[:min_anchors - len(anchors)]
    numbers = {d: sorted({m.group(0) for s in sents for m in _NUMBER.finditer(s)}) for d, sents in per_doc.items()}
    names = {d: sorted({m.group(0) for s in sents for m in _NAME.finditer(s)}) for d, sents in per_doc.items()}
    docs = sorted(per_doc)
    pairs: list[Pair] = []
    for doc, i in anchors:
        sents = per_doc[doc]
        s = sents[i]
        window = " ".join(sents[max(0, i - 1):i + 1])
        ahead = " ".join(sents[i:i + 2])
        pairs.append(Pair(window, s, 1, "sentence"))
        pairs.append(Pair(rng.choice([window, ahead]), _rewrite(s, rng), 1, "rewrite"))
        corrupted = [(kind, c) for kind, c in (
            ("negation", _toggle_negation(s)), ("outcome", _swap_outcome(s)),
            ("figure", _swap_figure(s, numbers[doc], rng)), ("name", _swap_name(s, names[doc], rng)))
            if c and c != s]
        if corrupted:
            # Figures, outcomes and names are what answers get wrong: prefer them to a bare negation.
            specific = [kc for kc in corrupted if kc[0] != "negation"]
            kind, c = rng.choice(specific or corrupted)
            pairs.append(Pair(window, c, 0, kind))
        others = [d for d in docs if d != doc]
        if others:
            other = per_doc[rng.choice(others)]
            pairs.append(Pair(window, rng.choice(other), 0, "other document"))
        elif corrupted:
            kind, c = rng.choice(corrupted)
            pairs.append(Pair(window, c, 0, kind))
    rng.shuffle(pairs)
    return pairs


class PairScorer:
    """A cross-encoder: P(the window supports the claim), for batches of (window, claim) pairs. Thread-safe."""

    def __init__(self, path: Path | str):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the head is new when training starts: that warning is expected
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
        self.model.eval()
        self._lock = threading.Lock()

    def _encode(self, pairs: Sequence[tuple[str, str]]):
        return self.tokenizer([w for w, _ in pairs], [c for _, c in pairs], truncation="only_first",
                              max_length=MAX_LENGTH, padding=True, return_tensors="pt")

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        out = []
        with self._lock, self.torch.inference_mode():
            for start in range(0, len(pairs), batch_size):
                logits = self.model(**self._encode(pairs[start:start + batch_size])).logits.squeeze(-1)
                out.append(self.torch.sigmoid(logits).float().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def fit(self, pairs: Sequence[Pair], epochs: int = EPOCHS, batch_size: int = 16, lr: float = 3e-5,
            seed: int = 0, progress: ProgressFn | None = None) -> None:
        torch = self.torch
        torch.manual_seed(seed)
        rng = random.Random(seed)
        order = list(pairs)
        steps = epochs * ((len(order) + batch_size - 1) // batch_size)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)
        warmup = max(1, steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, (steps - step) / max(1, steps - warmup)))
        loss_fn = torch.nn.BCEWithLogitsLoss()
        step = 0
        with self._lock:
            self.model.train()
            try:
                for epoch in range(epochs):
                    rng.shuffle(order)
                    for start in range(0, len(order), batch_size):
                        batch = order[start:start + batch_size]
                        logits = self.model(**self._encode([(p.window, p.claim) for p in batch])).logits.squeeze(-1)
                        loss = loss_fn(logits, torch.tensor([float(p.label) for p in batch]))
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                        optimizer.step()
                        schedule.step()
                        optimizer.zero_grad()
                        step += 1
                        if progress:
                            progress(step, steps, f"epoch {epoch + 1}/{epochs}, loss {loss.item():.3f}")
            finally:
                self.model.eval()

    def save(self, path: Path) -> None:
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))


def corpus_documents(db: Database) -> dict[str, str]:
    """The indexed documents' text (complete ones), by id."""
    return {r["id"]: r["text"] or "" for r in db.rows("SELECT id, text FROM documents WHERE status='complete' "
                                                      "ORDER BY id")}


def _sample_documents() -> dict[str, str]:
    """The packaged sample corpus's opinions and summaries (plain prose: no loader needed)."""
    root = Path(__file__).resolve().parent.parent.parent / "sample_data" / "corpus"
    return {f"sample:{p.name}": p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(root.rglob("*")) if p.suffix in (".txt", ".md")}


def train_pair_scorer(documents: dict[str, str], out_dir: Path, seed: int = 0, epochs: int = EPOCHS,
                      max_anchors: int = MAX_ANCHORS, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train on these documents (topped up from the sample corpus when they hold too few sentences) and save the
    model to ``out_dir`` (written beside it first, then moved, so a stop never leaves half a model)."""
    from core.corpus.embeddings import packaged_model_path

    started = time.perf_counter()
    own = sum(len(_sentences(t)) for t in documents.values())
    topped_up = own < MIN_ANCHORS
    pairs = training_pairs(documents, seed=seed, max_anchors=max_anchors,
                           top_up=_sample_documents() if topped_up else None)
    if len(pairs) < 20:
        raise ValueError("the corpus has too few sentences to train a verifier on (index some documents first)")
    scorer = PairScorer(packaged_model_path())
    scorer.fit(pairs, epochs=epochs, seed=seed, progress=progress)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    scorer.save(tmp)
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    meta = {"version": TRAINED_VERSION, "pairs": len(pairs), "kinds": kinds, "epochs": epochs, "seed": seed,
            "documents": len(documents), "sentences": own, "topped_up_from_sample": topped_up,
            "seconds": round(time.perf_counter() - started, 1), "trained_at": now()}
    (tmp / "groundwork.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return meta


class TrainedVerifierStore:
    """The data dir's trained verifier: one per corpus fingerprint, under ``<data dir>/verifiers/``."""

    def __init__(self, db: Database, data_dir: Path):
        self.db = db
        self.root = Path(data_dir) / "verifiers"
        self._loaded: tuple[str, PairScorer] | None = None

    def fingerprint(self) -> str:
        from core.quality.reviewer_fit import corpus_fingerprint
        return corpus_fingerprint(self.db)

    def path_for(self, fingerprint: str) -> Path:
        return self.root / f"{TRAINED_VERSION}-{fingerprint}"

    def status(self) -> dict[str, Any]:
        """``state``: ``current`` (trained on this corpus), ``stale`` (on another: a re-index set it aside) or
        ``none``; with the stored training facts when there is one."""
        fp = self.fingerprint()
        current = self.path_for(fp)
        if (current / "groundwork.json").exists():
            return {"state": "current", "path": str(current), "fingerprint": fp,
                    **json.loads((current / "groundwork.json").read_text(encoding="utf-8"))}
        others = sorted(self.root.glob(f"{TRAINED_VERSION}-*/groundwork.json")) if self.root.exists() else []
        return {"state": "stale" if others else "none", "fingerprint": fp}

    def train(self, progress: ProgressFn | None = None, **kwargs: Any) -> dict[str, Any]:
        """Train on the indexed corpus and keep the model; models of other corpora are removed."""
        fp = self.fingerprint()
        meta = train_pair_scorer(corpus_documents(self.db), self.path_for(fp), progress=progress, **kwargs)
        for old in self.root.glob("*"):
            if old.is_dir() and old.name != self.path_for(fp).name:
                shutil.rmtree(old, ignore_errors=True)
        self._loaded = None
        return {**meta, "fingerprint": fp, "path": str(self.path_for(fp))}

    def load(self) -> PairScorer | None:
        """The model trained on the corpus as it is now, or None (never trained, or the corpus changed)."""
        fp = self.fingerprint()
        if self._loaded and self._loaded[0] == fp:
            return self._loaded[1]
        path = self.path_for(fp)
        if not (path / "groundwork.json").exists():
            return None
        self._loaded = (fp, PairScorer(path))
        return self._loaded[1]


def _windows(passages: Sequence[dict[str, Any]]) -> list[tuple[str | None, str]]:
    """(passage id, text) of each sentence and each two-sentence window of the passages."""
    out = []
    for p in passages:
        sents = [s.text.strip() for s in split_sentences(p.get("text") or "") if s.text.strip()]
        for i, s in enumerate(sents):
            out.append((p.get("id"), s))
            if i:
                out.append((p.get("id"), sents[i - 1] + " " + s))
    return out


def _top_windows(claim: str, windows: Sequence[tuple[str | None, str]], k: int = CANDIDATES
                 ) -> list[tuple[str | None, str]]:
    words = set(_content_words(claim))
    scored = sorted(windows, key=lambda w: (-len(words & set(_content_words(w[1]))), len(w[1])))
    return list(scored[:k])


class TrainedVerifier:
    """The offline checks, then the trained model on every claim they left unflagged (see the module doc)."""

    def __init__(self, offline: OfflineVerifier, scorer: PairScorer, name: str = "",
                 flag_below: float = FLAG_BELOW):
        self.offline = offline
        self.scorer = scorer
        self.flag_below = flag_below
        self.method = f"{GROUNDING_METHOD}+trained" + (f"-{name}" if name else "")

    def verify_turns(self, turns: Sequence[TurnInput]) -> list[TurnVerdict]:
        verdicts = self.offline.verify_turns(turns)
        asks: list[tuple[int, int, list[tuple[str | None, str]]]] = []
        pairs: list[tuple[str, str]] = []
        for t, (turn, verdict) in enumerate(zip(turns, verdicts)):
            windows = _windows([*turn.passages, *getattr(turn, "earlier", ())])
            if not windows:
                continue
            for s, sentence in enumerate(verdict.sentences):
                if sentence.verdict in FLAGGED or (sentence.verdict == "neutral" and sentence.check != "none"):
                    continue  # flagged with evidence already, or no claim to check
                candidates = _top_windows(sentence.text, windows)
                asks.append((t, s, candidates))
                pairs.extend((w, sentence.text) for _, w in candidates)
        probabilities = self.scorer.predict(pairs) if pairs else np.zeros(0)
        at = 0
        for t, s, candidates in asks:
            p = probabilities[at:at + len(candidates)]
            at += len(candidates)
            best = int(np.argmax(p))
            prob = float(p[best])
            sentence = verdicts[t].sentences[s]
            passage_id, window = candidates[best]
            if prob < self.flag_below:
                sentence = replace(sentence, verdict="unsupported", check="trained", passage_id=passage_id,
                                   evidence=window, confidence=round(prob, 4),
                                   reasons=[*sentence.reasons, f"the verifier trained on this corpus: {prob:.2f}"])
            else:
                # The rules' support (passage similarity and shared words) ranks answers well on its own: the
                # model can only lower it, when it doubts a sentence the rules found close to a passage.
                rule = sentence.confidence
                sentence = replace(sentence, confidence=round(prob if rule is None else min(rule, prob), 4))
            verdicts[t].sentences[s] = sentence
        return [replace(v, method=self.method, score=turn_score(v.sentences)) for v in verdicts]
