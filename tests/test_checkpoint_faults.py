"""Faults in checkpoints, each refused by name before anything large is built: flipped bytes (checksums), NaN and Inf
weights, a config that lies about the sizes, a size that cannot fit in memory, a save cut between its two files, and
pickles; and what must keep loading (checkpoints written before the checksums, a BatchTopK threshold not learnt yet)."""
import json, math, os, struct, warnings
from pathlib import Path
import pytest, torch
import crosscoder_nb.checkpoint as ckpt
import crosscoder_nb.crosscoder as ccmod
import crosscoder_nb.fileio as fileio
from crosscoder_nb.checkpoint import (CONFIG_FILE, SEED_CONFIG_FILE, SEED_WEIGHTS_FILE, WEIGHTS_FILE,
                                      NonFiniteWeightsError, read_checkpoint, tensor_checksum)
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig, check_memory, crosscoder_bytes
from crosscoder_nb.fileio import IntegrityError
from crosscoder_nb.trainer import TrainConfig, Trainer, synthetic_activations, tensor_batches
from cli_helpers import run

torch.set_num_threads(1)


def small(**kw) -> CrossCoder:
    return CrossCoder(CrossCoderConfig(**{'d_model': 8, 'd_latent': 16, **kw}))


def same_weights(a, b) -> bool:
    "Bit-identical state dicts (a NaN equals a NaN: a BatchTopK threshold is NaN until it is learnt)."
    sa, sb = a.state_dict(), b.state_dict()
    same = lambda x, y: x.dtype == y.dtype and torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(), y.nan_to_num())
    return sa.keys() == sb.keys() and all(same(sa[k], sb[k]) for k in sa)


def tensor_spans(path: Path) -> dict[str, tuple[int, int]]:
    "Where each tensor's bytes lie in a safetensors file (absolute offsets), read from its header by hand."
    raw = path.read_bytes()
    n = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    return {k: (8 + n + v['data_offsets'][0], 8 + n + v['data_offsets'][1]) for k, v in header.items()
            if k != '__metadata__'}


def flip(path: Path, at: int, mask: int = 0x01):
    data = bytearray(path.read_bytes()); data[at] ^= mask; path.write_bytes(bytes(data))


# ---------------------------------------------------------------- flipped bytes

@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_a_flipped_bit_in_any_tensor_is_refused_by_name(tmp_path, dtype):
    cc = small(dtype=dtype, activation='batchtopk', k=2)
    with torch.no_grad(): cc.b_dec.normal_(); cc.b_enc.normal_()   # no tensor of zeros: every flip changes a value
    cc.save(tmp_path / 'good')
    spans = tensor_spans(tmp_path / 'good' / WEIGHTS_FILE)
    assert set(spans) == set(cc.state_dict())
    for name, (lo, hi) in spans.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        for f in (WEIGHTS_FILE, CONFIG_FILE): (run_dir / f).write_bytes((tmp_path / 'good' / f).read_bytes())
        flip(run_dir / WEIGHTS_FILE, (lo + hi) // 2)
        with pytest.raises(IntegrityError) as e: CrossCoder.load(run_dir)
        assert str(e.value) == (f"{run_dir / WEIGHTS_FILE} is damaged: the bytes of tensor {name} differ from the "
                                "checksum recorded when it was saved (a flipped bit on disk, a truncated copy or "
                                "download). Restore it from a copy, or resume from an earlier checkpoint.")
    ck = read_checkpoint(tmp_path / 'good')
    assert ck.verified and same_weights(CrossCoder.load(tmp_path / 'good'), cc)


def test_checksums_are_recorded_in_both_files_and_match_the_bytes(tmp_path):
    cc = small()
    cc.save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    from safetensors import safe_open
    with safe_open(str(tmp_path / WEIGHTS_FILE), framework='pt') as fh:
        inner = json.loads(fh.metadata()['checkpoint'])
    raw, spans = (tmp_path / WEIGHTS_FILE).read_bytes(), tensor_spans(tmp_path / WEIGHTS_FILE)
    # an independent CRC of the bytes on disk: what was recorded is what was written
    assert meta['checksums'] == inner['checksums'] == {k: fileio.checksum(raw[lo:hi]) for k, (lo, hi) in spans.items()}


def test_a_damaged_config_copy_in_the_header_is_refused(tmp_path):
    small().save(tmp_path)
    w = tmp_path / WEIGHTS_FILE
    raw = w.read_bytes()
    at = raw.index(b'"save_id') - 4   # inside the JSON text of the metadata: still a valid header, a broken copy
    data = bytearray(raw); data[at:at + 1] = b'{'; w.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r'crosscoder\.safetensors: the config stored in its header is not a JSON '
                                             r'object: the file is damaged\. Restore it from a copy\.'):
        CrossCoder.load(tmp_path)


def test_a_checkpoint_without_checksums_still_loads(tmp_path):
    "Written before the checksums existed (the same layout, no 'checksums' key): loads, unverified, silently."
    from safetensors.torch import save_file
    cc = small(norm_factors=[1.0, 2.0])
    with torch.no_grad(): cc.b_dec.normal_()
    meta = {'format_version': 2, 'save_id': 'old', 'crosscoder': cc.cfg.to_dict(), 'train_config': None,
            'extra': {'step': 3}}
    save_file({k: v.contiguous() for k, v in cc.state_dict().items()}, str(tmp_path / WEIGHTS_FILE),
              metadata={'checkpoint': json.dumps(meta)})
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        back = CrossCoder.load(tmp_path)
    assert same_weights(back, cc) and back.extra == {'step': 3} and not read_checkpoint(tmp_path).verified


# ---------------------------------------------------------------- NaN and Inf

def test_nonfinite_weights_are_refused_with_an_opt_out(tmp_path):
    cc = small()
    with torch.no_grad(): cc.W_dec[0, 0, :3] = math.nan; cc.b_dec[1, 2] = -math.inf
    cc.save(tmp_path)
    msg = (f"{tmp_path / WEIGHTS_FILE} holds non-finite weights (NaN or Inf in W_dec: 3 of 256 values; b_dec: 1 of 16 "
           "values): the run diverged before this save, or the file is damaged. Re-train, or resume from an earlier "
           "checkpoint; to inspect the weights anyway, load with allow_nonfinite=True.")
    for load in (CrossCoder.load, CrossCoder.from_pretrained, read_checkpoint):
        with pytest.raises(NonFiniteWeightsError) as e: load(tmp_path)
        assert str(e.value) == msg and isinstance(e.value, ValueError)
    with pytest.warns(UserWarning, match=r'Loaded anyway \(allow_nonfinite=True\), for inspection only'):
        back = CrossCoder.from_pretrained(tmp_path, allow_nonfinite=True)
    assert int(back.W_dec.isnan().sum()) == 3 and back.b_dec[1, 2].item() == -math.inf   # as saved
    assert torch.equal(back.W_dec.nan_to_num(), cc.W_dec.nan_to_num()) and torch.equal(back.W_enc, cc.W_enc)
    code, out = run('report', tmp_path)
    assert code == 2 and out == f'crosscoder-diff report: error: {msg}\n'


def test_an_untrained_batchtopk_threshold_is_not_damage(tmp_path):
    cc = small(activation='batchtopk', k=2)
    assert cc.activation.threshold.isnan().all()   # NaN until threshold_start: a legitimate state
    cc.save(tmp_path / 'fresh')
    assert CrossCoder.load(tmp_path / 'fresh').activation.threshold.isnan().all()
    with torch.no_grad(): cc.activation.threshold.fill_(math.inf)
    cc.save(tmp_path / 'inf')
    with pytest.raises(NonFiniteWeightsError, match=r'NaN or Inf in activation\.threshold: 1 of 1 values'):
        CrossCoder.load(tmp_path / 'inf')


def test_resume_of_a_nonfinite_checkpoint_is_refused_by_its_cause(tmp_path):
    data = synthetic_activations(512, d_model=8, n_shared=16, n_specific=2, p_active=0.1, seed=0)
    cfg = TrainConfig(lr=1e-3, batch_size=64, n_steps=3, log_every=1)
    Trainer(small(), tensor_batches(data, 64), cfg, tmp_path).train(progress=False)
    ck = read_checkpoint(tmp_path)
    ck.state['W_enc'][0, 0, 0] = math.nan   # as if the run had diverged just before its last save
    ckpt.write_checkpoint(tmp_path, ck.state, ck.config, ck.train_config, ck.extra)
    with pytest.raises(NonFiniteWeightsError, match=r'NaN or Inf in W_enc: 1 of 256 values\): the run diverged'):
        Trainer.resume(tmp_path, tensor_batches(data, 64))


# ---------------------------------------------------------------- sizes: the config against the header, and memory

def test_a_config_that_lies_about_the_size_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    small().save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta['crosscoder']['d_latent'] = 2_000_000   # same save id: the config is trusted over the copy in the weights
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    built, init = [], CrossCoder.__init__
    def spy(self, cfg, device=None):
        built.append((cfg.d_latent, torch.get_default_device().type)); init(self, cfg, device)
    monkeypatch.setattr(CrossCoder, '__init__', spy)
    with pytest.raises(ValueError) as e: CrossCoder.load(tmp_path)
    w, c = tmp_path / WEIGHTS_FILE, tmp_path / CONFIG_FILE
    assert str(e.value) == (
        f"{w} does not match {c} (W_dec: (16, 2, 8) in the weights, (2000000, 2, 8) from the config; W_enc: (2, 8, 16) "
        "in the weights, (2, 8, 2000000) from the config; b_enc: (16,) in the weights, (2000000,) from the config; "
        "tokens_since_fired: (16,) in the weights, (2000000,) from the config). The two files come from different "
        "checkpoints: copy the matching pair, or fix d_model / n_models / d_latent in the config.")
    assert built == [(2_000_000, 'meta')]   # only its shapes were built, on the meta device: nothing allocated


def test_the_shape_check_reads_the_header_not_the_tensors(tmp_path, monkeypatch):
    small().save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text()); meta['crosscoder']['d_model'] = 9
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    class NoTensors:   # safe_open whose tensors cannot be read: the refusal must come from the header alone
        def __init__(self, *a, **kw): self.fh = real(*a, **kw)
        def __enter__(self): self.inner = self.fh.__enter__(); return self
        def __exit__(self, *a): return self.fh.__exit__(*a)
        def metadata(self): return self.inner.metadata()
        def keys(self): return self.inner.keys()
        def get_slice(self, k): return self.inner.get_slice(k)
        def get_tensor(self, k): raise AssertionError('a tensor was read')
    real = ckpt.safe_open
    monkeypatch.setattr(ckpt, 'safe_open', NoTensors)
    with pytest.raises(ValueError, match=r'W_dec: \(16, 2, 8\) in the weights, \(16, 2, 9\) from the config'):
        CrossCoder.load(tmp_path)


def test_a_size_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    cfg = CrossCoderConfig(d_model=8, d_latent=2 ** 20)   # 2 * 64 MiB of weights, 4 MiB + 8 MiB of b_enc and counters
    need = crosscoder_bytes(cfg)
    assert need == 2 * 2 ** 20 * 16 * 4 + 2 ** 20 * 4 + 16 * 4 + 2 ** 20 * 8
    monkeypatch.setattr(ccmod, 'memory_available', lambda device=None: (need // 2, 4 * need))
    drawn, randn = [], torch.randn
    def spy(*a, **kw):   # records the draws that take memory (not those of the meta device)
        t = randn(*a, **kw)
        if t.device.type != 'meta': drawn.append(a)
        return t
    monkeypatch.setattr(torch, 'randn', spy)
    with pytest.raises(ValueError) as e: CrossCoder(cfg)
    assert str(e.value) == ("A crosscoder with d_model 8, n_models 2, d_latent 1,048,576 in float32 would need 146.8 MB "
                            "for its parameters and buffers, but this machine has 73.4 MB of memory free (587.2 MB in "
                            "all). Lower d_latent (crosscoder.d_latent), use dtype bfloat16, or use a machine with "
                            "more memory.")
    assert drawn == []   # refused before the initial draw
    monkeypatch.setattr(ccmod, 'memory_available', lambda device=None: (need, 4 * need))
    check_memory(cfg)   # exactly enough: accepted
    with pytest.raises(ValueError, match='would need 146.8 MB'):
        monkeypatch.setattr(ccmod, 'memory_available', lambda device=None: (need - 1, 4 * need)); check_memory(cfg)
    monkeypatch.setattr(ccmod, 'memory_available', lambda device=None: None)
    check_memory(cfg)   # unknown (another OS): not refused


def test_an_absurd_d_latent_is_one_line_on_this_machine():
    with pytest.raises(ValueError, match=r'^A crosscoder with d_model 2304, n_models 2, d_latent 1,000,000,000 in float32 '
                                         r'would need 36,876\.0 GB for its parameters and buffers, but this machine has '
                                         r'[\d,.]+ [GM]B of memory free \([\d,.]+ [GM]B in all\)\. Lower d_latent'):
        CrossCoder(CrossCoderConfig(d_model=2304, d_latent=1_000_000_000))


# ---------------------------------------------------------------- a save cut between its two files

def test_a_first_save_cut_before_its_config_loads_and_resumes_from_the_copy_in_the_weights(tmp_path, monkeypatch):
    data = synthetic_activations(512, d_model=8, n_shared=16, n_specific=2, p_active=0.1, seed=0)
    cfg = TrainConfig(lr=1e-3, batch_size=64, n_steps=4, log_every=1)
    real_replace = os.replace
    def replace(src, dst):
        if str(dst).endswith(CONFIG_FILE): raise KeyboardInterrupt('killed between the two renames')
        return real_replace(src, dst)
    monkeypatch.setattr(fileio.os, 'replace', replace)
    cut = tmp_path / 'cut'
    t = Trainer(small(), tensor_batches(data, 64), cfg, cut)
    with pytest.raises(KeyboardInterrupt): t.train(n_steps=2, progress=False)   # its first save
    monkeypatch.undo()
    assert not (cut / CONFIG_FILE).exists() and (cut / WEIGHTS_FILE).exists()
    with pytest.warns(UserWarning, match=r'config\.json is missing \(a save was interrupted before writing it, or it '
                                         r'was deleted\); using the copy of the config stored inside'):
        back = CrossCoder.load(cut)
    assert same_weights(back, t.cc) and back.extra['step'] == 2
    with pytest.warns(UserWarning, match=r'config\.json is missing'):
        resumed = Trainer.resume(cut, tensor_batches(data, 64))
    assert resumed.step == 2
    resumed.train(progress=False)
    full = Trainer(small(), tensor_batches(data, 64), cfg, tmp_path / 'full'); full.train(progress=False)
    assert (cut / CONFIG_FILE).exists() and same_weights(resumed.cc, full.cc)   # the same run, and whole again


def test_weights_without_config_or_a_copy_still_name_the_missing_file(tmp_path):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in small().state_dict().items()}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(FileNotFoundError, match=r'config\.json is missing: the weights in .* need their config'):
        CrossCoder.load(tmp_path)


# ---------------------------------------------------------------- pickles (the seed's .pt format)

def seed_folder(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / SEED_WEIGHTS_FILE).write_bytes(weights)
    (path / SEED_CONFIG_FILE).write_text(json.dumps({'d_in': 8, 'dict_size': 16}))
    return path


def test_bad_pickles_are_one_clear_error_naming_the_file(tmp_path):
    import io
    class Evil:
        def __reduce__(self): return (os.system, ('echo should never run',))
    buf = io.BytesIO(); torch.save({'W_enc': Evil()}, buf)
    good = io.BytesIO(); torch.save({k: v for k, v in small().state_dict().items() if k.startswith(('W_', 'b_'))}, good)
    cases = {
        'evil': (buf.getvalue(), "holds a pickled Python object (posix.system), not only tensors: it was refused unread"),
        'garbage': (b'not a pickle', "could not be read as a torch state dict (UnpicklingError: Unsupported operand 110)"
                                     ": it is damaged. Re-download it."),
        'cut': (good.getvalue()[:300], "could not be read as a torch state dict (RuntimeError: PytorchStreamReader failed "
                                      "reading zip archive: failed finding central directory): it is damaged or not a "
                                      "torch file. Re-download it."),
        'empty': (b'', "is empty: a download or copy was cut short. Re-download it."),
    }
    for name, (raw, says) in cases.items():
        folder = seed_folder(tmp_path / name, raw)
        with pytest.raises(ValueError) as e: CrossCoder.load(folder)
        assert str(e.value).startswith(f"{folder / SEED_WEIGHTS_FILE} {says}"), str(e.value)
        assert '\n' not in str(e.value)
        code, out = run('report', folder)
        assert code == 2 and out.count('\n') == 1 and str(folder / SEED_WEIGHTS_FILE) in out


def test_nonfinite_seed_weights_are_refused_too(tmp_path):
    sd = {k: v for k, v in small().state_dict().items() if k.startswith(('W_', 'b_'))}
    sd['b_enc'] = sd['b_enc'].clone(); sd['b_enc'][0] = math.nan
    folder = tmp_path / 'seed'; folder.mkdir()
    torch.save(sd, folder / SEED_WEIGHTS_FILE)
    (folder / SEED_CONFIG_FILE).write_text(json.dumps({'d_in': 8, 'dict_size': 16}))
    with pytest.raises(NonFiniteWeightsError, match=r'cc_weights\.pt holds non-finite weights \(NaN or Inf in b_enc: 1 '
                                                    r'of 16 values\)'):
        CrossCoder.load(folder)


@pytest.mark.parametrize('kw', [{}, {'dtype': 'bfloat16', 'n_models': 3}, {'n_exclusive': [3, 5]},
                                {'activation': 'batchtopk', 'k': 4, 'n_shared': 8, 'k_shared': 2},
                                {'activation': 'topk', 'k': 4, 'n_exclusive': [3, 5], 'dtype': 'float16'}])
def test_the_memory_estimate_is_what_a_crosscoder_holds(kw):
    cc = small(d_latent=32, **kw)
    held = sum(t.numel() * t.element_size() for t in [*cc.parameters(), *cc.buffers()])
    assert crosscoder_bytes(cc.cfg) == held


def test_loading_a_checkpoint_too_large_for_memory_is_refused_before_reading_it(tmp_path, monkeypatch):
    "Loading holds the state read and the crosscoder at once: twice its size must fit, checked before any tensor is read."
    cc = small(); cc.save(tmp_path / 'a')
    need = crosscoder_bytes(cc.cfg)
    read = []
    real = ckpt.safe_open
    def spy(*a, **kw):   # counts the opens that read tensors (the header read happens first, in _weights_header)
        read.append(a); return real(*a, **kw)
    monkeypatch.setattr(ccmod, 'memory_available', lambda device=None: (2 * need - 1, 8 * need))
    monkeypatch.setattr(ckpt, 'safe_open', spy)
    with pytest.raises(ValueError, match=r'for its parameters and buffers \(2 copies at once\)'): CrossCoder.load(tmp_path / 'a')
    assert len(read) == 1   # the header only
    monkeypatch.setattr(ccmod, 'memory_available', lambda device=None: (2 * need, 8 * need))
    assert same_weights(CrossCoder.load(tmp_path / 'a'), cc)   # exactly enough: loaded
