"The activation cache: `crosscoder-diff harvest` and `train --cache`, against the in-memory path, interrupted, and refused when it does not fit."
import errno, json, shutil
from pathlib import Path
import pytest, torch
from crosscoder_nb.buffer import harvest_activations
from crosscoder_nb.cache import CACHE_FILE, ActivationCache
from cli_helpers import cli_process, run
from crosscoder_nb.models import load_model, resolve_model
from crosscoder_nb.pipeline import organisms_config, set_fields, train_run

N = 256 * 40
FLAGS = ['--n-tokens', str(N), '--batch-size', '256', '--set', 'buffer.n_norm_batches=2', '--set', 'buffer.model_batch_size=8',
         '--set', 'data.seq_len=64', '--device', 'cpu']
TRAIN = ['--d-latent', '64', '--set', 'buffer.buffer_batches=8', '--set', 'train.log_every=10']

@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp('c') / 'cache'
    code, msg = run('harvest', '--out', out, '--shard-tokens', '3000', *FLAGS)
    assert code == 0, msg
    return out

def test_train_from_cache_equals_training_on_the_same_activations_in_memory(cache, tmp_path):
    cfg = set_fields(organisms_config(), {'train.n_tokens': N, 'train.batch_size': 256, 'buffer.batch_size': 256, 'buffer.n_norm_batches': 2,
                                          'buffer.model_batch_size': 8, 'data.seq_len': 64, 'crosscoder.d_latent': 64, 'train.log_every': 10})
    models = [load_model(m, device='cpu') for m in cfg.models]
    h = harvest_activations(models, cfg.data, cfg.buffer, N, dtype='bfloat16', progress=False)
    c = ActivationCache.open(cache)
    assert len(c.manifest['shards']) == 4 and torch.equal(c.acts[torch.arange(N)], h.acts) and torch.equal(c.norm_factors, h.norm_factors.float())
    a = train_run(cfg, tmp_path / 'ram', device='cpu', progress=False, activations=h)
    b = train_run(cfg, tmp_path / 'disk', device='cpu', progress=False, cache=cache)
    assert b['cache'] == str(cache.resolve()) and a['steps'] == b['steps'] == N // 256
    from safetensors.torch import load_file
    wa, wb = load_file(tmp_path / 'ram' / 'crosscoder.safetensors'), load_file(tmp_path / 'disk' / 'crosscoder.safetensors')
    for k in wa: assert torch.equal(wa[k], wb[k]), k
    assert b['final']['explained_variance'][0] > 0.2   # it learnt something

def test_cli_train_from_cache_and_refusals(cache, tmp_path):
    code, msg = run('train', '--cache', cache, '--out', tmp_path / 'run', *FLAGS, *TRAIN)
    assert code == 0 and 'read from the cache' in msg, msg
    for extra, want in [(['--base', 'organism-chat', '--chat', 'organism-base'], "holds activations of ['organism-base', 'organism-chat']"),
                        (['--layer', '1'], "harvested at 'blocks.3.hook_resid_pre'"),
                        (['--n-tokens', str(N + 256)], 'fewer than train.n_tokens')]:
        args = [a for a in FLAGS if a not in ('--n-tokens', str(N))] if '--n-tokens' in extra else FLAGS
        code, msg = run('train', '--cache', cache, '--out', tmp_path / 'x', *args, *TRAIN, *extra)
        assert code == 2 and want in msg and sum('error' in l for l in msg.splitlines()) == 1, msg
        assert not (tmp_path / 'x').exists()   # nothing written
    cut = tmp_path / 'cut'; shutil.copytree(cache, cut)
    with open(cut / 'acts_00002.bin', 'r+b') as f: f.truncate(777)
    code, msg = run('train', '--cache', cut, '--out', tmp_path / 'x', *FLAGS, *TRAIN)
    assert code == 2 and 'acts_00002.bin is truncated' in msg, msg

def test_cache_of_a_model_whose_tokenizer_changed_is_refused(tmp_path):
    shutil.copytree(Path(resolve_model('organism-base')).parent, tmp_path / 'org', ignore=shutil.ignore_patterns('chat'))
    base = tmp_path / 'org' / 'base'   # a copy of the organisms' folder: still an organism
    code, msg = run('harvest', '--out', tmp_path / 'c', '--base', base, '--n-tokens', '2000', '--batch-size', '256', '--set', 'buffer.n_norm_batches=1',
                    '--set', 'data.seq_len=64', '--device', 'cpu')
    assert code == 0, msg
    tok = json.loads((base / 'tokenizer.json').read_text())
    v = tok['model']['vocab']; a, b = list(v)[100:102]; v[a], v[b] = v[b], v[a]   # two token ids swapped
    (base / 'tokenizer.json').write_text(json.dumps(tok))
    code, msg = run('train', '--cache', tmp_path / 'c', '--base', base, '--n-tokens', '1024', '--batch-size', '256', '--out', tmp_path / 'r',
                    '--device', 'cpu', *TRAIN)
    assert code == 2 and 'another tokenizer' in msg, msg

def test_full_disk_keeps_complete_shards_and_resume_finishes(cache, tmp_path, monkeypatch):
    import crosscoder_nb.cache as cm
    real, out = cm._append, tmp_path / 'full'
    def full_disk(tmp, t):
        if tmp.name.startswith('acts_00001'):
            real(tmp, t[:1])   # part of a batch reached the disk, as a full disk leaves it
            raise OSError(errno.ENOSPC, 'No space left on device')
        real(tmp, t)
    monkeypatch.setattr(cm, '_append', full_disk)
    code, msg = run('harvest', '--out', out, '--shard-tokens', '3000', *FLAGS)
    assert code == 2 and 'No space left on device' in msg and '--resume' in msg and sum('error' in l for l in msg.splitlines()) == 1, msg
    assert 'the 1 complete shards (3,' in msg, msg
    man = json.loads((out / CACHE_FILE).read_text())
    assert not man['complete'] and len(man['shards']) == 1 and not (out / 'acts_00001.bin').exists()
    assert not list(out.glob('*.tmp'))   # the half-written shard is gone
    with pytest.raises(ValueError, match='--resume'): ActivationCache.open(out)
    code, msg = run('train', '--cache', out, '--out', tmp_path / 'r', *FLAGS, *TRAIN)
    assert code == 2 and 'is incomplete' in msg and '--resume' in msg, msg
    monkeypatch.setattr(cm, '_append', real)
    code, msg = run('harvest', '--out', out, '--shard-tokens', '3000', '--resume', *FLAGS)
    assert code == 0, msg
    assert torch.equal(ActivationCache.open(out).acts[torch.arange(N)], ActivationCache.open(cache).acts[torch.arange(N)])

def test_harvest_killed_mid_run_resumes_to_the_same_cache(cache, tmp_path):
    "SIGKILL `crosscoder-diff harvest` after two shards, continue with --resume: the cache equals an uninterrupted one."
    out = tmp_path / 'killed'
    def two_shards():
        try: return len(json.loads((out / CACHE_FILE).read_text())['shards']) >= 2
        except (FileNotFoundError, json.JSONDecodeError): return False
    cli_process('harvest', '--out', out, '--shard-tokens', '3000', *FLAGS, kill_when=two_shards)
    assert not json.loads((out / CACHE_FILE).read_text())['complete']
    code, msg = run('harvest', '--out', out, '--shard-tokens', '3000', '--resume', *FLAGS)
    assert code == 0, msg
    assert torch.equal(ActivationCache.open(out).acts[torch.arange(N)], ActivationCache.open(cache).acts[torch.arange(N)])

def test_harvest_bad_input(tmp_path):
    (tmp_path / 'busy').mkdir(); (tmp_path / 'busy' / 'keep.txt').write_text('mine')
    for args, want in [(['--out', tmp_path / 'busy'], 'not empty'), (['--out', tmp_path / 'none', '--resume'], 'no cache to continue'),
                       ([], 'pass --out CACHE')]:
        code, msg = run('harvest', *args, *FLAGS)
        assert code == 2 and want in msg, msg
    assert (tmp_path / 'busy' / 'keep.txt').read_text() == 'mine' and not (tmp_path / 'none').exists()

def test_overwrite_leaves_no_stale_shards(cache, tmp_path):
    "A cache written again with --overwrite holds only its own shards: none of the earlier, longer cache survives."
    out = tmp_path / 'again'; shutil.copytree(cache, out)
    code, msg = run('harvest', '--out', out, '--overwrite', '--shard-tokens', '3000', *FLAGS[:1], '3000', *FLAGS[2:])
    assert code == 0, msg
    c = ActivationCache.open(out)
    assert len(c.acts) == 3000 and sorted(p.name for p in out.glob('acts_*')) == ['acts_00000.bin']
