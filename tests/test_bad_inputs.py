"""The bad-input sweep: every case gets a clear message (what, where, what to do) and loses nothing saved.

Each case runs against a real data dir that already holds an indexed corpus and saved conversations;
after the bad input, the test checks the message and that those counts did not move.
"""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import pytest

from core.generation.engine import GenerationRun, RunConfig
from core.errors import GroundworkError
from fakes.gemini import FakeGemini
from core.generation.prompts import PromptLibrary
from core.providers.base import LLMRequest, Message
from core.providers.gemini import GeminiProvider
from core.providers.registry import test_connection as check_connection
from tests.conftest import ROOT

KEY = "AIza-sweep-key-777"


@dataclass
class Case:
    name: str
    run: Callable  # (ctx) -> message text (from an exception, a CLI's stderr or a report)
    expect: str  # regex the message must match


def cli(ctx, *args, env=None):
    full_env = {**os.environ, "GROUNDWORK_DATA_DIR": str(ctx["wb"].settings.data_path), **(env or {})}
    out = subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, cwd=ROOT,
                         env=full_env, timeout=300)
    assert out.returncode != 0, f"{args} succeeded: {out.stdout}"
    assert "Traceback" not in out.stderr, out.stderr
    return out.stderr.strip()


def raised(fn) -> str:
    try:
        fn()
    except GroundworkError as e:
        return str(e)
    raise AssertionError("no error raised")


def ingest_report(ctx, name: str, data: bytes) -> str:
    folder = ctx["tmp"] / f"in-{name}"
    folder.mkdir()
    (folder / name).write_bytes(data)
    (folder / "good.md").write_text(f"# Good {name}\n\nA tenant sued over a ${len(name)}00 deposit.", encoding="utf-8")
    report = ctx["wb"].corpus.ingest_path(folder)
    assert report.added_documents >= 1  # the good file next to the bad one still gets in
    return " ".join(report.problems)


def gemini(ctx, **changes):
    settings = ctx["wb"].settings.replace(gemini_api_key=KEY, gemini_base_url=ctx["fake"].base_url,
                                          gemini_max_retries=1, request_timeout=2.0, **changes)
    return GeminiProvider(settings, backoff_base=0.01, max_backoff=0.02, max_retry_wait=0.2)


def ask(ctx, fault=None, schema=None, times=1, **changes):
    if fault:
        ctx["fake"].push_faults(*[fault] * times)
    request = LLMRequest([Message("user", "What did the court hold?")], json_schema=schema)
    result = gemini(ctx, **changes).generate(request)
    return result.json() if schema else result.text


def structured_reply_as_prose(ctx):
    ctx["fake"].responder = lambda body: "Sure! Here are some questions: what, why and how."
    try:
        return ask(ctx, schema={"type": "object", "properties": {"questions": {"type": "array"}}})
    finally:
        ctx["fake"].responder = None


def run_generation(ctx, **config):
    settings = ctx["wb"].settings.replace(gemini_api_key=KEY, gemini_base_url=ctx["fake"].base_url)
    return GenerationRun(settings, ctx["wb"].db, ctx["wb"].corpus, lambda g: GeminiProvider(settings, gate=g),
                         config=RunConfig(**config)).run()


def same_size_other_model_collection(ctx):
    wb = ctx["wb"]
    settings = wb.settings.replace(collection="foreign")
    from core.workbench import Workbench

    other = Workbench(settings, store_idle_close_s=0, embedder=wb.embedder)
    with other.stores.use() as store:
        store.create("foreign", 384)
        store.upsert("foreign", [f"00000000-0000-0000-0000-00000000000{i}" for i in range(3)],
                     np.random.default_rng(1).normal(size=(3, 384)), [{"text": f"passage {i}"} for i in range(3)])
    try:
        return raised(lambda: other.corpus.search("deposit"))
    finally:
        other.close()


def resume_owned_run(ctx):
    settings = ctx["wb"].settings.replace(gemini_api_key=KEY, gemini_base_url=ctx["fake"].base_url)
    run = GenerationRun(settings, ctx["wb"].db, ctx["wb"].corpus, lambda g: GeminiProvider(settings, gate=g),
                        config=RunConfig(num_dialogs=2))
    run._claim()  # this process holds the lease, as a generate running in another terminal would
    with ctx["wb"].db.write() as w:  # and keeps renewing it while the CLI starts
        w.execute("UPDATE runs SET lease_expires_at='2999-01-01T00:00:00+00:00' WHERE id=?", [run.run_id])
    try:
        return cli(ctx, "generate", "--resume", run.run_id)
    finally:
        with ctx["wb"].db.write() as w:
            w.execute("UPDATE runs SET status='incomplete', owner_token=NULL WHERE id=?", [run.run_id])


def missing_data_dir(ctx, *command):
    typo = ctx["tmp"] / f"typo-{command[0]}"
    message = cli(ctx, *command, "--data-dir", str(typo))
    assert not typo.exists()  # a read-only command made no folder and no database
    return message


CASES = [
    # ---- ingest ----
    Case("missing path", lambda c: cli(c, "index", "/no/such/folder"), r"/no/such/folder does not exist"),
    Case("empty file", lambda c: ingest_report(c, "empty.txt", b""), r"empty\.txt is empty"),
    Case("binary with text extension", lambda c: ingest_report(c, "blob.md", b"\x00\x01\x02\xff" * 50),
         r"blob\.md.*binary"),
    Case("undecodable encoding", lambda c: ingest_report(c, "latin.txt", bytes(range(128, 256)) * 20),
         r"latin\.txt.*(UTF-8|encoding)"),
    Case("malformed JSONL line", lambda c: ingest_report(
        c, "rows.jsonl", b'{"text": "A lease case about rent."}\n{not json\n{"text": "Another case."}\n'),
         r"rows\.jsonl line 2"),
    Case("JSONL without the text field", lambda c: ingest_report(
        c, "rows2.jsonl", b'{"body": "A lease case."}\n{"body": "Another."}\n'), r"text.*body|body.*text"),
    Case("JSONL text field holding a number", lambda c: ingest_report(
        c, "nums.jsonl", b'{"text": "A lease case about rent."}\n{"text": 12345}\n'),
         r'^nums\.jsonl line 2: "text" is a number \(12345\), not text; skipped'),
    Case("CSV without the text field", lambda c: ingest_report(c, "t.csv", b"title,body\nA,lease case\n"),
         r"t\.csv.*text"),
    Case("document over the size limit", lambda c: ingest_report(c, "huge.txt", b"word " * (11 * 1024 * 1024)),
         r"huge\.txt.*(MB|limit)"),
    Case("duplicate document", lambda c: " ".join(c["wb"].corpus.ingest_path(c["dup_dir"]).duplicates),
         r"same text as"),
    Case("unreachable Qdrant URL", lambda c: cli(c, "search", "deposit", "--qdrant-url", "http://127.0.0.1:9"),
         r"Cannot reach the Qdrant server at http://127\.0\.0\.1:9"),
    Case("collection from another model", same_size_other_model_collection, r"do not find themselves"),
    Case("chunk size too small", lambda c: cli(c, "index", "sample_data/corpus", "--chunk-size", "10"),
         r"chunk_size is 10"),
    Case("runs on a mistyped data dir", lambda c: missing_data_dir(c, "runs"),
         r"^error: The data dir .*/typo-runs does not exist: pass --data-dir"),
    Case("search on a mistyped data dir", lambda c: missing_data_dir(c, "search", "deposit"),
         r"^error: The data dir .*/typo-search does not exist: pass --data-dir"),
    Case("non-numeric env setting", lambda c: cli(c, "runs", env={"GROUNDWORK_CHUNK_SIZE": "big"}),
         r"GROUNDWORK_CHUNK_SIZE='big' is not a valid int"),
    # ---- prompts ----
    Case("empty prompt", lambda c: raised(lambda: PromptLibrary(c["wb"].db).save("respondent", "  ")),
         r"respondent prompt is empty"),
    Case("unknown placeholder", lambda c: raised(lambda: PromptLibrary(c["wb"].db).save(
        "respondent", "Use {context} and {docs}")), r"unknown placeholder\(s\) \{docs\}"),
    Case("missing placeholder", lambda c: raised(lambda: PromptLibrary(c["wb"].db).save(
        "correspondent", "Be a client.")), r"missing placeholder\(s\) \{briefing\}"),
    Case("200 KB prompt", lambda c: raised(lambda: PromptLibrary(c["wb"].db).save(
        "respondent", "{context}" + "x" * 200_000)), r"limit is 20,000"),
    # ---- providers ----
    Case("no Gemini key", lambda c: raised(lambda: GeminiProvider(c["wb"].settings.replace(gemini_api_key=""))),
         r"No Gemini API key: set GEMINI_API_KEY"),
    Case("invalid key", lambda c: raised(lambda: ask(c, "permission_denied")), r"key was rejected"),
    Case("unknown model", lambda c: raised(lambda: ask(c, "not_found", gemini_model="gemini-9-ultra")),
         r"gemini-9-ultra.*not found|not found.*gemini-9-ultra"),
    Case("daily quota", lambda c: raised(lambda: ask(c, "rate_day")), r"(?i)daily|per day|PerDay"),
    Case("daily quota: when it resets", lambda c: raised(lambda: ask(c, "rate_day")),
         r"daily Gemini quota .* resets at midnight Pacific time \(in \d+ h \d+ min, at \d\d:00 UTC\)"),
    Case("server unreachable", lambda c: check_connection(c["wb"].settings.replace(
        gemini_api_key=KEY, gemini_base_url="http://127.0.0.1:9", gemini_max_retries=0, request_timeout=2))[1],
         r"(?i)reach|connect"),
    Case("malformed response", lambda c: raised(lambda: ask(c, "malformed", times=2)), r"(?i)malformed|not valid JSON|unreadable"),
    Case("structured reply not JSON", lambda c: raised(lambda: structured_reply_as_prose(c)), r"asked for JSON"),
    # ---- generation ----
    Case("zero conversations", lambda c: raised(lambda: run_generation(c, num_dialogs=0)),
         r"num_dialogs must be at least 1"),
    Case("resume a run another process is generating", resume_owned_run,
         r"^error: Run \w+ is being generated right now by process \d+ on .*; wait for it or cancel it there"),
    Case("resume unknown run", lambda c: cli(c, "generate", "--resume", "nope123"), r"Run nope123 does not exist"),
    Case("auto-improve with the offline model", lambda c: cli(c, "generate", "--auto-improve", "--provider", "local",
                                                               "--num-dialogs", "1"), r"too small to judge"),
]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, indexed_sample_dir, embedder):
    from core.corpus.sparse_copy import copy_tree
    from core.workbench import Workbench
    from tests.conftest import make_settings

    tmp = tmp_path_factory.mktemp("sweep")
    copy_tree(indexed_sample_dir, tmp / "data")
    wb = Workbench(make_settings(tmp / "data"), store_idle_close_s=0, embedder=embedder)
    dup_dir = tmp / "dup"
    dup_dir.mkdir()
    first = wb.db.one("SELECT source_path, text FROM documents WHERE source_path LIKE 'opinions/%' LIMIT 1")
    (dup_dir / "copy.md").write_text(first["text"], encoding="utf-8")
    with FakeGemini(latency=0.0) as fake:
        context = {"wb": wb, "tmp": tmp, "fake": fake, "dup_dir": dup_dir}
        run_generation(context, num_dialogs=3, max_turns=2)
        yield context
    wb.close()


def snapshot(wb):
    return {"documents": wb.db.scalar("SELECT COUNT(*) FROM documents WHERE collection='groundwork'"),
            "conversations": wb.db.scalar("SELECT COUNT(*) FROM conversations"),
            "prompt versions": wb.db.scalar("SELECT COUNT(*) FROM prompt_versions")}


def test_the_sweep_has_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(ctx, case):
    before = snapshot(ctx["wb"])
    message = case.run(ctx)
    assert re.search(case.expect, message), f"{case.name}: {message!r}"
    assert len(message) < 1500 and "Traceback" not in message
    after = snapshot(ctx["wb"])
    assert after["conversations"] >= before["conversations"] and after["prompt versions"] == before["prompt versions"]
    assert after["documents"] >= before["documents"]  # nothing already indexed was lost
