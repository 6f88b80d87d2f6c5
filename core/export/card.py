"""The dataset card: a Hugging Face ``README.md`` beside every export, made from its manifest.

The YAML header is what the Hub reads (license, task, size, one config per format with its split files);
the body says how the data was made: models, prompt versions, retrieval settings, where the passages sit,
the profile, which trainer reads what, how the split avoids leaks, and how labels are assigned.
"""

from __future__ import annotations

import json
from typing import Any

from core.export.labels import reason_table
from core.export.options import FORMAT_HELP, TRAINERS

_TASKS = {"openai": "text-generation", "sharegpt": "text-generation", "alpaca": "text-generation",
          "completion": "text-generation", "raw": "text-generation", "dpo": "text-generation",
          "kto": "text-generation"}


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def _yaml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def render_card(manifest: dict[str, Any]) -> str:
    """The README.md text for an export's manifest."""
    files = manifest["files"]
    rows_per_format: dict[str, int] = {}
    for info in files.values():
        rows_per_format[info["format"]] = rows_per_format.get(info["format"], 0) + info["rows"]
    biggest = max(rows_per_format.values(), default=0)
    header = ["---", f"license: {manifest['card']['license']}", "task_categories:",
              *sorted({f"- {_TASKS[f]}" for f in manifest["formats"]}),
              "size_categories:", f"- {size_category(biggest)}",
              "tags:", "- sft", "- rag", "- grounded", "- synthetic", "- groundwork",
              *(["- raft"] if manifest["profile"]["name"] == "raft" else []),
              f"pretty_name: {_yaml_str(manifest['card']['pretty_name'])}", "configs:"]
    info_lines = ["dataset_info:"]
    for i, fmt in enumerate(manifest["formats"]):
        mine = sorted(((info["split"], name, info) for name, info in files.items() if info["format"] == fmt))
        if not mine:
            continue
        header.append(f"- config_name: {fmt}")
        if i == 0:
            header.append("  default: true")
        header.append("  data_files:")
        info_lines += [f"- config_name: {fmt}", "  splits:"]
        for split, name, info in mine:
            header += [f"  - split: {split}", f"    path: {name}"]
            info_lines += [f"  - name: {split}", f"    num_examples: {info['rows']}", f"    num_bytes: {info['bytes']}"]
    header += info_lines + ["---", ""]

    body = [f"# {manifest['card']['pretty_name']}", "",
            "Grounded multi-turn conversations generated and reviewed with Groundwork, exported for fine-tuning.",
            f"Exported {manifest['created_at']} from {manifest['selection']['conversations']} conversations "
            f"({manifest['selection']['description']}).", "", "## Files", "",
            "| format | split | rows | file | what it is |", "|---|---|---|---|---|"]
    for name, info in sorted(files.items(), key=lambda kv: (kv[1]["format"], kv[1]["split"])):
        what = FORMAT_HELP[info["format"]]
        body.append(f"| {info['format']} | {info['split']} | {info['rows']} | `{name}` | {what} |")
    body += ["", "## How it was made", ""]
    models = ", ".join(f"{m} ({n} conversations)" for m, n in manifest["models"].items()) or "unknown"
    body.append(f"- **Model**: {models}")
    versions = manifest["prompt_versions"]
    if versions:
        body.append("- **Prompt versions**: " + ", ".join(f"{v['kind']} v{v['version']}"
                                                         + (f" ({v['name']})" if v.get("name") else "")
                                                         for v in versions))
    for run in manifest.get("runs", []):
        body.append(f"- **Run {run['id']}**: provider {run.get('provider') or '?'}, model {run.get('model') or '?'}; "
                    f"retrieval {run.get('retrieval') or '?'} top-k {run.get('top_k', '?')}"
                    f"{', with conversation history' if run.get('retrieval_with_history') else ''}; "
                    f"embeddings {run.get('embedding_model') or '?'}; collection {run.get('collection') or '?'}; "
                    f"briefing passages {run.get('briefing_passages', '?')}; temperature "
                    f"{run.get('temperature', '?')}")
    body += [f"- **Passages**: {manifest['placement']}",
             f"- **Profile**: {manifest['profile']['name']} — {manifest['profile']['description']}"]
    if manifest["profile"]["name"] == "raft":
        p = manifest["profile"]
        body.append(f"  - k = {p['distractors']} distractors per answer; {p['no_oracle_share']:.0%} of rows end on "
                    f"an answer shown distractors only, whose target is: “{p['refusal']}”")
    checks = manifest.get("grounding_checks")
    if checks:
        body.append(f"- **Grounding checks** ({checks['method']}, offline): {checks['passed']} conversations passed, "
                    f"{checks['flagged']} flagged (score under {checks['weakly_grounded_below']} or an identifier no "
                    f"passage contains), {checks['unchecked']} never checked")
    body += ["", "## Which trainer reads what", "",
             "Answers a reviewer marked bad are never in a trained position: chat rows stop before the first "
             "bad answer; the `completion` format keeps later answers with the bad one in the prompt only.", "",
             "| format | trainer | what it reads |", "|---|---|---|"]
    for fmt in manifest["formats"]:
        for trainer, what in TRAINERS[fmt]:
            body.append(f"| {fmt} | {trainer} | {what} |")
    split = manifest["split"]
    body += ["", "## Split", ""]
    if split:
        body += [f"- train share {split['ratio']}, seed {split['seed']}",
                 f"- group: {split['group_by']}", f"- method: {split['method']}",
                 f"- groups: {split['groups']}; documents: {split['documents']}; largest group: "
                 f"{split['largest_group']['documents']} documents",
                 f"- near-duplicate questions across the split: {split['near_duplicate_questions']['pairs']} pairs "
                 f"({split['near_duplicate_questions']['method']})"]
    else:
        body.append("No split: every row is in one file.")
    if "kto" in manifest["formats"]:
        body += ["", "## KTO labels", "", "| reason | KTO label | why |", "|---|---|---|"]
        body += [f"| {r['reason']} | {r['KTO label']} | {r['why']} |" for r in reason_table()]
    if manifest["warnings"]:
        body += ["", "## Warnings", ""] + [f"- {w}" for w in manifest["warnings"]]
    body += ["", "`manifest.json` beside this card holds every count, checksum and setting.", ""]
    return "\n".join(header + body)
