# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create (or refresh, when setup.py / settings.ini change) the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
# A CPU wheel of torch 2.13.0 is installed first, so that pip never pulls the multi-GB CUDA build on a CPU
# machine. On a GPU machine pass the build you want, e.g. `make test TORCH_SPEC="torch==2.13.0"` with a CUDA index.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: venv demo test export notebooks lab browser

venv: $(STAMP)

$(STAMP): setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/crosscoder-diff demo --out $(DEMO_OUT)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest tests -v

# regenerate the package from the notebooks, and clean the notebooks' metadata
export: $(STAMP)
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean

# execute every notebook on the organisms (CPU) and store its outputs (tables, PNG figures) for readers on GitHub
notebooks: $(STAMP) browser
	$(BIN)/python -m pip install -q -e ".[docs]"
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python tools/run_notebooks.py
	$(BIN)/nbdev_clean

lab: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[lab]" && $(BIN)/jupyter lab nbs

# Debian's chromium + chromedriver for the headless-browser tests (they are skipped without it; .ci/run installs it)
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)
