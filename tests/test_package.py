"""The package's shape: every runtime import is a runtime requirement, and the import graph points one way.

These read the generated modules as text (their `import` statements), so they run in a second and need no model."""
import ast, configparser, importlib.metadata as md, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'crosscoder_nb'
# The tutorial's modules: the only ones that may import `organisms` (building and checking the model organisms).
# Their data (`corpus`: English prose and dialogs with the planted behaviours) is a dataset any module may read.
TUTORIAL = {'planted', 'cli'}
# Imports inside functions are allowed only where they keep `crosscoder-diff --help` fast.
LAZY_IMPORTS_OK = {'cli'}
# Optional integrations, installed by an extra of setup.py and imported only inside the function that uses them.
OPTIONAL = {'wandb'}


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(PKG.glob('*.py')) if p.stem not in ('__init__', '_modidx')}


def _requirements() -> set[str]:
    c = configparser.ConfigParser(delimiters=['=']); c.read(ROOT / 'settings.ini')
    names = [re.split(r'[<>=!~\[ ;]', r)[0] for r in c['DEFAULT']['requirements'].split()]
    return {n.lower().replace('_', '-') for n in names}


def _imports(tree: ast.Module, top_level_only: bool = False):
    "(node, module name, is top-level) for each import in `tree`; relative imports are named `crosscoder_nb.X`."
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names: yield node, a.name, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            name = ('crosscoder_nb' + (f'.{node.module}' if node.module else '')) if node.level else node.module
            if name == 'crosscoder_nb':   # `from . import cache, pipeline`: each a module of the package
                for a in node.names:
                    yield node, 'crosscoder_nb' if a.name.startswith('__') else f'crosscoder_nb.{a.name}', id(node) in top
            else: yield node, name, id(node) in top


def internal_graph() -> dict[str, set[str]]:
    "Each module of the package and the modules of the package it imports."
    g = {}
    for mod, tree in _modules().items():
        g[mod] = {n.split('.')[1] for _, n, _ in _imports(tree) if n and n.startswith('crosscoder_nb.')} - {mod}
    return g


def test_runtime_imports_are_runtime_requirements():
    "What the package imports (outside `if __name__` blocks) must be installed by `pip install crosscoder-nb`."
    dists, reqs, std = md.packages_distributions(), _requirements(), set(sys.stdlib_module_names)
    missing = set()
    for mod, tree in _modules().items():
        for _, name, at_top in _imports(tree):
            top = (name or '').split('.')[0]
            if not top or top in std or top == 'crosscoder_nb' or top == '__future__': continue
            if top in OPTIONAL and not at_top: continue
            found = {d.lower().replace('_', '-') for d in dists.get(top, [top])}
            if not found & reqs: missing.add(f'{mod}: {name} (distribution {sorted(found)})')
    assert not missing, 'add to settings.ini `requirements`:\n' + '\n'.join(sorted(missing))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    "The import cycles of graph `g` (module -> modules it imports), each as a path back to its start."
    state, found = {}, []
    def visit(m, path):
        state[m] = 'open'
        for n in sorted(g.get(m, ())):
            if state.get(n) == 'open': found.append(path[path.index(n):] + [n])
            elif n not in state: visit(n, path + [n])
        state[m] = 'done'
    for m in sorted(g):
        if m not in state: visit(m, [m])
    return found


def test_import_graph_has_no_cycle():
    assert not cycles(internal_graph()), f'import cycles: {cycles(internal_graph())}'
    assert cycles({'a': {'b'}, 'b': {'a'}}) == [['a', 'b', 'a']]   # the check itself sees one


def test_only_the_tutorial_imports_the_organisms():
    users = {m for m, deps in internal_graph().items() if 'organisms' in deps}
    assert users <= TUTORIAL, f'general modules import organisms: {sorted(users - TUTORIAL)}'


def test_no_shims_star_imports_or_private_names_across_modules():
    bad = []
    for mod, tree in _modules().items():
        if mod.endswith('_internals'): bad.append(f'{mod}: an _internals half (one notebook per module)')
        for node, name, top in _imports(tree):
            if not (name or '').startswith('crosscoder_nb'): continue
            if not top and mod not in LAZY_IMPORTS_OK: bad.append(f'{mod}: imports {name} inside a function')
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.name == '*': bad.append(f'{mod}: star import from {name}')
                    elif a.name.startswith('_') and not a.name.startswith('__'): bad.append(f'{mod}: private {a.name} from {name}')
    assert not bad, '\n'.join(bad)


def test_cli_imports_nothing_heavy_at_startup():
    "`crosscoder-diff --help` answers at once: cli.py's module-level imports are the standard library and light ones."
    tree = _modules()['cli']
    heavy = [n for _, n, top in _imports(tree) if top and (n or '').split('.')[0] in ('torch', 'transformer_lens',
             'transformers', 'datasets', 'plotly', 'numpy') or top and (n or '').startswith('crosscoder_nb.')]
    assert not heavy, f'cli.py imports at startup: {heavy}'


def test_notebook_code_lines_fit_120_characters():
    "Readable cells: every line of code in the notebooks (and so in the package, but nbdev's own) within 120 characters."
    import json
    long = [f'{p.name}: {l[:60]}...' for p in sorted((ROOT / 'nbs').glob('*.ipynb'))
            for c in json.loads(p.read_text())['cells'] if c['cell_type'] == 'code'
            for l in ''.join(c['source']).splitlines() if len(l) > 120]
    assert not long, 'wrap these lines:\n' + '\n'.join(long)
