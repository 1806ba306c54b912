"""Run every notebook in nbs/ with nbdev's test runner, so CI prints one pytest summary."""
import os, pathlib, subprocess, sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

def test_notebooks_run_clean():
    nbdev_test = pathlib.Path(sys.executable).parent / 'nbdev_test'
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'}
    r = subprocess.run([str(nbdev_test), '--n_workers', '2', '--timing'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1500)
    print(r.stdout[-5000:], r.stderr[-20000:])
    assert r.returncode == 0, 'a notebook failed: see the output above'
