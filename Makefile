# Set-up and the main job. `make demo` installs what it needs into .venv, then runs end to end.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/scifact
SPLIT ?= test
EXPERIMENT ?= experiments/panel.yaml
# torch is pinned in the install step because 2.13.0 installs from a local file on the project machines;
# pyproject keeps a range so that other machines can use their own build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo flagship rerank-demo test bench-encode compat-colbert-ai clean train-real-questions real-questions

# Issue 29's candidate recipes (experiments/real-questions/*.yaml), two at a time on one core each; resumable.
train-real-questions: install
	scripts/train_real_questions.sh f0-frozen f0-frozen-seed2 t2-top2-l2 t2-top2-l2-seed2
	for r in f0-frozen t2-top2-l2; do test -d .cache/train/soup-$$r-2seeds-f16 || $(BIN)/medcolbert interpolate \
		--model .cache/train/rq-$$r/final --start .cache/train/rq-$$r-seed2/final --alpha 0.5 --dtype float16 \
		--output .cache/train/soup-$$r-2seeds-f16; done

# The candidates on the panel beside every release (after `make demo` and `make train-real-questions`).
real-questions: train-real-questions
	$(BIN)/medcolbert experiment experiments/real-questions/panel.yaml
	$(BIN)/medcolbert experiment experiments/real-questions/panel-rerank.yaml
	$(BIN)/medcolbert panel experiments/panel experiments/panel-rerank experiments/real-questions/panel \
		experiments/real-questions/panel-rerank --output experiments/real-questions/report

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# The main job: the real-question panel (end to end, then reranking CHiQA's candidates on mediqa-qa), and the
# report that tests every model against the untuned base on each set (experiments/panel-report/PANEL.md).
demo: install
	$(BIN)/medcolbert experiment $(EXPERIMENT)
	$(BIN)/medcolbert experiment experiments/panel-rerank.yaml
	$(BIN)/medcolbert panel experiments/panel experiments/panel-rerank --output experiments/panel-report

# The earlier main job (v5's flagship: 12 systems on SciFact, MedQuAD and consumer-health dev; docs/studies.md).
flagship: install
	$(BIN)/medcolbert experiment experiments/flagship.yaml

# BM25 -> ColBERT rerank on one BEIR folder, both evaluated side by side (a few minutes).
rerank-demo: install
	$(BIN)/medcolbert rerank --data $(DATA) --split $(SPLIT) --first-stage bm25 --depth 100 \
		--json experiments/main-job/$(notdir $(DATA))-$(SPLIT).json

test: install
	$(BIN)/python -m pytest -q

# Encoding throughput (passages/s, tokens/s) at doc_maxlen 300, fp32 and bf16, on SciFact passages.
bench-encode: install
	$(BIN)/python scripts/bench_encode.py --data $(DATA) --out experiments/encoding-throughput

clean:
	rm -rf $(VENV) .pytest_cache

# Round trip with colbert-ai 0.2.22 (installed into .cache/colbert-ai-venv on first use).
compat-colbert-ai: install
	$(BIN)/python scripts/colbert_ai_compat.py --out experiments/colbert-ai-compat
