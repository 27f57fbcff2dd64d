# make demo: set up .venv and run the embedded default job.   make test: set up .venv and run the suite.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test results clean

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

test: $(STAMP)
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) artifacts
