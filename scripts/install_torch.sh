#!/usr/bin/env bash
# Installs torch's CPU build into a venv: from PyTorch's CPU wheel index when it answers (elsewhere the default
# index's Linux torch is the multi-GB CUDA build), else from the configured package registries.
# Usage: scripts/install_torch.sh VENV_PYTHON [pip options...]   (setup.sh passes -c requirements.lock)
# GROUNDWORK_TORCH_INDEX overrides the CPU index URL (a mirror); set it to "none" to skip straight to the registries.
set -euo pipefail
PY="$1"; shift
TORCH_SPEC="torch==2.13.0"  # the same version as pyproject.toml; the +cpu build satisfies it
INDEX="${GROUNDWORK_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
PIP="$PY -m pip --disable-pip-version-check"
# One short probe decides: pip's own timeouts and retries would spend minutes where the index is unreachable.
if [ "$INDEX" != "none" ] && "$PY" - "$INDEX" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5).close()
except Exception:
    sys.exit(1)
PY
then
  # torch's own dependencies (filelock, sympy, ...) may come from the usual registry; torch itself is the CPU
  # index's 2.13.0+cpu, which outranks a plain 2.13.0 (a local version sorts above its public one).
  REGISTRY="${PIP_INDEX_URL:-$($PIP config get global.index-url 2>/dev/null || echo https://pypi.org/simple)}"
  if $PIP install -q --timeout 15 --retries 0 --index-url "$INDEX" --extra-index-url "$REGISTRY" "$@" "$TORCH_SPEC"; then
    echo "torch: CPU build from $INDEX"
    exit 0
  fi
  echo "torch: $INDEX answered but the install from it failed; using the package registries" >&2
else
  echo "torch: PyTorch's CPU index ($INDEX) is not reachable; using the package registries" >&2
fi
$PIP install -q "$@" "$TORCH_SPEC"
echo "torch: $TORCH_SPEC from the package registries"
