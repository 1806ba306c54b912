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


def test_each_notebook_opens_with_what_it_teaches_needs_and_takes():
    "The first screen of every lesson says what it teaches, what it needs, and its run time as `make notebooks` measured it."
    import json, re
    run, bad = _runner(), []
    for p in sorted((ROOT / 'nbs').glob('*.ipynb')):
        if p.name == 'index.ipynb': continue   # the README's source: its first screen is the README's
        cells = [''.join(c['source']) for c in json.loads(p.read_text())['cells'][:4]]
        first = [c for c in cells if c.startswith('<!-- first-screen -->')]
        if not first: bad.append(f'{p.name}: no first-screen cell among its first four'); continue
        s = first[0]
        if not ('**In this lesson:**' in s and '**You need:**' in s): bad.append(f'{p.name}: teaches / needs missing')
        t = s.split(run.RT0)[1].split(run.RT1)[0] if run.RT0 in s else ''
        if not re.fullmatch(r'(under 1 s|about \d+ (s|min)) on a \d+-core CPU \(.+\), measured by `make notebooks` \(its cells, with the package already imported: a fresh kernel adds a few seconds\)\.', t):
            bad.append(f'{p.name}: run time not measured ({t[:50]!r})')
    assert not bad, 'give each notebook its first-screen cell and run `make notebooks`:\n' + '\n'.join(bad)


def test_the_run_time_is_stamped_from_the_measurement():
    from types import SimpleNamespace as C
    run = _runner()
    cell = C(cell_type='markdown', source=f'**Run time:** {run.RT0}not measured{run.RT1} (see above)')
    run.stamp_runtime([C(cell_type='code', source='x'), cell], 75.2)
    assert cell.source.startswith('**Run time:** <!-- runtime -->about 75 s on a ') and cell.source.endswith(
        'a fresh kernel adds a few seconds).<!-- /runtime --> (see above)')
    run.stamp_runtime([cell], 600)
    assert 'about 10 min on a' in cell.source and cell.source.count(run.RT0) == 1
    run.stamp_runtime([cell], 0.4)
    assert '-->under 1 s on a' in cell.source
