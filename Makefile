# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create (or refresh, when setup.py / settings.ini change) the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first as the requirement TORCH_SPEC: here `torch==2.13.0` resolves to a local CPU wheel, so pip
# never pulls the multi-GB CUDA build on a CPU machine. Elsewhere name the build, e.g. TORCH_SPEC=torch==2.13.0+cu128
# with PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu128 (or +cpu with .../whl/cpu); docs/command-line.md.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: venv demo test export notebooks readme lab browser

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

# README.md is rendered from nbs/index.ipynb (nbdev's front page) by tools/readme.py from the notebook's stored
# outputs; nbdev_readme needs Quarto, which is not used here. A test fails when the two disagree.
readme: $(STAMP) browser
	$(BIN)/python -m pip install -q -e ".[docs]"
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python tools/run_notebooks.py nbs/index.ipynb
	$(BIN)/nbdev_clean
	$(BIN)/python tools/readme.py

lab: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[lab]" && $(BIN)/jupyter lab nbs

# Debian's chromium + chromedriver for the headless-browser tests (they are skipped without it; .ci/run installs it)
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver)
