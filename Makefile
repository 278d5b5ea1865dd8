# Two entry points for a fresh machine: `make demo` and `make test` (each creates the venv and installs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DEMO ?= data/demo
STORE ?= $(DEMO)/shards

.PHONY: demo test install bench clean

$(VENV)/.installed: pyproject.toml .ci/install-detectron2-sources.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	bash .ci/install-detectron2-sources.sh $(PY)
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

demo: install
	bash .ci/demo.sh $(BIN) $(DEMO) $(STORE)

bench: install
	for b in bench/*.py; do case $$b in bench/gpu_*) continue;; esac; $(PY) $$b || exit 1; done  # GPU: bench/gpu_check.sh

clean:
	rm -rf $(VENV) $(DEMO) build
