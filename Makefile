# Two entry points: `make run` (install, then start the bot) and `make test` (install, then lint and test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned: on PyPI torch==2.13.0 is the CUDA build a GPU box needs, while CI machines
# hold a local CPU wheel of the same version; an unpinned torch could pull a different multi-GB build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-dev run test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m bot

test: install
	$(PY) -m ruff check bot cogs tests bench
	$(PY) -m ruff format --check bot cogs tests bench
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
