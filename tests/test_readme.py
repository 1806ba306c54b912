"""README.md is rendered from nbs/index.ipynb (tools/readme.py): the two agree, the page stays short, its links resolve,
and the converter shows cells as nbdev does."""
import ast, base64, importlib.util, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('readme', ROOT / 'tools' / 'readme.py')
readme = importlib.util.module_from_spec(spec); spec.loader.exec_module(readme)


def test_readme_is_what_index_renders_to():
    r = subprocess.run([sys.executable, 'tools/readme.py', '--check'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_index_is_executed_without_errors():
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    shown = [c for c in nb['cells'] if c['cell_type'] == 'code' and 'hide' not in readme.directives(''.join(c['source']))]
    assert shown and all(c['outputs'] for c in shown), 'run `make readme`: a shown cell of index.ipynb has no output'
    assert not any(o['output_type'] == 'error' for c in shown for o in c['outputs'])


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / 'README.md').read_text()
    assert len(text.encode()) < 25_000, f'README.md has {len(text.encode()):,} bytes: move detail to docs/'
    local = [t for t in re.findall(r'\]\(([^)#]+)', text) if not t.startswith('http')]
    assert local and all((ROOT / t).exists() for t in local), [t for t in local if not (ROOT / t).exists()]
    for t in re.findall(r'\]\(#([^)]+)\)', text):   # the table of contents: GitHub's anchors of the headings
        heads = [re.sub(r'[^a-z0-9 _-]', '', h.lower()).replace(' ', '-') for h in re.findall(r'(?m)^## (.+)$', text)]
        assert t in heads, t


def test_converter_shows_cells_as_nbdev_does():
    png = base64.b64encode(b'\x89PNG fake').decode()
    cell = lambda src, outs=(): {'cell_type': 'code', 'source': src, 'outputs': list(outs)}
    nb = {'cells': [{'cell_type': 'markdown', 'source': '# Title'},
                    cell('#| hide\nsecret = 1'),
                    cell('#| echo: false\nshow()', [{'output_type': 'display_data', 'data': {'text/markdown': '**bold**'}}]),
                    cell('#| export\nx = 1\nprint(x)', [{'output_type': 'stream', 'name': 'stdout', 'text': '1\n'}]),
                    cell('fig', [{'output_type': 'display_data', 'data': {'image/png': png, 'text/plain': 'Figure'}}])]}
    text, figs = readme.render(nb)
    assert 'secret' not in text and 'show()' not in text and '**bold**' in text and '#|' not in text
    assert '```python\nx = 1\nprint(x)\n```' in text and '```text\n1\n```' in text
    (name, data), = figs.items()
    assert data == b'\x89PNG fake' and f'(docs/readme/{name})' in text and 'Figure' not in text


def _run_cell(src: str, ns: dict):
    "Run a cell's code in `ns`; the value of its last expression, as a notebook shows it."
    tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.startswith('#|')))
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, 'cell', 'exec'), ns)
    return eval(compile(ast.Expression(last.value), 'cell', 'eval'), ns) if last else None


def test_readme_quotes_the_generated_files_as_they_are_now():
    "The cells that only read generated results, rerun now, give the text index.ipynb stores (else: `make readme`)."
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    ns, checked = {}, 0
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] != 'code' or readme.directives(src).get('echo') != 'false': continue
        value = _run_cell(src, ns)
        stored = [''.join(o['data']['text/markdown']) for o in c['outputs'] if 'text/markdown' in o.get('data', {})]
        if stored:
            assert value.data == stored[0], 'index.ipynb quotes an older results file: run `make readme`'
            checked += 1
    assert checked >= 3
