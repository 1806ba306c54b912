"""Execute the notebooks in nbs/ and store their outputs in them, so a reader sees every table and figure on GitHub.

    python tools/run_notebooks.py [NOTEBOOK ...]    (default: every notebook in nbs/; `make notebooks` runs this)

Each notebook's first screen gets its measured run time (the line between `<!-- runtime -->` markers).
Cells run as `nbdev_test` runs them: cells flagged with a test flag of settings.ini (`slow`, `gpu`) or `#| eval: false`
are skipped and keep no output. Plotly figures are stored as small static PNG images (kaleido, drawing with the machine's
Chromium or Chrome), not as an embedded plotly.js bundle; progress bars are off. Afterwards run `nbdev_clean` (the
Makefile does), which keeps the outputs and drops the run's metadata.
"""
import configparser, os, shutil, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _test_flags() -> set[str]:
    c = configparser.ConfigParser(); c.read(ROOT / 'settings.ini')
    return set(c['DEFAULT'].get('tst_flags', '').split())

SKIP = _test_flags()                                # cells nbdev_test skips (slow, gpu)
FIG = {'width': 720, 'height': 400, 'scale': 1}   # pixels of each stored figure: small PNGs keep the notebooks light
MAX_HTML = 200_000                                 # larger HTML outputs are replaced by a note


def directives(source: str) -> dict:
    "The nbdev directives (`#| key value`) at the top of a cell."
    out = {}
    for line in source.splitlines():
        if not line.startswith('#|'): break
        key, *val = line[2:].strip().split(maxsplit=1)
        out[key.rstrip(':')] = val[0].strip() if val else ''
    return out


def skipped(cell) -> bool:
    "Whether `nbdev_test` would skip this cell (markdown, an export call, `eval: false`, or a test flag)."
    if cell.cell_type != 'code': return True
    d = directives(cell.source)
    return 'nbdev_export(' in cell.source or d.get('eval', '').lower() == 'false' or bool(SKIP & d.keys())


PRELUDE = f"""
import plotly.io as _pio
_pio.renderers.default = 'png'
for _k, _v in {FIG!r}.items(): setattr(_pio.renderers['png'], _k, _v)
"""


def browser() -> str | None:
    "A Chromium or Chrome for kaleido's static export."
    for name in ('chromium', 'chromium-browser', 'google-chrome', 'chrome'):
        if shutil.which(name): return shutil.which(name)
    return None


def run(path: Path) -> float:
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    t0 = time.time()
    nb = read_nb(path)
    for c in nb.cells:
        if c.cell_type == 'code': c.outputs, c.execution_count = [], None
    shell = CaptureShell(path)
    cwd = os.getcwd()
    try:
        os.chdir(path.parent)
        shell.run(PRELUDE)
        shell.run_all(nb, exc_stop=True, preproc=skipped)
    finally: os.chdir(cwd)
    for c in nb.cells:
        if c.cell_type != 'code': continue
        # a figure shown by the PNG renderer leaves an empty result behind
        c.outputs = [o for o in c.outputs if o.get('output_type') != 'execute_result' or o.get('data')]
        for o in c.outputs:   # a view that carries its own scripts (circuitsvis) is about a megabyte, and GitHub runs no scripts
            html = ''.join((o.get('data') or {}).get('text/html', ''))
            if len(html) > MAX_HTML:
                o['data'] = {'text/plain': f'[an interactive view of {len(html) // 1000} kB, not stored: run the notebook to see it]'}
    secs = time.time() - t0
    stamp_runtime(nb.cells, secs)
    write_nb(nb, path)
    return secs


RT0, RT1 = '<!-- runtime -->', '<!-- /runtime -->'   # the run-time line of a notebook's first screen


def cpu_name() -> str:
    "The CPU's model name (Linux), else what platform knows."
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    import platform
    return platform.processor() or 'unknown CPU'


def runtime_text(secs: float) -> str:
    "The measured run time as the first screen states it, with the machine that measured it."
    t = 'under 1 s' if secs < 1 else f'about {secs:.0f} s' if secs < 90 else f'about {secs / 60:.0f} min'
    return (f'{t} on a {os.cpu_count()}-core CPU ({cpu_name()}), measured by `make notebooks` (its cells, with the '
            'package already imported: a fresh kernel adds a few seconds).')


def stamp_runtime(cells, secs: float):
    "Write the measured run time into the first-screen cell's run-time line (a notebook without one is left as is)."
    for c in cells:
        if c.cell_type == 'markdown' and RT0 in c.source and RT1 in c.source:
            head, rest = c.source.split(RT0, 1)
            c.source = head + RT0 + runtime_text(secs) + RT1 + rest.split(RT1, 1)[1]
            return


def main(argv: list[str]) -> int:
    os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
    os.environ['TQDM_DISABLE'] = '1'   # progress bars would fill the outputs
    try: import kaleido  # noqa: F401
    except ImportError:
        print('run_notebooks: plotly figures are stored as PNG through kaleido: pip install -e ".[docs]" (make notebooks does)', file=sys.stderr)
        return 2
    chrome = browser()
    if chrome is None:
        print('run_notebooks: kaleido needs Chromium or Chrome for static figures: apt-get install chromium (make browser)', file=sys.stderr)
        return 2
    os.environ.setdefault('BROWSER_PATH', chrome)
    paths = [Path(p).resolve() for p in argv] or sorted((ROOT / 'nbs').glob('*.ipynb'))
    t0 = time.time()
    for p in paths:
        try: print(f'{p.name}: {run(p):.0f} s, {p.stat().st_size / 1e6:.2f} MB', flush=True)
        except Exception as e:
            print(f'run_notebooks: {p.name} failed ({type(e).__name__}: {e}); its stored outputs were left as they were', file=sys.stderr)
            return 1
    print(f'{len(paths)} notebooks in {(time.time() - t0) / 60:.1f} min')
    return 0


if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
