"Data-parallel training through torchrun: 2 CPU processes with the gloo backend end where one process ends on the same global batches."
import json, subprocess, sys
import pytest, torch
from safetensors.torch import load_file
from cli_helpers import ONE_THREAD, run

N, B = 256 * 40, 256
FLAGS = ['--n-tokens', str(N), '--batch-size', str(B), '--set', 'buffer.n_norm_batches=2', '--set', 'buffer.model_batch_size=8',
         '--set', 'data.seq_len=64', '--device', 'cpu']
TRAIN = ['--d-latent', '128', '--set', 'train.log_every=10', '--set', 'crosscoder.threshold_start=5']

def train(out, *extra, nproc: int = 1):
    launch = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc)] if nproc > 1 else [sys.executable]
    return subprocess.run([*launch, '-m', 'crosscoder_nb.cli', 'train', '--out', str(out), *FLAGS, *TRAIN, *extra],
                          env=ONE_THREAD, capture_output=True, text=True, timeout=900)

@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp('d') / 'cache'
    code, msg = run('harvest', '--out', out, *FLAGS)
    assert code == 0, msg
    return out

DFC = ['--set', 'crosscoder.n_exclusive=[8,8]', '--set', 'crosscoder.n_shared=16', '--set', 'crosscoder.k_shared=2']

def dedicated_zero(weights: dict, n_exclusive=(8, 8)) -> bool:
    "Whether the entries a dedicated latent must not have (its other models' encoder columns, decoder rows) are exactly 0."
    from crosscoder_nb.crosscoder import CrossCoderConfig, model_mask
    off = ~model_mask(CrossCoderConfig(d_model=weights['W_dec'].shape[-1], d_latent=len(weights['W_dec']), n_exclusive=list(n_exclusive)))
    return bool((weights['W_dec'][off] == 0).all() and (weights['W_enc'].permute(2, 0, 1)[off] == 0).all())

@pytest.mark.parametrize('arch, extra, fsdp', [('l1', [], True), ('batchtopk', [], False),
                                             ('batchtopk', ['--set', 'crosscoder.dead_tokens=512', '--d-latent', '1024', '--set', 'crosscoder.k=4'], True),
                                             ('batchtopk', DFC, False)],
                         ids=['l1', 'batchtopk', 'batchtopk-with-auxk', 'dfc'])
def test_two_gloo_processes_equal_one_process_on_the_same_global_batches(cache, tmp_path, arch, extra, fsdp):
    "Data-parallel (DDP), and where `fsdp`, sharded (FSDP) too."
    extra = [*extra, '--set', 'train.precision=float32']   # equal to float32 rounding: bf16 matmuls round differently on half batches
    one = train(tmp_path / 'one', '--cache', cache, '--arch', arch, *extra)
    assert one.returncode == 0, one.stdout + one.stderr
    if 'crosscoder.k=4' in extra:   # latents die within the run, so AuxK (and its global normalisation) is at work
        assert max(json.loads(l)['aux'] for l in (tmp_path / 'one' / 'metrics.jsonl').read_text().splitlines()) > 0
    two = train(tmp_path / 'two', '--cache', cache, '--arch', arch, *extra, nproc=2)
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count('checkpoint:') == 1   # rank 0 reports and writes
    runs = ['two']
    if fsdp:
        sharded = train(tmp_path / 'fsdp', '--cache', cache, '--arch', arch, *extra, '--set', 'train.parallel=fsdp', nproc=2)
        assert sharded.returncode == 0, sharded.stdout + sharded.stderr
        assert json.loads((tmp_path / 'fsdp' / 'config.json').read_text())['train_config']['parallel'] == 'fsdp'
        runs.append('fsdp')
    a = load_file(tmp_path / 'one' / 'crosscoder.safetensors')
    for run in runs:
        b = load_file(tmp_path / run / 'crosscoder.safetensors')
        assert a.keys() == b.keys(), run
        if extra[:len(DFC)] == DFC: assert dedicated_zero(a) and dedicated_zero(b), run   # dedicated latents: 0 elsewhere
        # float32 sums in another order, carried through 40 Adam steps, differ by up to ~5e-5 (BatchTopK with AuxK on the
        # organisms), and by up to 2.2e-4 in one weight of 262K on a CPU with AVX512-BF16/AMX units (the same at the
        # commit before this test's last change); a step taken differently (a top-k choice, a normalisation) moves a
        # weight by about lr = 1e-3
        for k in a: torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=4e-4, msg=f'{run}: {k}')
        lines = (tmp_path / run / 'metrics.jsonl').read_text().splitlines()
        assert len(lines) == N // B // 10 and not list((tmp_path / run).glob('*.tmp'))   # one log, no partial files

def test_the_runs_train(cache, tmp_path):
    "The equality above is not of two untrained crosscoders: one step of data-parallel training moves the weights."
    r = train(tmp_path / 'short', '--cache', cache, '--arch', 'l1', '--set', 'train.n_steps=1', nproc=2)
    assert r.returncode == 0, r.stdout + r.stderr
    full = train(tmp_path / 'long', '--cache', cache, '--arch', 'l1', nproc=2)
    assert full.returncode == 0, full.stdout + full.stderr
    a, b = load_file(tmp_path / 'short' / 'crosscoder.safetensors'), load_file(tmp_path / 'long' / 'crosscoder.safetensors')
    assert (a['W_enc'] - b['W_enc']).abs().max() > 1e-3

def test_global_batch_not_divisible_by_the_world_is_refused(cache, tmp_path):
    r = train(tmp_path / 'odd', '--cache', cache, '--batch-size', '255', nproc=2)
    assert r.returncode != 0 and 'does not split over 2 processes' in r.stderr and '--batch-size 254' in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / 'odd').exists()

def test_two_processes_harvesting_their_own_rows(tmp_path):
    "Without a cache each rank harvests its share of the token stream; rank 0 writes one checkpoint with one set of norm factors."
    r = train(tmp_path / 'live', '--arch', 'l1', '--n-tokens', str(B * 12), nproc=2)
    assert r.returncode == 0, r.stdout + r.stderr
    from crosscoder_nb.crosscoder import CrossCoder
    cc = CrossCoder.load(tmp_path / 'live')
    assert cc.extra['step'] == 12 and cc.extra['tokens'] == B * 12 and len(cc.cfg.norm_factors) == 2

def test_sharded_fsdp_run_paused_and_resumed_equals_one_process(tmp_path):
    """FSDP (`parallel='fsdp'`): 2 gloo processes, each holding half of every weight and of Adam's moments, paused half way and
    resumed from the checkpoint, end where one uninterrupted process ends; one process resumes their half-way checkpoint too."""
    import fsdp_resume as F
    from pathlib import Path
    from crosscoder_nb.trainer import Trainer
    script = Path(__file__).parent / 'fsdp_resume.py'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script), str(tmp_path)],
                       env=ONE_THREAD, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    for arch in F.ARCHS:
        cc, batches, cfg = F.setup(arch)
        init = {k: v.clone() for k, v in cc.state_dict().items()}
        Trainer(cc, batches(), cfg, tmp_path / f'one-{arch}').train(progress=False)
        Trainer.resume(tmp_path / f'{arch}-half', batches()).train(progress=False)   # the sharded run's checkpoint, in one process
        a = load_file(tmp_path / f'one-{arch}' / 'crosscoder.safetensors')
        assert (a['W_enc'] - init['W_enc']).abs().max() > 1e-3   # it trained
        if arch == 'dfc':   # sharded (each rank holds half of the latents), paused and resumed: dedicated entries stay 0
            for other in (f'one-{arch}', arch, f'{arch}-half'):
                assert dedicated_zero(load_file(tmp_path / other / 'crosscoder.safetensors'), F.ARCHS['dfc']['n_exclusive'])
        for other in (arch, f'{arch}-half'):
            b = load_file(tmp_path / other / 'crosscoder.safetensors')
            assert a.keys() == b.keys(), other
            for k in a: torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f'{other}: {k}')
