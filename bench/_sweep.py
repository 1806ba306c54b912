"""What bench/layer_sweep.py and bench/width_sweep.py share: train one config on a harvest, run the report's causal checks,
and keep the validation figures (which choose) apart from the test figures (which are only recorded)."""
import statistics
from pathlib import Path
from crosscoder_nb.pipeline import train_run
from crosscoder_nb.report import report_run

BEH = ('signoff', 'refusal')

def needed(by_size: dict) -> int:
    "The smallest set size whose validation rate is <= 20%; 41 where none is."
    ok = [int(n) for n, r in by_size.items() if r <= 0.2]
    return min(ok) if ok else 41

def sweep_row(cfg, d: Path, models, h, n_test: int, n_validation: int, **extra) -> dict:
    "Train `cfg` into `d` on the harvest `h`, report with causal checks, and return one row of the sweep's table."
    train_run(cfg, d, device='cpu', models=models, activations=h)
    m = report_run(d, Path(str(d) + 'r'), models=models, device='cpu', dashboards=False, planted=False,
                   causal=True, n_test=n_test, n_validation=n_validation)
    r = {**extra, 'd_latent': cfg.crosscoder.d_latent, 'l0': m['l0'], 'ev_base': m['explained_variance']['base'],
         'ev_chat': m['explained_variance']['chat'], 'n_chat_specific': m['n_chat_specific'],
         'validation': {}, 'test': {}}
    for b in BEH:
        v, t = m['behaviours'][b]['validation'], m['behaviours'][b]
        r['validation'][b] = {'clean': v['clean'], 'by_size': {str(k): x for k, x in v['diff_patch_by_size'].items()},
                              'needed': needed(v['diff_patch_by_size'])}
        r['test'][b] = {'latents': t['latents'], 'clean': t['rates']['clean'], 'diff_patch': t['rates']['diff_patch'],
                        'random_diff_patch': statistics.mean(t['rates']['random_diff_patch']),
                        'loss_change': t['general_loss_change']['diff_patch'],
                        'best_chat_specific_detector': t['best_chat_specific_detector'],
                        'best_at_decision': t['detection_at_decision']['best_detector']}
    print({k: r[k] for k in (*extra, 'd_latent', 'l0', 'ev_base', 'ev_chat', 'n_chat_specific')},
          {b: (r['validation'][b]['needed'], r['validation'][b]['by_size']) for b in BEH}, flush=True)
    return r

pct = lambda x: f'{100 * x:.0f}%'
need = lambda n: '>40' if n > 40 else str(n)

def validation_cells(r: dict) -> str:
    "The validation columns of a row: per behaviour, the clean rate, the latents needed to reach 20%, and the rate at 10."
    return ' | '.join(f"{pct(r['validation'][b]['clean'])} | {need(r['validation'][b]['needed'])} | "
                      f"{pct(r['validation'][b]['by_size'].get('10', float('nan')))}" for b in BEH)

RATES_NOTE = ('rates of the chat model on {n} validation prompts per behaviour with the top-n latents of greedy attribution '
              'diff-patched (n in 1, 2, 3, 5, 10, 20, 40).')
VALIDATION_HEADER = ('sign-off: validation clean | latents to <= 20% | rate at 10 latents | refusal: validation clean | '
                     'latents to <= 20% | rate at 10 latents')
