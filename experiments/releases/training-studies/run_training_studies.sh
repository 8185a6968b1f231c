#!/usr/bin/env bash
# Issue 5's training studies: four 300-step runs, two at a time on one core each, then their evaluation.
# Rerunning resumes every run from its last checkpoint. Logs: .cache/train/study-NAME.log
set -euo pipefail
cd "$(dirname "$0")/../../.."
test -f .cache/train/medical-mix.jsonl || .venv/bin/medcolbert make-mix --output .cache/train/medical-mix.jsonl
# Longest first, two at a time: a run starts as soon as a core is free.
printf '%s\n' base medquad-only no-hard-negatives no-medquad | xargs -P 2 -I NAME sh -c \
  'OMP_NUM_THREADS=1 .venv/bin/medcolbert train --config experiments/releases/training-studies/NAME.yaml > .cache/train/study-NAME.log 2>&1'
if [ "${1:-}" != "--train-only" ]; then
  .venv/bin/medcolbert experiment experiments/releases/training-studies/experiment.yaml
fi
