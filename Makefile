# Set-up and the main job. `make demo` installs what it needs into .venv, then runs end to end.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/scifact
SPLIT ?= test
EXPERIMENT ?= experiments/quality/panel/experiment.yaml
# torch is pinned in the install step because 2.13.0 installs from a local file on the project machines;
# pyproject keeps a range so that other machines can use their own build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo flagship rerank-demo test test-gpu compat bench-hybrid bench-encode compat-colbert-ai clean train-real-questions real-questions \
	bench-search bench-latency bench-scale bench-engines bench-exact-stage bench-filters bench-ray bench-service \
	probe-cli pyterrier-experiment bench-cpu bench-shards peers-venv architecture crossfit

# Issue 29's candidate recipes (experiments/releases/real-questions/*.yaml), two at a time on one core each; resumable.
train-real-questions: install
	scripts/train_real_questions.sh f0-frozen f0-frozen-seed2 t2-top2-l2 t2-top2-l2-seed2
	for r in f0-frozen t2-top2-l2; do test -d .cache/train/soup-$$r-2seeds-f16 || $(BIN)/medcolbert interpolate \
		--model .cache/train/rq-$$r/final --start .cache/train/rq-$$r-seed2/final --alpha 0.5 --dtype float16 \
		--output .cache/train/soup-$$r-2seeds-f16; done

# The candidates on the panel beside every release (after `make demo` and `make train-real-questions`).
real-questions: train-real-questions
	$(BIN)/medcolbert experiment experiments/releases/real-questions/panel.yaml
	$(BIN)/medcolbert experiment experiments/releases/real-questions/panel-rerank.yaml
	$(BIN)/medcolbert panel experiments/quality/panel experiments/quality/panel/rerank experiments/releases/real-questions/panel \
		experiments/releases/real-questions/panel-rerank --output experiments/releases/real-questions/report

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# The main job: the real-question panel (end to end, then reranking CHiQA's candidates on mediqa-qa), and the
# report that tests every model against the untuned base on each set (experiments/quality/panel/report/PANEL.md).
demo: install
	$(BIN)/medcolbert experiment $(EXPERIMENT)
	$(BIN)/medcolbert experiment experiments/quality/panel/rerank/experiment.yaml
	$(BIN)/medcolbert panel experiments/quality/panel experiments/quality/panel/rerank --output experiments/quality/panel/report

# The earlier main job (v5's flagship: 12 systems on SciFact, MedQuAD and consumer-health dev; docs/studies.md).
flagship: install
	$(BIN)/medcolbert experiment experiments/quality/flagship/experiment.yaml

# BM25 -> ColBERT rerank on one BEIR folder, both evaluated side by side (a few minutes).
rerank-demo: install
	$(BIN)/medcolbert rerank --data $(DATA) --split $(SPLIT) --first-stage bm25 --depth 100 \
		--json experiments/quality/rerank-demo/$(notdir $(DATA))-$(SPLIT).json

test: install
	$(BIN)/python -m pytest -q

# On a machine with a GPU: the CUDA tests alone (engine, encoders in every layout, bf16 training).
test-gpu: install
	$(BIN)/python -m pytest -q -m cuda tests/test_cuda.py

# Layout compatibility: medcolbert, Sentence Transformers 6, PyLate 1.6 and colbert-ai 0.2.22 (each in its own venv,
# built in .cache on first use) read each other's folders; vectors and top 10s compared on SciFact test.
compat: install
	$(BIN)/python scripts/compat.py --out experiments/compat/matrix/results.json
	$(BIN)/medcolbert experiment experiments/compat/other-libraries/experiment.yaml

# Encoding throughput (passages/s, tokens/s) at doc_maxlen 300, fp32 and bf16, on SciFact passages.
bench-encode: install
	$(BIN)/medcolbert bench encode --data $(DATA) --out experiments/engine/encoding-throughput

clean:
	rm -rf $(VENV) .pytest_cache

# Round trip with colbert-ai 0.2.22 (installed into .cache/colbert-ai-venv on first use).
compat-colbert-ai: install
	$(BIN)/python scripts/colbert_ai_compat.py --out experiments/compat/colbert-ai

# Benchmarks (`medcolbert bench` lists them; each module of medcolbert/bench/ says what it measures and where it
# records it). The engines and
# filters need the 1M and 10M vector indexes of bench-scale (SCALE_SOURCE: a PLAID index of real documents).
SCALE_SOURCE ?= .cache/experiments/panel/plaid-2988df7a4234-nbits2-centroids16sqrt-7ee552d2f71347efad7ba367
SCALE_WORK ?= .cache/scale-v5
bench-search: install   # PLAID vs exact vs colbert-ai on one collection (build, size, quality, latency)
	$(BIN)/medcolbert bench search --data $(DATA) --split $(SPLIT) --colbert-ai --out experiments/engine/plaid-scifact
bench-latency: bench-search   # medcolbert vs colbert-ai latency in alternating rounds
	$(BIN)/medcolbert bench latency --data $(DATA) --split $(SPLIT) --work .cache/bench/plaid-scifact \
		--out experiments/engine/plaid-scifact/latency
bench-scale: install   # 1M and 10M vector indexes resampled from real vectors: build and search
	$(BIN)/medcolbert bench scale --source-index $(SCALE_SOURCE) --queries ../shared/data/medquad/dev-retrieval \
		--sizes 1000000 10000000 --work $(SCALE_WORK) --out experiments/scale/sizes-v5
bench-engines: install   # medcolbert, colbert-ai, fast-plaid, xtr-warp-rs side by side (peers in .cache venvs)
	$(BIN)/medcolbert bench engines --data ../shared/data/scifact --split test --out $(CPU_RECORD)/scifact
	$(BIN)/medcolbert bench engines --from-index $(SCALE_WORK)/index-1000000 \
		--queries-npy $(SCALE_WORK)/queries.npy --engines medcolbert,xtr-warp --out $(CPU_RECORD)/scale-1m
# Issue 30's record for the CPU at hand, in a folder named after lscpu's model name and the CPU's widest instruction
# set: the MedQuAD 1k latency
# benchmark against colbert-ai (4 rounds) and the SciFact engines table. First run: builds the 1k index (about a
# minute), colbert-ai's venv and index, the peers' venv (pulls torch 2.11, GBs, once).
CPU_SLUG := $(shell lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1 | tr 'A-Z' 'a-z' | \
	sed 's/(r)//g; s/(tm)//g; s/[^a-z0-9][^a-z0-9]*/-/g; s/^-//; s/-$$//')
# ... and by its widest instruction set (amx, avx512bf16, avx512, avx2, neon, portable): one model name covers
# several CPU types ("AMD EPYC": AVX2-only and AVX-512 BF16 machines).
CPU_CLASS = $(shell $(BIN)/python -c "from medcolbert.machine import simd_class; print(simd_class())" 2>/dev/null)
CPU_RECORD ?= experiments/engine/cpu-$(or $(CPU_SLUG),unknown)-$(or $(CPU_CLASS),unknown)
bench-cpu: install
	test -f .cache/bench/medquad-1k/medcolbert-nbits2/manifest.json || $(BIN)/medcolbert bench search \
		--data ../shared/data/medquad/dev-retrieval --split dev --max-docs 1000 --max-queries 200 --nbits-sizes 2 \
		--work .cache/bench --out $(CPU_RECORD)/medquad-1k
	$(BIN)/medcolbert bench latency --data ../shared/data/medquad/dev-retrieval --split dev \
		--work .cache/bench/medquad-1k --max-docs 1000 --max-queries 200 --out $(CPU_RECORD)/medquad-1k-latency
	$(BIN)/medcolbert bench stages --work .cache/bench/medquad-1k --out $(CPU_RECORD)/stages-medquad-1k
	$(BIN)/python experiments/engine/encoder-options/more_options.py > $(CPU_RECORD)/encoder-options.txt
	$(BIN)/medcolbert bench engines --data ../shared/data/scifact --split test --out $(CPU_RECORD)/scifact
# (these two read the indexes bench-scale and bench-engines leave in .cache)
bench-exact-stage: install   # the exact stage before/after scoring from residual codes, per stage
	for n in 1000000 10000000; do $(BIN)/medcolbert bench exact-stage --index $(SCALE_WORK)/index-$$n \
		--queries-npy $(SCALE_WORK)/queries.npy --num-queries 60 --out experiments/engine/exact-stage/$$n; done
	$(BIN)/medcolbert bench exact-stage --index .cache/engines/scifact/index-medcolbert \
		--queries-npy .cache/engines/scifact/queries.npy --num-queries 100 --out experiments/engine/exact-stage/scifact
bench-hybrid: install   # the lexical side's cost: PLAID / lexical / hybrid latency, postings bytes and build time
	$(BIN)/medcolbert bench hybrid --data ../shared/data/scifact --split test --work .cache/bench/hybrid-scifact \
		--out experiments/quality/hybrid/cost-scifact/results.json
bench-filters: install   # filtered search per selectivity vs unfiltered and post-filtering
	$(BIN)/medcolbert bench filters --index $(SCALE_WORK)/index-1000000 --queries-npy $(SCALE_WORK)/queries.npy \
		--num-queries 30 --seeds 2 --out experiments/engine/filters/scale-1m
	$(BIN)/medcolbert bench filters --index $(SCALE_WORK)/index-10000000 --queries-npy $(SCALE_WORK)/queries.npy \
		--num-queries 20 --seeds 1 --out experiments/engine/filters/scale-10m
	$(BIN)/medcolbert bench filters --index .cache/engines/scifact/index-medcolbert \
		--queries-npy .cache/engines/scifact/queries.npy --pooled-npy .cache/engines/scifact/queries_pooled.npy \
		--num-queries 60 --seeds 2 --out experiments/engine/filters/scifact
bench-ray: install   # distributed indexing on Ray actors vs one process
	$(BIN)/medcolbert bench ray-build --data ../shared/data/medquad/dev-retrieval --split dev --docs 600 \
		--workers 2 --out experiments/scale/ray-build/medquad-600
bench-service: install   # the service under load (INDEX=...), then the crash test
	$(BIN)/medcolbert bench service-load --index $(INDEX) --compare-batching --out experiments/service/load
	$(BIN)/python scripts/service_crash.py --rounds 5 --out experiments/service/crash
probe-cli: install   # every CLI command with bad input: one line, exit 2, no traceback
	$(BIN)/python scripts/probe_cli.py --out experiments/reliability
bench-shards: install   # shard sets against one index: SciFact, MedQuAD (2.7M vectors), 1M / 10M vectors; the Ray hop
	$(BIN)/medcolbert bench shards --out experiments/scale/shard-set
	$(BIN)/medcolbert bench shards --data ../shared/data/medquad/dev-retrieval --split dev --work .cache/shards/medquad \
		--shards 2,8 --hop-shards "" --max-queries 300 --no-exact-check --out experiments/scale/shard-set-medquad
	$(BIN)/medcolbert bench shards-scale --out experiments/scale/shard-set-scale
	$(BIN)/medcolbert bench cluster-sim --set .cache/shards/scale/set-10000000-8 --one .cache/shards/scale/one-10000000 \
		--model checkpoints/medcolbert-minilm-v5 --out experiments/scale/cluster-sim
	$(BIN)/medcolbert bench cluster-sim --set .cache/shards/scale/own-10000000-8 --model checkpoints/medcolbert-minilm-v5 \
		--out experiments/scale/cluster-sim-own-codecs
# The peers' virtual environments (.cache): colbert-ai 0.2.22, PyLate 1.6, and fast-plaid + xtr-warp-rs (torch 2.11,
# GBs, once); the benchmarks and compat checks also make them on first use.
peers-venv: install
	bash scripts/colbert_ai_venv.sh
	bash scripts/pylate_venv.sh
	$(BIN)/python -c "from medcolbert.bench.engines import python_of; print(python_of('xtr-warp'))"
# docs/architecture.svg from scripts/draw_architecture.py
architecture: install
	$(BIN)/python scripts/draw_architecture.py
# The cross-fitted estimate of a setting chosen on the same queries (OUT=an experiment's folder, ARGS="--param p").
crossfit: install
	$(BIN)/python scripts/crossfit_weight.py $(OUT) $(ARGS)
pyterrier-experiment: install   # medcolbert's stages in pt.Experiment beside BM25 (INDEX=..., DENSE_INDEX=...)
	$(BIN)/python scripts/pyterrier_experiment.py --data ../shared/data/consumer-health/dev-retrieval --split dev \
		--index $(INDEX) --dense-index $(DENSE_INDEX) --out experiments/quality/pyterrier/consumer-health

