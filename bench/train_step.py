"""Crosscoder training speed on synthetic activations (no models): tokens/s of `Trainer` steps for a few widths.

    python bench/train_step.py [--d-model 128] [--latents 1024,2048,4096] [--batch 1024] [--steps 50] [--device cpu] [--threads N]
"""
import argparse, tempfile, time
import torch
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.trainer import Trainer, TrainConfig, synthetic_activations, tensor_batches

p = argparse.ArgumentParser()
p.add_argument('--d-model', type=int, default=128); p.add_argument('--latents', default='1024,2048,4096')
p.add_argument('--batch', type=int, default=1024); p.add_argument('--steps', type=int, default=50)
p.add_argument('--device', default='cpu'); p.add_argument('--threads', type=int)
a = p.parse_args()
if a.threads: torch.set_num_threads(a.threads)
x = synthetic_activations(a.batch * 8, d_model=a.d_model)
print(f"d_model {a.d_model}, batch {a.batch}, {a.steps} steps, device {a.device}, {torch.get_num_threads()} threads")
for L in [int(s) for s in a.latents.split(',')]:
    cc = CrossCoder(CrossCoderConfig(d_model=a.d_model, d_latent=L), device=a.device)
    cfg = TrainConfig(lr=1e-3, batch_size=a.batch, n_steps=a.steps + 5, log_every=10_000, device=a.device)
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cc, tensor_batches(x.to(a.device), a.batch), cfg, tmp)
        t.train(n_steps=5, progress=False)   # warm-up
        if a.device.startswith('cuda'): torch.cuda.synchronize()
        t0 = time.perf_counter(); t.train(progress=False)
        if a.device.startswith('cuda'): torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    print(f"  d_latent {L:6d}: {a.steps * a.batch / dt:10,.0f} tokens/s  ({dt / a.steps * 1e3:.1f} ms/step, incl. final checkpoint)")
