"The training pipeline and `crosscoder-diff train`: config handling, bad input before any work, a real small run."
import contextlib, io, json
from pathlib import Path
import pytest, torch
from crosscoder_nb.cli import main
from crosscoder_nb.crosscoder import CrossCoder
from crosscoder_nb.pipeline import RunConfig, organisms_config, seed_config, set_fields, train_run, RUN_CONFIG_FILE

SMALL = {'train.n_tokens': 128 * 30, 'train.batch_size': 128, 'buffer.batch_size': 128, 'buffer.buffer_batches': 8,
         'buffer.n_norm_batches': 1, 'crosscoder.d_latent': 64, 'train.log_every': 10, 'buffer.model_batch_size': 8}

def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in argv])
        except SystemExit as e: code = e.code
    return code, out.getvalue() + err.getvalue()

def small_args(**extra):
    args = []
    for k, v in {**SMALL, **extra}.items(): args += ['--set', f'{k}={v}']
    return args + ['--device', 'cpu']

def test_every_section_settable_and_round_trips():
    cfg = set_fields(organisms_config(arch='l1'), {'data.seq_len': 64, 'buffer.dtype': 'float32', 'crosscoder.activation': 'relu',
                                          'train.lr_decay_frac': 0.5, 'train.wandb_mode': 'offline'})
    assert (cfg.data.seq_len, cfg.train.lr_decay_frac, cfg.crosscoder['activation']) == (64, 0.5, 'relu')
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert seed_config().buffer.hook_name == 'blocks.14.hook_resid_pre'

@pytest.mark.parametrize('setting, msg', [
    ({'train.lr': -1}, 'lr'), ({'buffer.dtype': 'int8'}, 'dtype'), ({'crosscoder.norm_factors': [1, 1]}, 'read off the models'),
    ({'crosscoder.activation': 'gelu'}, 'unknown activation'), ({'crosscoder.k': 4096}, r'k must be an int in \[1, 2048\]'), ({'bogus.x': 1}, 'sections are'), ({'models': ['only-one']}, 'at least two')])
def test_bad_settings_are_named(setting, msg):
    with pytest.raises(ValueError, match=msg): set_fields(organisms_config(), setting)

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
    assert RunConfig.from_dict(json.loads((tmp_path / 'run' / RUN_CONFIG_FILE).read_text())).crosscoder['d_latent'] == 64

def test_resume_refuses_other_models_and_keeps_checkpoint(tmp_path):
    cfg = set_fields(organisms_config(), SMALL)
    train_run(cfg, tmp_path / 'run', device='cpu', progress=False)
    before = (tmp_path / 'run' / 'crosscoder.safetensors').read_bytes()
    other = set_fields(cfg, {'models': ['organism-chat', 'organism-base']})
    with pytest.raises(ValueError, match='trained on'): train_run(other, tmp_path / 'run', resume=True, device='cpu', progress=False)
    res = train_run(cfg, tmp_path / 'run', resume=True, device='cpu', progress=False)   # finished: nothing more to do
    assert res['steps'] == 30 and (tmp_path / 'run' / 'crosscoder.safetensors').read_bytes() == before
