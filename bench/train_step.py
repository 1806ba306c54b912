"""A crosscoder training step, this project's against a straightforward implementation, side by side in one run on the same
shapes and data (forward, loss, backward, clip, Adam):

- plain: a plain float32 einsum crosscoder (the seed's formulation: ReLU, L2 summed over models and d_model, L1 weighted by
  the summed decoder norms) that reads its metrics with `.item()` every step, as the seed's trainer does;
- this project's `Trainer` step in its default configuration (the fused L1 step and fused Adam, `TrainConfig.fused`), in
  float32 and in bfloat16 mixed precision (`TrainConfig.precision`);
- the GEMM floor: the step's five matmuls alone (encoder and decoder forward; the gradients of f, W_dec and W_enc), into
  preallocated outputs, in float32 and in bfloat16.

Also a quality check on the organisms (the demo's BatchTopK and L1 configs on one harvest held in memory): final loss and
explained variance of the bfloat16 run against the float32 run. Writes crosscoder_nb/assets/results/train-step.{md,json} and the docs page's block.

    python bench/train_step.py [--d-model 256] [--latents 4096] [--batch 4096] [--steps 3] [--rounds 5] [--device cpu] [--threads N]
"""
import argparse, platform, shlex, statistics, sys, tempfile, time
import torch
from einops import einsum
from _results import publish
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.trainer import Trainer, TrainConfig, synthetic_activations, tensor_batches

p = argparse.ArgumentParser()
p.add_argument('--d-model', type=int, default=256); p.add_argument('--latents', default='4096'); p.add_argument('--batch', type=int, default=4096)
p.add_argument('--steps', type=int, default=3); p.add_argument('--rounds', type=int, default=5); p.add_argument('--device', default='cpu'); p.add_argument('--threads', type=int)
p.add_argument('--no-quality', action='store_true', help='skip the quality check on the organisms')
a = p.parse_args()
if a.threads: torch.set_num_threads(a.threads)
dev, D, B = torch.device(a.device), a.d_model, a.batch
sync = (lambda: torch.cuda.synchronize()) if dev.type == 'cuda' else (lambda: None)

def timed(fn, n=a.steps):
    sync(); t = time.perf_counter()
    for _ in range(n): fn()
    sync(); return (time.perf_counter() - t) / n

class Plain(torch.nn.Module):
    "The straightforward crosscoder: float32 einsums, ReLU, the seed's L1 penalty."
    def __init__(self, d_model, d_latent, n_models=2):
        super().__init__()
        self.W_enc = torch.nn.Parameter(torch.randn(n_models, d_model, d_latent) * 0.01)
        self.W_dec = torch.nn.Parameter(torch.randn(d_latent, n_models, d_model) * 0.01)
        self.b_enc, self.b_dec = torch.nn.Parameter(torch.zeros(d_latent)), torch.nn.Parameter(torch.zeros(n_models, d_model))
    def losses(self, x):
        f = torch.relu(einsum(x, self.W_enc, 'b m d, m d l -> b l') + self.b_enc)
        recon = einsum(f, self.W_dec, 'b l, l m d -> b m d') + self.b_dec
        l2 = (recon - x).pow(2).sum((-2, -1)).mean()
        l1 = (f * self.W_dec.norm(dim=-1).sum(-1)).sum(-1).mean()
        ev = 1 - (recon - x).pow(2).sum(-1).mean(0) / (x - x.mean(0)).pow(2).sum(-1).mean(0)
        return l2, l1, (f > 0).float().sum(-1).mean(), ev

rows, data = [], {'d_model': D, 'batch': B, 'device': str(dev), 'threads': torch.get_num_threads(), 'machine': platform.processor() or platform.machine(),
                  'torch': torch.__version__, 'widths': {}}
x = synthetic_activations(B * 4, d_model=D).to(dev)
tmp_dir = tempfile.TemporaryDirectory()
for L in [int(s) for s in a.latents.split(',')]:
    plain = Plain(D, L).to(dev); opt = torch.optim.Adam(plain.parameters(), 1e-4); it = iter(tensor_batches(x, B))
    def plain_step():
        l2, l1, l0, ev = plain.losses(next(it)); loss = l2 + 1.0 * l1
        loss.backward(); torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0); opt.step(); opt.zero_grad()
        return loss.item(), l2.item(), l1.item(), l0.item(), ev.tolist()   # the seed's trainer reads its metrics every step
    fns = {'plain': plain_step}
    for prec in ('float32', 'bfloat16'):
        cc = CrossCoder(CrossCoderConfig(d_model=D, d_latent=L), device=dev)
        t = Trainer(cc, tensor_batches(x, B), TrainConfig(lr=1e-4, batch_size=B, n_steps=10 ** 6, log_every=10 ** 6, precision=prec), f'{tmp_dir.name}/{L}-{prec}')
        t._start_data()
        fns[prec] = lambda t=t: t._train_step(t._next().to(dev))
    W1, W2 = torch.randn(B, 2 * D, device=dev), torch.randn(2 * D, L, device=dev)
    def floor(dtype):
        xb, we, f = W1.to(dtype), W2.to(dtype), torch.randn(B, L, device=dev, dtype=dtype)
        h, r, g, gd, ge = (torch.empty(s, device=dev, dtype=dtype) for s in ((B, L), (B, 2 * D), (B, L), (L, 2 * D), (2 * D, L)))
        def mm():   # the five that a step needs (x needs no gradient), into preallocated outputs: the matmuls alone
            torch.mm(xb, we, out=h); torch.mm(f, we.T, out=r)        # forward: encoder [batch, d_latent], decoder [batch, n_models*d_model]
            torch.mm(r, we, out=g); torch.mm(f.T, r, out=gd)         # backward of the decoder: grad of f, grad of W_dec
            torch.mm(xb.T, h, out=ge)                                # backward of the encoder: grad of W_enc
        return mm
    fns['floor_float32'], fns['floor_bfloat16'] = floor(torch.float32), floor(torch.bfloat16)
    for fn in fns.values(): fn(); fn()   # warm-up
    rounds = [{k: timed(fn) for k, fn in fns.items()} for _ in range(a.rounds)]   # interleaved, so that a slow spell hits every variant
    med = lambda vals: statistics.median(vals)
    ms = {k: med([r[k] for r in rounds]) * 1e3 for k in fns}
    sp = {p: med([r['plain'] / r[p] for r in rounds]) for p in ('float32', 'bfloat16')}
    fl = {p: med([r[p] / r[f'floor_{p}'] for r in rounds]) for p in ('float32', 'bfloat16')}
    fl_range = {p: (min(r[p] / r[f'floor_{p}'] for r in rounds), max(r[p] / r[f'floor_{p}'] for r in rounds)) for p in ('float32', 'bfloat16')}
    data['widths'][L] = {'plain_fp32_ms': ms['plain'], 'ours_fp32_ms': ms['float32'], 'ours_bf16_ms': ms['bfloat16'],
                         'gemm_floor_fp32_ms': ms['floor_float32'], 'gemm_floor_bf16_ms': ms['floor_bfloat16'],
                         'speedup_fp32': sp['float32'], 'speedup_bf16': sp['bfloat16'],
                         'step_over_floor_fp32': fl['float32'], 'step_over_floor_bf16': fl['bfloat16'],
                         'step_over_floor_range_fp32': fl_range['float32'], 'step_over_floor_range_bf16': fl_range['bfloat16'], 'rounds': rounds}
    rows.append(f"| {L} | {ms['plain']:.0f} | {ms['float32']:.0f} ({sp['float32']:.2f}x) | {ms['bfloat16']:.0f} ({sp['bfloat16']:.2f}x) | "
                f"{ms['floor_float32']:.0f} / {ms['floor_bfloat16']:.0f} | {fl['float32']:.2f} / {fl['bfloat16']:.2f} | "
                f"{fl_range['float32'][0]:.2f}-{fl_range['float32'][1]:.2f} / {fl_range['bfloat16'][0]:.2f}-{fl_range['bfloat16'][1]:.2f} |")
    print(rows[-1], flush=True)
    del fns, plain, opt, t, cc

md = (f"Training step, ms (`python bench/train_step.py {shlex.join(sys.argv[1:])}`, d_model {D} x 2 models, batch {B}, L1 crosscoder, {data['device']}, "
      f"{data['threads']} threads; each variant timed over {a.steps} steps, in {a.rounds} interleaved rounds: medians, and the range of step / floor "
      "over the rounds):\n\n"
      "| d_latent | plain fp32 (`.item()` every step) | this project, fp32 (speed-up) | this project, bf16 mixed (speed-up) | GEMM floor fp32 / bf16 | step / floor, fp32 / bf16 | its range over rounds |\n"
      "|---|---|---|---|---|---|---|\n" + '\n'.join(rows) + '\n')
if not a.no_quality:   # the quality of bf16 training, on the organisms: BatchTopK (the demo's default) and L1 (the fused step)
    from crosscoder_nb.buffer import harvest_activations
    from crosscoder_nb.models import load_model
    from crosscoder_nb.pipeline import organisms_config, set_fields, train_run
    base_cfg = set_fields(organisms_config(), {'train.n_tokens': 300_000})
    models = [load_model(m, device='cpu') for m in base_cfg.models]
    h = harvest_activations(models, base_cfg.data, base_cfg.buffer, 300_000, dtype='bfloat16', progress=False)
    data['quality'], qrows = {}, []
    for arch in ('batchtopk', 'l1'):
        cfg, q = set_fields(organisms_config(arch=arch), {'train.n_tokens': 300_000}), {}
        with tempfile.TemporaryDirectory() as tmp:
            for prec in ('float32', 'bfloat16'):
                r = train_run(set_fields(cfg, {'train.precision': prec}), f'{tmp}/{prec}', device=a.device, progress=False, activations=h)
                q[prec] = {'loss': r['final']['loss'], 'explained_variance': r['final']['explained_variance'], 'train_tokens_per_s': r['train_tokens_per_s']}
        rel = abs(q['bfloat16']['loss'] - q['float32']['loss']) / abs(q['float32']['loss'])
        ev_rel = max(abs(b - f) / f for b, f in zip(q['bfloat16']['explained_variance'], q['float32']['explained_variance']))
        data['quality'][arch] = {**q, 'loss_rel_diff': rel, 'ev_rel_diff': ev_rel}
        ev = lambda p: ', '.join(f'{v:.3f}' for v in q[p]['explained_variance'])
        qrows.append(f"| {'BatchTopK (the demo default)' if arch == 'batchtopk' else 'L1 (the fused step)'} | {q['float32']['loss']:.3f} / {q['bfloat16']['loss']:.3f} "
                     f"({100 * rel:.1f}%) | {ev('float32')} / {ev('bfloat16')} (at most {100 * ev_rel:.1f}%) | "
                     f"{q['float32']['train_tokens_per_s']:,.0f} / {q['bfloat16']['train_tokens_per_s']:,.0f} |")
    md += ("\nQuality of bf16 training on the organisms (the demo's configs, 300,000 activations held in memory), fp32 / bf16:\n\n"
           "| crosscoder | final loss (apart) | explained variance, base, chat (apart) | training tokens/s |\n|---|---|---|---|\n" + '\n'.join(qrows) + '\n')
publish('train-step', md, data, readme=not a.no_quality)   # the docs page keeps the full table: only a run with the quality check replaces it
