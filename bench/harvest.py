"""Harvesting speed: both organisms' activations at a hook point, stopped at the layer (`harvest`) versus a full
forward pass with a cache (`run_with_cache`), and the ActivationBuffer end to end. Prints tokens/s.

    python bench/harvest.py [--layer 2] [--rows 32] [--seq 128] [--repeats 5] [--device cpu] [--threads N]
"""
import argparse, time
import torch
from crosscoder_nb.models import load_model
from crosscoder_nb.buffer import ActivationBuffer, BufferConfig, harvest
from crosscoder_nb.data import TokenStream, organisms_mix
from crosscoder_nb.pipeline import organisms_config

p = argparse.ArgumentParser()
p.add_argument('--layer', type=int, default=2); p.add_argument('--rows', type=int, default=32); p.add_argument('--seq', type=int, default=128)
p.add_argument('--repeats', type=int, default=5); p.add_argument('--device', default='cpu'); p.add_argument('--threads', type=int)
a = p.parse_args()
if a.threads: torch.set_num_threads(a.threads)
models = [load_model(m, device=a.device) for m in ('organism-base', 'organism-chat')]
toks = TokenStream(organisms_mix('train', seq_len=a.seq), models[0].tokenizer, a.rows).take(a.rows).to(a.device)
hook = f'blocks.{a.layer}.hook_resid_pre'

def timeit(fn):
    fn()   # warm-up
    t = time.perf_counter()
    for _ in range(a.repeats): fn()
    if a.device.startswith('cuda'): torch.cuda.synchronize()
    return (time.perf_counter() - t) / a.repeats

stop = timeit(lambda: [harvest(m, toks, hook) for m in models])
full = timeit(lambda: [m.run_with_cache(toks, names_filter=hook)[1][hook] for m in models])
n = a.rows * (a.seq - 1)
print(f"{a.rows} x {a.seq} tokens, both models, {hook}, device {a.device}, {torch.get_num_threads()} threads")
print(f"  stopped at the layer (harvest): {stop * 1e3:8.1f} ms  {n / stop:10,.0f} tokens/s")
print(f"  full pass + cache             : {full * 1e3:8.1f} ms  {n / full:10,.0f} tokens/s")
cfg = organisms_config().buffer
buf = ActivationBuffer(models, organisms_mix('train', seq_len=a.seq), BufferConfig(**{**cfg.to_dict(), 'layer': a.layer, 'device': a.device}), progress=False)
t = time.perf_counter(); next(buf); dt = time.perf_counter() - t
print(f"  ActivationBuffer first fill   : {buf.tokens_harvested:,} tokens in {dt:.1f} s  {buf.tokens_harvested / dt:10,.0f} tokens/s "
      "(norm-factor estimate, harvest, shuffle)")
