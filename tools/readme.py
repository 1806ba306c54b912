"""Render README.md from nbs/index.ipynb (nbdev's convention: the index notebook is the front page).

    python tools/readme.py            # write README.md and its figures (docs/readme/)
    python tools/readme.py --check    # exit 1 when README.md differs from what index.ipynb renders to

`nbdev_readme` renders through Quarto, which these machines cannot install; this is a small converter of the
executed notebook's stored outputs instead (`make readme` runs it, after `tools/run_notebooks.py nbs/index.ipynb`).
A cell is shown as nbdev shows it: `#| hide` drops it, `#| echo: false` keeps only its outputs, directive lines are
never shown. Markdown outputs are copied as they are, text outputs become code blocks, PNG figures become files
under docs/readme/ that README.md links to. Nothing is executed here: README.md is a function of index.ipynb.
"""
import base64, hashlib, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
from run_notebooks import directives   # nbdev's `#| key: value` lines at the top of a cell
NB, README, FIGS = ROOT / 'nbs' / 'index.ipynb', ROOT / 'README.md', ROOT / 'docs' / 'readme'
HEADER = ('<!-- Generated from nbs/index.ipynb by `make readme` (tools/readme.py): edit the notebook, not this file. '
          '-->\n\n')


def _code(src: str) -> str:
    body = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip('\n')
    return f'```python\n{body}\n```' if body else ''


def _text(s) -> str:
    s = ''.join(s).rstrip('\n')
    return f'```text\n{s}\n```' if s else ''


def _output(o: dict, figs: dict) -> str:
    "One stored output as Markdown; PNGs are collected in `figs` (file name -> bytes)."
    if o['output_type'] == 'stream': return _text(o['text']) if o['name'] == 'stdout' else ''
    if o['output_type'] == 'error': raise ValueError(f"index.ipynb holds an error output: {o['ename']}: {o['evalue']}")
    data = o.get('data', {})
    if 'image/png' in data:
        png = base64.b64decode(''.join(data['image/png']))
        name = f'figure-{hashlib.sha256(png).hexdigest()[:12]}.png'
        figs[name] = png
        return f'![figure](docs/readme/{name})'
    if 'text/markdown' in data: return ''.join(data['text/markdown']).strip('\n')
    if 'text/plain' in data: return _text(data['text/plain'])
    return ''


def render(nb: dict) -> tuple[str, dict]:
    "README.md's text and its figures from the executed notebook."
    parts, figs = [], {}
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown': parts.append(src.strip('\n')); continue
        if c['cell_type'] != 'code': continue
        d = directives(src)
        if 'hide' in d or 'default_exp' in d: continue
        if d.get('echo', '').lower() != 'false': parts.append(_code(src))
        parts += [_output(o, figs) for o in c.get('outputs', [])]
    return HEADER + '\n\n'.join(p for p in parts if p) + '\n', figs


def main(check: bool = False) -> int:
    text, figs = render(json.loads(NB.read_text()))
    have = {p.name: p.read_bytes() for p in FIGS.glob('*.png')} if FIGS.is_dir() else {}
    if check:
        ok = README.exists() and README.read_text() == text and have == figs
        if not ok: print('README.md is not what nbs/index.ipynb renders to: run `make readme`.', file=sys.stderr)
        return 0 if ok else 1
    FIGS.mkdir(parents=True, exist_ok=True)
    for name in set(have) - set(figs): (FIGS / name).unlink()
    for name, png in figs.items(): (FIGS / name).write_bytes(png)
    README.write_text(text)
    print(f'README.md: {len(text):,} bytes, {len(figs)} figure(s) in {FIGS.relative_to(ROOT)}')
    return 0


if __name__ == '__main__':
    sys.exit(main('--check' in sys.argv[1:]))
