#!/usr/bin/env bash
# Refreshes requirements.lock (the exact versions setup.sh installs) from a working .venv: bash scripts/lock.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY="${1:-.venv/bin/python}"
{
  echo "# Exact versions scripts/setup.sh installs (pip constraints). Refresh: bash scripts/lock.sh"
  # torch without its local label (+cpu): the CPU index's build and the registries' build both satisfy it.
  "$VENV_PY" -m pip --disable-pip-version-check freeze --exclude-editable | grep -v "^groundwork" \
    | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
