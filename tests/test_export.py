"""Export on real SQLite: every format loads with `datasets`, follows its trainer's rules, splits by document."""

import json
import os
import subprocess
import sys
import tracemalloc

import pytest

from core.db import Database, dumps, loads
from core.corpus.embeddings import packaged_model_path as embedding_model_dir
from core.errors import ValidationError
from core.export import CONTEXTS, FORMATS, ExportOptions, export, load_tokenizer, split_of
from core.generation.prompts import PromptLibrary
from core.review.store import ReviewFilter, ReviewStore
from core.generation.workshop import Workshop
from tests.conftest import ROOT
from tests.test_review import fake, gemini, generate, insert_synthetic, multi_turn  # noqa: F401

ANY = ReviewFilter(status="any")


def run_export(wb, tmp_path, name="out", **kw):
    kw.setdefault("filter", ANY)
    return export(wb.db, ExportOptions(**kw), tmp_path / name, settings=wb.settings)


def rows_of(result, fmt):
    """Every row of a format, train then validation, loaded with datasets as a trainer would."""
    import datasets

    files = {info["split"]: str(result.out_dir / name) for name, info in result.manifest["files"].items()
             if info["format"] == fmt}
    assert files, f"no {fmt} file written"
    loaded = datasets.load_dataset("json", data_files=files, cache_dir=str(result.out_dir / ".hf-cache"))
    out = []
    for split in files:
        out.extend(loaded[split].to_list())
    return out


@pytest.fixture
def reviewed(indexed_wb, fake):  # noqa: F811
    """Ten generated conversations, reviewed: approved, one discarded, an edit, a bad turn."""
    wb = indexed_wb
    ids = generate(wb, fake, n=10, max_turns=3, seed=4)
    store = ReviewStore(wb.db)
    for cid in ids:
        store.approve(cid, "ana")
    edited = multi_turn(wb, ids, 2)
    original = store.get(edited)["turns"][1]["content"]
    store.edit_message(edited, 1, "Edited: the deposit must come back within 21 days, with an itemized list.", "ana")
    bad = next(c for c in ids if c != edited and wb.db.scalar(
        "SELECT COUNT(*) FROM turns WHERE conversation_id=? AND role='assistant'", [c]) >= 2)
    store.mark_turn(bad, 1, True, "ana")  # a bad first answer, followed by a good one
    discarded = next(c for c in ids if c not in (edited, bad))
    store.discard(discarded, "ungrounded", "ana")
    return {"wb": wb, "ids": ids, "edited": edited, "original": original, "bad": bad, "discarded": discarded}


# ---- trainer format rules -------------------------------------------------------------------------------
def check_openai(row):
    """OpenAI chat fine-tuning rules (also what TRL's SFTTrainer expects of `messages`)."""
    messages = row["messages"]
    assert messages, "a row needs messages"
    calls = set()
    expect = "user"
    for i, m in enumerate(messages):
        role = m["role"]
        assert role in ("system", "user", "assistant", "tool")
        if role == "system":
            assert i == 0 and m["content"].strip()
            continue
        if m.get("weight") is not None:
            assert role == "assistant" and m["weight"] in (0, 1)
        if role == "assistant" and m.get("tool_calls"):
            assert expect == "assistant"
            for call in m["tool_calls"]:
                assert call["type"] == "function" and call["function"]["name"] == "retrieve"
                assert json.loads(call["function"]["arguments"])["query"].strip()
                calls.add(call["id"])
            expect = "tool"
            continue
        if role == "tool":
            assert expect == "tool" and m["tool_call_id"] in calls and m["content"].strip()
            expect = "assistant"
            continue
        assert role == expect or (expect == "assistant" and role == "assistant"), f"role {role} at {i}"
        assert isinstance(m["content"], str) and m["content"].strip(), f"empty content at {i}"
        expect = "assistant" if role == "user" else "user"
    last = messages[-1]
    assert last["role"] == "assistant" and last["content"].strip() and not last.get("tool_calls")
    assert last.get("weight") in (None, 1), "a row must end on a trained answer"
    if calls:
        assert row["tools"][0]["function"]["name"] == "retrieve"


def check_sharegpt(row):
    human_side, gpt_side = {"human", "observation"}, {"gpt", "function_call"}
    turns = row["conversations"]
    if turns[0]["from"] == "system":
        turns = turns[1:]
    assert turns[0]["from"] == "human" and turns[-1]["from"] == "gpt"
    for i, t in enumerate(turns):
        assert t["value"].strip()
        assert t["from"] in (human_side if i % 2 == 0 else gpt_side), f"{t['from']} at {i}"


def check_alpaca(row):
    assert row["instruction"].strip() and row["output"].strip() and row["input"] == ""
    for user, assistant in row["history"] or []:
        assert user.strip() and assistant.strip()


def chat_of(row, fmt):
    if fmt == "openai":
        return [m for m in row["messages"] if m["role"] in ("user", "assistant") and not m.get("tool_calls")]
    if fmt == "sharegpt":
        return [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
                for t in row["conversations"] if t["from"] in ("human", "gpt")]
    out = []
    for user, assistant in (row["history"] or []) + [[row["instruction"], row["output"]]]:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return out


@pytest.mark.parametrize("context", ["none", "user", "tool"])
def test_every_format_loads_and_follows_its_rules(reviewed, tmp_path, context):
    wb = reviewed["wb"]
    formats = [f for f in FORMATS if not (context == "tool" and f == "alpaca")]
    # split=None: this test is about format rules; a split may withhold passages (tests/test_export_grounding.py).
    result = run_export(wb, tmp_path, formats=formats, context=context, with_system_prompt=context != "none",
                        split=None)
    assert result.manifest["selection"]["conversations"] == 10
    for fmt in ("openai", "sharegpt", "alpaca"):
        if fmt not in formats:
            continue
        rows = rows_of(result, fmt)
        # Changed on purpose (issue #14): openai no longer keeps a bad answer with weight 0, because TRL's
        # SFTTrainer ignores the weight and would train it. Every chat format stops before the first bad
        # answer, which leaves nothing of the conversation whose first answer is bad.
        assert len(rows) == 9
        assert result.manifest["counts"][fmt]["skipped"] == {
            "no assistant turn left after removing the turns marked bad": 1}
        for row in rows:
            {"openai": check_openai, "sharegpt": check_sharegpt, "alpaca": check_alpaca}[fmt](row)
    openai_rows = rows_of(result, "openai")
    if context == "user":
        for row in openai_rows:
            for m in row["messages"]:
                if m["role"] == "user":
                    assert m["content"].startswith("<context>\nThe passages below are quoted") and "</context>" in m["content"]
                    assert '<passage n="1" title="' in m["content"]
    if context == "tool":
        assert all(row["tools"] for row in openai_rows)
        assert all(any(m["role"] == "tool" for m in row["messages"]) for row in openai_rows)
    if context != "none":
        respondent = PromptLibrary(wb.db).current("respondent")["text"]
        first_line = respondent.strip().splitlines()[0]
        assert all(row["messages"][0]["role"] == "system" and first_line in row["messages"][0]["content"]
                   and "{context}" not in row["messages"][0]["content"] for row in openai_rows)
    # No chat format holds the bad answer (see above); every exported answer is trained, weight 1.
    bad_turns = wb.db.rows("SELECT content FROM turns WHERE conversation_id=? ORDER BY idx", [reviewed["bad"]])
    bad_answer = bad_turns[1]["content"]
    assert not [m for row in openai_rows for m in row["messages"] if m.get("content") == bad_answer]
    assert all(m["weight"] == 1 for row in openai_rows for m in row["messages"] if m["role"] == "assistant")
    for fmt in ("sharegpt", "alpaca"):
        if fmt in formats:
            assert all(m["content"] != bad_answer for row in rows_of(result, fmt) for m in chat_of(row, fmt))
    raw = {r["id"]: r for r in rows_of(result, "raw")}
    assert set(raw) == set(reviewed["ids"])
    r = raw[reviewed["edited"]]
    assert r["briefing"] and r["prompt_versions"]["respondent"] and r["model"] == "gemini-2.5-flash"
    assert r["tokens"]["prompt"] > 0 and r["source_document"] and r["status"] == "approved"
    assert r["messages"][1]["original_content"] == reviewed["original"] and r["messages"][1]["edited_by"] == "ana"
    assert all(m["retrieval"] and m["retrieval"][0]["text"] for m in r["messages"] if m["role"] == "assistant")
    dpo = rows_of(result, "dpo")
    edit_pair = [d for d in dpo if d["rejected"][0]["content"] == reviewed["original"]]
    assert len(edit_pair) == 1 and edit_pair[0]["chosen"][0]["content"].startswith("Edited: the deposit")
    assert edit_pair[0]["prompt"][-1]["role"] in ("user", "tool")
    kto = rows_of(result, "kto")
    labels = [k["label"] for k in kto]
    # True: approved conversations up to their first bad answer; false: the discarded one and the bad answer.
    assert labels.count(True) == 8 and labels.count(False) == 2
    for k in kto:
        assert k["completion"][0]["role"] == "assistant" and k["completion"][0]["content"].strip()
        assert k["prompt"][-1]["role"] in ("user", "tool")
    stats = result.manifest["token_stats"]["openai"]
    assert stats["rows"] == 9 and 0 < stats["min"] <= stats["p50"] <= stats["max"]
    assert result.manifest["tokenizer"]["name"].startswith(("gguf:", "estimate:"))


def test_system_context_takes_single_turn_rows_only(reviewed, tmp_path):
    wb = reviewed["wb"]
    result = run_export(wb, tmp_path, formats=["openai", "alpaca"], context="system", split=None)
    singles = [c for c in reviewed["ids"] if wb.db.scalar(
        "SELECT COUNT(*) FROM turns WHERE conversation_id=? AND role='assistant'", [c]) == 1]
    counts = result.manifest["counts"]["openai"]
    skipped = sum(counts["skipped"].values())
    assert counts["train"] + skipped == 10  # no split: one file
    assert skipped and "system prompt" in next(iter(counts["skipped"]))
    rows = rows_of(result, "openai")
    assert len(rows) == len(singles)
    alpaca = result.manifest["counts"]["alpaca"]
    assert alpaca["train"] == len(singles)
    for row in rows:
        check_openai(row)
        system, user, answer = row["messages"]
        assert system["role"] == "system" and '<passage n="1" title="' in system["content"]
        assert user["role"] == "user" and "<context>" not in user["content"]


def test_split_is_by_document_deterministic_and_stable_as_rows_are_added(tmp_path):
    db = Database(tmp_path / "big.db")
    insert_synthetic(db, 1_500, groups=300)
    opts = dict(formats=["raw"], filter=ANY, split=0.8, seed=3)
    first = export(db, ExportOptions(**opts), tmp_path / "a")
    again = export(db, ExportOptions(**opts), tmp_path / "b")
    assert first.manifest["files"] == again.manifest["files"]  # same rows, same bytes, same checksums

    def sides(result):
        out = {}
        for name, info in result.manifest["files"].items():
            for line in (result.out_dir / name).read_text().splitlines():
                row = json.loads(line)
                out[row["id"]] = (info["split"], row["source_document"])
        return out

    before = sides(first)
    share = sum(1 for s, _ in before.values() if s == "train") / len(before)
    assert 0.72 < share < 0.88  # 300 groups: the hash lands near the ratio
    by_group = {}
    for side, group in before.values():
        by_group.setdefault(group, set()).add(side)
    assert len(by_group) == 300 and all(len(s) == 1 for s in by_group.values())  # no document on both sides
    insert_synthetic(db, 700, groups=400, start=1_500)  # the dataset grows, with new documents too
    after = sides(export(db, ExportOptions(**opts), tmp_path / "c"))
    assert len(after) == 2_200
    assert all(after[cid][0] == side for cid, (side, _) in before.items())  # nobody changed sides
    other_seed = sides(export(db, ExportOptions(**{**opts, "seed": 4}), tmp_path / "d"))
    assert any(other_seed[c][0] != after[c][0] for c in after)
    # The assignment itself: share near the ratio over many groups.
    groups = [f"doc-{i}" for i in range(4_000)]
    assert 0.87 < sum(split_of(g, 0.9, 0) == "train" for g in groups) / len(groups) < 0.93
    db.close()


def test_no_source_document_on_both_sides_with_generated_data(reviewed, tmp_path):
    wb = reviewed["wb"]
    for seed in range(40):  # a seed that puts some of the ~10 documents on each side
        result = run_export(wb, tmp_path, name=f"s{seed}", formats=["raw", "openai"], split=0.5, seed=seed)
        if result.manifest["counts"]["raw"]["validation"] and result.manifest["counts"]["raw"]["train"]:
            break
    else:
        pytest.fail("no seed split the generated documents across both sides")
    docs = {"train": set(), "validation": set()}
    for name, info in result.manifest["files"].items():
        if info["format"] == "raw":
            for line in (result.out_dir / name).read_text().splitlines():
                row = json.loads(line)
                docs[info["split"]].add(row["source_document"])
                first_chunk = loads(wb.db.scalar("SELECT briefing_ids FROM conversations WHERE id=?", [row["id"]]))[0]
                assert row["source_document"] == wb.db.scalar("SELECT document_id FROM chunks WHERE id=?",
                                                              [first_chunk])
    assert docs["train"] and docs["validation"] and not docs["train"] & docs["validation"]
    # Since #14 a group is every document an answer draws on, joined: one group may hold several conversations'
    # source documents, and documents that are no conversation's source. Each side's groups hold its sources.
    split = result.manifest["split"]
    for side in ("train", "validation"):
        assert 1 <= split["groups"][side] <= split["documents"][side]
        assert split["documents"][side] >= len(docs[side])


def test_export_follows_the_review_filter(reviewed, tmp_path, fake):  # noqa: F811
    wb = reviewed["wb"]
    store = ReviewStore(wb.db)
    gold, low, restored = [c for c in reviewed["ids"] if c != reviewed["discarded"]][:3]
    store.rate(gold, 5, "ana")
    store.rate(low, 2, "ana")
    store.tag(gold, "gold", "ana")
    store.restore(restored, "ana")
    extra = generate(wb, fake, n=2, max_turns=1, seed=8)  # a second run, still new
    run_id = wb.db.scalar("SELECT run_id FROM conversations WHERE id=?", [extra[0]])

    def exported(**filter_args):
        f = ReviewFilter(**filter_args)
        result = export(wb.db, ExportOptions(formats=["raw"], filter=f, split=None), tmp_path / str(len(filter_args))
                        / "x", settings=wb.settings)
        got = {json.loads(line)["id"] for line in (result.out_dir / "raw.jsonl").read_text().splitlines()}
        assert got == {r["id"] for r in store.page(f, limit=100)}
        return got

    approved = exported(status="approved")
    assert len(approved) == 8 and restored not in approved and reviewed["discarded"] not in approved
    assert exported(status="approved", min_rating=4) == {gold}
    assert exported(status="any", tag="gold") == {gold}
    assert exported(status="new", run_id=run_id) == set(extra)
    assert exported(status="discarded") == {reviewed["discarded"]}
    assert exported() == exported(status="any") and len(exported()) == 12


def test_preference_pairs_from_an_edit_an_ab_pick_and_the_judge(indexed_wb, fake, tmp_path):  # noqa: F811
    wb = indexed_wb
    library = PromptLibrary(wb.db)
    library.ensure_defaults()
    a = library.current("respondent")
    b = library.save("respondent", a["text"] + "\nAnswer in at most two sentences.")
    settings, factory = gemini(wb, fake)
    ws = Workshop(wb, factory, "gemini", settings.gemini_model)
    comparison = ws.run_ab("respondent", a["id"], b["id"], n=2, max_turns=1, seed=2)
    pairs = ws.comparison_pairs(comparison)
    ws.pick(comparison, pairs[0]["pair"], "A", actor="ana")
    store = ReviewStore(wb.db)
    # The reviewer changes their mind on the review page: the latest pick of a pair wins.
    assert store.prefer(pairs[0]["B"], pairs[0]["A"], "ben") == "ab"
    store.bulk_status(ReviewFilter(comparison_id=comparison), "approved", "ana")
    turns = {cid: wb.db.rows("SELECT role, content FROM turns WHERE conversation_id=? ORDER BY idx", [cid])
             for cid in (pairs[0]["A"], pairs[0]["B"], pairs[1]["A"])}
    assert turns[pairs[0]["A"]][1]["content"] != turns[pairs[0]["B"]][1]["content"]
    # A scripted edit on the second pair's arm A.
    store.edit_message(pairs[1]["A"], 1, "Edited answer: see the passages above.", "ana")
    # Judge attempts as the engine stores them: the kept attempt over a lower-scoring one.
    judged = pairs[1]["B"]
    kept = [dict(t) for t in wb.db.rows("SELECT role, content FROM turns WHERE conversation_id=? ORDER BY idx",
                                        [judged])]
    worse = [kept[0], {"role": "assistant", "content": "A vague first attempt."}]
    with wb.db.write() as w:
        w.execute("UPDATE conversations SET judge=? WHERE id=?", [dumps({"best": 1, "threshold": 3.5, "attempts": [
            {"overall": 2.0, "messages": worse}, {"overall": 4.5, "messages": kept}]}), judged])
    result = run_export(wb, tmp_path, formats=["dpo"], filter=ReviewFilter(status="approved"), split=None)
    rows = [json.loads(line) for line in (result.out_dir / "dpo.jsonl").read_text().splitlines()]
    by_source = result.manifest["counts"]["dpo"]["sources"]
    assert by_source == {"ab": 1, "edit": 1, "judge": 1}
    ab = next(r for r in rows if r["chosen"][0]["content"] == turns[pairs[0]["B"]][1]["content"])
    assert ab["rejected"][0]["content"] == turns[pairs[0]["A"]][1]["content"]
    # Changed on purpose (issue #14): the default context puts the answer's passages before the question.
    assert len(ab["prompt"]) == 1 and ab["prompt"][0]["role"] == "user"
    assert ab["prompt"][0]["content"].startswith("<context>\nThe passages below are quoted")
    assert ab["prompt"][0]["content"].endswith("</context>\n\n" + turns[pairs[0]["B"]][0]["content"])
    edit = next(r for r in rows if r["chosen"][0]["content"].startswith("Edited answer"))
    assert edit["rejected"][0]["content"] == turns[pairs[1]["A"]][1]["content"]
    judge = next(r for r in rows if r["rejected"][0]["content"] == "A vague first attempt.")
    assert judge["chosen"][0]["content"] == kept[1]["content"]
    rows_of(result, "dpo")  # loads with datasets
    for r in rows:
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]


def test_duplicates_long_rows_and_tokenizers(tmp_path):
    db = Database(tmp_path / "g.db")
    ids = insert_synthetic(db, 6, groups=3)
    with db.write() as w:  # two conversations that say exactly what two others say
        for src, dst in ((ids[0], ids[3]), (ids[1], ids[4])):
            for idx in (0, 1):
                w.execute("UPDATE turns SET content=(SELECT content FROM turns WHERE conversation_id=? AND idx=?) "
                          "WHERE conversation_id=? AND idx=?", [src, idx, dst, idx])
        w.execute("UPDATE turns SET content=? WHERE conversation_id=? AND idx=1", ["word " * 400, ids[5]])
    # context none: these rows differ only in their passages, and this test is about duplicate messages.
    result = export(db, ExportOptions(formats=["openai", "raw"], filter=ANY, split=None, context="none"),
                    tmp_path / "a")
    assert result.manifest["counts"]["openai"]["duplicates"] == 2
    assert result.manifest["counts"]["raw"]["duplicates"] == 0  # raw rows carry ids: never duplicates
    assert result.manifest["token_stats"]["openai"]["max"] > 300
    capped = export(db, ExportOptions(formats=["openai"], filter=ANY, split=None, max_tokens=200, context="none"),
                    tmp_path / "b")
    assert capped.manifest["counts"]["openai"]["too_long"] == 1 and capped.manifest["counts"]["openai"]["train"] == 3
    assert capped.manifest["token_stats"]["openai"]["max"] <= 200
    hf = export(db, ExportOptions(formats=["openai"], filter=ANY, split=None, tokenizer=str(embedding_model_dir())),
                tmp_path / "c")
    assert hf.manifest["tokenizer"]["name"].startswith("transformers:")
    counter, warning = load_tokenizer(str(embedding_model_dir()))
    assert counter.count("The deposit was returned late.") == 6 and not warning
    with pytest.raises(ValidationError, match="Could not load a tokenizer from"):
        load_tokenizer(str(tmp_path / "no-such-tokenizer"))
    with pytest.raises(ValidationError, match="Tokenizer file not found"):
        load_tokenizer(str(tmp_path / "missing.gguf"))
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    for name, info in manifest["files"].items():
        import hashlib

        assert hashlib.sha256((result.out_dir / name).read_bytes()).hexdigest() == info["sha256"]
    assert manifest["counts"]["openai"]["train"] == 4 and manifest["formats"] == ["openai", "raw"]
    db.close()


def test_bad_input_is_refused_with_a_clear_message_and_nothing_written(reviewed, tmp_path):
    wb = reviewed["wb"]
    with pytest.raises(ValidationError, match="Nothing to export: no conversations match"):
        run_export(wb, tmp_path, filter=ReviewFilter(status="approved", tag="no-such-tag"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ValidationError, match="Cannot write the export to"):
        export(wb.db, ExportOptions(filter=ANY), blocker / "sub", settings=wb.settings)
    with pytest.raises(ValidationError, match="is a file, not a folder"):
        export(wb.db, ExportOptions(filter=ANY), blocker, settings=wb.settings)
    for ratio in (0, 1, 1.5, -0.1):
        with pytest.raises(ValidationError, match="strictly between 0 and 1"):
            run_export(wb, tmp_path, split=ratio)
    with pytest.raises(ValidationError, match="Alpaca has no tool messages"):
        run_export(wb, tmp_path, formats=["alpaca"], context="tool")
    with pytest.raises(ValidationError, match="Unknown format 'csv'"):
        run_export(wb, tmp_path, formats=["csv"])
    with pytest.raises(ValidationError, match="Unknown context"):
        run_export(wb, tmp_path, context="everywhere")
    cid = reviewed["edited"]
    with wb.db.write() as w:  # an empty edit that got in some other way (review itself refuses one)
        w.execute("UPDATE turns SET content='  ', edited_by='zed' WHERE conversation_id=? AND idx=1", [cid])
    out = tmp_path / "refused"
    with pytest.raises(ValidationError, match=f"Conversation {cid} has an empty assistant message "
                                              r"\(turn 1 answer\), edited by zed"):
        run_export(wb, out.parent, name=out.name, formats=["openai", "raw"])
    assert not any(p.suffix == ".jsonl" for p in out.glob("*")) if out.exists() else True
    assert set(CONTEXTS) == {"none", "system", "user", "tool"}


def test_memory_stays_flat_as_the_export_grows(tmp_path):
    db = Database(tmp_path / "m.db")
    insert_synthetic(db, 500, groups=100)
    peaks = {}
    for n, extra in ((500, 0), (5_000, 4_500)):
        if extra:
            insert_synthetic(db, extra, groups=100, start=500)
        tracemalloc.start()
        result = export(db, ExportOptions(formats=["openai", "raw"], filter=ANY, dedupe=False), tmp_path / str(n))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert result.manifest["counts"]["raw"]["train"] + result.manifest["counts"]["raw"]["validation"] == n
    written = sum(info["bytes"] for info in result.manifest["files"].values())
    assert written > 3_000_000
    assert peaks[5_000] < 3 * peaks[500] + 2_000_000, peaks  # 10x the rows, not 10x the memory
    db.close()


def test_the_manifest_and_card_count_what_the_grounding_checks_said_about_the_exported_conversations(reviewed,
                                                                                                  tmp_path):
    from core.quality import score_ids

    wb, store = reviewed["wb"], ReviewStore(reviewed["wb"].db)
    invented = next(c for c in reviewed["ids"] if c not in (reviewed["edited"], reviewed["bad"]))
    store.edit_message(invented, 1, "Under Smith v. Jones, 512 U.S. 874 (1994), the tenant owes $48,250 on "
                                    "March 3, 2019.", "ana")  # a case, an amount, a date no passage holds
    unchecked = reviewed["ids"][-1] if reviewed["ids"][-1] != invented else reviewed["ids"][-2]
    assert store.unchecked_ids(ANY) == sorted(reviewed["ids"], key=lambda c: (
        wb.db.scalar("SELECT created_at FROM conversations WHERE id=?", [c]), c))
    score_ids(wb.db, wb.embedder, [c for c in reviewed["ids"] if c != unchecked])
    assert store.unchecked_ids(ANY) == [unchecked]
    result = export(wb.db, ExportOptions(formats=["openai"], filter=ANY, split=None), tmp_path / "out")
    checks = result.manifest["grounding_checks"]
    flagged = store.flagged_count(ANY)
    assert flagged >= 1 and checks["flagged"] == flagged  # the same rule as Review's and Export's warnings
    assert wb.db.scalar("SELECT citation_flags FROM conversations WHERE id=?", [invented]) >= 1
    assert checks["unchecked"] == 1 and checks["passed"] + checks["flagged"] + 1 == len(reviewed["ids"])
    assert any(f"{flagged} of the 10 exported conversations are flagged" in w for w in result.manifest["warnings"])
    assert any(w.startswith("1 exported conversations were never checked") for w in result.manifest["warnings"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"{checks['passed']} conversations passed, {flagged} flagged" in card and "1 never checked" in card


# ---- CLI ----------------------------------------------------------------------------------------------------
def cli(data_dir, *args):
    env = {**os.environ, "GROUNDWORK_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "core.cli", "export", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_export_happy_path_and_bad_input(reviewed, tmp_path):
    wb = reviewed["wb"]
    data = wb.settings.data_path
    out = tmp_path / "cli-out"
    # --no-grade: the conversations were never checked, and the manifest and stderr say so.
    done = cli(data, "--status", "any", "--no-grade", "--out", str(tmp_path / "unchecked"), "--quiet")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "unchecked" / "manifest.json").read_text())
    assert manifest["grounding_checks"]["unchecked"] == 10 and "10 exported conversations were never checked" \
        in done.stderr
    done = cli(data, "--format", "openai", "--format", "sharegpt", "--format", "kto", "--status", "any",
               "--context", "user", "--split", "0.5", "--seed", "1", "--with-system-prompt", "--out", str(out),
               "--quiet")
    assert done.returncode == 0, done.stderr
    # By default the export checks what was never checked first: every conversation has a verdict.
    checks = json.loads((out / "manifest.json").read_text())["grounding_checks"]
    assert checks["unchecked"] == 0 and checks["passed"] + checks["flagged"] == 10
    assert checks["flagged"] == ReviewStore(wb.db).flagged_count(ANY)
    lines = done.stdout.splitlines()
    assert lines[0] == f"manifest: {out / 'manifest.json'}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["formats"] == ["openai", "sharegpt", "kto"] and manifest["split"]["ratio"] == 0.5
    openai = manifest["counts"]["openai"]
    assert f"openai: train {openai['train']}, validation {openai['validation']}" in lines[1]
    assert openai["train"] + openai["validation"] == 9  # the conversation whose first answer is bad: no row
    # Default status is approved; --min-rating and --run filter.
    store = ReviewStore(wb.db)
    store.rate(reviewed["edited"], 5, "ana")
    run_id = wb.db.scalar("SELECT run_id FROM conversations LIMIT 1")
    done = cli(data, "--min-rating", "4", "--run", run_id, "--out", str(tmp_path / "rated"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "rated" / "manifest.json").read_text())["selection"]["conversations"] == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (("--status", "approved", "--tag", "nope"), "Nothing to export"),
        (("--out", str(blocker / "sub")), "Cannot write the export to"),
        (("--split", "1.5"), "strictly between 0 and 1"),
        (("--split", "0"), "strictly between 0 and 1"),
        (("--format", "alpaca", "--context", "tool"), "Alpaca has no tool messages"),
    ]
    for args, message in cases:
        bad = cli(data, *args, "--quiet")
        assert bad.returncode == 2, (args, bad.stderr)
        assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ") and message in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    with wb.db.write() as w:
        w.execute("UPDATE turns SET content='' WHERE conversation_id=? AND idx=1", [reviewed["edited"]])
    bad = cli(data, "--out", str(tmp_path / "empty-msg"), "--quiet")
    assert bad.returncode == 2 and reviewed["edited"] in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
    missing = cli(tmp_path / "no-data-here", "--quiet")
    assert missing.returncode == 2 and "No workbench database" in missing.stderr


def test_raw_rows_keep_one_type_per_key_so_any_split_loads(reviewed, tmp_path):
    """datasets infers the schema from the first file: a key that is null throughout train must not be a
    string in validation (the discarded conversation's reason, a rating, an edit) wherever the split falls."""
    wb = reviewed["wb"]
    ReviewStore(wb.db).rate(reviewed["ids"][0], 4, "ana")
    result = run_export(wb, tmp_path, formats=["raw"], split=None)
    rows = [json.loads(line) for line in (result.out_dir / "raw.jsonl").read_text().splitlines()]

    def shape(value):
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()} if value else "dict"
        if isinstance(value, list):
            return "list"
        return type(value).__name__

    top = {k: {shape(r[k]) if not isinstance(r[k], dict) else "dict" for r in rows} for k in rows[0]}
    assert all(len(kinds) == 1 and "NoneType" not in kinds for k, kinds in top.items()
               if k not in ("question_meta", "prompt_versions")), top
    assert {tuple(sorted(m)) for r in rows for m in r["messages"] if m["role"] == "assistant"} and len(
        {tuple(sorted(m)) for r in rows for m in r["messages"] if m["role"] == "assistant"}) == 1
    # And the trainer's loader takes any split of them: the rated/discarded/edited rows alone in validation.
    import datasets

    special = {reviewed["discarded"], reviewed["edited"], reviewed["ids"][0]}
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] not in special))
    validation.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] in special))
    loaded = datasets.load_dataset("json", data_files={"train": str(train), "validation": str(validation)},
                                   cache_dir=str(tmp_path / ".hf"))
    assert loaded["validation"].num_rows == len(special) and loaded["train"].num_rows == 10 - len(special)
    assert "ungrounded" in " ".join(loaded["validation"]["discard_reason"])
