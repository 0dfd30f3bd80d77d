# Set-up and the two entry points of the README. Every target installs what it needs.
#   make demo   install everything (locked), then run the main job
#   make test   install everything (locked), then run the test suite
#   make lock   refresh requirements/lock.txt after changing a dependency in setup.cfg
#   make reproduce  the experiments of docs/guides/reproducing.rst (one thread each)
PYTHON ?= python3
PIP = $(PYTHON) -m pip
LOCK = requirements/lock.txt
# where the CPU build of torch comes from when locking (this machine's local wheel folder;
# elsewhere e.g. TORCH_WHEELS=https://download.pytorch.org/whl/cpu/torch/)
TORCH_WHEELS ?= /opt/wheels
UV_VERSION = 0.13.9

.PHONY: install demo test docs bench lock reproduce

install:
	$(PIP) install -r $(LOCK)
	$(PIP) install --no-deps --ignore-requires-python -r requirements/no-deps.txt
	$(PIP) install --no-deps -e .

demo: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m pyg_transformer demo

test: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q

docs:
	$(PYTHON) -m sphinx -W --keep-going -q -b html docs docs/_build/html

REPRODUCE ?= outputs/reproduce
# Paper §2.2 / Figs. 6 and 8 (protein secondary structure, from scratch) and §2.3 / Fig. 12
# plus the no-message ablation (Sparse-GIN on SmolLM2, GSM8K), 3 seeds each.
reproduce: install
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PYTHON) -m pyg_transformer compare pretrain --data protein \
		--max-proteins 6000 --max-length 128 --hidden-size 96 --layers 3 --heads 4 \
		--kv-heads 4 --intermediate-size 192 \
		--arms gin standard pna gin-gamma0.25 gin-gamma1 --seeds 3 \
		--steps 800 --batch-size 16 --lr 1e-3 --logging-steps 50 --eval-steps 100 \
		--eval-size 256 --exact-match-size 200 --output-dir $(REPRODUCE)/protein
	$(PYTHON) -m pyg_transformer.experiments.report $(REPRODUCE)/protein --reference standard
	$(PYTHON) -m pyg_transformer.experiments.report $(REPRODUCE)/protein --reference gin
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PYTHON) -m pyg_transformer compare finetune --model smollm2 --data gsm \
		--arms sparse-gin sparse-gin-fixed-lambda sparse-gin-no-messages lora --seeds 3 \
		--steps 60 --batch-size 2 --lr 5e-4 --max-length 192 --logging-steps 5 \
		--eval-steps 15 --eval-size 32 --exact-match-size 0 --output-dir $(REPRODUCE)/sparse-gin
	$(PYTHON) -m pyg_transformer.experiments.report $(REPRODUCE)/sparse-gin --reference lora
	$(PYTHON) -m pyg_transformer.experiments.report $(REPRODUCE)/sparse-gin --reference sparse-gin

bench:
	$(PYTHON) benchmarks/graph_construction.py --threads 1
	$(PYTHON) benchmarks/gin_attention.py
	$(PYTHON) benchmarks/adapter_vs_lora.py

lock:
	$(PIP) install "uv==$(UV_VERSION)"
	$(PYTHON) -m uv pip compile setup.cfg --extra test --extra docs --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) \
		-c requirements/constraints.in --custom-compile-command "make lock" -o $(LOCK)
