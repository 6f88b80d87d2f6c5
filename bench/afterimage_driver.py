"""Runs AfterImage's ConversationGenerator (Gemini provider) against a fake Gemini server; prints one JSON line.

Runs inside bench/.cache/afterimage-venv (created by bench/throughput.py), never in the project venv:

    bench/.cache/afterimage-venv/bin/python bench/afterimage_driver.py BASE_URL NUM_DIALOGS MAX_TURNS CONCURRENCY \
        --corpus-json chunks.json [--model-path /path/to/all-MiniLM-L6-v2]

The wiring mirrors Groundwork's engine as closely as AfterImage allows:
- instructions: ContextualInstructionGeneratorCallback over an InMemoryDocumentProvider holding the same
  chunk texts Groundwork indexed (2 contexts per instruction call, 3 instructions per call);
- respondent grounding: WithRAGRespondentPromptModifier + QdrantRetriever on an in-memory Qdrant
  (``QdrantClient(":memory:")``, no server) filled with the same chunks embedded by the same MiniLM model,
  top 3. AfterImage retrieves once per conversation (for the first question); Groundwork per turn.
  Without sentence-transformers or a model path it falls back to WithContextRespondentPromptModifier
  (the instruction's sampled context), and says so in the JSON (``grounding``).
- google-genai reads GOOGLE_GEMINI_BASE_URL, which this script sets to BASE_URL.

Output (stdout, last line): {"wall_s", "generate_s", "last_save_s", "saved", "calls_seen", "grounding", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("num_dialogs", type=int)
    ap.add_argument("max_turns", type=int)
    ap.add_argument("concurrency", type=int)
    ap.add_argument("--corpus-json", required=True, help="JSON list of chunk texts")
    ap.add_argument("--model-path", default="", help="sentence-transformers model folder for the RAG retriever")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    os.environ["GOOGLE_GEMINI_BASE_URL"] = args.base_url
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI"):
        os.environ.pop(name, None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    work = Path(tempfile.mkdtemp(prefix="afterimage-bench-"))
    os.chdir(work)  # AfterImage writes monitoring folders and JSONL under the working directory
    logging.disable(logging.WARNING)

    import random

    random.seed(args.seed)
    setup_started = time.perf_counter()
    from afterimage import ConversationGenerator
    from afterimage.callbacks import ContextualInstructionGeneratorCallback
    from afterimage.callbacks.respondent_prompt_modifiers import (WithContextRespondentPromptModifier,
                                                                  WithRAGRespondentPromptModifier)
    from afterimage.monitoring import GenerationMonitor
    from afterimage.providers import InMemoryDocumentProvider
    from afterimage.storage import JSONLStorage

    texts: list[str] = json.loads(Path(args.corpus_json).read_text(encoding="utf-8"))
    key = "AIzaSy-bench-dummy-key-000000000000000"
    grounding, modifier, note = "with_context", None, ""
    if args.model_path:
        try:
            from qdrant_client import QdrantClient, models
            from sentence_transformers import SentenceTransformer

            from afterimage.retrievers import QdrantRetriever

            model = SentenceTransformer(args.model_path, device="cpu")
            vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
            client = QdrantClient(":memory:")
            client.create_collection("corpus", vectors_config=models.VectorParams(
                size=vectors.shape[1], distance=models.Distance.COSINE))
            client.upsert("corpus", [models.PointStruct(id=i, vector=v.tolist(), payload={"text": t})
                                     for i, (v, t) in enumerate(zip(vectors, texts))])
            model.encode(["warm-up query about a security deposit"])
            retriever = QdrantRetriever(client, "corpus", embedding_model=model, limit=args.top_k,
                                        score_threshold=0.0)
            modifier = WithRAGRespondentPromptModifier(retriever)
            grounding = "rag (QdrantRetriever, in-memory Qdrant, MiniLM; once per conversation)"
        except Exception as e:  # no sentence-transformers here, or the model folder is unusable
            note = f"RAG unavailable ({type(e).__name__}: {e}); fell back to WithContext"
    if modifier is None:
        modifier = WithContextRespondentPromptModifier()

    monitor = GenerationMonitor(log_dir=work / "monitoring", metrics_interval=0)
    saves: list[float] = []

    class TimedStorage(JSONLStorage):
        async def asave_conversations(self, conversations):  # noqa: D401 - same contract as JSONLStorage
            saves.append(time.perf_counter())
            await asyncio.to_thread(self.save_conversations, conversations)

    storage = TimedStorage(conversations_path=work / "conversations.jsonl", documents_path=work / "documents.jsonl")
    instructions = ContextualInstructionGeneratorCallback(
        api_key=key, documents=InMemoryDocumentProvider(list(texts)), num_random_contexts=2, n_instructions=3)
    generator = ConversationGenerator(
        respondent_prompt="You are a careful legal research assistant. Answer from the passages you are given "
                          "and say what is missing when they do not answer the question.",
        correspondent_prompt="You are a person with a legal question (a lawyer, a paralegal, a student or a "
                             "tenant). Ask short, specific follow-up questions about the case law.",
        api_key=key, model_name="gemini-2.5-flash", model_provider_name="gemini", storage=storage,
        monitor=monitor, instruction_generator_callback=instructions, respondent_prompt_modifier=modifier)
    setup_s = time.perf_counter() - setup_started

    import resource

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    cpu0 = cpu()
    started = time.perf_counter()
    asyncio.run(generator.generate(num_dialogs=args.num_dialogs, max_turns=args.max_turns,
                                   max_concurrency=args.concurrency))
    generate_s = time.perf_counter() - started
    cpu_s = cpu() - cpu0
    saved = 0
    path = work / "conversations.jsonl"
    if path.exists():
        saved = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    last_save = (saves[args.num_dialogs - 1] if len(saves) >= args.num_dialogs else (saves[-1] if saves else started))
    result = {
        "wall_s": round(last_save - started, 3),  # until the num_dialogs-th conversation was saved
        "generate_s": round(generate_s, 3),  # the whole generate() call, AfterImage's wrap-up included
        "saved": saved, "grounding": grounding, "note": note, "setup_s": round(setup_s, 2),
        "cpu_s": round(cpu_s, 2), "total_cpu_s": round(cpu(), 2),
        "num_dialogs": args.num_dialogs, "max_turns": args.max_turns, "concurrency": args.concurrency,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
