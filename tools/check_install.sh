#!/usr/bin/env bash
# The package as a user gets it: build the wheel, install it with no extras into a fresh virtualenv (with the CPU
# wheel of torch, as the Makefile does), then, from outside the repository, import every module, ask the command line
# for --help and --version, and train and report a tiny crosscoder on the bundled organisms.
#     bash tools/check_install.sh [PYTHON]        (CI runs it; about 3 minutes, most of it pip)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# the wheel is built from a copy of the files git knows (tracked or not ignored): a stale build/ folder of this
# checkout cannot slip old modules into it
mkdir -p "$work/src"
git ls-files -co --exclude-standard | while IFS= read -r f; do if [ -e "$f" ]; then printf '%s\n' "$f"; fi; done \
  | tar -cf - -T - | tar -xf - -C "$work/src"
$PY -m pip wheel -q --no-deps -w "$work/dist" "$work/src"
$PY -m venv "$work/venv"
V="$work/venv/bin"
$V/python -m pip install -q --upgrade pip
$V/python -m pip install -q "$TORCH_SPEC"
$V/python -m pip install -q "$work"/dist/crosscoder_nb-*.whl
cd "$work"   # nothing of the checkout on sys.path from here on
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
$V/python - <<'PY'
import importlib, pkgutil, crosscoder_nb
names = sorted(m.name for m in pkgutil.iter_modules(crosscoder_nb.__path__))
for n in names: importlib.import_module(f'crosscoder_nb.{n}')
assert crosscoder_nb.__file__.startswith(__import__('sys').prefix), crosscoder_nb.__file__
from crosscoder_nb.models import assets_dir
assert (assets_dir() / 'results' / 'groundtruth.md').exists(), 'the bench tables are not in the wheel'
print(f'imported all {len(names)} modules of crosscoder_nb {crosscoder_nb.__version__} from {crosscoder_nb.__file__}')
PY
TIMEFORMAT='crosscoder-diff --help answered in %R s'
time $V/crosscoder-diff --help > /dev/null
$V/crosscoder-diff --version
$V/crosscoder-diff train --out run --n-tokens 40000 --d-latent 64 --set train.log_every=1000 > train.log 2>&1 || { cat train.log; exit 1; }
tail -n 3 train.log
$V/crosscoder-diff report run --no-dashboards --no-latent-scaling --no-causal --n-eval-seqs 8 > report.log 2>&1 || { cat report.log; exit 1; }
tail -n 3 report.log
test -s run/report/report.html && test -s run/report/metrics.json
echo "clean install: OK"
