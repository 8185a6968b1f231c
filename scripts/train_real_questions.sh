#!/usr/bin/env bash
# Issue 29's candidate recipes (experiments/releases/real-questions/NAME.yaml), two runs at a time on one core each.
# Rerunning resumes every run from its last checkpoint. Logs: .cache/train/rq-NAME.log
# Usage: scripts/train_real_questions.sh NAME [NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
test -f .cache/train/medical-mix-meqsum.jsonl || \
  .venv/bin/medcolbert make-mix --meqsum --output .cache/train/medical-mix-meqsum.jsonl
printf '%s\n' "$@" | xargs -P 2 -I NAME sh -c \
  'OMP_NUM_THREADS=1 .venv/bin/medcolbert train --config experiments/releases/real-questions/NAME.yaml > .cache/train/rq-NAME.log 2>&1'
