"The activation cache: `crosscoder-diff harvest` and `train --cache`, against the in-memory path, interrupted, and refused when it does not fit."
import errno, json, re, shutil, subprocess, sys, warnings
from pathlib import Path
import pytest, torch
from crosscoder_nb.buffer import harvest_activations
from crosscoder_nb.cache import CACHE_FILE, ActivationCache
from crosscoder_nb.fileio import IntegrityError, checksum
from cli_helpers import ONE_THREAD, cli_process, fault_rng, later, run
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

def test_harvest_killed_at_a_random_point_resumes_to_the_same_cache(cache, tmp_path):
    "SIGKILL the harvest a random few milliseconds after a random number of shards (mid-shard, maybe mid-commit)."
    rng, seed = fault_rng()
    shards, delay, out = rng.randint(0, 2), rng.uniform(0, 0.03), tmp_path / 'random'
    def written():
        try: return len(json.loads((out / CACHE_FILE).read_text())['shards']) >= shards
        except (FileNotFoundError, json.JSONDecodeError): return False
    cli_process('harvest', '--out', out, '--shard-tokens', '3000', *FLAGS, kill_when=later(written, delay))
    code, msg = run('harvest', '--out', out, '--shard-tokens', '3000', '--resume', *FLAGS)
    assert code == 0, f'{msg} (FAULT_SEED={seed})'
    assert torch.equal(ActivationCache.open(out).acts[torch.arange(N)], ActivationCache.open(cache).acts[torch.arange(N)]), \
        f'killed after {shards} shards + {delay * 1000:.0f} ms, FAULT_SEED={seed}'

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

# --- faults: damaged and contradictory caches are refused on open, a full disk loses nothing -------------------------------

SMALL = ['--layer', '1', '--n-tokens', '2048', '--batch-size', '256', '--set', 'buffer.n_norm_batches=1', '--set', 'buffer.model_batch_size=8',
         '--set', 'data.seq_len=32', '--device', 'cpu']
SHARDS = ['--shard-tokens', '600']   # three shards: 744, 744 and 560 activations of 2 x 128 values

@pytest.fixture(scope='module')
def small(tmp_path_factory):
    "A three-shard cache harvested in a few seconds: the reference of the fault tests."
    out = tmp_path_factory.mktemp('s') / 'cache'
    code, msg = run('harvest', '--out', out, *SHARDS, *SMALL)
    assert code == 0, msg
    return out

def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst); return dst

def _edit(d: Path, change) -> Path:
    "Change the manifest of the cache `d` in place with `change(manifest)`."
    m = json.loads((d / CACHE_FILE).read_text()); change(m); (d / CACHE_FILE).write_text(json.dumps(m)); return d

def _refused(folder: Path, tmp_path: Path, want: str):
    "`train --cache folder` ends with one error line holding `want`, exit status 2, and writes nothing."
    code, msg = run('train', '--cache', folder, '--out', tmp_path / 'run', *SMALL, *TRAIN)
    lines = [l for l in msg.splitlines() if 'error' in l]
    assert code == 2 and len(lines) == 1 and want in lines[0] and 'Traceback' not in msg, msg
    assert not (tmp_path / 'run').exists()
    return lines[0]

def _xor(f: Path, start: int, n: int):
    "XOR `n` bytes of `f` from `start` with 0x5A: the file keeps its size."
    with open(f, 'r+b') as fh:
        fh.seek(start); b = bytes(x ^ 0x5A for x in fh.read(n)); fh.seek(start); fh.write(b)

def _same_files(a: Path, b: Path):
    "The caches `a` and `b` hold the same shard files, byte for byte, and list them alike."
    ma, mb = (json.loads((d / CACHE_FILE).read_text()) for d in (a, b))
    assert ma['shards'] == mb['shards'] and ma['n'] == mb['n'] and ma['complete'] and mb['complete']
    for s in ma['shards']:
        for w in ('acts', 'tokens'): assert (a / s[w]).read_bytes() == (b / s[w]).read_bytes(), s[w]

def test_every_shard_is_recorded_with_its_checksums_dtype_and_shape(small):
    m = json.loads((small / CACHE_FILE).read_text())
    assert [(s['n'], s['dtype'], s['shape'], s['tokens_shape']) for s in m['shards']] == [
        (744, 'bfloat16', [744, 2, 128], [24, 32]), (744, 'bfloat16', [744, 2, 128], [24, 32]), (560, 'bfloat16', [560, 2, 128], [24, 32])]
    for s in m['shards']:
        assert s['crc32'] == {w: checksum(small / s[w]) for w in ('acts', 'tokens')}

def test_flipped_bytes_in_a_shard_or_token_file_are_refused_by_name(small, tmp_path):
    bad = _copy(small, tmp_path / 'flipped'); f = bad / 'acts_00001.bin'
    _xor(f, f.stat().st_size // 4, f.stat().st_size // 2)   # half the shard, in its middle, the size kept
    with pytest.raises(IntegrityError, match=r'Shard .*acts_00001\.bin is damaged: its bytes have CRC-32 [0-9a-f]{8}, not the'):
        ActivationCache.open(bad)
    line = _refused(bad, tmp_path, 'acts_00001.bin is damaged')
    assert f'harvest --out {bad} --overwrite' in line
    c = ActivationCache.open(bad, verify=False)   # the explicit opt-out reads the damaged bytes as they are
    assert not torch.equal(c.acts[torch.arange(744, 1488)], ActivationCache.open(small).acts[torch.arange(744, 1488)])
    bad = _copy(small, tmp_path / 'tokens'); _xor(bad / 'tokens_00002.bin', 100, 1)   # one byte of a token id
    with pytest.raises(IntegrityError, match=r'tokens_00002\.bin is damaged'): ActivationCache.open(bad)

def test_a_manifest_that_contradicts_its_shards_is_refused_naming_the_field(small, tmp_path):
    def doubled(m):   # d_model 64 with every n doubled: the same byte count
        m['d_model'] = 64; m['n'] *= 2
        for s in m['shards']: s['n'] *= 2
    cases = {'dtype': (lambda m: m.update(dtype='float16'), "its dtype is 'float16', but acts_00000.bin was written as 'bfloat16'"),
             'd_model': (doubled, 'its shards[0].n 1488 and d_model 64 contradict the shape acts_00000.bin was written with, [744, 2, 128]'),
             'n': (lambda m: m.update(n=2047), "its n (2,047) is not the sum of its shards' n (2,048)"),
             'n_models': (lambda m: m.update(n_models=3), 'it has n_models 3 but 2 models and 2 norm factors'),
             'rows': (lambda m: m['shards'][1].update(rows=25), 'its shards[1].rows 25 contradicts the shape tokens_00001.bin')}
    for name, (change, want) in cases.items():
        bad = _edit(_copy(small, tmp_path / name), change)
        with pytest.raises(IntegrityError) as e: ActivationCache.open(bad)
        assert str(e.value).startswith(f'{bad / CACHE_FILE} is damaged: {want}'), (name, str(e.value))
    _refused(tmp_path / 'dtype', tmp_path, "its dtype is 'float16'")

def test_shard_paths_that_lead_outside_the_cache_folder_are_refused(small, tmp_path):
    outside = tmp_path / 'elsewhere.bin'; shutil.copy(small / 'acts_00000.bin', outside)
    for i, (w, name) in enumerate([('acts', '../elsewhere.bin'), ('acts', str(outside)), ('tokens', '../../tokens_00000.bin')]):
        bad = _edit(_copy(small, tmp_path / f'c{i}' / 'cache'), lambda m: m['shards'][0].update({w: name}))
        with pytest.raises(IntegrityError, match=re.escape(f"shards[0].{w} is {name!r}, which leads outside the cache folder")):
            ActivationCache.open(bad, verify=False)   # refused before any file is read
    bad = _copy(small, tmp_path / 'link'); (bad / 'acts_00000.bin').unlink(); (bad / 'acts_00000.bin').symlink_to(outside)
    _refused(bad, tmp_path, "shards[0].acts is 'acts_00000.bin', which leads outside the cache folder")

def test_a_malformed_manifest_is_one_error_naming_the_file_and_key(small, tmp_path):
    def drop(k): return lambda m: m.pop(k)
    cases = [('cut', None, 'is not valid JSON'), ('list', [1, 2], 'is damaged: it holds a list, not the object of a cache manifest'),
             ('shards', drop('shards'), "is damaged: the manifest has no key 'shards'"),
             ('dmodel', drop('d_model'), "is damaged: the manifest has no key 'd_model'"),
             ('shards_type', lambda m: m.update(shards={'0': 1}), "is damaged: the manifest's 'shards' is an object, where a list belongs"),
             ('n_type', lambda m: m.update(n='2048'), "is damaged: the manifest's 'n' is a string, where an integer belongs"),
             ('shard_key', lambda m: m['shards'][2].pop('rows'), "is damaged: shards[2] has no key 'rows'")]
    for name, change, want in cases:
        bad = _copy(small, tmp_path / name); mf = bad / CACHE_FILE
        if name == 'cut': mf.write_text(mf.read_text()[:200])
        elif isinstance(change, list): mf.write_text(json.dumps(change))
        else: _edit(bad, change)
        assert f'{mf} {want}' in _refused(bad, tmp_path, want), name

def test_a_cache_harvested_before_checksums_still_opens_with_one_warning(small, tmp_path):
    old = _edit(_copy(small, tmp_path / 'old'), lambda m: [s.pop(k) for s in m['shards'] for k in ('dtype', 'shape', 'tokens_shape', 'crc32')])
    assert set(json.loads((old / CACHE_FILE).read_text())['shards'][0]) == {'acts', 'tokens', 'n', 'rows'}   # what the writer recorded before
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); c = ActivationCache.open(old)
    assert [str(x.message) for x in w] == [f"{old}: 3 of its 3 shards carry no checksums (harvested before they were recorded), "
                                           "so their bytes are not verified. Harvest the cache again to add them."]
    assert torch.equal(c.acts[torch.arange(2048)], ActivationCache.open(small).acts[torch.arange(2048)])
    with open(old / 'acts_00001.bin', 'r+b') as f: f.truncate(1000)   # sizes are still checked
    with pytest.raises(IntegrityError, match=r'acts_00001\.bin is truncated'): ActivationCache.open(old)

def test_a_write_cut_short_without_errno_is_one_line_and_resumes_after_removing_orphans(small, tmp_path, monkeypatch):
    "numpy's OSError for a full disk has no errno; any write that stops short is reported as no space, one line."
    import crosscoder_nb.cache as cm
    real, out = cm._append, tmp_path / 'short'
    def cut_short(tmp, t):
        if tmp.name.startswith('acts_00001'):
            real(tmp, t[:1]); raise OSError(f'{t.numel() * 2} requested and 512 written')   # numpy's words, no errno
        real(tmp, t)
    monkeypatch.setattr(cm, '_append', cut_short)
    code, msg = run('harvest', '--out', out, *SHARDS, *SMALL)
    lines = [l for l in msg.splitlines() if 'error' in l]
    assert code == 2 and len(lines) == 1 and 'Traceback' not in msg, msg
    assert ('requested and 512 written: the disk is full or a file-size limit was reached): the 1 complete shards (744 activations) '
            'are kept. Free some space (or raise the file-size limit), then continue with' in lines[0]), msg
    man = json.loads((out / CACHE_FILE).read_text())
    assert not man['complete'] and man['shards'] == json.loads((small / CACHE_FILE).read_text())['shards'][:1]
    assert (out / 'acts_00000.bin').read_bytes() == (small / 'acts_00000.bin').read_bytes() and not list(out.glob('*.tmp'))
    # a killed harvest leaves its temporaries: the next start removes those (and only those)
    orphans = ['acts_00001.bin.tmp', 'tokens_00004.bin.tmp', '.cache.json.k3_x9qzt.tmp']
    for n in [*orphans, 'notes.tmp', 'acts_1.bin.tmp']: (out / n).write_text('left behind')
    monkeypatch.setattr(cm, '_append', real)
    code, msg = run('harvest', '--out', out, '--resume', *SHARDS, *SMALL)
    assert code == 0, msg
    assert not any((out / n).exists() for n in orphans) and (out / 'notes.tmp').exists() and (out / 'acts_1.bin.tmp').exists()
    _same_files(out, small)

LIMITED = r'''
import resource, signal, sys
import crosscoder_nb.cache as cm
from crosscoder_nb.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # past the limit a write then fails with EFBIG instead of killing the process
real = cm._append
def limited(tmp, t):   # the limit is set as shard 1 starts: shard 0 fits, shard 1 does not
    if tmp.name.startswith('acts_00001'): resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
    real(tmp, t)
cm._append = limited
sys.exit(main(sys.argv[1:]))
'''

def test_a_file_size_limit_during_a_shard_write_is_one_line_and_resumes(small, tmp_path):
    "A real failed write (RLIMIT_FSIZE in a subprocess) during shard 1: one line, shard 0 kept, --resume finishes the same cache."
    out = tmp_path / 'limited'
    p = subprocess.run([sys.executable, '-c', LIMITED, 'harvest', '--out', str(out), *SHARDS, *SMALL], env=ONE_THREAD,
                       capture_output=True, text=True, timeout=300)
    lines = [l for l in p.stderr.splitlines() if 'error' in l]
    assert p.returncode == 2 and len(lines) == 1 and 'Traceback' not in p.stderr, p.stderr[-3000:]
    assert lines[0].startswith(f'crosscoder-diff harvest: error: Writing shard 1 of the cache in {out} failed (File too large'), lines
    assert 'the 1 complete shards (744 activations) are kept' in lines[0] and '--resume' in lines[0], lines
    assert json.loads((out / CACHE_FILE).read_text())['shards'] == json.loads((small / CACHE_FILE).read_text())['shards'][:1]
    code, msg = run('harvest', '--out', out, '--resume', *SHARDS, *SMALL)
    assert code == 0, msg
    _same_files(out, small)

def test_zero_and_negative_counts_are_refused_before_any_work(tmp_path):
    from crosscoder_nb.cache import write_cache
    for n_tokens, shard_tokens, want in [(0, 10, 'n_tokens must be an int >= 1, got 0'), (-5, 10, 'n_tokens must be an int >= 1, got -5'),
                                         (10, 0, 'shard_tokens must be an int >= 1, got 0'), (10, -1, 'shard_tokens must be an int >= 1, got -1')]:
        with pytest.raises(ValueError, match=re.escape(want)):
            write_cache([None, None], ['a', 'b'], None, None, n_tokens, tmp_path / 'c', shard_tokens=shard_tokens)
    assert not (tmp_path / 'c').exists()
