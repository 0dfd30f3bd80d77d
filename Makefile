# Set-up and the two entry points of the README. Every target installs what it needs.
#   make demo   install everything (locked), then run the main job
#   make test   install everything (locked), then run the test suite
#   make lock   refresh requirements/lock.txt after changing a dependency in setup.cfg
PYTHON ?= python3
PIP = $(PYTHON) -m pip
LOCK = requirements/lock.txt
# where the CPU build of torch comes from when locking (this machine's local wheel folder;
# elsewhere e.g. TORCH_WHEELS=https://download.pytorch.org/whl/cpu/torch/)
TORCH_WHEELS ?= /opt/wheels
UV_VERSION = 0.13.9

.PHONY: install demo test docs bench lock

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

bench:
	$(PYTHON) benchmarks/graph_construction.py --threads 1
	$(PYTHON) benchmarks/gin_attention.py
	$(PYTHON) benchmarks/adapter_vs_lora.py

lock:
	$(PIP) install "uv==$(UV_VERSION)"
	$(PYTHON) -m uv pip compile setup.cfg --extra test --extra docs --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) \
		-c requirements/constraints.in --custom-compile-command "make lock" -o $(LOCK)
