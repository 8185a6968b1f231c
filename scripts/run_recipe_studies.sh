#!/usr/bin/env bash
# Issue 12's recipe studies: 300-step runs (one core each, two at a time), the WiSE-FT mix of the distilled
# run, then the out-of-domain (consumer-health dev) and in-domain (SciFact, MedQuAD) comparisons.
# Rerunning resumes every run from its last checkpoint. Logs: .cache/train/rs-NAME.log
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--hybrid" ]; then
  # The pooled-head studies (s6, s6 continued to 800 steps = v3, s7 = s6 + the combined-score loss, s8 = s6 with
  # the pooled loss at half weight, s8 at 800 steps and a second seed, s9 = s8 + self-distillation) and their
  # evaluations. Needs the training mix (below) and s1's 300-step run
  # for the s6 comparison rows.
  test -f .cache/train/medical-mix-v2.jsonl || \
    .venv/bin/medcolbert make-mix --consumer-health --output .cache/train/medical-mix-v2.jsonl
  printf '%s\n' s6-hybrid s7-combined s6-hybrid-seed2 s8-halfdense | xargs -P 2 -I NAME sh -c \
    'OMP_NUM_THREADS=1 .venv/bin/medcolbert train --config experiments/recipe-studies/NAME.yaml > .cache/train/rs-NAME.log 2>&1'
  d=.cache/train/rs-s6-long800
  if [ ! -d "$d/checkpoints" ]; then
    mkdir -p "$d/checkpoints"
    cp -r .cache/train/rs-s6-hybrid/checkpoints/step-0000300 "$d/checkpoints/"
  fi
  OMP_NUM_THREADS=2 .venv/bin/medcolbert train --config experiments/recipe-studies/s6-long800.yaml > .cache/train/rs-s6-long800.log 2>&1
  for y in s6 s6-indomain s6-seed2 s7 s7-indomain s8 v3-e2e; do .venv/bin/medcolbert experiment "experiments/recipe-studies-$y.yaml"; done
  # s8 continued to 800 steps, s8's second seed and s9 (s8 + self-distillation of the pooled head into MaxSim).
  d=.cache/train/rs-s8-long800
  if [ ! -d "$d/checkpoints" ]; then
    mkdir -p "$d/checkpoints"
    cp -r .cache/train/rs-s8-halfdense/checkpoints/step-0000300 "$d/checkpoints/"
  fi
  printf '%s\n' s8-long800 s8-halfdense-seed2 s9-selfdistill | xargs -P 2 -I NAME sh -c \
    'OMP_NUM_THREADS=1 .venv/bin/medcolbert train --config experiments/recipe-studies/NAME.yaml > .cache/train/rs-NAME.log 2>&1'
  for y in s8-seed2 s9 s8-800 s8-800-scifact; do .venv/bin/medcolbert experiment "experiments/recipe-studies-$y.yaml"; done
  # v3's recipe with its second seed (7), continued to 800 steps.
  d=.cache/train/rs-s6-long800-seed2
  if [ ! -d "$d/checkpoints" ]; then
    mkdir -p "$d/checkpoints"
    cp -r .cache/train/rs-s6-hybrid-seed2/checkpoints/step-0000300 "$d/checkpoints/"
  fi
  OMP_NUM_THREADS=2 .venv/bin/medcolbert train --config experiments/recipe-studies/s6-long800-seed2.yaml > "$d.log" 2>&1
  # The two seeds' weights averaged (medcolbert-minilm-v4 is this soup saved in float16), and a three-run soup
  # with s8 at 800 steps; then both seeds and both soups reranking consumer-health dev.
  .venv/bin/medcolbert interpolate --model checkpoints/medcolbert-minilm-v3 --start "$d/final" --alpha 0.5 \
    --output .cache/train/soup-s6-800-2seeds
  .venv/bin/medcolbert interpolate --model .cache/train/soup-s6-800-2seeds --start .cache/train/rs-s8-long800/final \
    --alpha 0.6667 --output .cache/train/soup-s6-s8-800-3
  .venv/bin/medcolbert experiment experiments/recipe-studies-s6-seed2-soup.yaml
  exit 0
fi
if [ "${1:-}" = "--s10" ]; then
  # s10: both seeds of v4's recipe continued from step 800 to 1,200 with training queries up to 256 word pieces,
  # one core each, then the two averaged as v4 is; then the evaluation (experiments/recipe-studies-s10.yaml).
  for s in "" "-seed2"; do
    d=.cache/train/rs-s10-long1200$s
    if [ ! -d "$d/checkpoints" ]; then
      mkdir -p "$d/checkpoints"
      cp -r ".cache/train/rs-s6-long800$s/checkpoints/step-0000800" "$d/checkpoints/"
    fi
  done
  printf '%s\n' s10-long1200 s10-long1200-seed2 | xargs -P 2 -I NAME sh -c \
    'OMP_NUM_THREADS=1 .venv/bin/medcolbert train --config experiments/recipe-studies/NAME.yaml > .cache/train/rs-NAME.log 2>&1'
  # Written in float16, as a release is (v4 is its soup rounded the same way), so the study scores what would ship.
  test -d .cache/train/soup-s10-1200-2seeds-f16 || .venv/bin/medcolbert interpolate \
    --model .cache/train/rs-s10-long1200/final --start .cache/train/rs-s10-long1200-seed2/final --alpha 0.5 \
    --dtype float16 --output .cache/train/soup-s10-1200-2seeds-f16
  [ "${2:-}" = "--train-only" ] && exit 0
  .venv/bin/medcolbert experiment experiments/recipe-studies-s10.yaml
  exit 0
fi
if [ "${1:-}" = "--s11" ]; then
  # s11: s10 plus merged questions (a quarter of the training queries joined with a consumer-health train question),
  # both seeds from step 800 to 1,200, averaged in float16; then experiments/recipe-studies-s11.yaml.
  for s in "" "-seed2"; do
    d=.cache/train/rs-s11-merge1200$s
    if [ ! -d "$d/checkpoints" ]; then
      mkdir -p "$d/checkpoints"
      cp -r ".cache/train/rs-s6-long800$s/checkpoints/step-0000800" "$d/checkpoints/"
    fi
  done
  printf '%s\n' s11-merge1200 s11-merge1200-seed2 | xargs -P 2 -I NAME sh -c \
    'OMP_NUM_THREADS=1 .venv/bin/medcolbert train --config experiments/recipe-studies/NAME.yaml > .cache/train/rs-NAME.log 2>&1'
  test -d .cache/train/soup-s11-1200-2seeds-f16 || .venv/bin/medcolbert interpolate \
    --model .cache/train/rs-s11-merge1200/final --start .cache/train/rs-s11-merge1200-seed2/final --alpha 0.5 \
    --dtype float16 --output .cache/train/soup-s11-1200-2seeds-f16
  [ "${2:-}" = "--train-only" ] && exit 0
  .venv/bin/medcolbert experiment experiments/recipe-studies-s11.yaml
  exit 0
fi
if [ "${1:-}" = "--long" ]; then
  # The chosen recipe (s1) continued to 800 steps from each seed's 300-step checkpoint, the single-vector
  # model trained with the same data recipe, then their evaluations. Needs the 300-step runs (below) first.
  for s in "" "-seed2"; do
    d=.cache/train/rs-s1-long800$s
    if [ ! -d "$d/checkpoints" ]; then
      mkdir -p "$d/checkpoints"
      cp -r ".cache/train/rs-s1-consumer-long$s/checkpoints/step-0000300" "$d/checkpoints/"
    fi
  done
  printf '%s\n' s1-long800 dense-s1-long800 s1-long800-seed2 | xargs -P 2 -I NAME sh -c \
    'OMP_NUM_THREADS=1 .venv/bin/medcolbert train --config experiments/recipe-studies/NAME.yaml > .cache/train/rs-NAME.log 2>&1'
  .venv/bin/medcolbert experiment experiments/recipe-studies-800.yaml
  .venv/bin/medcolbert experiment experiments/recipe-studies-800-indomain.yaml
  exit 0
fi
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
