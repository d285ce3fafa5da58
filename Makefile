# Two entry points a new user needs (see README Quickstart): `make demo` and `make test`.
# Both build the virtualenv from nothing. torch is installed first and pinned to the CPU wheel that this
# machine has on disk: an unpinned `torch` pulled in by another package would fetch a multi-GB CUDA build.
PYTHON ?= python3.11
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.metadist-installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-quick lint test-gpu bench-data bench-train bench-quality clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default: meta-train on the bundled Omniglot, test on its held-out alphabets.
demo: $(STAMP)
	$(BIN)/metadist train

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Lint and import order (ruff) and types (mypy) of metadist/; CI runs this before the tests.
lint: $(STAMP)
	$(BIN)/ruff check metadist
	$(BIN)/mypy

# The unit tests alone, in a few minutes: nothing that starts a server, a Ray cluster, a browser or moto's S3, and
# nothing marked slow (GPU tests stay deselected, as in every run). `make test` runs everything.
QUICK = not cluster and not server and not browser and not s3 and not slow and not gpu
test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "$(QUICK)" $(PYTEST_ARGS)

# On a machine with a CUDA GPU (and a CUDA build of torch: TORCH=torch): the CUDA checks of tests/test_gpu.py.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu $(PYTEST_ARGS)

bench-data: $(STAMP)
	$(BIN)/python bench/data_sampler.py

# Meta-training tasks/s and peak memory against learn2learn (build its virtualenv first: ../shared/peers/setup-learn2learn.sh).
bench-train: $(STAMP)
	$(BIN)/python bench/train_speed.py

bench-quality: $(STAMP)
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
