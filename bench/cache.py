"""Training from the on-disk activation cache against training from the same activations in memory, side by side in one run
on the organisms (the demo's BatchTopK config, layer 3), and harvesting into the cache against harvesting into memory.
Also the cost of the checksums on opening a cache: `ActivationCache.open` (which reads every shard once for its CRC-32)
against reading the same bytes alone, both from the page cache.
Prints tokens/s and the ratios, and writes crosscoder_nb/assets/results/cache.{md,json} (and the docs page's block).

    python bench/cache.py [--n-tokens 300000] [--threads N]
    python bench/cache.py --open-only [--cache CACHE]   # only the opening cost (harvests a cache in /tmp unless given one),
                                                         # printed, no results file written
"""
import argparse, json, platform, tempfile, time
from pathlib import Path
import torch
from _results import publish
from crosscoder_nb.buffer import harvest_activations
from crosscoder_nb.cache import CACHE_FILE, ActivationCache, write_cache
from crosscoder_nb.models import load_model
from crosscoder_nb.pipeline import organisms_config, set_fields, train_run

p = argparse.ArgumentParser()
p.add_argument('--n-tokens', type=int, default=300_000); p.add_argument('--threads', type=int); p.add_argument('--repeats', type=int, default=2)
p.add_argument('--open-only', action='store_true', help='only time opening a cache, with and without its checksums')
p.add_argument('--cache', help='with --open-only: the cache to open (default: harvest one of --n-tokens in a temporary folder)')
a = p.parse_args()
if a.threads: torch.set_num_threads(a.threads)
cfg = set_fields(organisms_config(), {'train.n_tokens': a.n_tokens})

def cpu_name() -> str:
    "The CPU's model name (/proc/cpuinfo), else what platform says."
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or platform.machine()

def read_all(path: Path) -> int:
    "Read every shard file of the cache once, in the chunks `checksum` reads, and nothing else: its byte count."
    n = 0
    for s in json.loads((path / CACHE_FILE).read_text())['shards']:
        for w in ('acts', 'tokens'):
            with open(path / s[w], 'rb') as f:
                while b := f.read(1 << 24): n += len(b)
    return n

def open_cost(path: Path, repeats: int = 5) -> dict:
    "Seconds (best of `repeats`, alternated, after a read that puts the files in the page cache) to open and to read."
    size = read_all(path); t = {'read': [], 'open_verified': [], 'open_unverified': []}
    for _ in range(repeats):
        for k, f in [('read', lambda: read_all(path)), ('open_verified', lambda: ActivationCache.open(path)),
                     ('open_unverified', lambda: ActivationCache.open(path, verify=False))]:
            t0 = time.perf_counter(); f(); t[k].append(time.perf_counter() - t0)
    b = {k: min(v) for k, v in t.items()}
    return {'bytes': size, 'seconds': b, 'ratio_open_to_read': b['open_verified'] / b['read'],
            'read_GB_per_s': size / b['read'] / 1e9, 'open_GB_per_s': size / b['open_verified'] / 1e9,
            'cpu': cpu_name(), 'repeats': repeats}

def open_md(o: dict) -> str:
    s = o['seconds']
    return (f"Opening the cache with its checksums (CRC-32 of every shard, streamed) takes {s['open_verified']:.3f} s for "
            f"{o['bytes'] / 1e6:,.0f} MB ({o['open_GB_per_s']:.2f} GB/s), against {s['read']:.3f} s to read the same bytes "
            f"alone ({o['read_GB_per_s']:.2f} GB/s, both from the page cache): {o['ratio_open_to_read']:.2f}x the read. "
            f"Without verification (`verify=False`) it takes {s['open_unverified'] * 1e3:.1f} ms. CPU: {o['cpu']}.\n")

if a.open_only:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.cache) if a.cache else Path(tmp) / 'cache'
        if not a.cache:
            models = [load_model(m, device='cpu') for m in cfg.models]
            t0 = time.perf_counter()
            write_cache(models, cfg.models, cfg.data, cfg.buffer, a.n_tokens, path, progress=False)
            print(f"harvested {a.n_tokens:,} activations in {time.perf_counter() - t0:.0f} s")
        o = open_cost(path)
    print(json.dumps(o, indent=1)); print(open_md(o)); raise SystemExit(0)

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
    opening = open_cost(tmp / 'cache')
r, d = max(ram), max(disk)
data = {'n_tokens': a.n_tokens, 'threads': torch.get_num_threads(), 'machine': platform.processor() or platform.machine(),
        'train_tokens_per_s': {'in_memory': r, 'cache': d}, 'ratio_cache_to_memory': d / r,
        'harvest_tokens_per_s': {'in_memory': h.tokens_per_s, 'cache': c.tokens_per_s}, 'cache_bytes': size, 'repeats': a.repeats,
        'open': opening}
md = (f"Training from the activation cache vs in memory (`python bench/cache.py`, organisms, BatchTopK demo config, {a.n_tokens:,} "
      f"activations, {torch.get_num_threads()} threads, best of {a.repeats}):\n\n"
      "| | in memory | from the cache | ratio |\n|---|---|---|---|\n"
      f"| training, tokens/s | {r:,.0f} | {d:,.0f} | {d / r:.2f} |\n"
      f"| harvesting, tokens/s | {h.tokens_per_s:,.0f} | {c.tokens_per_s:,.0f} (written to disk) | {c.tokens_per_s / h.tokens_per_s:.2f} |\n\n"
      f"The cache takes {size / 1e6:,.0f} MB on disk (bfloat16).\n\n" + open_md(opening))
publish('cache', md, data)
