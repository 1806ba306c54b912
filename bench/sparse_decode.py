"""BatchTopK decoding: gathering the active decoder rows (`sparse_decode`) against the dense matmul, forward + backward,
across dictionary widths. The sparse path's cost should grow with k, not with d_latent.

    python bench/sparse_decode.py [--d-model 128] [--k 32] [--latents 1024,2048,4096,8192,16384] [--batch 1024] [--threads N]
"""
import argparse, time
import torch
from einops import einsum
from crosscoder_nb.crosscoder import sparse_decode

p = argparse.ArgumentParser()
p.add_argument('--d-model', type=int, default=128); p.add_argument('--k', type=int, default=32)
p.add_argument('--latents', default='1024,2048,4096,8192,16384'); p.add_argument('--batch', type=int, default=1024)
p.add_argument('--reps', type=int, default=20); p.add_argument('--device', default='cpu'); p.add_argument('--threads', type=int)
a = p.parse_args()
if a.threads: torch.set_num_threads(a.threads)
dev = torch.device(a.device)

def timed(fn):
    for _ in range(3): fn()
    if dev.type == 'cuda': torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(a.reps): fn()
    if dev.type == 'cuda': torch.cuda.synchronize()
    return (time.perf_counter() - t) / a.reps * 1e3

print(f"d_model {a.d_model}, k {a.k}, batch {a.batch}, 2 models, {a.device}, {torch.get_num_threads()} threads; ms per forward + backward")
print(f"{'d_latent':>9} {'dense':>9} {'sparse':>9} {'dense/sparse':>13}")
for L in [int(s) for s in a.latents.split(',')]:
    W = torch.randn(L, 2, a.d_model, device=dev, requires_grad=True)
    f = torch.zeros(a.batch, L, device=dev)
    f.scatter_(1, torch.rand(a.batch, L, device=dev).topk(a.k, dim=1).indices, torch.rand(a.batch, a.k, device=dev) + 0.1)
    f.requires_grad_()
    g = torch.randn(a.batch, 2, a.d_model, device=dev)
    def dense(): (einsum(f, W, 'b l, l m d -> b m d') * g).sum().backward()
    def sparse(): (sparse_decode(f, W) * g).sum().backward()
    td, ts = timed(dense), timed(sparse)
    print(f"{L:>9} {td:>9.2f} {ts:>9.2f} {td / ts:>13.2f}")
