"""Compare two metrics.json files, leaving out timings: `python tools/compare_metrics.py BEFORE AFTER`."""
import json, sys
TIME = ('seconds', 'tokens_per_s', 'wall', 'demo_seconds', 'time', 'facts')
def strip(o, path=''):
    if isinstance(o, dict):
        return {k: strip(v, f'{path}.{k}') for k, v in o.items() if not any(t in k for t in TIME)}
    if isinstance(o, list): return [strip(v, path) for v in o]
    return o
a, b = (strip(json.load(open(p))) for p in sys.argv[1:3])
diffs = []
def walk(x, y, path=''):
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y)):
            if k not in x or k not in y: diffs.append(f'{path}.{k}: only in {"after" if k in y else "before"}')
            else: walk(x[k], y[k], f'{path}.{k}')
    elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)): walk(u, v, f'{path}[{i}]')
    elif x != y: diffs.append(f'{path}: {str(x)[:80]} -> {str(y)[:80]}')
walk(a, b)
print('\n'.join(diffs) if diffs else 'metrics.json equal (timings left out)')
print(f'{len(diffs)} differences')
