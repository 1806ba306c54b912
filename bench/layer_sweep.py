"""Which layer should the organisms' crosscoders read? Each candidate layer (`blocks.L.hook_resid_pre`), each architecture,
one training seed, judged on *validation* prompts only: how few latents, named by greedy attribution, remove each planted
behaviour when diff-patched. The test-prompt figures are recorded in the JSON but take no part in the choice.

    python bench/layer_sweep.py [--layers 1,2,3] [--archs batchtopk,l1] [--seed 0] [--n-tokens N (default: the demo's)]

The rule, fixed before looking: per behaviour, the smallest set size whose validation rate is <= 20% (41 when none of
1-40 is), summed over the two behaviours and the architectures; ties go to the lower validation rate at 10 latents.
Writes bench/results/layer-sweep.json and .md, and README.md's layer-sweep block. About 20 minutes on a 2-core CPU.
"""
import argparse, platform, statistics, tempfile, time
from pathlib import Path
import torch
from _results import publish
from crosscoder_nb.buffer import harvest_activations
from crosscoder_nb.models import load_model
from crosscoder_nb.pipeline import organisms_config, set_fields, train_run
from crosscoder_nb.report import report_run

p = argparse.ArgumentParser()
p.add_argument('--layers', default='1,2,3'); p.add_argument('--archs', default='batchtopk,l1'); p.add_argument('--seed', type=int, default=0)
p.add_argument('--n-tokens', type=int, default=organisms_config().train.n_tokens); p.add_argument('--no-readme', action='store_true')
p.add_argument('--n-test', type=int, default=100); p.add_argument('--n-validation', type=int, default=60)
a = p.parse_args()
t0, layers, archs, BEH = time.time(), [int(x) for x in a.layers.split(',')], a.archs.split(','), ('signoff', 'refusal')
models = [load_model(m, device='cpu') for m in organisms_config().models]

def needed(by_size: dict) -> int:
    "The smallest set size whose validation rate is <= 20%; 41 where none is."
    ok = [int(n) for n, r in by_size.items() if r <= 0.2]
    return min(ok) if ok else 41

rows = []
with tempfile.TemporaryDirectory() as tmp:
    for layer in layers:
        base = set_fields(organisms_config(layer=layer), {'train.n_tokens': a.n_tokens})
        h = harvest_activations(models, base.data, base.buffer, a.n_tokens)
        for arch in archs:
            cfg = set_fields(organisms_config(layer=layer, arch=arch), {'train.n_tokens': a.n_tokens, 'train.seed': a.seed, 'crosscoder.seed': a.seed})
            d = Path(tmp) / f'{arch}{layer}'
            train_run(cfg, d, device='cpu', models=models, activations=h)
            m = report_run(d, Path(tmp) / f'{arch}{layer}r', models=models, device='cpu', dashboards=False, planted=False,
                           causal=True, n_test=a.n_test, n_validation=a.n_validation)
            r = {'layer': layer, 'arch': arch, 'seed': a.seed, 'l0': m['l0'], 'ev_chat': m['explained_variance']['chat'],
                 'n_chat_specific': m['n_chat_specific'], 'validation': {}, 'test': {}}
            for b in BEH:
                v = m['behaviours'][b]['validation']
                r['validation'][b] = {'clean': v['clean'], 'by_size': {str(k): x for k, x in v['diff_patch_by_size'].items()},
                                      'needed': needed(v['diff_patch_by_size'])}
                t = m['behaviours'][b]
                r['test'][b] = {'latents': t['latents'], 'clean': t['rates']['clean'], 'diff_patch': t['rates']['diff_patch'],
                                'random_diff_patch': statistics.mean(t['rates']['random_diff_patch']),
                                'best_chat_specific_detector': t['best_chat_specific_detector'],
                                'best_at_decision': t['detection_at_decision']['best_detector']}
            rows.append(r)
            print({k: r[k] for k in ('layer', 'arch', 'l0', 'ev_chat', 'n_chat_specific')},
                  {b: (r['validation'][b]['needed'], r['validation'][b]['by_size']) for b in BEH}, flush=True)

score = {L: (sum(r['validation'][b]['needed'] for r in rows if r['layer'] == L for b in BEH),
             sum(r['validation'][b]['by_size'].get('10', 1.0) for r in rows if r['layer'] == L for b in BEH)) for L in layers}
best = min(layers, key=lambda L: score[L])
pct = lambda x: f'{100 * x:.0f}%'
need = lambda n: '>40' if n > 40 else str(n)
md = ('| layer | arch | L0 | EV chat | chat-specific latents | sign-off: validation clean | latents to <= 20% | rate at 10 latents '
      '| refusal: validation clean | latents to <= 20% | rate at 10 latents |\n|' + '---|' * 11 + '\n' + '\n'.join(
      f"| {r['layer']}{' (chosen)' if r['layer'] == best else ''} | {r['arch']} | {r['l0']:.1f} | {pct(r['ev_chat'])} | {r['n_chat_specific']} | "
      + ' | '.join(f"{pct(r['validation'][b]['clean'])} | {need(r['validation'][b]['needed'])} | {pct(r['validation'][b]['by_size'].get('10', float('nan')))}" for b in BEH)
      + ' |' for r in rows))
md += (f"\n\nOne training seed ({a.seed}) per layer and architecture, each on its own harvest of {a.n_tokens:,} activations at "
       f"`blocks.L.hook_resid_pre`; rates of the chat model on {a.n_validation} validation prompts per behaviour with the top-n latents "
       "of greedy attribution diff-patched (n in 1, 2, 3, 5, 10, 20, 40). The rule, fixed in advance: the fewest latents summed over "
       f"behaviours and architectures, ties to the lower rate at 10. Chosen: layer {best}. Test prompts take no part (their figures "
       f"are in layer-sweep.json). Generated by `python bench/layer_sweep.py` in {(time.time() - t0) / 60:.1f} min "
       f"({platform.machine()} CPU, {torch.get_num_threads()} threads).\n")
publish('layer-sweep', md, {'rows': rows, 'score': {str(k): v for k, v in score.items()}, 'chosen': best, 'n_tokens': a.n_tokens},
        readme=not a.no_readme)
