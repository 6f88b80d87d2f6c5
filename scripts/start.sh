#!/usr/bin/env bash
# Sets up (first time only) and starts the workbench on the embedded defaults with sample_data/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamlit run app.py "$@"
