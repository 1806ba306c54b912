"""The demo's "What changed" table as mean and spread over runs: each folder is a `crosscoder-diff demo` output (one
training seed each, e.g. `crosscoder-diff demo --out demo_s1 --set train.seed=1 --set crosscoder.seed=1`); each row is a
planted behaviour and a method, every figure measured on test prompts after choices on validation prompts.

    python bench/what_changed.py DEMO_DIR [DEMO_DIR ...] [--no-readme]

Writes crosscoder_nb/assets/results/what-changed.json (every run's rows) and what-changed.md (mean, and the range over the
runs where there are several), and puts the table into its docs/ page between the what-changed markers."""
import argparse, json, statistics
from pathlib import Path
from _results import publish
from crosscoder_nb.whatchanged import TABLE_COLUMNS, method_rows, readout_rows, what_changed_rows

NUMERIC = ('AUROC at the choice token', 'AUROC over the decision span', 'density', 'rate clean', 'rate edited', 'random control',
           'loss change (nats/token)')
PCT = ('density', 'rate clean', 'rate edited', 'random control')

def cell(vals: list, pct: bool) -> str:
    vals = [v for v in vals if v is not None]
    if not vals: return ''
    f = (lambda v: f'{100 * v:.0f}%') if pct else (lambda v: f'{v:.3f}')
    m = statistics.mean(vals)
    return f(m) if len(vals) == 1 else f'{f(m)} ({f(min(vals))}-{f(max(vals))})'

def main():
    p = argparse.ArgumentParser(); p.add_argument('dirs', nargs='+'); p.add_argument('--no-readme', action='store_true')
    a = p.parse_args()
    runs = [json.loads((Path(d) / 'metrics.json').read_text()) for d in a.dirs]
    raw = [method_rows(m['methods']) for m in runs]
    rows = [what_changed_rows(r) for r in raw]
    seeds = [r.get('seed', '?') for r in runs]
    md = [f"{len(runs)} demo run(s), training seed(s) {', '.join(map(str, seeds))}: the mean, and the range where there "
          f"are several. Test prompts: {runs[0]['behaviours']['signoff']['n_test_prompts']} per behaviour.\n",
          '| ' + ' | '.join(TABLE_COLUMNS) + ' |', '|' + '---|' * len(TABLE_COLUMNS)]
    for i, r0 in enumerate(rows[0]):
        same = [rs[i] for rs in rows if i < len(rs) and rs[i]['method'] == r0['method']]
        cells = [cell([r[c] for r in same], c in PCT) if c in NUMERIC else str(r0[c] or '') for c in TABLE_COLUMNS]
        if len(runs) > 1:
            cells[2] = '; '.join(dict.fromkeys(r['named'] for r in same))
            cells[3] = '; '.join(dict.fromkeys(str(r[TABLE_COLUMNS[3]] or '') for r in same))
            others = [x[r0['method']][r0['behaviour']]['other'] for x in raw]
            cells[TABLE_COLUMNS.index('other behaviour clean -> edited')] = '; '.join(f"{o} {cell([x[o][0] for x in others], True)} -> {cell([x[o][1] for x in others], True)}"
                                 for o in others[0])
        md.append('| ' + ' | '.join(cells) + ' |')
    ro = [readout_rows({n: m['readout'] for n, m in r['methods'].items() if m.get('readout')}) for r in runs]
    md += ['', 'Without ground truth: best rank of each marker\'s first token in the units read (1 = top of the vocabulary)',
           '', '| method | ' + ' | '.join(f'run {i}' for i in range(len(runs))) + ' |', '|---|' + '---|' * len(runs)]
    for j, r in enumerate(ro[0]):
        ranks = [{k: v for k, v in rr[j].items() if 'rank' in k} for rr in ro]
        md.append(f"| {r['method']} | " + ' | '.join(', '.join(f'{k.split()[0]} {v}' for k, v in x.items()) for x in ranks) + ' |')
    times = {m: [r['training'].get(m, {}).get('wall_seconds') for r in runs] for m in runs[0]['training']}
    times['diff_sae'] = [r['methods'].get('diff_sae', {}).get('training', {}).get('wall_seconds') for r in runs]
    md += ['', 'Training time on the demo\'s harvest (s): ' + ', '.join(f'{k} {cell(v, False)}' for k, v in times.items()),
           'Demo time (s): ' + cell([r['demo_seconds'] for r in runs], False), '']
    data = {'dirs': a.dirs, 'seeds': seeds, 'n_test_prompts': runs[0]['behaviours']['signoff']['n_test_prompts'],
            'rows': rows, 'methods': raw, 'readout': ro, 'training_seconds': times,
            'demo_seconds': [r['demo_seconds'] for r in runs]}
    publish('what-changed', '\n'.join(md), data, readme=not a.no_readme)

if __name__ == '__main__': main()
