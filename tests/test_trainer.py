"Resume equals an uninterrupted run, the schedule, NaN handling, bad inputs, logging and data iteration of `crosscoder_nb.trainer`."
import json, os
from pathlib import Path
import pytest, torch
import crosscoder_nb.trainer as trmod
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.trainer import NonFiniteError, TrainConfig, Trainer, synthetic_activations, tensor_batches

torch.set_num_threads(1)
DATA = synthetic_activations(4096, d_model=16, n_shared=32, n_specific=4, p_active=0.1, seed=0)


def make_cc(seed=0, **kw) -> CrossCoder:
    return CrossCoder(CrossCoderConfig(**{'d_model': 16, 'd_latent': 48, 'seed': seed, **kw}))


def make_btk(seed=0, **kw) -> CrossCoder:
    return make_cc(seed, **{'activation': 'batchtopk', 'k': 4, 'threshold_start': 5, 'dead_tokens': 256, **kw})


def tcfg(**kw) -> TrainConfig:
    return TrainConfig(**{'lr': 3e-3, 'batch_size': 64, 'n_steps': 20, 'log_every': 5, 'l1_coeff': 0.2, **kw})


def read_log(run_dir) -> list[dict]:
    return [json.loads(l) for l in (Path(run_dir) / 'metrics.jsonl').read_text().splitlines()]


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- config and schedule

def test_schedule_values():
    c = TrainConfig(n_steps=200, lr=1e-3, l1_coeff=4.0)   # warm-up over 10 steps, decay over the last 40
    assert [c.l1_coeff_at(i) for i in (0, 5, 10, 11, 199)] == pytest.approx([0.0, 2.0, 4.0, 4.0, 4.0])
    assert [c.lr_at(i) for i in (0, 159, 160, 180, 199)] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 1e-3 / 40])
    # the seed's own settings: 97656 steps, warm-up 4882.8 steps, decay from step 78124.8
    s = TrainConfig()
    assert s.l1_coeff_at(2441) == pytest.approx(2.0 * 2441 / (0.05 * 97656))
    assert s.lr_at(97656 - 9765) == pytest.approx(5e-5 * 9765 / (0.2 * 97656))


def test_logged_schedule_is_the_one_used(tmp_path):
    c = tcfg(n_steps=40, log_every=1)
    Trainer(make_cc(), tensor_batches(DATA, 64), c, tmp_path).train(progress=False)
    for r in read_log(tmp_path):
        assert r['lr'] == pytest.approx(c.lr_at(r['step'] - 1)) and r['l1_coeff'] == pytest.approx(c.l1_coeff_at(r['step'] - 1))


# ---------------------------------------------------------------- resume

def chunks(n_batches=None):
    "A plain generator without state_dict: the trainer must count and skip batches on resume."
    for i in range(0, len(DATA) - 63, 64): yield DATA[i:i + 64]


@pytest.mark.parametrize('source', ['tensor_batches', 'generator'])
def test_resume_equals_uninterrupted(tmp_path, source):
    make = (lambda: tensor_batches(DATA, 64, seed=3)) if source == 'tensor_batches' else chunks
    c = tcfg(n_steps=20, log_every=3)
    full = Trainer(make_cc(), make(), c, tmp_path / 'full')
    full.train(progress=False)

    first = Trainer(make_cc(), make(), c, tmp_path / 'split')
    first.train(n_steps=10, progress=False)
    del first
    second = Trainer.resume(tmp_path / 'split', make())
    assert second.step == 10
    summary = second.train(progress=False)
    assert summary['steps'] == 20 and summary['stopped'] == 'finished'
    assert same_weights(second.cc, full.cc)
    assert same_weights(CrossCoder.load(tmp_path / 'split'), CrossCoder.load(tmp_path / 'full'))
    for (ka, va), (kb, vb) in zip(second.opt.state_dict()['state'].items(), full.opt.state_dict()['state'].items()):
        assert all(torch.equal(va[k], vb[k]) for k in va)
    # the same metric lines, plus one at step 10 where the first call ended
    drop = lambda log: {r['step']: {k: v for k, v in r.items() if k != 'seconds'} for r in log}
    split, full_log = drop(read_log(tmp_path / 'split')), drop(read_log(tmp_path / 'full'))
    assert sorted(split) == sorted(set(full_log) | {10}) and all(split[k] == full_log[k] for k in full_log)


def test_resume_after_crash_between_checkpoints(tmp_path):
    c = tcfg(n_steps=20, save_every=5, log_every=2)
    full = Trainer(make_cc(), tensor_batches(DATA, 64), c, tmp_path / 'full'); full.train(progress=False)

    def crashing(batches, at):
        for i, b in enumerate(batches):
            if i == at: raise RuntimeError('machine died')
            yield b
    tb = tensor_batches(DATA, 64)
    t = Trainer(make_cc(), tb, c, tmp_path / 'crash')
    t.batches = crashing(tb, 13)   # dies while fetching the 14th batch; the last checkpoint is at step 10
    with pytest.raises(RuntimeError, match='machine died'): t.train(progress=False)
    assert CrossCoder.load(tmp_path / 'crash').extra['step'] == 10
    assert max(r['step'] for r in read_log(tmp_path / 'crash')) == 12    # lines past the checkpoint ...
    with open(tmp_path / 'crash' / 'metrics.jsonl', 'a') as fh: fh.write('{"step": 13, "lo')   # and a line cut short
    # the generator wrapper had no state_dict, so the state recorded 10 batches used: skip them on resume
    r = Trainer.resume(tmp_path / 'crash', tensor_batches(DATA, 64))
    assert [x['step'] for x in read_log(tmp_path / 'crash')] == [2, 4, 6, 8, 10]    # ... are dropped on resume
    r.train(progress=False)
    assert same_weights(r.cc, full.cc)
    assert [p.name for p in (tmp_path / 'crash').glob('trainer_state_*.pt')] == ['trainer_state_000000020.pt']


def test_resume_errors(tmp_path):
    make_cc().save(tmp_path / 'plain')
    with pytest.raises(ValueError, match='without trainer state'): Trainer.resume(tmp_path / 'plain', chunks())
    Trainer(make_cc(), chunks(), tcfg(n_steps=4), tmp_path / 'run').train(progress=False)
    with pytest.raises(FileExistsError, match='Trainer.resume'): Trainer(make_cc(), chunks(), tcfg(), tmp_path / 'run')
    Trainer(make_cc(), chunks(), tcfg(n_steps=4), tmp_path / 'run', overwrite=True)   # allowed when asked for
    short = iter(list(chunks())[:2])
    t = Trainer.resume(tmp_path / 'run', short)
    with pytest.raises(ValueError, match='hold only 2 batches'): t.train(progress=False)
    next(iter(Path(tmp_path / 'run').glob('trainer_state_*.pt'))).unlink()
    with pytest.raises(FileNotFoundError, match='trainer state'): Trainer.resume(tmp_path / 'run', chunks())


# ---------------------------------------------------------------- training works

def test_loss_falls_and_explained_variance_rises(tmp_path):
    cc = make_cc()
    held = DATA[-512:]
    before = cc.losses(held).to_dict()
    summary = Trainer(cc, tensor_batches(DATA[:-512], 64), tcfg(n_steps=300, log_every=50), tmp_path).train(progress=False)
    after = cc.losses(held).to_dict()
    assert after['l2'] < 0.2 * before['l2'], (before['l2'], after['l2'])
    assert min(before['explained_variance']) < 0.2 < 0.8 < min(after['explained_variance']), (before, after)
    assert after['l0'] < 0.5 * 48
    log = read_log(tmp_path)
    assert log[-1]['loss'] < log[0]['loss']
    assert summary['final'] == log[-1] and summary['tokens'] == 300 * 64 and summary['checkpoint'] == str(tmp_path)


def test_metrics_jsonl(tmp_path):
    Trainer(make_cc(), tensor_batches(DATA, 64), tcfg(n_steps=10, log_every=3), tmp_path).train(progress=False)
    log = read_log(tmp_path)
    assert [r['step'] for r in log] == [3, 6, 9, 10]
    for r in log:
        assert set(r) == {'step', 'tokens', 'loss', 'l2', 'l1', 'l0', 'explained_variance', 'aux', 'dead_fraction', 'threshold', 'lr', 'l1_coeff', 'seconds'}
        assert r['threshold'] is None and r['aux'] == 0 and 0 <= r['dead_fraction'] <= 1
        assert r['tokens'] == 64 * r['step'] and len(r['explained_variance']) == 2
        assert r['loss'] == pytest.approx(r['l2'] + r['l1_coeff'] * r['l1'], rel=1e-5)


def test_no_host_reads_on_steps_that_do_not_log(tmp_path, monkeypatch):
    "Values are read back from the device (item/tolist/cpu/float/bool) only on logging and saving steps."
    t = Trainer(make_cc(), tensor_batches(DATA, 64), tcfg(n_steps=12, log_every=5), tmp_path)
    reads = []
    pkg = str(Path(trmod.__file__).parent)
    for name in ('item', 'tolist', 'cpu', 'numpy', '__float__', '__bool__', '__int__'):
        orig = getattr(torch.Tensor, name)
        def wrapped(self, *a, _orig=orig, _name=name, **k):
            import sys
            f = sys._getframe(1)
            if f.f_code.co_filename.startswith(pkg): reads.append((t.step, _name))
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    t.train(progress=False)
    monkeypatch.undo()
    assert reads, 'the test should see the reads of the logging steps'
    assert {s for s, _ in reads} <= {5, 10, 12}, sorted(set(reads))


@pytest.mark.skipif(not __import__('importlib').util.find_spec('wandb'), reason='wandb not installed')
def test_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv('WANDB_SILENT', 'true')
    Trainer(make_cc(), tensor_batches(DATA, 64), tcfg(n_steps=4, log_every=2, wandb=True, wandb_mode='offline'), tmp_path).train(progress=False)
    assert list((tmp_path / 'wandb').glob('offline-run-*')), os.listdir(tmp_path)


# ---------------------------------------------------------------- failures

def test_nan_in_data_raises_naming_step_and_keeps_checkpoint(tmp_path):
    data = DATA[:64 * 20].clone()
    data[64 * 7 + 3, 0, 5] = float('nan')      # in the 8th batch
    c = tcfg(n_steps=20, save_every=5, log_every=100)
    t = Trainer(make_cc(), tensor_batches(data, 64, shuffle=False), c, tmp_path)
    with pytest.raises(NonFiniteError, match=r'Non-finite loss at step 8: the batch of activations contained NaN') as e:
        t.train(progress=False)
    assert 'step 5' in str(e.value) and 'was not overwritten' in str(e.value)
    cc = CrossCoder.load(tmp_path)
    assert cc.extra['step'] == 5 and all(torch.isfinite(p).all() for p in cc.parameters())
    assert (tmp_path / 'trainer_state_000000005.pt').exists()
    assert Trainer.resume(tmp_path, tensor_batches(data, 64, shuffle=False)).step == 5


def test_inf_and_divergence(tmp_path):
    data = DATA[:64 * 4].clone(); data[0, 1, 0] = float('inf')
    with pytest.raises(NonFiniteError, match='step 1: the batch'):
        Trainer(make_cc(), tensor_batches(data, 64, shuffle=False), tcfg(n_steps=4), tmp_path / 'a').train(progress=False)
    assert not (tmp_path / 'a' / 'crosscoder.safetensors').exists()   # nothing was ever saved
    cc = make_cc()
    with torch.no_grad(): cc.W_dec[0, 0, 0] = float('nan')
    with pytest.raises(NonFiniteError, match='step 1: the activations were finite, so training diverged.*no checkpoint'):
        Trainer(cc, tensor_batches(DATA, 64), tcfg(n_steps=4), tmp_path / 'b').train(progress=False)


def test_wrong_batch_shape_raises_before_training(tmp_path):
    for bad, msg in [(torch.randn(64, 2, 8), r'd_model=16.*got \(64, 2, 8\)'), (torch.randn(64, 3, 16), r'n_models=2'),
                     (torch.randn(64, 32), r'got \(64, 32\)'), (torch.ones(64, 2, 16, dtype=torch.long), 'float tensors')]:
        cc = make_cc(); w0 = cc.W_dec.detach().clone()
        t = Trainer(cc, iter([bad] * 3), tcfg(), tmp_path / 'run')
        with pytest.raises(ValueError, match=msg): t.train(progress=False)
        assert t.step == 0 and torch.equal(cc.W_dec, w0) and not (tmp_path / 'run' / 'crosscoder.safetensors').exists()
    with pytest.raises(ValueError, match='yielded nothing'): Trainer(make_cc(), iter([]), tcfg(), tmp_path / 'e').train(progress=False)


def test_batch_size_mismatch_warns(tmp_path):
    with pytest.warns(UserWarning, match='TrainConfig.batch_size is 64'):
        Trainer(make_cc(), tensor_batches(DATA, 32), tcfg(n_steps=2), tmp_path).train(progress=False)


def test_out_of_data_stops_and_saves(tmp_path):
    with pytest.warns(UserWarning, match=r'ran out after 6 steps'):
        s = Trainer(make_cc(), tensor_batches(DATA[:64 * 6], 64, epochs=1), tcfg(n_steps=50, log_every=4), tmp_path).train(progress=False)
    assert s['stopped'] == 'out_of_data' and s['steps'] == 6
    assert CrossCoder.load(tmp_path).extra['step'] == 6
    assert [r['step'] for r in read_log(tmp_path)] == [4, 6]


# ---------------------------------------------------------------- data

def test_tensor_batches_deterministic_and_resumable():
    a = [b for _, b in zip(range(10), tensor_batches(DATA[:640], 64, seed=5))]
    b = [b for _, b in zip(range(10), tensor_batches(DATA[:640], 64, seed=5))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    tb = tensor_batches(DATA[:640], 64, seed=5)
    for _ in range(13): next(tb)                   # into the second epoch
    rest = [next(tb) for _ in range(5)]
    tb2 = tensor_batches(DATA[:640], 64, seed=5); tb2.load_state_dict({'epoch': 1, 'batch': 3})
    assert all(torch.equal(x, next(tb2)) for x in rest)
    one_epoch = list(tensor_batches(DATA[:640], 64, seed=5, epochs=1))
    assert len(one_epoch) == 10 and torch.equal(torch.cat(one_epoch).sort(0).values, DATA[:640].sort(0).values)


# ---------------------------------------------------------------- BatchTopK and AuxK through the trainer

def test_batchtopk_resume_equals_uninterrupted(tmp_path):
    "Threshold, its counters and the dead-latent counters are checkpointed: a resumed BatchTopK run is bit-identical."
    c = tcfg(n_steps=20, log_every=5, l1_coeff=None)
    full = Trainer(make_btk(n_shared=8, k_shared=1), tensor_batches(DATA, 64, seed=3), c, tmp_path / 'full'); full.train(progress=False)
    first = Trainer(make_btk(n_shared=8, k_shared=1), tensor_batches(DATA, 64, seed=3), c, tmp_path / 'split'); first.train(n_steps=8, progress=False)
    second = Trainer.resume(tmp_path / 'split', tensor_batches(DATA, 64, seed=3)); second.train(progress=False)
    assert same_weights(second.cc, full.cc)   # state_dict: weights, threshold, steps, n_avg, tokens_since_fired
    assert second.cc.activation.steps.item() == 20 and torch.isfinite(second.cc.activation.threshold).all()
    assert not full.cc.training and not second.cc.training   # back in inference mode after train()


def test_batchtopk_l1_default_is_zero_and_logged_threshold(tmp_path):
    t = Trainer(make_btk(), tensor_batches(DATA, 64), tcfg(n_steps=6, log_every=3, l1_coeff=None), tmp_path)
    t.train(progress=False)
    log = read_log(tmp_path)
    assert all(r['l1_coeff'] == 0 for r in log) and all(r['l0'] == pytest.approx(4.0) for r in log)   # k per example in training
    assert log[-1]['threshold'] == pytest.approx(t.cc.activation.threshold.tolist())


def test_batchtopk_inference_l0_within_10_percent_of_k(tmp_path):
    "The threshold learnt in training gives about k active latents per example on held-out activations."
    from crosscoder_nb.groundtruth import GroundTruth, GroundTruthConfig, GroundTruthBatches, sample
    gt = GroundTruth(GroundTruthConfig(d_model=16, n_features=64))
    cc = make_btk(k=6, d_latent=128, threshold_start=200, dead_tokens=10_000)
    Trainer(cc, GroundTruthBatches(gt, 256, seed=0), TrainConfig(lr=3e-3, batch_size=256, n_steps=300, log_every=100), tmp_path).train(progress=False)
    held_out = sample(gt, 8192, torch.Generator().manual_seed(99))   # fresh examples, as raw as the training stream
    l0 = (cc.encode(held_out) > 0).float().sum(-1).mean().item()
    assert abs(l0 - 6) <= 0.6, l0


def test_auxk_ends_with_fewer_dead_latents(tmp_path):
    from crosscoder_nb.groundtruth import GroundTruth, GroundTruthConfig, GroundTruthBatches
    gt = GroundTruth(GroundTruthConfig(d_model=32, n_features=512, freq_min=0.005, freq_max=0.05))
    dead = {}
    for aux in (0.0, 1.0):
        cc = CrossCoder(CrossCoderConfig(d_model=32, d_latent=256, activation='batchtopk', k=8, aux_coeff=aux, dead_tokens=5000, threshold_start=100))
        s = Trainer(cc, GroundTruthBatches(gt, 256, 0), TrainConfig(lr=3e-3, batch_size=256, n_steps=300, log_every=100), tmp_path / str(aux)).train(progress=False)
        dead[aux] = s['final']['dead_fraction']
        assert min(s['final']['explained_variance']) > 0.4   # both trained
    assert dead[1.0] < dead[0.0] - 0.03, dead


# ---------------------------------------------------------------- dedicated latents (DFC) through the trainer

@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
def test_dfc_trains_resumes_and_keeps_dedicated_entries_zero(tmp_path, precision):
    "A BatchTopK DFC with designated shared latents: resumed equals uninterrupted, and dedicated latents stay in their model."
    from crosscoder_nb.crosscoder import model_mask
    c = tcfg(n_steps=20, log_every=5, l1_coeff=None, precision=precision)
    make = lambda: make_btk(n_shared=8, k_shared=1, n_exclusive=[4, 4])
    full = Trainer(make(), tensor_batches(DATA, 64, seed=3), c, tmp_path / 'full'); full.train(progress=False)
    first = Trainer(make(), tensor_batches(DATA, 64, seed=3), c, tmp_path / 'split'); first.train(n_steps=8, progress=False)
    second = Trainer.resume(tmp_path / 'split', tensor_batches(DATA, 64, seed=3)); second.train(progress=False)
    assert same_weights(second.cc, full.cc)
    log = read_log(tmp_path / 'full')
    assert log[-1]['l2'] < log[0]['l2']   # it trained
    off = ~model_mask(full.cc.cfg)
    for cc in (full.cc, CrossCoder.load(tmp_path / 'split')):
        assert cc.cfg.n_exclusive == [4, 4]
        assert (cc.W_dec[off] == 0).all() and (cc.W_enc.permute(2, 0, 1)[off] == 0).all()
        assert (cc.W_dec[~off] != 0).any(-1).all()   # every vector a latent may use is non-zero
