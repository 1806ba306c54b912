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


def _runner():
    import importlib.util
    spec = importlib.util.spec_from_file_location('run_notebooks', ROOT / 'tools' / 'run_notebooks.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_notebooks_are_committed_with_their_outputs():
    "A reader on GitHub sees each notebook's results: `make notebooks` stores them, and this fails when they are missing."
    import json
    run, missing, size = _runner(), [], 0
    for p in sorted((ROOT / 'nbs').glob('*.ipynb')):
        cells = json.loads(p.read_text())['cells']
        ran = [c for c in cells if c['cell_type'] == 'code' and not run.skipped(type('C', (), {'cell_type': 'code', 'source': ''.join(c['source'])}))]
        size += sum(len(json.dumps(c.get('outputs', []))) for c in cells if c['cell_type'] == 'code')
        if ran and not any(c.get('outputs') for c in ran): missing.append(f'{p.name}: no stored output at all')
        for c in ran:
            src = ''.join(c['source'])
            if 'print(' in src and not run.directives(src).keys() & {'export', 'exporti'} and not c.get('outputs'):
                missing.append(f"{p.name}: a cell that prints has no output ({src.splitlines()[0][:60]!r})")
    assert not missing, 'run `make notebooks` and commit the notebooks:\n' + '\n'.join(missing)
    assert size <= 5_000_000, f'the stored outputs take {size / 1e6:.1f} MB: keep them under 5 MB (small PNG figures, short tables)'
