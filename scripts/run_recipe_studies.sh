#!/usr/bin/env bash
# Issue 12's recipe studies: 300-step runs (one core each, two at a time), the WiSE-FT mix of the distilled
# run, then the out-of-domain (consumer-health dev) and in-domain (SciFact, MedQuAD) comparisons.
# Rerunning resumes every run from its last checkpoint. Logs: .cache/train/rs-NAME.log
set -euo pipefail
cd "$(dirname "$0")/.."
test -f .cache/train/medical-mix.jsonl || .venv/bin/medcolbert make-mix --output .cache/train/medical-mix.jsonl
test -f .cache/train/medical-mix-v2.jsonl || \
  .venv/bin/medcolbert make-mix --consumer-health --output .cache/train/medical-mix-v2.jsonl
printf '%s\n' s2-distill s1-consumer-long s0-v1-recipe s2-distill-seed2 | xargs -P 2 -I NAME sh -c \
  'OMP_NUM_THREADS=1 .venv/bin/medcolbert train --config experiments/recipe-studies/NAME.yaml > .cache/train/rs-NAME.log 2>&1'
test -d .cache/train/rs-s2-distill-wise05 || .venv/bin/medcolbert interpolate --model .cache/train/rs-s2-distill/final \
  --alpha 0.5 --output .cache/train/rs-s2-distill-wise05
if [ "${1:-}" != "--train-only" ]; then
  .venv/bin/medcolbert experiment experiments/recipe-studies.yaml
  .venv/bin/medcolbert experiment experiments/recipe-studies-indomain.yaml
fi
