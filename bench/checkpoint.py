"""What the checkpoint checks cost when a checkpoint is opened: the per-tensor CRC-32 checksums and the NaN/Inf scan of
`read_checkpoint`, against reading the file's bytes, and the same checkpoint opened without checksums (as one written
before they existed). (safetensors memory-maps the file, so its load alone reads nothing: the bytes are read when first
touched, by the checks or by the copy into the crosscoder.)

A crosscoder of the seed's size (d_model 2304, 2 models, d_latent 16384, float32: about 600 MB) is saved once, and
also as a checkpoint without checksums (as written before they existed); each way of opening it is timed `--repeats`
times (best and median), with the file in the page cache (warm: the cost of the checks, not of the disk).

    python bench/checkpoint.py [--d-latent 16384] [--d-model 2304] [--repeats 5] [--threads N] [--publish]

Prints a table and the CPU model; `--publish` also writes crosscoder_nb/assets/results/checkpoint.{md,json}.
"""
import argparse, json, os, platform, statistics, sys, tempfile, time
from pathlib import Path
import torch
from safetensors.torch import save_file
sys.path.insert(0, str(Path(__file__).resolve().parent))
from crosscoder_nb.checkpoint import (CONFIG_FILE, WEIGHTS_FILE, nonfinite_counts, read_checkpoint, tensor_checksum)
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig

p = argparse.ArgumentParser()
p.add_argument('--d-model', type=int, default=2304); p.add_argument('--d-latent', type=int, default=16384)
p.add_argument('--repeats', type=int, default=5); p.add_argument('--threads', type=int)
p.add_argument('--publish', action='store_true', help='write crosscoder_nb/assets/results/checkpoint.{md,json}')
a = p.parse_args()
if a.threads: torch.set_num_threads(a.threads)


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def timed(fn, repeats: int) -> tuple[float, float]:
    "(best, median) seconds of `repeats` calls, after one untimed call (which also warms the page cache)."
    fn(); ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts), statistics.median(ts)


def read_bytes(path: Path) -> int:
    "Read the file in 16 MiB pieces (as `checksum` streams a file), keeping nothing."
    n = 0
    with open(path, 'rb', buffering=0) as fh:
        while piece := fh.read(1 << 24): n += len(piece)
    return n


with tempfile.TemporaryDirectory(dir=os.environ.get('BENCH_TMP')) as tmp:
    tmp = Path(tmp)
    cfg = CrossCoderConfig(d_model=a.d_model, d_latent=a.d_latent)
    cc = CrossCoder(cfg)
    cc.save(tmp / 'ck')
    old = tmp / 'old'; old.mkdir()   # the same checkpoint as written before checksums: no 'checksums' in its metadata
    meta = json.loads((tmp / 'ck' / CONFIG_FILE).read_text()); meta.pop('checksums')
    save_file({k: v.contiguous() for k, v in cc.state_dict().items()}, str(old / WEIGHTS_FILE),
              metadata={'checkpoint': json.dumps(meta)})
    (old / CONFIG_FILE).write_text(json.dumps(meta))
    del cc
    w = tmp / 'ck' / WEIGHTS_FILE
    size = w.stat().st_size
    sd = read_checkpoint(old).state
    rows = {
        'read the file bytes (16 MiB pieces)': timed(lambda: read_bytes(w), a.repeats),
        'CRC-32 of the loaded tensors alone': timed(lambda: [tensor_checksum(t) for t in sd.values()], a.repeats),
        'NaN/Inf scan of the loaded tensors alone': timed(lambda: nonfinite_counts(sd), a.repeats),
        'read_checkpoint, old checkpoint (no checksums; NaN/Inf scan)': timed(lambda: read_checkpoint(old), a.repeats),
        'read_checkpoint, checksums verified + NaN/Inf scan': timed(lambda: read_checkpoint(tmp / 'ck'), a.repeats),
        'CrossCoder.load, old checkpoint': timed(lambda: CrossCoder.load(old), a.repeats),
        'CrossCoder.load, checksums verified': timed(lambda: CrossCoder.load(tmp / 'ck'), a.repeats),
    }
    assert read_checkpoint(tmp / 'ck').verified and not read_checkpoint(old).verified

best = {k: v[0] for k, v in rows.items()}
raw, crc = best['read the file bytes (16 MiB pieces)'], best['CRC-32 of the loaded tensors alone']
scan = best['NaN/Inf scan of the loaded tensors alone']
checked = best['read_checkpoint, checksums verified + NaN/Inf scan']
unchecked = best['read_checkpoint, old checkpoint (no checksums; NaN/Inf scan)']
data = {'cpu': cpu_model(), 'threads': torch.get_num_threads(), 'd_model': a.d_model, 'd_latent': a.d_latent,
        'n_models': 2, 'dtype': 'float32', 'file_bytes': size, 'repeats': a.repeats,
        'seconds_best': best, 'seconds_median': {k: v[1] for k, v in rows.items()},
        'crc_gb_per_s': size / crc / 1e9, 'ratio_crc_to_file_read': crc / raw,
        'ratio_checks_to_file_read': (crc + scan) / raw, 'ratio_read_checkpoint_checked_to_old': checked / unchecked,
        'ratio_load_checked_to_old': best['CrossCoder.load, checksums verified'] / best['CrossCoder.load, old checkpoint'],
        'ratio_checks_to_read_checkpoint_old': checked / unchecked}
md = (f"Opening a checkpoint with its checks (`python bench/checkpoint.py`): d_model {a.d_model}, 2 models, d_latent "
      f"{a.d_latent:,}, float32, {size / 1e6:,.0f} MB, file in the page cache; {cpu_model()}, "
      f"{torch.get_num_threads()} threads; best (median) of {a.repeats}:\n\n| | seconds | GB/s |\n|---|---|---|\n"
      + ''.join(f"| {k} | {b:.3f} ({m:.3f}) | {size / b / 1e9:.2f} |\n" for k, (b, m) in rows.items())
      + f"\nThe CRC-32 takes {crc / raw:.2f}x the time of reading the file's bytes ({size / crc / 1e9:.2f} GB/s), the "
        f"NaN/Inf scan {scan / raw:.2f}x; with checksums, `read_checkpoint` takes {checked / unchecked:.2f}x and "
        f"`CrossCoder.load` {data['ratio_load_checked_to_old']:.2f}x the time for the same checkpoint without them.\n")
if a.publish:
    from _results import publish
    publish('checkpoint', md, data, readme=False)
else: print(md)
