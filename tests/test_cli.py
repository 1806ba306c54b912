"""`crosscoder-diff` itself: `--help` and `--version` without the heavy imports, and a device this machine lacks
refused in one line, with status 2, before any work."""
import subprocess, sys
import pytest, torch
import crosscoder_nb
from cli_helpers import ONE_THREAD, run

def cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'crosscoder_nb.cli', *map(str, argv)], env=ONE_THREAD,
                          capture_output=True, text=True, timeout=300)

PROBE = """import sys
from crosscoder_nb.cli import build_parser
p = build_parser()
for sp in p._subparsers._group_actions[0].choices.values(): sp.format_help()
print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformer_lens', 'transformers')
             or m.startswith('crosscoder_nb.') and m != 'crosscoder_nb.cli'))"""

def test_the_parser_is_built_without_heavy_imports():
    "So `crosscoder-diff --help` answers at once: no torch, transformer_lens or heavy module of the package."
    r = subprocess.run([sys.executable, '-c', PROBE], env=ONE_THREAD, capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stdout.strip()) == (0, '[]'), r.stdout + r.stderr

def test_version_and_help():
    r = cli('--version')
    assert (r.returncode, r.stdout) == (0, f'crosscoder-diff {crosscoder_nb.__version__}\n')
    r = cli('train', '--help')
    assert r.returncode == 0 and '(default: organism-base)' in r.stdout and '(default: None)' not in r.stdout

ARGS = {'train': ['--out', 'OUT'], 'harvest': ['--out', 'OUT'], 'demo': ['--out', 'OUT'], 'compare': [],
        'report': ['RUN'], 'dashboards': ['RUN', '--latents', '1']}
MISSING = ['cuda', 'cuda:0'] if not torch.cuda.is_available() else [f'cuda:{torch.cuda.device_count()}']

@pytest.mark.parametrize('command', ARGS)
def test_a_device_this_machine_lacks_is_one_line_exit_2(tmp_path, command):
    argv = [str(tmp_path / 'out') if a == 'OUT' else str(tmp_path / 'run') if a == 'RUN' else a for a in ARGS[command]]
    for flag in ('--device', '--model-device') if command in ('train', 'harvest') else ('--device',):
        for device in ['junk', *MISSING]:
            code, out = run(command, *argv, flag, device)
            assert code == 2 and out.count('\n') == 1, out
            assert out.startswith(f'crosscoder-diff {command}: error: {flag} {device}: '), out
            assert ('not a torch device' if device == 'junk' else 'cuda') in out.split(': error: ')[1].lower(), out
    assert not (tmp_path / 'out').exists()

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_train_on_cuda_without_cuda_from_a_shell(tmp_path):
    r = cli('train', '--device', 'cuda', '--out', tmp_path / 'run')
    assert (r.returncode, r.stdout, r.stderr.count('\n')) == (2, '', 1), r.stdout + r.stderr
    assert r.stderr.startswith('crosscoder-diff train: error: --device cuda: ') and 'use --device cpu' in r.stderr
    assert not (tmp_path / 'run').exists()

def test_model_device_from_set_is_checked_too(tmp_path):
    code, out = run('train', '--set', 'model_device=junk', '--out', tmp_path / 'run')
    assert code == 2 and 'model_device junk: not a torch device' in out and not (tmp_path / 'run').exists()
    code, out = run('train', '--model-device', 'junk', '--show-config')   # --show-config only prints: any device
    assert code == 0 and '"model_device": "junk"' in out


def test_show_config_of_report_and_demo_does_no_work(tmp_path):
    """`report --show-config` prints the ReportConfig the flags make, `demo --show-config` the run configs and the report
    settings; neither loads a model or writes a file."""
    import json
    code, out = run('report', tmp_path / 'run', '--n-top', '3', '--no-causal', '--show-config')
    cfg = json.loads(out)
    assert code == 0 and (cfg['n_top'], cfg['causal'], cfg['out']) == (3, False, str(tmp_path / 'run' / 'report'))
    code, out = run('demo', '--out', tmp_path / 'demo', '--set', 'train.n_tokens=50000', '--show-config')
    show = json.loads(out)
    assert code == 0 and list(show['runs']) == ['batchtopk', 'l1', 'dfc'] and show['report']['n_test'] == 40
    assert all(r['train']['n_tokens'] == 50000 for r in show['runs'].values())   # the harvest's settings: every run
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'demo').exists()
