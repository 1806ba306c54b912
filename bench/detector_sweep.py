"""Can a crosscoder on the organisms call a detector of a planted behaviour chat-specific? The target: for each planted
behaviour, a latent that the decoder norms call chat-specific (r > 0.9), that passes Latent Scaling, and that detects the
behaviour's tokens with AUROC >= 0.95 at a density <= 5%. This script looks for one across the crosscoders one would
try: BatchTopK at the demo's width and wider, with a smaller k, with designated shared latents, and the seed's L1 recipe
from its dense default to strong sparsity. One training seed per config, all on one harvest of the demo's activations.
Every latent is judged on the *validation* prompts; only the probe below is scored on test.

    python bench/detector_sweep.py [--seed 0] [--n-tokens N] [--no-readme]

The rule, fixed before the run: a config meets the target when, for each behaviour, some latent that is chat-specific by
decoder norms and whose Latent Scaling verdict is 'chat-specific' reaches AUROC >= 0.95 at a density <= 5% on the
validation sample (the report's detection sample: held-out dialogs and general text), against the behaviour's context or
its decision tokens. Besides, for each behaviour and label set, the table gives the best chat-specific latent whatever its
verdict, the best latent of any class (with its relative norm), and a ceiling: a logistic probe on both models'
activations (and, for comparison, on the base model's alone and on the chat minus the base activation), fitted on the
validation sample and scored on the test sample, which says whether the tokens can be told apart at this layer at all.
Writes crosscoder_nb/assets/results/detector-sweep.json and .md, and docs/results.md's detector-sweep block. About 6 minutes on a 2-core CPU.
"""
import argparse, platform, tempfile, time
from pathlib import Path
import torch, torch.nn.functional as F
from _results import publish
from crosscoder_nb.buffer import harvest_activations
from crosscoder_nb.crosscoder import CrossCoder
from crosscoder_nb.planted import detection_sample, planted_detection
from crosscoder_nb.diffing import detection_scores
from crosscoder_nb.buffer import harvest_rows
from crosscoder_nb.models import load_model
from crosscoder_nb.pipeline import organisms_config, set_fields, train_run
from crosscoder_nb.report import report_run

p = argparse.ArgumentParser()
p.add_argument('--seed', type=int, default=0); p.add_argument('--n-tokens', type=int, default=organisms_config().train.n_tokens)
p.add_argument('--no-readme', action='store_true')
a = p.parse_args()
AUROC_MIN, DENSITY_MAX = 0.95, 0.05   # the target
BEH, LABELS = ('signoff', 'refusal'), ('context', 'decision')
l1 = lambda c: {'crosscoder.l1_coeff': c}
CONFIGS = [('batchtopk', 'demo (512 latents, k 32)', {}), ('batchtopk', 'k 8', {'crosscoder.k': 8}),
           ('batchtopk', '2048 latents', {'crosscoder.d_latent': 2048}),
           ('batchtopk', '256 designated shared (k 16 + 16)', {'crosscoder.n_shared': 256, 'crosscoder.k_shared': 16, 'crosscoder.k': 16}),
           ('l1', 'demo (2048 latents, L1 0.2)', {}), *(('l1', f'L1 {c}', l1(c)) for c in (0.5, 1.0, 2.0, 4.0))]

t0 = time.time()
base = set_fields(organisms_config(), {'train.n_tokens': a.n_tokens})
models = [load_model(m, device='cpu') for m in base.models]
h = harvest_activations(models, base.data, base.buffer, a.n_tokens)

def row_of(d: dict | None, verdicts: dict) -> dict | None:
    return None if d is None else {'latent': d['latent'], 'auroc': d['auroc'], 'density': d['density'],
                                   'relative_norm': d['relative_norm'], 'verdict': verdicts.get(d['latent'])}

def survey(cc: CrossCoder, verdicts: dict) -> dict:
    "Per behaviour and label set: the best latent of any class, the best chat-specific one, and the best that passes Latent Scaling."
    passing = [j for j, v in verdicts.items() if v == 'chat-specific']
    det = planted_detection(cc, models, latents=passing, split='validation', progress=False)
    out = {}
    for b in BEH:
        for w in LABELS:
            dd = det[b] if w == 'context' else det[b]['decision']
            ok = [r for r in dd['latents'] if r['auroc'] >= AUROC_MIN and r['density'] <= DENSITY_MAX]
            out[f'{b}/{w}'] = {'best': row_of(dd['best'], verdicts), 'best_chat_specific': row_of(dd['best_chat_specific'], verdicts),
                               'best_passing': row_of(max(dd['latents'], key=lambda r: r['auroc'], default=None), verdicts),
                               'n_meeting': len(ok)}
    return out

rows = []
with tempfile.TemporaryDirectory() as tmp:
    for i, (arch, label, kv) in enumerate(CONFIGS):
        cfg = set_fields(organisms_config(arch=arch), {'train.n_tokens': a.n_tokens, 'train.seed': a.seed, 'crosscoder.seed': a.seed, **kv})
        d = Path(tmp) / f'c{i}'
        train_run(cfg, d, device='cpu', models=models, activations=h)
        m = report_run(d, Path(tmp) / f'c{i}r', models=models, device='cpu', dashboards=False, planted=False, causal=False)
        verdicts = {r['latent']: r['verdict'] for r in m['latent_scaling']['latents'] if r['side'] == 'chat'}
        sv = survey(CrossCoder.load(d), verdicts)
        rows.append({'arch': arch, 'config': label, 'settings': kv, 'l0': m['l0'], 'ev_base': m['explained_variance']['base'],
                     'ev_chat': m['explained_variance']['chat'], 'n_chat_specific': m['n_chat_specific'],
                     'median_density_chat_specific': m['specific_density']['chat_specific']['median_density'],
                     'latent_scaling_chat': m['latent_scaling']['summary'].get('chat', {}), 'detection': sv,
                     'meets_target': all(any(sv[f'{b}/{w}']['n_meeting'] for w in LABELS) for b in BEH)})
        print({k: rows[-1][k] for k in ('config', 'l0', 'n_chat_specific', 'meets_target')}, flush=True)

# the ceiling: can a linear readout tell the labelled tokens apart at this layer, from both models, the base alone, or the difference?
def sample(split: str):
    smp, narrow = detection_sample(models[0].tokenizer, split)   # the sample planted_detection scores the latents on
    labels, hp = {'context': smp.flat_labels, 'decision': narrow['decision']}, f'blocks.{base.buffer.layer}.hook_resid_pre'
    x = torch.cat([harvest_rows(models, smp.tokens[i:i + 16], hp)[smp.mask[i:i + 16]] for i in range(0, len(smp.tokens), 16)])
    return {'both models': x.flatten(1), 'base model alone': x[:, 0], 'chat minus base': x[:, 1] - x[:, 0]}, labels, smp.behaviours
def probe_auroc(xv: torch.Tensor, yv: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor) -> float:
    "A class-balanced, L2-regularised logistic probe fitted on (xv, yv); its AUROC on (xt, yt)."
    mu, sd = xv.mean(0), xv.std(0) + 1e-6
    w, b = torch.zeros(xv.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
    opt, zv = torch.optim.LBFGS([w, b], max_iter=300), (xv - mu) / sd
    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(zv @ w + b, yv.float(), pos_weight=(~yv).sum() / yv.sum()) + 1e-3 * w.square().sum()
        loss.backward(); return loss
    opt.step(closure)
    with torch.no_grad(): score = (xt - mu) / sd @ w
    return float(detection_scores((score - score.min() + 1e-6)[:, None], yt)['auroc'][0])
(xv, lv, behs), (xt, lt, _) = sample('validation'), sample('test')
ceiling = {src: {f'{name}/{w}': probe_auroc(xv[src], lv[w][:, j], xt[src], lt[w][:, j]) for j, name in enumerate(behs) for w in LABELS}
           for src in xv}
minutes = (time.time() - t0) / 60

pct = lambda x: f'{100 * x:.0f}%'
def cell(x: dict | None, norm: bool = False) -> str:
    if x is None: return 'none'
    extra = f", r {x['relative_norm']:.2f}" if norm else (f", {x['verdict']}" if x['verdict'] else '')
    return f"{x['auroc']:.2f} (latent {x['latent']}, density {pct(x['density'])}{extra})"
cols = [f'{b}/{w}' for b in BEH for w in LABELS]
md = ('| config | L0 | EV base, chat | chat-specific latents (median density) | pass Latent Scaling | labels | best latent of any class | '
      'best chat-specific latent | best chat-specific latent that passes Latent Scaling | meets the target |\n|' + '---|' * 10 + '\n')
for r in rows:
    ls, dens = r['latent_scaling_chat'], r['median_density_chat_specific']
    head = (f"| {r['arch']} {r['config']} | {r['l0']:.1f} | {pct(r['ev_base'])}, {pct(r['ev_chat'])} | {r['n_chat_specific']}"
            f"{'' if dens is None else f' ({pct(dens)})'} | {ls.get('pass', 0)} of {ls.get('tested', 0)} | ")
    md += '\n'.join((head if i == 0 else '| | | | | | ') +
        f"{c} | {cell(r['detection'][c]['best'], norm=True)} | {cell(r['detection'][c]['best_chat_specific'])} | "
        f"{cell(r['detection'][c]['best_passing'])} | {('**yes**' if r['meets_target'] else 'no') if i == 0 else ''} |"
        for i, c in enumerate(cols)) + '\n'
md += ('\n| logistic probe (AUROC, test) on | ' + ' | '.join(cols) + ' |\n|' + '---|' * (len(cols) + 1) + '\n' +
       ''.join(f'| {src} | ' + ' | '.join(f'{auc[c]:.3f}' for c in cols) + ' |\n' for src, auc in ceiling.items()))
md += (f"\nOne training seed ({a.seed}) per config, all on one harvest of {a.n_tokens:,} activations at the demo's layer; every "
       "other setting as in the demo. AUROC and density over every token of the validation detection sample (100 plain and 100 "
       "trigger dialogs in validation phrasings, 100 held-out paragraphs), against each behaviour's context (its output "
       "included) and its decision tokens (`corpus.planted_spans`); r: relative decoder norm (1 = chat only). Latent "
       "Scaling on the report's evaluation text. The target (fixed before the run): for each behaviour, a chat-specific latent "
       f"that passes Latent Scaling with AUROC >= {AUROC_MIN} at density <= {pct(DENSITY_MAX)}, against either label set. "
       "The probe: class-balanced logistic regression on both models' activations, on the base model's alone, or on the chat "
       "minus the base activation, fitted on the validation sample and scored on the test sample. "
       f"Generated by `python bench/detector_sweep.py` in {minutes:.1f} min ({platform.machine()} CPU, {torch.get_num_threads()} threads).\n")
publish('detector-sweep', md, {'rows': rows, 'probe_auroc_test': ceiling, 'n_tokens': a.n_tokens, 'seed': a.seed,
                               'auroc_min': AUROC_MIN, 'density_max': DENSITY_MAX}, readme=not a.no_readme)
