"""Exports that train grounded models (issue #14): per-turn context by default, RAFT, masks, leak-free split,
answer-quality labels, dataset card. Real SQLite, real generated conversations (fake Gemini), real files."""

import json
import re

import pytest

from core.db import dumps, loads
from core.errors import ValidationError
from core.export import (CHAT_FORMATS, RAFT_REFUSAL, ExportOptions, export, label_for_discard, passages_text,
                         reason_table)
from core.export.raft import oracle_ids
from core.export.split import DocumentGroups, QuestionOverlap
from core.generation.engine import format_passages
from core.corpus.collection import Passage
from core.review.store import ReviewStore
from tests.test_export import ANY, cli, reviewed, rows_of, run_export  # noqa: F401
from tests.test_review import fake, insert_synthetic  # noqa: F401

_PASSAGE_ID = re.compile(r'^<passage n="\d+" title="[^"]*" id="([^"]+)"', re.MULTILINE)


def chat_with_context(row, fmt):
    """[(context passage ids shown since the previous answer, answer text)] for each answer of a chat row."""
    if fmt == "completion":
        messages = row["prompt"] + row["completion"]
    elif fmt == "openai":
        messages = row["messages"]
    elif fmt == "sharegpt":
        names = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool",
                 "function_call": "call"}
        messages = [{"role": names[t["from"]], "content": t["value"]} for t in row["conversations"]]
    else:
        messages = []
        for user, answer in (row["history"] or []) + [[row["instruction"], row["output"]]]:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    out, shown = [], []
    for m in messages:
        if m["role"] in ("user", "tool", "system"):
            shown += _PASSAGE_ID.findall(m.get("content") or "")
        elif m["role"] == "assistant" and m.get("content"):
            out.append((shown, m["content"]))
            shown = []
    return out[-1:] if fmt == "completion" else out  # completion rows train only their last answer


def stored_answers(wb):
    """answer text -> ids of every passage stored for that answer (new and carried)."""
    out = {}
    for t in wb.db.rows("SELECT content, retrieval FROM turns WHERE role='assistant'"):
        out[t["content"]] = [p["id"] for p in loads(t["retrieval"], []) or []]
    return out


@pytest.mark.parametrize("fmt", CHAT_FORMATS)
def test_default_export_shows_each_answer_its_own_passages_and_never_a_later_turns(reviewed, tmp_path, fmt):
    wb = reviewed["wb"]
    result = export(wb.db, ExportOptions(formats=[fmt, "raw"], filter=ANY), tmp_path / fmt, settings=wb.settings)
    assert result.manifest["context"] == "user" and "never a later turn" in result.manifest["placement"]
    assert not any("context none" in w for w in result.manifest["warnings"])
    answers = stored_answers(wb)
    # The default split withholds passages of documents on the other side: raw rows list what each answer
    # keeps (retrieval) and what it lost (withheld). One answer text can occur in several conversations.
    kept: dict[str, list[list[str]]] = {}
    for r in rows_of(result, "raw"):
        for m in r["messages"]:
            if m["role"] == "assistant":
                assert not {p["id"] for p in m["retrieval"]} & set(m["withheld"])
                kept.setdefault(m["content"], []).append(list(dict.fromkeys(p["id"] for p in m["retrieval"])))
    rows = rows_of(result, fmt)
    assert rows
    checked = 0
    for row in rows:
        for shown, answer in chat_with_context(row, fmt):
            assert answer in answers, "every trained answer is a stored, good answer"
            assert shown and shown in kept[answer], "exactly this answer's passages, in order, never another turn's"
            checked += 1
    assert checked >= len(rows)


def test_carried_passages_are_shown_and_labelled_and_old_rows_still_work(reviewed, tmp_path):
    """The #13 data contract: retrieval holds new passages, then carried ones ({carried, from_turn})."""
    wb = reviewed["wb"]
    cid = next(c for c in reviewed["ids"] if c not in (reviewed["bad"], reviewed["discarded"]) and wb.db.scalar(
        "SELECT COUNT(*) FROM turns WHERE conversation_id=? AND role='assistant'", [c]) >= 2)
    first, second = [loads(r["retrieval"]) for r in wb.db.rows(
        "SELECT retrieval FROM turns WHERE conversation_id=? AND role='assistant' ORDER BY idx", [cid])][:2]
    # A turn-1 passage that turn 2 did not retrieve again (anchored turns often do: then a copy under a new id).
    second_ids = {p["id"] for p in second}
    earlier = next((p for p in first if p["id"] not in second_ids), {**first[0], "id": first[0]["id"] + "-t1"})
    carried = [{**earlier, "carried": True, "found_by": ["conversation"], "from_turn": 1}]
    dup = [{**second[0]}]  # a passage listed twice is shown once
    with wb.db.write() as w:
        w.execute("UPDATE turns SET retrieval=? WHERE conversation_id=? AND idx=3",
                  [dumps(second + carried + dup), cid])
    result = export(wb.db, ExportOptions(formats=["openai"], filter=ANY, split=None), tmp_path / "c",
                    settings=wb.settings)
    row = next(r for r in rows_of(result, "openai") if any(
        m["content"] == wb.db.scalar("SELECT content FROM turns WHERE conversation_id=? AND idx=3", [cid])
        for m in r["messages"]))
    users = [m["content"] for m in row["messages"] if m["role"] == "user"]
    assert 'status="carried from turn 1"' in users[1] and 'status="carried' not in users[0]
    assert len(_PASSAGE_ID.findall(users[1])) == len({p["id"] for p in second + carried})
    # Passages without the new keys print exactly as the respondent saw them.
    plain = [{"id": "a", "score": 0.5, "text": "Rent is due.", "document_id": "d", "title": "T",
              "source_path": "t.md", "position": 2}]
    assert passages_text(plain) == format_passages([Passage(**plain[0])])


def test_context_none_is_an_explicit_choice_with_a_warning(reviewed, tmp_path):
    wb = reviewed["wb"]
    result = run_export(wb, tmp_path, formats=["openai"], context="none")
    assert any("answers will cite sources the model cannot see" in w for w in result.manifest["warnings"])
    assert result.manifest["context"] == "none"
    assert all("<context>" not in m["content"] for r in rows_of(result, "openai") for m in r["messages"])
    done = cli(wb.settings.data_path, "--context", "none", "--status", "any", "--out", str(tmp_path / "n"),
               "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("answers will cite sources the model cannot see") == 1  # said once, before the work
    ok = cli(wb.settings.data_path, "--status", "any", "--out", str(tmp_path / "d"), "--quiet")
    assert ok.returncode == 0 and "cannot see" not in ok.stderr
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["context"] == "user"


# ---- masks ------------------------------------------------------------------------------------------------
def test_a_bad_answer_is_never_in_a_trained_position(reviewed, tmp_path):
    wb = reviewed["wb"]
    bad_answer, good_after = [r["content"] for r in wb.db.rows(
        "SELECT content FROM turns WHERE conversation_id=? AND role='assistant' ORDER BY idx", [reviewed["bad"]])][:2]
    result = run_export(wb, tmp_path, formats=["openai", "sharegpt", "alpaca", "completion"], split=None)
    for fmt in ("openai", "sharegpt", "alpaca"):
        text = (result.out_dir / f"{fmt}.jsonl").read_text()
        assert json.dumps(bad_answer, ensure_ascii=False)[1:-1] not in text, fmt
    for row in rows_of(result, "openai"):
        assert all(m.get("weight", 1) == 1 for m in row["messages"] if m["role"] == "assistant")
    completion = rows_of(result, "completion")
    assert all(r["completion"][0]["content"] != bad_answer for r in completion)
    later = [r for r in completion if r["completion"][0]["content"] == good_after]
    assert len(later) == 1 and any(m["content"] == bad_answer for m in later[0]["prompt"])
    assert result.manifest["trainers"]["openai"][1]["trainer"] == "TRL SFTTrainer"
    assert "stop before the first answer marked bad" in result.manifest["bad_turns"]


# ---- RAFT ---------------------------------------------------------------------------------------------------
def test_raft_profile_oracle_plus_distractors_shuffled_with_distractor_only_rows(reviewed, tmp_path):
    wb = reviewed["wb"]
    ReviewStore(wb.db).mark_turn(reviewed["bad"], 1, False, "ana")  # every answer good: a clean count
    result = run_export(wb, tmp_path, formats=["openai", "raw"], profile="raft", raft_distractors=2,
                        raft_no_oracle_share=0.3, split=None, seed=5)
    profile = result.manifest["profile"]
    assert profile["name"] == "raft" and profile["distractors"] == 2 and profile["no_oracle_share"] == 0.3
    assert profile["counts"]["rows"] == 10 and profile["counts"]["no_oracle_rows"] == 3  # exactly the share
    assert profile["counts"]["distractors_from_bm25"] > 0
    chunk_doc = {r["id"]: r["document_id"] for r in wb.db.rows("SELECT id, document_id FROM chunks")}
    raw = {r["id"]: r for r in rows_of(result, "raw")}
    refusals = 0
    orders_differ = False
    for row in rows_of(result, "openai"):
        users = [m["content"] for m in row["messages"] if m["role"] == "user"]
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        questions = [u.split("</context>\n\n", 1)[1] for u in users]
        source = next(r for r in raw.values() if [m["content"] for m in r["messages"] if m["role"] == "user"][
            :len(questions)] == questions and all(a in (m["content"], RAFT_REFUSAL) for m, a in zip(
                [m for m in r["messages"] if m["role"] == "assistant"], answers)))
        stored = [m for m in source["messages"] if m["role"] == "assistant"]
        for k, (user, answer) in enumerate(zip(users, answers)):
            shown = _PASSAGE_ID.findall(user)
            if answer == RAFT_REFUSAL:
                refusals += 1
                assert k == len(answers) - 1, "only a row's last answer is distractor-only"
                oracle = oracle_ids(stored[k]["content"], stored[k]["retrieval"])
                assert not oracle & set(shown)
                gold_docs = {p["document_id"] for p in stored[k]["retrieval"] if p["id"] in oracle}
                assert not {chunk_doc.get(i) for i in shown} & gold_docs
                continue
            oracle = oracle_ids(answer, stored[k]["retrieval"])
            assert oracle <= set(shown), "the oracle passages are always there"
            distractors = [i for i in shown if i not in oracle]
            assert len(distractors) == 2
            gold_docs = {p["document_id"] for p in stored[k]["retrieval"] if p["id"] in oracle}
            assert not {chunk_doc.get(i) for i in distractors} & gold_docs, "distractors come from other documents"
            if shown[:len(oracle)] != [p["id"] for p in stored[k]["retrieval"] if p["id"] in oracle]:
                orders_differ = True
    assert refusals == profile["counts"]["no_oracle_rows"]
    assert 0 < refusals < 10 and orders_differ
    again = run_export(wb, tmp_path, name="again", formats=["openai"], profile="raft", raft_distractors=2,
                       raft_no_oracle_share=0.3, split=None, seed=5)
    assert again.manifest["files"]["openai.jsonl"]["sha256"] == result.manifest["files"]["openai.jsonl"]["sha256"]
    card = (result.out_dir / "README.md").read_text()
    assert "- raft" in card and "distractors per answer" in card


def test_raft_distractors_never_cross_the_split(reviewed, tmp_path):
    wb = reviewed["wb"]
    result = run_export(wb, tmp_path, formats=["openai"], profile="raft", raft_distractors=4, split=0.5, seed=2)
    sides = document_sides(wb, result, "openai")
    assert not sides["train"] & sides["validation"]


def test_raft_bad_options_are_refused(reviewed, tmp_path):
    wb = reviewed["wb"]
    for kw, message in ((dict(context="none"), "RAFT profile puts passages"),
                        (dict(raft_distractors=0), "distractors per answer"),
                        (dict(raft_no_oracle_share=1.0), "distractor-only rows"),
                        (dict(profile="fancy"), "Unknown export profile")):
        with pytest.raises(ValidationError, match=message):
            run_export(wb, tmp_path, **{"profile": "raft", **kw})
    bad = cli(wb.settings.data_path, "--profile", "raft", "--raft-no-oracle-share", "2", "--quiet")
    assert bad.returncode == 2 and "distractor-only rows" in bad.stderr and "Traceback" not in bad.stderr


# ---- split --------------------------------------------------------------------------------------------------
def document_sides(wb, result, fmt):
    """Documents whose text appears in each side's rows (passage ids in the row text → their document)."""
    chunk_doc = {r["id"]: r["document_id"] for r in wb.db.rows("SELECT id, document_id FROM chunks")}
    out = {"train": set(), "validation": set()}
    for name, info in result.manifest["files"].items():
        if info["format"] != fmt:
            continue
        for line in (result.out_dir / name).read_text().splitlines():
            for cid in re.findall(r'id="?([0-9a-f-]{36})', line):
                out[info["split"]].add(chunk_doc[cid])
    return out


def test_no_validation_document_reaches_a_training_row(reviewed, tmp_path):
    wb = reviewed["wb"]
    # Conversations about different parts of the corpus: a second batch briefed from other documents.
    result = None
    for seed in range(30):
        result = run_export(wb, tmp_path, name=f"s{seed}", formats=["openai", "raw"], split=0.5, seed=seed)
        if result.manifest["counts"]["openai"]["validation"] and result.manifest["counts"]["openai"]["train"]:
            break
    split = result.manifest["split"]
    assert "whose text reaches a row is on that row's side" in split["group_by"] and "union-find" in split["method"]
    sides = document_sides(wb, result, "openai")
    assert not sides["train"] & sides["validation"]
    raw_docs = {"train": set(), "validation": set()}
    for name, info in result.manifest["files"].items():
        if info["format"] == "raw":
            for line in (result.out_dir / name).read_text().splitlines():
                raw_docs[info["split"]].update(json.loads(line)["documents"])
    assert not raw_docs["train"] & raw_docs["validation"]
    assert split["passages_withheld"] >= 0 and split["conversations"]["validation"] > 0


def test_union_find_groups_documents_that_share_a_conversation():
    g = DocumentGroups()
    for docs in ({"a", "b"}, {"c"}, {"b", "d"}, {"e", "f"}, {"f", "a"}):
        g.join(docs)
    g.assign(0.5, 0)
    assert g.side({"a"}) == g.side({"d"}) == g.side({"e"}) == g.side({"b", "f"})
    stats = g.stats()
    assert sum(stats["groups"].values()) == 2 and stats["largest_group"]["documents"] == 5


def test_split_with_synthetic_rows_links_briefing_and_passage_documents(tmp_path):
    from core.db import Database

    db = Database(tmp_path / "s.db")
    insert_synthetic(db, 400, groups=200)  # conversation i: briefing chunk-(i % 200), passage doc-(i % 50)
    # The answers share only "21 days" with the passage: below the oracle floor, so by answers each briefing
    # is a group of its own (and the passage is withheld where its document sits on the other side).
    by_answers = export(db, ExportOptions(formats=["raw"], filter=ANY, split=0.7, seed=1), tmp_path / "a")
    assert sum(by_answers.manifest["split"]["groups"].values()) == 200  # one per briefing chunk
    assert by_answers.manifest["split"]["passages_withheld"] > 0
    result = export(db, ExportOptions(formats=["raw"], filter=ANY, split=0.7, seed=1, split_group="passages"),
                    tmp_path / "o")
    side_of = {}
    for name, info in result.manifest["files"].items():
        for line in (result.out_dir / name).read_text().splitlines():
            row = json.loads(line)
            for doc in row["documents"]:
                assert side_of.setdefault(doc, info["split"]) == info["split"], doc
    assert sum(result.manifest["split"]["groups"].values()) == 50  # chunk-j joins doc-(j % 50)
    db.close()


def test_near_duplicate_questions_across_the_split_are_reported(tmp_path):
    from core.db import Database

    db = Database(tmp_path / "q.db")
    ids = insert_synthetic(db, 60, groups=60)
    result = export(db, ExportOptions(formats=["raw"], filter=ANY, split=0.5, seed=0), tmp_path / "a")
    sides = {}
    for name, info in result.manifest["files"].items():
        for line in (result.out_dir / name).read_text().splitlines():
            sides[json.loads(line)["id"]] = info["split"]
    train = next(c for c in ids if sides[c] == "train")
    validation = next(c for c in ids if sides[c] == "validation")
    question = "When must a landlord return the security deposit after the tenant moves out?"
    with db.write() as w:
        w.execute("UPDATE turns SET content=? WHERE conversation_id=? AND idx=0", [question, train])
        w.execute("UPDATE turns SET content=? WHERE conversation_id=? AND idx=0",
                  ["when must the landlord return a security deposit after the tenant moves out", validation])
    result = export(db, ExportOptions(formats=["raw"], filter=ANY, split=0.5, seed=0), tmp_path / "b")
    near = result.manifest["split"]["near_duplicate_questions"]
    assert near["pairs"] >= 1 and {"train": train, "validation": validation}.items() <= near["examples"][0].items()
    assert any("near-duplicate question" in w for w in result.manifest["warnings"])
    overlap = QuestionOverlap()
    overlap.add_validation("v", "What is the notice period for ending a lease?")
    overlap.probe("t", "What is the capital of France?")
    assert overlap.pairs == 0
    db.close()


# ---- labels -------------------------------------------------------------------------------------------------
def test_kto_labels_come_only_from_reasons_about_the_answer(reviewed, tmp_path):
    wb = reviewed["wb"]
    store = ReviewStore(wb.db)
    others = [c for c in reviewed["ids"] if c not in (reviewed["bad"], reviewed["discarded"], reviewed["edited"])]
    store.discard(others[0], "duplicate", "ana")
    store.discard(others[1], "off topic", "ana")
    store.discard(others[2], "wrong or misleading answer", "ana")
    store.discard(others[3], "the answer invented a docket number", "ana")
    result = run_export(wb, tmp_path, formats=["kto"], split=None)
    rows = rows_of(result, "kto")
    last_answer = {c: wb.db.scalar("SELECT content FROM turns WHERE conversation_id=? ORDER BY idx DESC LIMIT 1",
                                   [c]) for c in others[:4]}
    labelled = {r["completion"][0]["content"]: r["label"] for r in rows}
    assert last_answer[others[0]] not in labelled and last_answer[others[1]] not in labelled
    assert labelled[last_answer[others[2]]] is False and labelled[last_answer[others[3]]] is False
    skipped = result.manifest["counts"]["kto"]["skipped"]
    assert any("'duplicate'" in k for k in skipped) and any("'off topic'" in k for k in skipped)
    assert result.manifest["kto_labels"] == reason_table()
    assert label_for_discard("duplicate") is None and label_for_discard("ungrounded: not supported by the "
                                                                        "passages") is False
    assert label_for_discard("regenerated from turn 1 as abc") is None and label_for_discard("") is None
    assert label_for_discard("something I typed") is None
    assert "## KTO labels" in (result.out_dir / "README.md").read_text()


# ---- dataset card -------------------------------------------------------------------------------------------
def test_every_export_has_a_dataset_card(reviewed, tmp_path):
    import yaml

    wb = reviewed["wb"]
    result = run_export(wb, tmp_path, formats=["openai", "raw"], split=0.5, license="cc-by-4.0")
    text = (result.out_dir / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license"] == "cc-by-4.0" and header["task_categories"] == ["text-generation"]
    assert header["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c for c in header["configs"]}
    assert set(configs) == {"openai", "raw"}
    files = {d["path"] for d in configs["openai"]["data_files"]}
    assert files == {n for n, i in result.manifest["files"].items() if i["format"] == "openai"}
    infos = {c["config_name"]: {s["name"]: s["num_examples"] for s in c["splits"]} for c in header["dataset_info"]}
    counts = result.manifest["counts"]["openai"]
    assert infos["openai"] == {s: counts[s] for s in ("train", "validation") if counts[s]}
    assert "gemini-2.5-flash" in text and "respondent v1" in text and "top-k 3" in text
    assert "all-MiniLM-L6-v2" in text or "embeddings" in text
    assert "TRL SFTTrainer" in text and "union-find" in text
    import datasets

    loaded = datasets.load_dataset(str(result.out_dir), "openai", cache_dir=str(tmp_path / ".hf"))
    assert sum(loaded[s].num_rows for s in loaded) == counts["train"] + counts["validation"]
    from core.export import zip_export
    import zipfile

    with zipfile.ZipFile(zip_export(result.out_dir, result.manifest)) as z:
        assert "README.md" in z.namelist()
    no_split = run_export(wb, tmp_path, name="ns", formats=["kto"], split=None)
    assert (no_split.out_dir / "README.md").exists()
    with pytest.raises(ValidationError, match="license id"):
        run_export(wb, tmp_path, name="bad", license="my license")


# ---- Export page ----------------------------------------------------------------------------------------------
def test_export_page_warns_on_no_context_and_shows_the_label_table(app_env):
    from tests.conftest import new_app

    at = new_app("pages/export.py")
    assert at.selectbox(key="export.context").value == "user"
    assert not any("cannot see" in w.value for w in at.warning)
    at.selectbox(key="export.context").set_value("none").run()
    assert not at.exception
    assert any("answers will cite sources the model cannot see" in w.value for w in at.warning)
    tables = [d.value for d in at.dataframe]
    assert any("KTO label" in t.columns and "duplicate" in t["reason"].tolist() for t in tables)
    assert any("trainer" in t.columns and "TRL SFTTrainer" in t["trainer"].tolist() for t in tables)
    assert at.selectbox(key="export.profile").value == "standard"
