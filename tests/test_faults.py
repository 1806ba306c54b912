"""Faults injected on purpose (issue 28): one writer per run folder, a resume that refuses the settings it would ignore,
no write through a planted link, a clean log on --overwrite, orphan temporaries cleaned, a full disk while saving a
checkpoint, and one line (status 2) for every fault of the input or the environment.
A SIGKILL mid-training, then --resume, ending bit-identical to an uninterrupted run (and taking over the lock the killed
process left): tests/test_pipeline.py::test_train_killed_mid_run_and_resumed_ends_bit_identical."""
import errno, json, os, resource, shutil, signal, subprocess, sys
from pathlib import Path
import pytest, torch
from cli_helpers import run
import crosscoder_nb.cli as cli
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.fileio import LOCK_FILE
from crosscoder_nb.trainer import TrainConfig, Trainer, synthetic_activations, tensor_batches

N = 128 * 30   # 30 steps of 128
HARVEST = ['--batch-size', '128', '--device', 'cpu', '--set', 'buffer.n_norm_batches=1',
           '--set', 'buffer.model_batch_size=8']
TRAIN = [*HARVEST, '--d-latent', '64', '--set', 'train.log_every=10']
CHECKPOINT = ('crosscoder.safetensors', 'config.json', 'trainer_state_000000030.pt')


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    "A small activation cache of the organisms (60 batches): every run here trains on it, without loading the models."
    out = tmp_path_factory.mktemp('faults') / 'cache'
    code, msg = run('harvest', '--out', out, '--n-tokens', 2 * N, '--shard-tokens', N, *HARVEST)
    assert code == 0, msg
    return out


@pytest.fixture(scope='module')
def finished(cache, tmp_path_factory):
    "A finished run of 30 steps; each test works on a copy (`copy_run`)."
    out = tmp_path_factory.mktemp('faults') / 'run'
    code, msg = run('train', '--cache', cache, '--out', out, '--n-tokens', N, *TRAIN)
    assert code == 0, msg
    return out


def copy_run(finished, tmp_path, name='run') -> Path:
    return Path(shutil.copytree(finished, tmp_path / name))


def files(d) -> dict:
    "Every file of a folder (hidden ones too), by name, with its bytes."
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file()}


def one_line(code, msg, command) -> str:
    "The error line of a refused command: status 2, exactly one line, no traceback."
    lines = [l for l in msg.splitlines() if l.strip() and 'it/s' not in l and 'Loading weights' not in l]
    assert code == 2 and len(lines) == 1 and 'Traceback' not in msg, msg
    assert lines[0].startswith(f'crosscoder-diff {command}: error: '), msg
    return lines[0]


def metric_steps(d) -> list[int]:
    return [json.loads(l)['step'] for l in (Path(d) / 'metrics.jsonl').read_text().splitlines()]


# ---------------------------------------------------------------- resume refuses what it would ignore

def test_resume_refuses_changed_settings_before_any_work(finished, cache, tmp_path):
    rd = copy_run(finished, tmp_path); before = files(rd)
    code, msg = run('train', '--out', rd, '--resume', '--cache', cache, '--lr', '0.5', '--d-latent', '32',
                    '--set', f'train.n_tokens={2 * N}')
    line = one_line(code, msg, 'train')
    # each difference, recorded -> given; the allowed one (n_tokens) is not among them; and the two ways out
    assert 'a resumed run keeps them: crosscoder.d_latent: 64 -> 32; train.lr: 0.001 -> 0.5 (recorded -> given).' in line
    assert 'Drop those flags' in line and '--out NEW_DIR' in line and 'train.n_tokens' in line.split('On resume only')[1]
    assert files(rd) == before   # nothing written: not run_config.json, not the log


def test_resume_applies_a_longer_run_and_records_it(finished, cache, tmp_path):
    rd = copy_run(finished, tmp_path)
    # flags left out keep the recorded settings (d_latent 64, batch 128), not the defaults
    code, msg = run('train', '--out', rd, '--resume', '--cache', cache, '--n-tokens', 2 * N, '--set', 'train.log_every=15')
    assert code == 0 and 'resumed at step 30, trained to step 60' in msg, msg
    rc = json.loads((rd / 'run_config.json').read_text())
    assert (rc['train']['n_tokens'], rc['train']['log_every'], rc['train']['lr'], rc['crosscoder']['d_latent']) == \
           (2 * N, 15, 1e-3, 64)
    cc = CrossCoder.load(rd)
    assert (cc.extra['step'], cc.train_config['n_tokens'], cc.cfg.d_latent) == (60, 2 * N, 64)
    assert cc.extra['resumes'] == [{'step': 30, 'changed': {'n_tokens': [N, 2 * N], 'log_every': [10, 15]}}]
    assert metric_steps(rd) == [10, 20, 30, 45, 60]
    # shorter than the steps done: refused
    code, msg = run('train', '--out', rd, '--resume', '--cache', cache, '--n-tokens', N)
    assert 'is at step 60, past the 30 steps' in one_line(code, msg, 'train')
    # nothing left to do: the run's own figures (it printed "L0 nan" and an empty explained variance before)
    code, msg = run('train', '--out', rd, '--resume', '--cache', cache)
    assert code == 0 and 'nothing to train: the run is at step 60 of 60' in msg and 'nan' not in msg, msg
    assert f"L0 {json.loads((rd / 'metrics.jsonl').read_text().splitlines()[-1])['l0']:.1f}, explained variance base" in msg


def test_resume_on_another_kind_of_data_is_refused(finished, cache, tmp_path):
    rd = copy_run(finished, tmp_path); before = files(rd)
    code, msg = run('train', '--out', rd, '--resume', '--n-tokens', 2 * N, '--device', 'cpu')   # no --cache
    assert f'was trained on the activations of the cache {cache.resolve()} (resume with --cache' in \
           one_line(code, msg, 'train')
    assert files(rd) == before


def test_a_damaged_run_config_is_one_line(finished, cache, tmp_path):
    rd = copy_run(finished, tmp_path)
    for text, want in [('[1, 2]', 'does not hold a run config'), ('{"train": {}}', "RunConfig needs ['models']"),
                       ('{"models": ', 'is not valid JSON')]:
        (rd / 'run_config.json').write_text(text)
        code, msg = run('train', '--out', rd, '--resume', '--cache', cache)
        line = one_line(code, msg, 'train')
        assert 'run_config.json' in line and want in line, line


# ---------------------------------------------------------------- one writer per folder

HOLD = """import sys, time
from crosscoder_nb.fileio import folder_lock
with folder_lock(sys.argv[1], 'Run directory'), folder_lock(sys.argv[2]):
    print('held', flush=True); time.sleep(600)"""

def test_a_second_writer_is_refused_naming_the_pid(finished, cache, tmp_path):
    rd, busy = copy_run(finished, tmp_path), tmp_path / 'busy'
    before = files(rd)
    holder = subprocess.Popen([sys.executable, '-c', HOLD, str(rd), str(busy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'held\n'
        held = f'is in use by another run (pid {holder.pid} on '
        for argv in [('train', '--out', rd, '--overwrite', '--cache', cache, '--n-tokens', N, *TRAIN),
                     ('train', '--out', rd, '--resume', '--cache', cache, '--n-tokens', 2 * N)]:
            assert held in one_line(*run(*argv), 'train')
        assert held in one_line(*run('harvest', '--out', busy, '--n-tokens', N, *HARVEST), 'harvest')
        assert held in one_line(*run('demo', '--out', busy, '--device', 'cpu'), 'demo')
        assert {k: v for k, v in files(rd).items() if k != LOCK_FILE} == before   # nothing written
        assert sorted(p.name for p in busy.iterdir()) == [LOCK_FILE]
    finally:
        holder.send_signal(signal.SIGKILL); holder.wait()
    # killed: its lock file is left behind, the lock itself went with the process, and the next run takes it over
    assert (rd / LOCK_FILE).exists()
    code, msg = run('train', '--out', rd, '--resume', '--cache', cache, '--n-tokens', N + 128 * 5)
    assert code == 0 and 'trained to step 35' in msg, msg
    assert not (rd / LOCK_FILE).exists()


def test_a_planted_symlink_is_refused_and_nothing_is_written_outside(finished, cache, tmp_path):
    rd, outside = copy_run(finished, tmp_path), tmp_path / 'outside.txt'
    outside.write_text('precious\n')
    (rd / 'metrics.jsonl').unlink(); (rd / 'metrics.jsonl').symlink_to(outside)
    for argv in [('--resume', '--cache', cache, '--n-tokens', 2 * N),
                 ('--overwrite', '--cache', cache, '--n-tokens', N, *TRAIN)]:
        line = one_line(*run('train', '--out', rd, *argv), 'train')
        assert f'{rd}/metrics.jsonl is a symbolic link (to {outside})' in line and 'Remove the link' in line, line
    assert outside.read_text() == 'precious\n' and CrossCoder.load(rd).extra['step'] == 30


def test_overwrite_starts_a_clean_log_and_removes_orphans_only(finished, cache, tmp_path):
    rd = copy_run(finished, tmp_path)
    with open(rd / 'metrics.jsonl', 'a') as fh: fh.write('{"step": 999, "loss": 1.0}\n')   # an earlier run's lines
    (rd / '.crosscoder.safetensors.k2j4_x9q.tmp').write_bytes(b'half a save')   # the orphan of a killed save
    (rd / 'trainer_state_000000010.pt').write_bytes(b'an earlier run')
    (rd / 'notes.txt').write_text('mine')
    code, msg = run('train', '--out', rd, '--overwrite', '--cache', cache, '--n-tokens', 128 * 20, *TRAIN)
    assert code == 0, msg
    assert metric_steps(rd) == [10, 20]   # this run's lines only
    assert sorted(files(rd)) == ['config.json', 'crosscoder.safetensors', 'metrics.jsonl', 'notes.txt',
                                 'run_config.json', 'trainer_state_000000020.pt']
    assert (rd / 'notes.txt').read_text() == 'mine'


# ---------------------------------------------------------------- a full disk while saving a checkpoint

def test_full_disk_while_saving_a_checkpoint(finished, cache, tmp_path):
    """A file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored: the write fails with EFBIG, as on a full disk) that the
    weights fit under and the trainer state does not: one line, the checkpoint before intact, nothing half-written;
    once the limit is gone, --resume ends exactly where an uninterrupted continuation does."""
    rd, ref = copy_run(finished, tmp_path), copy_run(finished, tmp_path, 'ref')
    before = {k: v for k, v in files(rd).items() if k in CHECKPOINT}
    assert len(before) == 3 and len(before['trainer_state_000000030.pt']) > 1.5 * len(before['crosscoder.safetensors'])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(1.5 * len(before['crosscoder.safetensors'])), hard))
    try: code, msg = run('train', '--out', rd, '--resume', '--cache', cache, '--n-tokens', 2 * N)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard)); signal.signal(signal.SIGXFSZ, old)
    line = one_line(code, msg, 'train')
    assert f'Saving the checkpoint of step 60 failed: File too large while writing {rd}/trainer_state_000000060.pt' in line
    assert f'the checkpoint in {rd} is whole, at step 30' in line and '--resume' in line, line
    after = files(rd)
    assert {k: v for k, v in after.items() if k in CHECKPOINT} == before
    assert not [n for n in after if n.endswith('.tmp') or n == 'trainer_state_000000060.pt'], sorted(after)
    for d in (rd, ref):
        code, msg = run('train', '--out', d, '--resume', '--cache', cache, '--n-tokens', 2 * N)
        assert code == 0, msg
    a, b = CrossCoder.load(rd).state_dict(), CrossCoder.load(ref).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_weights_write_keeps_the_previous_checkpoint(tmp_path):
    "safetensors raises a SafetensorError on a full disk: the new trainer state goes, the checkpoint before stays."
    from safetensors import SafetensorError
    data = synthetic_activations(2048, d_model=16, seed=0)
    cfg = TrainConfig(lr=3e-3, batch_size=64, n_steps=20, save_every=10, log_every=5, l1_coeff=0.2)
    t = Trainer(CrossCoder(CrossCoderConfig(d_model=16, d_latent=32)), tensor_batches(data, 64), cfg, tmp_path)
    t.train(n_steps=10, progress=False)
    before = files(tmp_path)
    def full(*a, **kw): raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')
    t.cc.save = full
    with pytest.raises(OSError) as e: t.train(progress=False)
    assert e.value.errno == errno.ENOSPC and 'No space left on device' in str(e.value)
    assert f'the checkpoint in {tmp_path} is whole, at step 10' in str(e.value)
    assert {k: v for k, v in files(tmp_path).items() if k != 'metrics.jsonl'} == \
           {k: v for k, v in before.items() if k != 'metrics.jsonl'}          # the state of step 20 is gone again
    one = cli.fault_message(e.value)
    assert '\n' not in one and one.startswith('Saving the checkpoint of step 20 failed: No space left on device')
    # the weights written, their config.json not: the checkpoint is at the new step, and its state is kept
    del t.cc.save
    def half(*a, **kw):
        CrossCoder.save(t.cc, *a, **kw); raise OSError(errno.ENOSPC, 'No space left on device while writing config.json')
    t.cc.save = half
    with pytest.raises(OSError, match='is whole, at step 20'): t.save()
    assert Trainer.resume(tmp_path, tensor_batches(data, 64)).step == 20


# ---------------------------------------------------------------- one line for every fault

@pytest.fixture
def places(tmp_path, monkeypatch):
    "A folder, a dangling link, a folder that reads as read-only (as root, chmod would not stop a write)."
    (tmp_path / 'adir').mkdir(); (tmp_path / 'ro').mkdir()
    (tmp_path / 'dangling').symlink_to(tmp_path / 'nowhere')
    real = os.access
    monkeypatch.setattr(os, 'access', lambda p, m, **kw: False if Path(p) == tmp_path / 'ro' else real(p, m, **kw))
    return tmp_path

FAULTS = [  # the command line, the command, what its one line must say
    (['train', '--config', '{t}/adir', '--out', '{t}/x'], '--config {t}/adir cannot be read (Is a directory): give a JSON file'),
    (['train', '--base', 'foo/..', '--out', '{t}/x'], 'foo/.. is neither a local model folder nor a hub name'),
    (['train', '--set', 'train.device=junk', '--out', '{t}/x'], 'train.device junk: not a torch device'),
    (['train', '--out', '{t}/dangling'], 'Run directory {t}/dangling is a symbolic link to {t}/nowhere, which does not exist'),
    (['train', '--out', '{t}/ro/run', '--device', 'cpu'], 'Run directory {t}/ro/run cannot be written: {t}/ro is read-only'),
    (['harvest', '--out', '{t}/ro/cache', '--device', 'cpu'], '--out {t}/ro/cache cannot be written'),
    (['train', '--out', '{t}/x', '--json', '{t}/adir'], '--json {t}/adir is a folder'),
    (['train', '--out', '{t}/x', '--json', '{t}/nowhere/s.json'], 'the folder {t}/nowhere does not exist'),
    (['train', '--n-tokens', '0', '--out', '{t}/x'], '--n-tokens must be at least 1, got 0; leave the flag out'),
    (['train', '--batch-size', '-1', '--out', '{t}/x'], '--batch-size must be at least 1, got -1'),
    (['harvest', '--shard-tokens', '0', '--out', '{t}/x'], '--shard-tokens must be at least 1, got 0'),
    (['report', '{t}/x', '--n-eval-seqs', '0'], '--n-eval-seqs must be at least 1, got 0'),
    (['dashboards', '{t}/x', '--latents', '1', '--n-tokens', '0'], '--n-tokens must be at least 1, got 0'),
    (['compare', '--n', '-3'], '--n must be at least 1, got -3'),
    (['organisms', '--check', '--n-prompts', '0'], '--n-prompts must be at least 1, got 0')]

@pytest.mark.parametrize('argv, want', FAULTS, ids=[' '.join(a[:3]) for a, _ in FAULTS])
def test_one_line_for_every_fault(places, argv, want):
    argv = [a.format(t=places) for a in argv]
    line = one_line(*run(*argv), argv[0])
    assert want.format(t=places) in line, line
    assert not (places / 'x').exists() and sorted(p.name for p in (places / 'ro').iterdir()) == []


def test_debug_shows_the_traceback(places):
    with pytest.raises(cli.CLIError, match='cannot be read'):
        run('train', '--config', places / 'adir', '--out', places / 'x', '--debug')


def test_non_finite_loss_is_one_line(cache, tmp_path):
    code, msg = run('train', '--cache', cache, '--out', tmp_path / 'run', '--n-tokens', N, *TRAIN, '--lr', '1e30')
    line = one_line(code, msg, 'train')
    assert 'Non-finite loss at step' in line and 'training diverged: lower lr' in line, line


def test_json_unwritable_after_training_loses_nothing(finished, cache, tmp_path, monkeypatch):
    "The place of --json fails only after the training (the check before it passed): the run is saved all the same."
    rd = copy_run(finished, tmp_path)
    monkeypatch.setattr(cli, '_check_json', lambda path: None)   # as if the folder went away while it trained
    code, msg = run('train', '--out', rd, '--resume', '--cache', cache, '--n-tokens', N + 128 * 5,
                    '--json', tmp_path / 'gone' / 'summary.json')
    assert 'resumed at step 30, trained to step 35' in msg   # the summary, printed before the --json
    line = one_line(code, '\n'.join(l for l in msg.splitlines() if 'error' in l), 'train')
    assert f'--json {tmp_path}/gone/summary.json: No such file or directory' in line, line
    assert f'Nothing is lost: the run is saved in {rd.resolve()}' in line
    assert CrossCoder.load(rd).extra['step'] == 35


def test_ctrl_c_is_one_line_with_status_130(monkeypatch):
    def interrupted(args): raise KeyboardInterrupt
    monkeypatch.setattr(cli, 'cmd_compare', interrupted)
    code, msg = run('compare')
    assert (code, msg) == (130, 'crosscoder-diff compare: error: interrupted; what was saved before is whole '
                                '(train and harvest continue with --resume)\n')
