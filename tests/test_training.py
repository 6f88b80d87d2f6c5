"""A real fine-tune on the exports: TRL's SFTTrainer trains a tiny causal LM for a few steps on 2 CPU cores.

The model is a randomly initialised two-layer Llama with a small byte-level BPE trained on the export itself
(nothing is downloaded; HF_HUB_OFFLINE=1). The chat template is ChatML with ``{% generation %}``
markers, which is what ``assistant_only_loss=True`` needs to know which tokens are the assistant's.
What is checked is what a trainer really does with the files: the loss is finite and goes down, and the
collator's labels train only assistant answers: never a user message, a passage, or an answer marked bad.
"""

import math
import time

import pytest

from core.export import RAFT_REFUSAL, ExportOptions, export
from tests.test_export import ANY, reviewed  # noqa: F401
from tests.test_review import fake  # noqa: F401

pytestmark = pytest.mark.slow

CHATML = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ m['content'] }}<|im_end|>"
    "{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IGNORE = -100


def tiny_tokenizer(texts):
    """A 2,000-token byte-level BPE trained on the export's own text in about a second, offline.

    A small vocabulary keeps the logits small: with a 30k vocabulary a step took 7 s on 2 busy cores.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.model_max_length = 8192
    tok.chat_template = CHATML
    return tok


def row_texts(dataset):
    for row in dataset:
        for m in row.get("messages") or (row.get("prompt") or []) + (row.get("completion") or []):
            yield m["content"] or ""


def tiny_model(tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    return LlamaForCausalLM(config)


def train(rows_file, tmp_path, steps=8, max_length=1024, **config):
    """SFTTrainer on one exported JSONL file; returns the trainer after ``steps`` steps."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    dataset = datasets.load_dataset("json", data_files=str(rows_file), split="train",
                                    cache_dir=str(tmp_path / ".hf"))
    tok = tiny_tokenizer(list(row_texts(dataset)))
    # Rows longer than max_length lose their end (a row left with no trained token is dropped by TRL);
    # None keeps them whole, for checking masks without training.
    args = SFTConfig(output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=2,
                     learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1,
                     max_length=max_length, report_to="none", save_strategy="no", use_cpu=True, seed=0,
                     disable_tqdm=True, dataloader_num_workers=0, bf16=False, **config)
    trainer = SFTTrainer(model=tiny_model(tok), args=args, train_dataset=dataset, processing_class=tok)
    started = time.monotonic()
    if steps:
        trainer.train()
    print(f"{rows_file.name}: {len(dataset)} rows, {steps} steps in {time.monotonic() - started:.1f}s")
    return trainer, tok, dataset


def losses(trainer):
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def assert_learns(trainer):
    values = losses(trainer)
    assert len(values) >= 6 and all(math.isfinite(v) for v in values), values
    first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
    assert last < first - 0.3, values  # a random model fitting a handful of rows: a clear drop
    return first, last


def trained_runs(trainer):
    """(input ids, [runs of trained token ids]) per example, as the trainer's own collator labels them."""
    dataset = trainer.train_dataset
    pairs = []
    for start in range(0, len(dataset), 4):
        batch = trainer.data_collator([dataset[i] for i in range(start, min(start + 4, len(dataset)))])
        pairs += zip(batch["input_ids"].tolist(), batch["labels"].tolist())
    out = []
    for ids, labels in pairs:
        runs, run = [], []
        for i, lab in zip(ids, labels):
            if lab != IGNORE:
                assert lab == i
                run.append(i)
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        out.append((ids, runs))
    return out


def contains(seq, sub):
    n = len(sub)
    return any(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


def answer_ids(tok, texts):
    # "\n" first: byte-level BPE merges across the boundary differently at the start of a text.
    return [tok("\n" + t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in texts]


def check_only_answers_trained(trainer, tok, answers, bad_answer=None, bad_must_be_in_input=False):
    targets = answer_ids(tok, answers)
    bad = tok("\n" + bad_answer, add_special_tokens=False)["input_ids"][1:] if bad_answer else None
    seen_bad = False
    for ids, runs in trained_runs(trainer):
        assert runs, "every row trains on something"
        assert sum(map(len, runs)) < len(ids) / 2, "passages and questions are masked"
        for run in runs:
            assert any(contains(t, run) for t in targets), tok.decode(run)[:200]
            if bad:
                assert not contains(run, bad[:12])
        if bad and contains(ids, bad[:12]):
            seen_bad = True
    if bad_must_be_in_input:
        assert seen_bad, "the bad answer is in some prompt (and masked there)"


def test_sft_trainer_learns_from_the_default_openai_export_and_trains_answers_only(reviewed, tmp_path):
    wb = reviewed["wb"]
    result = export(wb.db, ExportOptions(formats=["openai", "completion"], filter=ANY, split=None),
                    tmp_path / "export", settings=wb.settings)
    assert result.manifest["context"] == "user"
    good = [r["content"] for r in wb.db.rows("SELECT content FROM turns WHERE role='assistant' AND weight=1")]
    bad_answer = wb.db.scalar("SELECT content FROM turns WHERE conversation_id=? AND idx=1", [reviewed["bad"]])
    trainer, tok, data = train(result.out_dir / "openai.jsonl", tmp_path / "a", assistant_only_loss=True)
    first, last = assert_learns(trainer)
    print(f"openai export: loss {first:.3f} -> {last:.3f}")
    assert any("<context>" in m["content"] for row in data for m in row["messages"] if m["role"] == "user")
    check_only_answers_trained(trainer, tok, good, bad_answer)
    # The completion format keeps the answer after the bad one: the bad one is in its prompt, never trained
    # (the collator's labels only: training it again would only repeat the above).
    trainer, tok, _ = train(result.out_dir / "completion.jsonl", tmp_path / "b", steps=0, max_length=None)
    check_only_answers_trained(trainer, tok, good, bad_answer, bad_must_be_in_input=True)


def test_sft_trainer_learns_from_the_raft_profile(reviewed, tmp_path):
    wb = reviewed["wb"]
    # k = 1 keeps rows short enough for 2 CPU cores; the profile is otherwise as exported by default.
    result = export(wb.db, ExportOptions(formats=["openai"], filter=ANY, split=None, profile="raft",
                                         raft_distractors=1, raft_no_oracle_share=0.3, seed=5),
                    tmp_path / "export", settings=wb.settings)
    assert result.manifest["profile"]["name"] == "raft" and result.manifest["profile"]["counts"]["no_oracle_rows"]
    good = [r["content"] for r in wb.db.rows("SELECT content FROM turns WHERE role='assistant' AND weight=1")]
    trainer, tok, _ = train(result.out_dir / "openai.jsonl", tmp_path / "r", max_length=2048,
                            assistant_only_loss=True)
    assert len(trainer.train_dataset) >= 6, "rows were dropped for length"
    first, last = assert_learns(trainer)
    print(f"raft profile: loss {first:.3f} -> {last:.3f}")
    check_only_answers_trained(trainer, tok, good + [RAFT_REFUSAL])
