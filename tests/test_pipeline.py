"The training pipeline and `crosscoder-diff train`: config handling, bad input before any work, a real small run."
import json
from pathlib import Path
import pytest, torch
from cli_helpers import cli_process, fault_rng, later, run
from crosscoder_nb.crosscoder import CrossCoder
from crosscoder_nb.fileio import LOCK_FILE
from crosscoder_nb.pipeline import RunConfig, organisms_config, seed_config, set_fields, train_run, RUN_CONFIG_FILE

SMALL = {'train.n_tokens': 128 * 30, 'train.batch_size': 128, 'buffer.batch_size': 128, 'buffer.buffer_batches': 8,
         'buffer.n_norm_batches': 1, 'crosscoder.d_latent': 64, 'train.log_every': 10, 'buffer.model_batch_size': 8}

def small_args(**extra):
    args = []
    for k, v in {**SMALL, **extra}.items(): args += ['--set', f'{k}={v}']
    return args + ['--device', 'cpu']

def test_every_section_settable_and_round_trips():
    cfg = set_fields(organisms_config(arch='l1'), {'data.seq_len': 64, 'buffer.dtype': 'float32', 'crosscoder.activation': 'relu',
                                          'train.lr_decay_frac': 0.5, 'train.wandb_mode': 'offline'})
    assert (cfg.data.seq_len, cfg.train.lr_decay_frac, cfg.crosscoder.activation) == (64, 0.5, 'relu')
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert seed_config().buffer.hook_name == 'blocks.14.hook_resid_pre'

def test_cli_bad_input_exits_2_before_work(tmp_path):
    (tmp_path / 'busy').mkdir(); (tmp_path / 'busy' / 'keep.txt').write_text('mine')
    cases = [(['train', '--out', tmp_path / 'busy'], 'not empty'),
             (['train', '--chat', tmp_path / 'missing', '--out', tmp_path / 'r'], 'missing'),
             (['train', '--set', 'train.lr', '--out', tmp_path / 'r'], 'section.field=value'),
             (['train', '--config', tmp_path / 'nope.json', '--out', tmp_path / 'r'], 'does not exist'),
             (['train', '--layer', '9', '--out', tmp_path / 'r', *small_args()], 'layer'),          # organisms have 4 layers
             (['train', '--resume', '--out', tmp_path / 'r2'], 'Nothing to resume'),
             (['train', '--bogus-flag'], 'unrecognized arguments')]
    for argv, msg in cases:
        code, out = run(*argv)
        assert code == 2 and msg in out, (argv, out)
    assert (tmp_path / 'busy' / 'keep.txt').read_text() == 'mine' and not (tmp_path / 'r').exists()

def test_config_file_and_flags(tmp_path):
    p = tmp_path / 'cfg.json'
    p.write_text(json.dumps({'crosscoder': {'d_latent': 96}, 'train': {'lr': 3e-4}}))
    code, out = run('train', '--config', p, '--lr', '2e-4', '--show-config')
    d = json.loads(out)
    assert code == 0 and d['crosscoder']['d_latent'] == 96 and d['train']['lr'] == 2e-4   # flags win over the file
    p.write_text('[1, 2]'); assert run('train', '--config', p, '--show-config')[0] == 2

def test_train_command_end_to_end(tmp_path):
    code, out = run('train', '--out', tmp_path / 'run', '--json', tmp_path / 'summary.json', *small_args())
    assert code == 0, out
    assert f"checkpoint: {(tmp_path / 'run').resolve()}" in out
    s = json.loads((tmp_path / 'summary.json').read_text())
    lines = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert lines[-1]['loss'] < lines[0]['loss'] and s['steps'] == 30   # training did something
    assert s['harvest_tokens_per_s'] > 0 and s['train_tokens_per_s'] > 0
    cc = CrossCoder.load(tmp_path / 'run')   # everything needed to use it travels with the checkpoint
    assert cc.cfg.hook_point == 'blocks.3.hook_resid_pre' and cc.cfg.model_names == ['organism-base', 'organism-chat']
    assert cc.cfg.norm_factors == pytest.approx(s['norm_factors']) and cc.train_config['n_tokens'] == 128 * 30
    assert RunConfig.from_dict(json.loads((tmp_path / 'run' / RUN_CONFIG_FILE).read_text())).crosscoder.d_latent == 64

def test_resume_refuses_other_models_and_keeps_checkpoint(tmp_path):
    cfg = set_fields(organisms_config(), SMALL)
    train_run(cfg, tmp_path / 'run', device='cpu', progress=False)
    before = (tmp_path / 'run' / 'crosscoder.safetensors').read_bytes()
    other = set_fields(cfg, {'models': ['organism-chat', 'organism-base']})
    with pytest.raises(ValueError, match='trained on'): train_run(other, tmp_path / 'run', resume=True, device='cpu', progress=False)
    res = train_run(cfg, tmp_path / 'run', resume=True, device='cpu', progress=False)   # finished: nothing more to do
    assert res['steps'] == 30 and (tmp_path / 'run' / 'crosscoder.safetensors').read_bytes() == before


# ---------------------------------------------------------------- the models' dtype and device (issue 10)

class Loaded(Exception): "Raised by the stand-in loader once it has recorded its arguments."

def record_loads(monkeypatch, calls):
    import crosscoder_nb.pipeline as pl
    def fake_load(name, device=None, dtype=None): calls.append((name, str(device), dtype)); raise Loaded()
    monkeypatch.setattr(pl, 'load_model', fake_load)

@pytest.mark.parametrize('cfg_fn, kw, want', [
    (seed_config, {'device': 'cuda'}, torch.bfloat16),                           # the seed's Gemma config: bf16 models on a GPU
    (seed_config, {'device': 'cpu'}, torch.float32),                             # ... and float32 on a CPU
    (seed_config, {'device': 'cuda', 'model_dtype': 'float16'}, torch.float16),  # train_run's argument wins
    (organisms_config, {'device': 'cuda'}, torch.float32)])                      # the organisms always run in float32
def test_train_run_loads_models_in_the_configs_dtype_before_writing(tmp_path, monkeypatch, cfg_fn, kw, want):
    calls = []; record_loads(monkeypatch, calls)
    with pytest.raises(Loaded): train_run(cfg_fn(), tmp_path / 'run', progress=False, **kw)
    assert calls == [(cfg_fn().models[0], kw['device'], want)] and not (tmp_path / 'run').exists()

def test_model_device_separate_from_training_device(tmp_path, monkeypatch):
    calls = []; record_loads(monkeypatch, calls)
    cfg = set_fields(seed_config(), {'model_device': 'cuda:1', 'model_dtype': 'auto'})
    with pytest.raises(Loaded): train_run(cfg, tmp_path / 'run', device='cpu', progress=False)
    assert calls[0][1:] == ('cuda:1', torch.bfloat16)

def test_cli_model_dtype_flags_reach_the_config(tmp_path):
    code, out = run('train', '--base', 'google/gemma-2-2b', '--chat', 'google/gemma-2-2b-it', '--model-dtype', 'float16', '--model-device', 'cuda:1', '--show-config')
    d = json.loads(out)
    assert code == 0 and (d['model_dtype'], d['model_device'], d['crosscoder'].get('dtype', 'float32')) == ('float16', 'cuda:1', 'float32')
    assert json.loads(run('train', '--base', 'google/gemma-2-2b', '--chat', 'google/gemma-2-2b-it', '--show-config')[1])['model_dtype'] is None
    code, out = run('train', '--model-dtype', 'int8', '--show-config')
    assert code == 2 and 'invalid choice' in out

def test_small_run_records_the_model_dtype_it_used(tmp_path):
    # 'auto' in the config: run_config.json records what it resolved to (float32 on a CPU), so a report elsewhere reads the same
    cfg = set_fields(organisms_config(), {**SMALL, 'model_dtype': None})
    res = train_run(cfg, tmp_path / 'run', device='cpu', progress=False)
    assert res['model_dtype'] == 'float32'
    saved = json.loads((tmp_path / 'run' / RUN_CONFIG_FILE).read_text())
    assert saved['model_dtype'] == 'float32'
    from crosscoder_nb.trainer import compute_dtype   # and the training precision 'auto' resolved to on this machine
    assert cfg.train.precision == 'auto' and saved['train']['precision'] == ('bfloat16' if compute_dtype('auto', 'cpu') else 'float32')
    res = train_run(cfg, tmp_path / 'bf16', device='cpu', model_dtype='bfloat16', progress=False)
    assert res['model_dtype'] == 'bfloat16' and json.loads((tmp_path / 'bf16' / RUN_CONFIG_FILE).read_text())['model_dtype'] == 'bfloat16'


# ---------------------------------------------------------------- --set values of the wrong type (issue 10)

@pytest.mark.parametrize('setting, msg', [
    ('train.lr=abc', "train.lr wants a float, got 'abc' (e.g. train.lr=0.001)."),
    ('buffer.layer=two', "buffer.layer wants an int, got 'two' (e.g. buffer.layer=3)."),
    ('train.batch_size=1.5', "train.batch_size wants an int, got '1.5'"),
    ('crosscoder.k=lots', "crosscoder.k wants an int or null, got 'lots'"),
    ('buffer.normalize=maybe', "buffer.normalize wants true or false, got 'maybe'"),
    ('train.l1_coeff=[1]', "train.l1_coeff wants a float or null, got '[1]'"),
    ('data.seq_len=null', "data.seq_len wants an int, got 'null'"),
    ('models=organism-base', "models wants a list, got 'organism-base'"),
    ('train={"lr": "fast"}', "train.lr wants a float, got 'fast'")])
def test_set_with_a_wrong_type_is_one_line_exit_2_nothing_written(tmp_path, setting, msg):
    code, out = run('train', '--set', setting, '--out', tmp_path / 'r')
    assert code == 2 and msg in out and len(out.strip().splitlines()) == 1 and 'Traceback' not in out, out
    assert not (tmp_path / 'r').exists()

def test_set_values_of_the_right_type_still_parse():
    cfg = set_fields(organisms_config(), {'train.lr': '1e-4', 'train.l1_coeff': 'null', 'buffer.normalize': 'false', 'train.wandb_project': '42',
                                          'crosscoder.k': '16', 'train.beta1': '0', 'model_dtype': 'bfloat16'})
    assert (cfg.train.lr, cfg.train.l1_coeff, cfg.buffer.normalize, cfg.train.wandb_project, cfg.crosscoder.k, cfg.train.beta1, cfg.model_dtype) == \
           (1e-4, None, False, '42', 16, 0, 'bfloat16')


# ---------------------------------------------------------------- hub models that cannot be had (issue 10)

def test_train_hub_model_offline_is_one_clear_line(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1 and nothing of Gemma is cached here: the hub is unreachable, deterministically
    code, out = run('train', '--base', 'google/gemma-2-2b', '--chat', 'google/gemma-2-2b-it', '--out', tmp_path / 'gemma')
    assert code == 2 and len(out.strip().splitlines()) == 1 and 'Traceback' not in out, out
    assert 'google/gemma-2-2b is not in the local Hugging Face cache and the hub cannot be reached (HF_HUB_OFFLINE is set)' in out
    assert 'pass a local folder' in out and not (tmp_path / 'gemma').exists()

@pytest.mark.parametrize('cause, msg', [
    ('gated', 'log in with `hf auth login` (or set HF_TOKEN) and accept the licence on https://huggingface.co/google/gemma-2-2b'),
    ('missing', 'google/gemma-2-2b does not exist on the Hugging Face hub'),
    ('revision', 'has no such revision')])
def test_train_gated_or_missing_hub_model(tmp_path, monkeypatch, cause, msg):
    from types import SimpleNamespace
    from huggingface_hub import errors as E
    from transformer_lens.model_bridge import TransformerBridge
    r = SimpleNamespace(status_code=401 if cause == 'gated' else 404, headers={}, request=None)
    exc = {'gated': E.GatedRepoError, 'missing': E.RepositoryNotFoundError, 'revision': E.RevisionNotFoundError}[cause]('hub says no', response=r)
    def boot(*a, **kw): raise OSError('transformers: cannot load') from exc   # as transformers wraps the hub's error
    monkeypatch.setattr(TransformerBridge, 'boot_transformers', staticmethod(boot))
    code, out = run('train', '--base', 'google/gemma-2-2b', '--chat', 'google/gemma-2-2b-it', '--out', tmp_path / 'gemma')
    assert code == 2 and msg in out and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / 'gemma').exists()



KILL_RUN = ['--n-tokens', str(512 * 240), '--d-latent', '256', '--batch-size', '512', '--device', 'cpu',
            '--set', 'train.save_every=40', '--set', 'buffer.buffer_batches=16', '--set', 'buffer.n_norm_batches=2', '--set', 'train.log_every=40']

def _train(out, *extra, kill_after: int | None = None) -> int:
    """`crosscoder-diff train` in a subprocess of its own; with `kill_after`, SIGKILLed as soon as a whole checkpoint of that step
    or later exists. Returns the step of the checkpoint left."""
    from crosscoder_nb.trainer import STATE_PREFIX
    def checkpointed():   # a whole checkpoint: the weights are saved and the older state is gone
        steps = [int(f.stem.removeprefix(STATE_PREFIX)) for f in Path(out).glob(f'{STATE_PREFIX}*.pt')]
        return len(steps) == 1 and steps[0] >= kill_after
    cli_process('train', '--out', out, *KILL_RUN, *extra, kill_when=None if kill_after is None else checkpointed)
    return CrossCoder.load(out).extra['step']

def _weights(run_dir):
    from safetensors.torch import load_file
    return load_file(Path(run_dir) / 'crosscoder.safetensors')

def test_train_killed_mid_run_and_resumed_ends_bit_identical(tmp_path):
    "SIGKILL a real `crosscoder-diff train` after its second checkpoint and `--resume` it: the weights equal an uninterrupted run's."
    assert _train(tmp_path / 'full') == 240
    assert 80 <= _train(tmp_path / 'killed', kill_after=80) < 240   # killed between checkpoints, before the end
    assert (tmp_path / 'killed' / LOCK_FILE).exists()   # the killed run's lock file stays; its lock went with it ...
    assert _train(tmp_path / 'killed', '--resume') == 240   # ... so the resume takes it over
    assert not (tmp_path / 'killed' / LOCK_FILE).exists()
    a, b = _weights(tmp_path / 'full'), _weights(tmp_path / 'killed')
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k
    # the control, that shows the test can fail: checkpoints without the buffer resume from the stream position, and differ
    light = ('--set', 'buffer.save_buffer=false')
    assert 80 <= _train(tmp_path / 'light', *light, kill_after=80) < 240
    assert _train(tmp_path / 'light', '--resume', *light) == 240
    c = _weights(tmp_path / 'light')
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # and at a random point: after a random number of log lines and a random few milliseconds more (a save may be
    # half-written then); the resume must still end bit-identical. From the second line on, the first checkpoint is
    # whole (a kill before it leaves nothing to resume, which `--resume` refuses by name: test_cli_bad_input_exits_2_before_work)
    rng, seed = fault_rng()
    lines, delay, out = rng.randint(2, 4), rng.uniform(0, 0.03), tmp_path / 'random'
    logged = lambda: (out / 'metrics.jsonl').exists() and (out / 'metrics.jsonl').read_text().count('\n') >= lines
    cli_process('train', '--out', out, *KILL_RUN, kill_when=later(logged, delay))
    assert _train(out, '--resume') == 240, f'FAULT_SEED={seed}'
    d = _weights(out)
    for k in a: assert torch.equal(a[k], d[k]), f'{k}: killed after {lines} log lines + {delay * 1000:.0f} ms, FAULT_SEED={seed}'
