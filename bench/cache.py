"""Training from the on-disk activation cache against training from the same activations in memory, side by side in one run
on the organisms (the demo's BatchTopK config, layer 3), and harvesting into the cache against harvesting into memory.
Prints tokens/s and the ratios, and writes crosscoder_nb/assets/results/cache.{md,json} (and the docs page's block).

    python bench/cache.py [--n-tokens 300000] [--threads N]
"""
import argparse, platform, tempfile, time
from pathlib import Path
import torch
from _results import publish
from crosscoder_nb.buffer import harvest_activations
from crosscoder_nb.cache import write_cache
from crosscoder_nb.models import load_model
from crosscoder_nb.pipeline import organisms_config, set_fields, train_run

p = argparse.ArgumentParser()
p.add_argument('--n-tokens', type=int, default=300_000); p.add_argument('--threads', type=int); p.add_argument('--repeats', type=int, default=2)
a = p.parse_args()
if a.threads: torch.set_num_threads(a.threads)
cfg = set_fields(organisms_config(), {'train.n_tokens': a.n_tokens})
models = [load_model(m, device='cpu') for m in cfg.models]
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    h = harvest_activations(models, cfg.data, cfg.buffer, a.n_tokens, dtype='bfloat16', progress=False)
    c = write_cache(models, cfg.models, cfg.data, cfg.buffer, a.n_tokens, tmp / 'cache', progress=False)
    ram, disk = [], []
    for i in range(a.repeats):   # alternated, so that both see the same machine load
        ram.append(train_run(cfg, tmp / f'ram{i}', device='cpu', progress=False, activations=h)['train_tokens_per_s'])
        disk.append(train_run(cfg, tmp / f'disk{i}', device='cpu', progress=False, cache=tmp / 'cache')['train_tokens_per_s'])
    size = sum(f.stat().st_size for f in (tmp / 'cache').iterdir())
r, d = max(ram), max(disk)
data = {'n_tokens': a.n_tokens, 'threads': torch.get_num_threads(), 'machine': platform.processor() or platform.machine(),
        'train_tokens_per_s': {'in_memory': r, 'cache': d}, 'ratio_cache_to_memory': d / r,
        'harvest_tokens_per_s': {'in_memory': h.tokens_per_s, 'cache': c.tokens_per_s}, 'cache_bytes': size, 'repeats': a.repeats}
md = (f"Training from the activation cache vs in memory (`python bench/cache.py`, organisms, BatchTopK demo config, {a.n_tokens:,} "
      f"activations, {torch.get_num_threads()} threads, best of {a.repeats}):\n\n"
      "| | in memory | from the cache | ratio |\n|---|---|---|---|\n"
      f"| training, tokens/s | {r:,.0f} | {d:,.0f} | {d / r:.2f} |\n"
      f"| harvesting, tokens/s | {h.tokens_per_s:,.0f} | {c.tokens_per_s:,.0f} (written to disk) | {c.tokens_per_s / h.tokens_per_s:.2f} |\n\n"
      f"The cache takes {size / 1e6:,.0f} MB on disk (bfloat16).\n")
publish('cache', md, data)
