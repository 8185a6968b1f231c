#!/usr/bin/env bash
# Issue 12's recipe studies: 300-step runs (one core each, two at a time), the WiSE-FT mix of the distilled
# run, then the out-of-domain (consumer-health dev) and in-domain (SciFact, MedQuAD) comparisons.
# Rerunning resumes every run from its last checkpoint. Logs: .cache/train/rs-NAME.log
set -euo pipefail
cd "$(dirname "$0")/../../.."
# seed_from SRC STEP DST: a continuation run DST starts from run SRC's checkpoint at STEP (unless DST has its own).
seed_from() {
  if [ ! -d ".cache/train/rs-$3/checkpoints" ]; then
    mkdir -p ".cache/train/rs-$3/checkpoints"
    cp -r ".cache/train/rs-$1/checkpoints/step-$2" ".cache/train/rs-$3/checkpoints/"
  fi
}
# train_each NAME...: trains experiments/releases/recipe-studies/train/NAME.yaml for each NAME, two runs at a time on one core each.
train_each() {
  printf '%s\n' "$@" | xargs -P 2 -I NAME sh -c \
    'OMP_NUM_THREADS=1 .venv/bin/medcolbert train --config experiments/releases/recipe-studies/train/NAME.yaml > .cache/train/rs-NAME.log 2>&1'
}
# evaluate STUDY...: runs each study's experiment file (a study's folder: s6, s6-in-domain, ...).
evaluate() {
  for y in "$@"; do .venv/bin/medcolbert experiment "experiments/releases/recipe-studies/$y/experiment.yaml"; done
}
# continued_soup RUN STUDY [--train-only]: both seeds of v4's recipe (RUN.yaml, RUN-seed2.yaml) continued from their
# step 800, averaged in float16 as a release is (v4 is its soup rounded the same way, so the study scores what would
# ship) into .cache/train/soup-STUDY-1200-2seeds-f16, then experiments/releases/recipe-studies/STUDY/experiment.yaml.
continued_soup() {
  seed_from s6-long800 0000800 "$1"
  seed_from s6-long800-seed2 0000800 "$1-seed2"
  train_each "$1" "$1-seed2"
  local soup=".cache/train/soup-$2-1200-2seeds-f16"
  test -d "$soup" || .venv/bin/medcolbert interpolate --model ".cache/train/rs-$1/final" \
    --start ".cache/train/rs-$1-seed2/final" --alpha 0.5 --dtype float16 --output "$soup"
  if [ "${3:-}" != "--train-only" ]; then
    evaluate "$2"
  fi
}
if [ "${1:-}" = "--hybrid" ]; then
  # The pooled-head studies (s6, s6 continued to 800 steps = v3, s7 = s6 + the combined-score loss, s8 = s6 with
  # the pooled loss at half weight, s8 at 800 steps and a second seed, s9 = s8 + self-distillation) and their
  # evaluations. Needs the training mix (below) and s1's 300-step run
  # for the s6 comparison rows.
  test -f .cache/train/medical-mix-v2.jsonl || \
    .venv/bin/medcolbert make-mix --consumer-health --output .cache/train/medical-mix-v2.jsonl
  train_each s6-hybrid s7-combined s6-hybrid-seed2 s8-halfdense
  seed_from s6-hybrid 0000300 s6-long800
  OMP_NUM_THREADS=2 .venv/bin/medcolbert train --config experiments/releases/recipe-studies/train/s6-long800.yaml > .cache/train/rs-s6-long800.log 2>&1
  evaluate s6 s6-in-domain s6-seed2 s7 s7-in-domain s8 v3-e2e
  # s8 continued to 800 steps, s8's second seed and s9 (s8 + self-distillation of the pooled head into MaxSim).
  seed_from s8-halfdense 0000300 s8-long800
  train_each s8-long800 s8-halfdense-seed2 s9-selfdistill
  evaluate s8-seed2 s9 s8-800 s8-800-scifact
  # v3's recipe with its second seed (7), continued to 800 steps.
  seed_from s6-hybrid-seed2 0000300 s6-long800-seed2
  d=.cache/train/rs-s6-long800-seed2
  OMP_NUM_THREADS=2 .venv/bin/medcolbert train --config experiments/releases/recipe-studies/train/s6-long800-seed2.yaml > "$d.log" 2>&1
  # The two seeds' weights averaged (medcolbert-minilm-v4 is this soup saved in float16), and a three-run soup
  # with s8 at 800 steps; then both seeds and both soups reranking consumer-health dev.
  .venv/bin/medcolbert interpolate --model checkpoints/medcolbert-minilm-v3 --start "$d/final" --alpha 0.5 \
    --output .cache/train/soup-s6-800-2seeds
  .venv/bin/medcolbert interpolate --model .cache/train/soup-s6-800-2seeds --start .cache/train/rs-s8-long800/final \
    --alpha 0.6667 --output .cache/train/soup-s6-s8-800-3
  .venv/bin/medcolbert experiment experiments/releases/recipe-studies/s6-seed2-soup/experiment.yaml
  exit 0
fi
if [ "${1:-}" = "--s10" ]; then
  # s10: both seeds of v4's recipe continued from step 800 to 1,200 with training queries up to 256 word pieces.
  continued_soup s10-long1200 s10 "${2:-}"
  exit 0
fi
if [ "${1:-}" = "--s11" ]; then
  # s11: s10 plus merged questions (a quarter of the training queries joined with a consumer-health train question).
  continued_soup s11-merge1200 s11 "${2:-}"
  exit 0
fi
if [ "${1:-}" = "--long" ]; then
  # The chosen recipe (s1) continued to 800 steps from each seed's 300-step checkpoint, the single-vector
  # model trained with the same data recipe, then their evaluations. Needs the 300-step runs (below) first.
  seed_from s1-consumer-long 0000300 s1-long800
  seed_from s1-consumer-long-seed2 0000300 s1-long800-seed2
  train_each s1-long800 dense-s1-long800 s1-long800-seed2
  .venv/bin/medcolbert experiment experiments/releases/recipe-studies/long-800/experiment.yaml
  .venv/bin/medcolbert experiment experiments/releases/recipe-studies/long-800-in-domain/experiment.yaml
  exit 0
fi
test -f .cache/train/medical-mix.jsonl || .venv/bin/medcolbert make-mix --output .cache/train/medical-mix.jsonl
test -f .cache/train/medical-mix-v2.jsonl || \
  .venv/bin/medcolbert make-mix --consumer-health --output .cache/train/medical-mix-v2.jsonl
train_each s2-distill s1-consumer-long s0-v1-recipe s2-distill-seed2
test -d .cache/train/rs-s2-distill-wise05 || .venv/bin/medcolbert interpolate --model .cache/train/rs-s2-distill/final \
  --alpha 0.5 --output .cache/train/rs-s2-distill-wise05
if [ "${1:-}" != "--train-only" ]; then
  .venv/bin/medcolbert experiment experiments/releases/recipe-studies/out-of-domain/experiment.yaml
  .venv/bin/medcolbert experiment experiments/releases/recipe-studies/in-domain/experiment.yaml
fi
