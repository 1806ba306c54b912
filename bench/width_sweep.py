"""How wide should the organisms' crosscoders be? Each candidate `d_latent`, each architecture, at the demo's layer, one
training seed, judged on *validation* prompts only: how few latents, named by greedy attribution, remove each planted
behaviour when diff-patched. Test-prompt figures are recorded in the JSON but take no part in the choice.

    python bench/width_sweep.py [--widths 256,512,1024,2048] [--shared 0,0.5] [--archs batchtopk] [--seed 0] [--n-tokens N]

`--shared`: fractions of each dictionary made designated shared latents (one decoder for both models); a BatchTopK run gives
them half of its k (`k_shared`), so its L0 stays the same.

The rule: per architecture, among the configs whose explained variance is at least 0.85 for both models (the demo's
standing target, `10_report.ipynb`), the one with the fewest latents needed (the smallest set size whose validation rate
is <= 20%, 41 when none of 1-40 is) summed over the two behaviours; ties go to a config without designated shared
latents (a default that `--d-latent` alone can resize), then to the lower summed validation rate at 10 latents, then to
the wider dictionary. All configs train on one harvest of the demo's activations. Writes crosscoder_nb/assets/results/width-sweep.json
and .md, and docs/results.md's width-sweep block. About 10 minutes on a 2-core CPU for BatchTopK (the default); L1 runs
(`--archs batchtopk,l1`) take longer.
"""
import argparse, platform, tempfile, time
from pathlib import Path
import torch
from _results import publish
from _sweep import BEH, RATES_NOTE, VALIDATION_HEADER, pct, sweep_row, validation_cells
from crosscoder_nb.buffer import harvest_activations
from crosscoder_nb.models import load_model
from crosscoder_nb.pipeline import organisms_config, set_fields

p = argparse.ArgumentParser()
p.add_argument('--widths', default='256,512,1024,2048'); p.add_argument('--shared', default='0,0.5')
p.add_argument('--archs', default='batchtopk'); p.add_argument('--seed', type=int, default=0)
p.add_argument('--n-tokens', type=int, default=organisms_config().train.n_tokens); p.add_argument('--no-readme', action='store_true')
p.add_argument('--n-test', type=int, default=100); p.add_argument('--n-validation', type=int, default=60)
a = p.parse_args()
t0, widths, archs = time.time(), [int(x) for x in a.widths.split(',')], a.archs.split(',')
shares = [float(x) for x in a.shared.split(',')]
EV_MIN = 0.85   # the demo's target for both models (10_report.ipynb)
base = set_fields(organisms_config(), {'train.n_tokens': a.n_tokens})
models = [load_model(m, device='cpu') for m in base.models]
h, rows = harvest_activations(models, base.data, base.buffer, a.n_tokens), []
with tempfile.TemporaryDirectory() as tmp:
    for arch in archs:
        for w in widths:
            for sh in shares:
                cfg, n_s = organisms_config(arch=arch), int(round(sh * w))
                k = cfg.crosscoder.k
                shared = {'crosscoder.n_shared': n_s} | ({'crosscoder.k_shared': k // 2, 'crosscoder.k': k - k // 2} if n_s and k else {})
                cfg = set_fields(cfg, {'train.n_tokens': a.n_tokens, 'train.seed': a.seed, 'crosscoder.seed': a.seed, 'crosscoder.d_latent': w} | shared)
                rows.append(sweep_row(cfg, Path(tmp) / f'{arch}{w}s{n_s}', models, h, a.n_test, a.n_validation,
                                      arch=arch, n_shared=n_s, seed=a.seed))
minutes = (time.time() - t0) / 60

score = lambda r: (sum(r['validation'][b]['needed'] for b in BEH), r['n_shared'] > 0,
                   sum(r['validation'][b]['by_size'].get('10', 1.0) for b in BEH), -r['d_latent'])
ok = lambda r: min(r['ev_base'], r['ev_chat']) >= EV_MIN
best = {arch: min(rs, key=score) for arch in archs if (rs := [r for r in rows if r['arch'] == arch and ok(r)])}
chosen = {arch: {'d_latent': r['d_latent'], 'n_shared': r['n_shared']} for arch, r in best.items()}
md = (f'| arch | d_latent | designated shared | L0 | EV base, chat | chat-specific latents | {VALIDATION_HEADER} |\n|' + '---|' * 12 + '\n' + '\n'.join(
      f"| {r['arch']} | {r['d_latent']}{' (chosen)' if best.get(r['arch']) is r else ''} | {r['n_shared']} | {r['l0']:.1f} | "
      f"{pct(r['ev_base'])}, {pct(r['ev_chat'])}{'' if ok(r) else f' (below {pct(EV_MIN)})'} | "
      f"{r['n_chat_specific']} | {validation_cells(r)} |" for r in rows))
md += (f"\n\nOne training seed ({a.seed}) per width and architecture, all on one harvest of {a.n_tokens:,} activations at the demo's "
       f"layer (`blocks.{base.buffer.layer}.hook_resid_pre`); {RATES_NOTE.format(n=a.n_validation)} The rule: per "
       f"architecture, among the configs with explained variance >= {EV_MIN:.0%} for both models (the demo's target, on its evaluation text), the fewest latents "
       "summed over behaviours, ties to no designated shared latents, then to the lower rate at 10, then to the wider dictionary. Chosen: "
       + ', '.join(f"{k} {v['d_latent']}" + (f" ({v['n_shared']} designated shared)" if v['n_shared'] else '') for k, v in chosen.items()) + (' (none qualified)' if not chosen else '') + ". Test prompts take no part (their figures are in width-sweep.json). "
       f"Generated by `python bench/width_sweep.py` in {minutes:.1f} min ({platform.machine()} CPU, {torch.get_num_threads()} threads).\n")
publish('width-sweep', md, {'rows': rows, 'chosen': chosen, 'n_tokens': a.n_tokens, 'minutes': minutes}, readme=not a.no_readme)
