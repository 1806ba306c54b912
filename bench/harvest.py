"""Harvesting speed: activations at a hook point, stopped at the layer (`harvest`) against a full forward pass with a cache
(`run_with_cache`), side by side in one run; and the ActivationBuffer end to end. Prints tokens/s and the ratio, and writes
crosscoder_nb/assets/results/harvest.{md,json} (and the docs page's block).

    python bench/harvest.py [--layer 3] [--rows 32] [--seq 128] [--repeats 7] [--device cpu] [--threads N]
    python bench/harvest.py --gemma-shapes [--rows 2] [--seq 128] [--repeats 2]   # a random Gemma-2-2B (bf16) at layer 14

With `--gemma-shapes` one model of Gemma-2-2B's exact architecture (26 layers, d_model 2304, vocabulary 256,000;
transformers' `Gemma2Config()` defaults), randomly initialised in bfloat16, stands in for the real one (which needs the
hub); it reads the organisms' token ids, which lie inside its vocabulary.
"""
import argparse, platform, statistics, tempfile, time
import torch
from _results import publish
from crosscoder_nb.models import load_model
from crosscoder_nb.buffer import ActivationBuffer, BufferConfig, harvest
from crosscoder_nb.data import TokenStream, organisms_mix
from crosscoder_nb.pipeline import organisms_config

p = argparse.ArgumentParser()
p.add_argument('--layer', type=int); p.add_argument('--rows', type=int); p.add_argument('--seq', type=int, default=128)
p.add_argument('--repeats', type=int); p.add_argument('--device', default='cpu'); p.add_argument('--threads', type=int)
p.add_argument('--gemma-shapes', action='store_true')
a = p.parse_args()
if a.threads: torch.set_num_threads(a.threads)
tmp = tempfile.TemporaryDirectory()
if a.gemma_shapes:
    from transformers import Gemma2Config, Gemma2ForCausalLM
    layer, rows, repeats = a.layer or 14, a.rows or 2, a.repeats or 2
    tok = load_model('organism-base', device='cpu').tokenizer
    torch.manual_seed(0); torch.set_default_dtype(torch.bfloat16)
    Gemma2ForCausalLM(Gemma2Config(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(tmp.name)
    torch.set_default_dtype(torch.float32); tok.save_pretrained(tmp.name)
    models, what = [load_model(tmp.name, device=a.device, dtype=torch.bfloat16)], 'a random Gemma-2-2B (bf16)'
else:
    layer, rows, repeats = 3 if a.layer is None else a.layer, a.rows or 32, a.repeats or 7
    models, what = [load_model(m, device=a.device) for m in ('organism-base', 'organism-chat')], 'both organisms (fp32)'
toks = TokenStream(organisms_mix('train', seq_len=a.seq), models[0].tokenizer, rows).take(rows).to(a.device)
hook = f'blocks.{layer}.hook_resid_pre'

def timed(fn):
    t = time.perf_counter(); fn()
    if a.device.startswith('cuda'): torch.cuda.synchronize()
    return time.perf_counter() - t

with torch.no_grad():   # interleaved rounds, so that a slow spell of the machine hits both: medians
    fns = {'stop': lambda: [harvest(m, toks, hook) for m in models],
           'full': lambda: [m.run_with_cache(toks, names_filter=hook)[1][hook] for m in models]}
    for fn in fns.values(): fn()   # warm-up
    rounds = [{k: timed(fn) for k, fn in fns.items()} for _ in range(repeats)]
stop, full = (statistics.median(r[k] for r in rounds) for k in ('stop', 'full'))
ratio = statistics.median(r['full'] / r['stop'] for r in rounds)
n = rows * (a.seq - 1)
name = 'harvest-gemma' if a.gemma_shapes else 'harvest'
data = {'model': what, 'hook': hook, 'rows': rows, 'seq': a.seq, 'device': a.device, 'threads': torch.get_num_threads(),
        'machine': platform.processor() or platform.machine(), 'stopped_tokens_per_s': n / stop, 'full_tokens_per_s': n / full, 'ratio': ratio,
        'ratio_range': [min(r['full'] / r['stop'] for r in rounds), max(r['full'] / r['stop'] for r in rounds)]}
md = (f"Harvesting, {what}, `{hook}`, {rows} x {a.seq} tokens, {a.device}, {torch.get_num_threads()} threads, median of {repeats} interleaved rounds "
      f"(`python bench/harvest.py{' --gemma-shapes' if a.gemma_shapes else ''}`): stopped at the layer {n / stop:,.0f} tokens/s, "
      f"a full forward pass with a cache {n / full:,.0f} tokens/s: **{ratio:.2f}x** "
      f"(over the rounds {data['ratio_range'][0]:.2f}-{data['ratio_range'][1]:.2f}x).\n")
if not a.gemma_shapes:
    cfg = organisms_config().buffer
    buf = ActivationBuffer(models, organisms_mix('train', seq_len=a.seq), BufferConfig(**{**cfg.to_dict(), 'layer': layer, 'device': a.device}), progress=False)
    t = time.perf_counter(); next(buf); dt = time.perf_counter() - t
    data['buffer_tokens_per_s'] = buf.tokens_harvested / dt
    md += f"The ActivationBuffer's first fill (norm-factor estimate, harvest, shuffle): {buf.tokens_harvested:,} tokens at {buf.tokens_harvested / dt:,.0f} tokens/s.\n"
publish(name, md, data)
