"Checkpoint round trips, crash safety, the seed's released format, bad inputs and pluggable parts of `crosscoder_nb.crosscoder` and `crosscoder_nb.checkpoint`."
import json, os, warnings
from pathlib import Path
import pytest, torch, torch.nn as nn
import crosscoder_nb.checkpoint as ckpt, crosscoder_nb.fileio as fileio
from crosscoder_nb.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from crosscoder_nb.crosscoder import (ACTIVATIONS, SPARSITIES, CrossCoder, CrossCoderConfig, dedicated_latents, model_mask,
                                      register_activation, register_sparsity)

torch.set_num_threads(1)


def small(**kw) -> CrossCoder:
    return CrossCoder(CrossCoderConfig(**{'d_model': 8, 'd_latent': 24, **kw}))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- config

def test_config_round_trip_and_json():
    cfg = CrossCoderConfig(d_model=8, n_models=3, d_latent=24, hook_point='blocks.2.hook_resid_pre',
                           model_names=['a', 'b', 'c'], norm_factors=[1.0, 2.0, 3.0], dtype='bfloat16')
    assert CrossCoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---------------------------------------------------------------- model

def test_init_matches_seed_recipe():
    cc = small(dec_init_norm=0.05, n_models=3)
    torch.testing.assert_close(cc.decoder_norms(), torch.full((24, 3), 0.05))
    assert torch.equal(cc.W_enc, cc.W_dec.permute(1, 2, 0))
    assert not cc.b_enc.any() and not cc.b_dec.any()
    with torch.no_grad(): cc.W_dec.zero_()          # encoder and decoder are separate tensors
    assert cc.W_enc.abs().sum() > 0


def test_dtype_bfloat16_runs():
    cc = small(dtype='bfloat16')
    assert cc.W_enc.dtype == torch.bfloat16
    out = cc.losses(torch.randn(4, 2, 8))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_losses_three_models_against_loops():
    cc, x = small(n_models=3), torch.randn(6, 3, 8)
    with torch.no_grad(): cc.b_enc.fill_(0.05); cc.b_dec.normal_()
    out = cc.losses(x, l1_coeff=0.5)
    f = torch.relu(sum(x[:, m] @ cc.W_enc[m] for m in range(3)) + cc.b_enc)
    x_hat = torch.stack([f @ cc.W_dec[:, m] + cc.b_dec[m] for m in range(3)], 1)
    l2 = ((x - x_hat) ** 2).sum((1, 2)).mean()
    l1 = (f * cc.W_dec.norm(dim=-1).sum(-1)).sum(-1).mean()
    ev = 1 - ((x - x_hat) ** 2).sum(-1) / ((x - x.mean(0)) ** 2).sum(-1)
    torch.testing.assert_close(out.l2, l2); torch.testing.assert_close(out.l1, l1)
    torch.testing.assert_close(out.loss, l2 + 0.5 * l1)
    torch.testing.assert_close(out.explained_variance, ev.mean(0))
    assert out.l0.item() == pytest.approx((f > 0).sum().item() / 6)
    d = out.to_dict()
    assert isinstance(d['loss'], float) and len(d['explained_variance']) == 3


def test_normalize():
    cc = small(norm_factors=[2.0, 4.0])
    x = torch.randn(3, 5, 2, 8)
    torch.testing.assert_close(cc.normalize(x)[..., 1, :], 4 * x[..., 1, :])
    torch.testing.assert_close(cc.denormalize(cc.normalize(x)), x)
    with pytest.raises(ValueError, match='norm_factors'): small().normalize(x)


# ---------------------------------------------------------------- checkpoints

def test_save_load_round_trip(tmp_path):
    cc = small(n_models=3, hook_point='blocks.1.hook_resid_pre', model_names=['a', 'b', 'c'], norm_factors=[1.5, 2.5, 3.5])
    with torch.no_grad(): cc.b_dec.normal_()
    cc.save(tmp_path / 'ck', train_config={'lr': 1e-3}, extra={'step': 3})
    meta = json.loads((tmp_path / 'ck' / CONFIG_FILE).read_text())
    assert meta['format_version'] == ckpt.CHECKPOINT_FORMAT and meta['train_config'] == {'lr': 1e-3}
    cc2 = CrossCoder.load(tmp_path / 'ck')
    assert same_weights(cc, cc2) and cc2.cfg == cc.cfg and cc2.extra == {'step': 3}
    x = torch.randn(4, 3, 8)
    assert torch.equal(cc(x), cc2(x))
    assert sorted(os.listdir(tmp_path / 'ck')) == [CONFIG_FILE, WEIGHTS_FILE]   # no temporary files left


def test_crash_during_weights_write_keeps_old_checkpoint(tmp_path, monkeypatch):
    old = small(seed=1)
    old.save(tmp_path, extra={'step': 1})

    def crashing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b'half a file')
        raise KeyboardInterrupt('killed mid-save')
    monkeypatch.setattr(ckpt, 'save_file', crashing_save_file)
    with pytest.raises(KeyboardInterrupt): small(seed=2).save(tmp_path, extra={'step': 2})
    monkeypatch.undo()
    loaded = CrossCoder.load(tmp_path)
    assert same_weights(loaded, old) and loaded.extra == {'step': 1}
    assert sorted(os.listdir(tmp_path)) == [CONFIG_FILE, WEIGHTS_FILE]


def test_crash_between_weights_and_config_uses_inner_config(tmp_path, monkeypatch):
    small(seed=1, norm_factors=[1.0, 1.0]).save(tmp_path, extra={'step': 1})
    new = small(seed=2, norm_factors=[3.0, 4.0])
    real_replace = os.replace
    def replace(src, dst):
        if str(dst).endswith(CONFIG_FILE): raise KeyboardInterrupt('killed between the two renames')
        return real_replace(src, dst)
    monkeypatch.setattr(fileio.os, 'replace', replace)
    with pytest.raises(KeyboardInterrupt): new.save(tmp_path, extra={'step': 2})
    monkeypatch.undo()
    with pytest.warns(UserWarning, match='different saves'): loaded = CrossCoder.load(tmp_path)
    assert same_weights(loaded, new) and loaded.cfg.norm_factors == [3.0, 4.0] and loaded.extra == {'step': 2}


def test_save_rejects_non_json_metadata_before_writing(tmp_path):
    small().save(tmp_path, extra={'step': 1})
    before = (tmp_path / WEIGHTS_FILE).read_bytes()
    with pytest.raises(TypeError): small(seed=5).save(tmp_path, extra={'bad': object()})
    assert (tmp_path / WEIGHTS_FILE).read_bytes() == before


def test_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'): CrossCoder.load(tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='holds no crosscoder'): CrossCoder.load(tmp_path / 'empty')

    small().save(tmp_path / 'a')
    (tmp_path / 'a' / CONFIG_FILE).unlink()
    with pytest.warns(UserWarning, match=r'config\.json is missing'): CrossCoder.load(tmp_path / 'a')   # the copy in the weights

    small().save(tmp_path / 'b')
    (tmp_path / 'b' / CONFIG_FILE).write_text('{"crosscoder": ')
    with pytest.raises(ValueError, match=r'config\.json is not valid JSON'): CrossCoder.load(tmp_path / 'b')

    small().save(tmp_path / 'c')
    (tmp_path / 'c' / WEIGHTS_FILE).write_bytes(b'garbage')
    with pytest.raises(ValueError, match=r'crosscoder\.safetensors is not a readable safetensors file'): CrossCoder.load(tmp_path / 'c')

    # weights of another shape beside a config (both files from different, complete saves)
    small(d_latent=24).save(tmp_path / 'd'); small(d_latent=16).save(tmp_path / 'e')
    (tmp_path / 'd' / WEIGHTS_FILE).write_bytes((tmp_path / 'e' / WEIGHTS_FILE).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        cc = CrossCoder.load(tmp_path / 'd')    # the weights carry their own config, which wins
    assert cc.cfg.d_latent == 16


def test_shape_mismatch_without_inner_config(tmp_path):
    from safetensors.torch import save_file
    small(d_latent=24).save(tmp_path)
    sd = {k: v.contiguous() for k, v in small(d_latent=16).state_dict().items()}
    save_file(sd, str(tmp_path / WEIGHTS_FILE))    # weights written by another tool: no embedded config
    with pytest.raises(ValueError, match=r'W_dec: \(16, 2, 8\) in the weights, \(24, 2, 8\) from the config'): CrossCoder.load(tmp_path)


def test_newer_format_refused(tmp_path):
    small().save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text()); meta['format_version'] = 99; meta['save_id'] = 'x'
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in small().state_dict().items()}, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match='upgrade crosscoder_nb'): CrossCoder.load(tmp_path)


# ---------------------------------------------------------------- the seed's released format

def seed_reference_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    "The seed's forward pass, written out independently: ReLU(sum_m x_m W_enc[m] + b_enc), then per-model decoders."
    acts = torch.relu(torch.einsum('bnd,ndh->bh', x, sd['W_enc']) + sd['b_enc'])
    return torch.einsum('bh,hnd->bnd', acts, sd['W_dec']) + sd['b_dec']


def write_seed_folder(path: Path, d_in=6, dict_size=20, gen_seed=0, **cfg_extra) -> dict:
    g = torch.Generator().manual_seed(gen_seed)
    sd = {'W_enc': torch.randn(2, d_in, dict_size, generator=g), 'W_dec': torch.randn(dict_size, 2, d_in, generator=g) * 0.1,
          'b_enc': torch.randn(dict_size, generator=g) * 0.1, 'b_dec': torch.randn(2, d_in, generator=g)}
    path.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path / 'cc_weights.pt')
    cfg = {'seed': 49, 'batch_size': 4096, 'buffer_mult': 128, 'lr': 5e-05, 'num_tokens': 400000000, 'l1_coeff': 2,
           'beta1': 0.9, 'beta2': 0.999, 'd_in': d_in, 'dict_size': dict_size, 'seq_len': 1024, 'enc_dtype': 'fp32',
           'model_name': 'gemma-2-2b', 'site': 'resid_pre', 'device': 'cuda:0', 'model_batch_size': 4, 'log_every': 100,
           'save_every': 30000, 'dec_init_norm': 0.08, 'hook_point': 'blocks.14.hook_resid_pre', 'wandb_project': 'x', **cfg_extra}
    (path / 'cfg.json').write_text(json.dumps(cfg))
    return sd


def test_seed_format_matches_reference(tmp_path):
    sd = write_seed_folder(tmp_path / 'seed')
    with pytest.warns(UserWarning, match='without normalisation factors'): cc = CrossCoder.load(tmp_path / 'seed')
    assert cc.cfg.norm_factors is None and cc.cfg.hook_point == 'blocks.14.hook_resid_pre'
    assert (cc.cfg.d_model, cc.cfg.d_latent, cc.cfg.n_models) == (6, 20, 2)
    assert cc.train_config['lr'] == 5e-05 and cc.extra['source_format'] == 'seed'
    x = torch.randn(7, 2, 6)
    torch.testing.assert_close(cc(x), seed_reference_forward(sd, x))
    with pytest.raises(ValueError, match='norm_factors'): cc.normalize(x)
    # once converted, it round-trips through the package's own format
    cc.cfg.norm_factors = [1.0, 2.0]
    cc.save(tmp_path / 'native')
    torch.testing.assert_close(CrossCoder.load(tmp_path / 'native')(x), seed_reference_forward(sd, x))


def test_seed_format_errors(tmp_path):
    write_seed_folder(tmp_path / 'a')
    (tmp_path / 'a' / 'cfg.json').unlink()
    with pytest.raises(FileNotFoundError, match=r'cfg\.json is missing'): CrossCoder.load(tmp_path / 'a')

    write_seed_folder(tmp_path / 'b', dict_size=30)
    cfg = json.loads((tmp_path / 'b' / 'cfg.json').read_text()); cfg['dict_size'] = 20
    (tmp_path / 'b' / 'cfg.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r'cc_weights\.pt does not match .*cfg\.json'): CrossCoder.load(tmp_path / 'b')

    write_seed_folder(tmp_path / 'c')
    (tmp_path / 'c' / 'cc_weights.pt').write_bytes(b'not a pickle')
    with pytest.raises(ValueError, match=r'cc_weights\.pt could not be read'): CrossCoder.load(tmp_path / 'c')


def test_seed_format_refuses_pickled_code(tmp_path):
    write_seed_folder(tmp_path)
    class Evil:
        def __reduce__(self): return (os.system, ('echo pwned',))
    torch.save({'W_enc': Evil()}, tmp_path / 'cc_weights.pt')
    with pytest.raises(ValueError, match=r'holds a pickled Python object \((posix|nt)\.system\), not only tensors: it was refused unread'):
        CrossCoder.load(tmp_path)
    torch.save({'W_enc': warnings.WarningMessage}, tmp_path / 'cc_weights.pt')   # a pickled class, not a tensor
    with pytest.raises(ValueError, match=r'holds a pickled Python object \(warnings\.WarningMessage\)'):
        CrossCoder.load(tmp_path)


# ---------------------------------------------------------------- sparse crosscoders (BatchTopK, TopK, AuxK, designated shared)

def btk(**kw) -> CrossCoder:
    return small(**{'activation': 'batchtopk', 'k': 3, 'threshold_start': 0, **kw})


def test_topk_keeps_exactly_k_per_example_and_batchtopk_k_per_batch():
    x = torch.randn(50, 2, 8)
    f = small(activation='topk', k=3).encode(x)
    assert ((f > 0).sum(1) <= 3).all() and (f > 0).sum().item() >= 140   # at most k (a kept score can be 0)
    cc = btk(); cc.train()
    assert (cc.encode(x) > 0).sum().item() == 3 * 50


def test_sparse_decode_equals_dense_with_gradients():
    torch.manual_seed(0)
    cc_s, cc_d = btk(k=2, sparse_decode=True), btk(k=2, sparse_decode=False)
    assert cc_s.use_sparse_decode and not cc_d.use_sparse_decode
    f = torch.relu(torch.randn(30, 24)) * (torch.rand(30, 24) < 0.1)
    fs, fd = f.clone().requires_grad_(), f.clone().requires_grad_()
    ys, yd = cc_s.decode(fs), cc_d.decode(fd)
    torch.testing.assert_close(ys, yd)
    g = torch.randn_like(ys); (ys * g).sum().backward(); (yd * g).sum().backward()
    torch.testing.assert_close(cc_s.W_dec.grad, cc_d.W_dec.grad)
    torch.testing.assert_close(fs.grad * (f > 0), fd.grad * (f > 0))
    assert CrossCoderConfig(d_model=8, d_latent=2048, activation='batchtopk', k=32).sparse_decode is None
    assert CrossCoder(CrossCoderConfig(d_model=8, d_latent=2048, activation='batchtopk', k=32)).use_sparse_decode
    assert not CrossCoder(CrossCoderConfig(d_model=8, d_latent=64, activation='batchtopk', k=32)).use_sparse_decode


def test_threshold_is_a_statistic_not_part_of_the_graph():
    cc = btk(); cc.train()
    opt = torch.optim.Adam(cc.parameters())
    for _ in range(3):
        out = cc.losses(torch.randn(16, 2, 8)); out.loss.backward(); opt.step(); opt.zero_grad()
    assert not cc.activation.threshold.requires_grad and cc.activation.threshold.grad_fn is None
    assert torch.isfinite(cc.activation.threshold).all() and cc.activation.steps.item() == 3


def test_auxk_gradient_reaches_only_through_auxk():
    def grads(aux):
        torch.manual_seed(0)
        c = btk(k=2, aux_coeff=aux, dead_tokens=10, k_aux=4)
        with torch.no_grad(): c.W_dec[:6] *= 1e-3          # never win a slot in the batch
        c.tokens_since_fired[:6] = 100                       # silent long enough: dead
        c.train(); out = c.losses(torch.randn(32, 2, 8)); out.loss.backward()
        return out, c.W_dec.grad[:6].abs().sum((1, 2)), c.W_enc.grad[:, :, :6].abs().sum((0, 1)), c.b_enc.grad[:6].abs()
    out, gd, ge, gb = grads(1.0)
    assert out.aux.item() > 0 and (gd > 0).all() and (ge > 0).all()
    out0, gd0, ge0, gb0 = grads(0.0)
    assert out0.aux.item() == 0 and gd0.sum() == 0 and ge0.sum() == 0 and gb0.sum() == 0


def test_batchtopk_checkpoint_round_trip_keeps_threshold_and_counters(tmp_path):
    cc = btk(n_shared=4, k_shared=1); cc.train()
    for _ in range(3): cc.losses(torch.randn(16, 2, 8))
    cc.eval(); cc.save(tmp_path)
    back = CrossCoder.load(tmp_path)
    assert same_weights(back, cc) and not back.training
    assert torch.equal(back.activation.threshold, cc.activation.threshold) and back.activation.steps.item() == 3
    x = torch.randn(9, 2, 8)
    torch.testing.assert_close(back.encode(x), cc.encode(x))
    assert json.loads((tmp_path / CONFIG_FILE).read_text())['format_version'] == 2


def test_batchtopk_checkpoint_without_threshold_is_refused(tmp_path):
    from safetensors.torch import save_file
    btk().save(tmp_path)
    sd = {k: v.contiguous() for k, v in btk().state_dict().items() if not k.startswith('activation.')}
    save_file(sd, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"lacks \['activation.n_avg', 'activation.steps', 'activation.threshold'\].*fit_threshold"):
        CrossCoder.load(tmp_path)


def test_unknown_activation_in_a_checkpoint_is_named(tmp_path):
    small().save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text()); meta['crosscoder']['activation'] = 'jumprelu'
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    from safetensors import safe_open
    with pytest.raises(ValueError, match=r"config.json: CrossCoderConfig.activation: unknown activation 'jumprelu'.*register_activation"):
        with warnings.catch_warnings(): warnings.simplefilter('ignore'); CrossCoder.load(tmp_path)


def test_format_1_l1_checkpoint_loads_unchanged(tmp_path):
    "A checkpoint written before the sparse crosscoders (format 1: no dead-latent counters, no new config fields) still loads."
    from safetensors.torch import save_file
    cc = small(norm_factors=[1.0, 2.0])
    with torch.no_grad(): cc.b_dec.normal_()
    cfg = {k: v for k, v in cc.cfg.to_dict().items() if k in ('d_model', 'n_models', 'd_latent', 'activation', 'sparsity', 'l1_coeff',
                                                              'dec_init_norm', 'seed', 'dtype', 'hook_point', 'model_names', 'norm_factors')}
    cfg['l1_coeff'] = 2.0
    meta = {'format_version': 1, 'save_id': 'abc', 'crosscoder': cfg, 'train_config': None, 'extra': None}
    sd = {k: v.contiguous() for k, v in cc.state_dict().items() if k != 'tokens_since_fired'}
    save_file(sd, str(tmp_path / WEIGHTS_FILE), metadata={'checkpoint': json.dumps(meta)})
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    back = CrossCoder.load(tmp_path)
    assert same_weights(back, cc) and back.cfg.l1_default == 2.0 and not back.tokens_since_fired.any()
    x = torch.randn(5, 2, 8)
    torch.testing.assert_close(back(x), cc(x))


def test_designated_shared_latents_stay_tied_and_are_reported_shared():
    from crosscoder_nb.diffing import cluster_counts, relative_norms
    cc = btk(n_shared=6, k_shared=1, k=2); cc.train()
    opt = torch.optim.Adam(cc.parameters(), lr=0.05)
    for _ in range(20):
        out = cc.losses(torch.randn(32, 2, 8)); out.loss.backward(); opt.step(); opt.zero_grad()
    assert torch.equal(cc.W_dec[:6, 0], cc.W_dec[:6, 1])
    r = relative_norms(cc)
    torch.testing.assert_close(r[:6], torch.full((6,), 0.5))
    with torch.no_grad(): cc.W_dec[:6, 1] *= 0.01    # even a corrupted copy cannot make them model-specific:
    assert torch.equal(cc.decoder_weights()[:6, 0], cc.decoder_weights()[:6, 1])   # the computation uses them tied
    c = cluster_counts(torch.tensor([0.0] * 6 + [0.5] * 18), designated=6)
    assert (c['base_specific'], c['shared'], c['designated_shared']) == (0, 24, 6)


# ---------------------------------------------------------------- dedicated latents (DFC)

def masked_are_zero(cc: CrossCoder) -> bool:
    "Whether every entry a dedicated latent must not have (other models' encoder columns and decoder rows) is exactly 0."
    off = ~model_mask(cc.cfg)
    return bool((cc.W_dec.detach()[off] == 0).all() and (cc.W_enc.detach().permute(2, 0, 1)[off] == 0).all())


@pytest.mark.parametrize('kw, msg', [
    ({'n_exclusive': [4]}, r'n_exclusive must be a list of 2 counts, one per model \(e.g. \[32, 32\]\)'),
    ({'n_exclusive': 4}, 'n_exclusive must be a list of 2 counts'),
    ({'n_exclusive': [4, -1]}, 'n_exclusive must hold ints >= 0'),
    ({'n_exclusive': [4, 1.5]}, 'n_exclusive must hold ints >= 0'),
    ({'n_exclusive': [4, True]}, 'n_exclusive must hold ints >= 0'),
    ({'n_exclusive': [10, 10], 'n_shared': 4}, r'n_shared \(4\) \+ sum\(n_exclusive\) \(20\) must be < d_latent \(24\)'),
    ({'n_exclusive': [12, 12]}, 'lower n_exclusive or n_shared, or raise d_latent'),
    ({'n_exclusive': [4, 4], 'activation': 'batchtopk', 'k': 25}, r'k must be an int in \[1, 24\]'),
])
def test_dedicated_config_errors_name_the_field(kw, msg):
    with pytest.raises(ValueError, match=msg): small(**kw)


# the paths a training step can take: autograd L1, the fused L1 node (float32 and bf16 autocast), TopK, BatchTopK with AuxK
DFC_PATHS = {
    'l1': ({}, False, None), 'l1-fused': ({}, True, None), 'l1-fused-bf16': ({}, True, torch.bfloat16),
    'topk': ({'activation': 'topk', 'k': 3}, False, None),
    'batchtopk-auxk': ({'activation': 'batchtopk', 'k': 3, 'threshold_start': 0, 'dead_tokens': 64, 'aux_coeff': 1.0}, False, None),
    'batchtopk-bf16': ({'activation': 'batchtopk', 'k': 3, 'threshold_start': 0}, False, torch.bfloat16),
}


@pytest.mark.parametrize('path', list(DFC_PATHS))
def test_dedicated_latents_stay_zero_on_every_training_path(path):
    kw, fused, amp = DFC_PATHS[path]
    shared = {'n_shared': 4, 'k_shared': 1} if 'k' in kw else {'n_shared': 4}
    cc = small(n_exclusive=[3, 2], **shared, **kw); cc.train()
    assert masked_are_zero(cc) and (cc.can_fuse or not fused)
    x = torch.randn(128, 2, 8); x[:, 1] += x[:, 0]   # the second model = the first + more
    opt = torch.optim.Adam(cc.parameters(), lr=1e-2)

    def step():
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp is not None):
            out = cc.losses(x, l1_coeff=0.5, fused=fused)
        opt.zero_grad(); out.loss.backward(); opt.step()
        return out
    outs = [step() for _ in range(31)]
    first, last = outs[0].l2.item(), outs[-1].l2.item()
    assert last < 0.8 * first, (first, last)   # it trained
    if 'auxk' in path: assert max(o.aux.item() for o in outs) > 0   # latents died and AuxK trained them
    assert masked_are_zero(cc), path
    assert (cc.W_dec.detach()[19:22, 0] != 0).all() and (cc.W_dec.detach()[22:, 1] != 0).all()   # own models: trained
    assert torch.equal(cc.decoder_weights()[:4, 0], cc.decoder_weights()[:4, 1])   # designated shared: still tied


def test_dedicated_latents_read_and_write_only_their_model():
    cc = small(n_exclusive=[3, 2])   # model 0: latents 19-21, model 1: 22-23
    assert {m: list(r) for m, r in dedicated_latents(cc.cfg).items()} == {0: [19, 20, 21], 1: [22, 23]}
    x = torch.randn(16, 2, 8)
    y = x.clone(); y[:, 1] = torch.randn(16, 8)   # change model 1 only
    assert torch.equal(cc.pre_acts(x)[:, 19:22], cc.pre_acts(y)[:, 19:22])   # model 0's latents do not read model 1
    f = torch.zeros(1, 24); f[0, 20] = 1.0
    out = cc.decode(f) - cc.b_dec
    assert out[0, 0].norm() > 0 and torch.equal(out[0, 1], torch.zeros(8))   # ... nor write there
    assert torch.equal(cc.decoder_norms()[22:, 0], torch.zeros(2))


def test_dedicated_checkpoint_round_trip(tmp_path):
    cc = small(n_exclusive=[3, 2], activation='batchtopk', k=3, threshold_start=0); cc.train()
    opt = torch.optim.Adam(cc.parameters(), lr=1e-2)
    for _ in range(3): opt.zero_grad(); cc.losses(torch.randn(32, 2, 8)).loss.backward(); opt.step()
    cc.eval(); cc.save(tmp_path)
    assert 'enc_mask' not in json.loads((tmp_path / CONFIG_FILE).read_text()) and 'enc_mask' not in cc.state_dict()
    back = CrossCoder.load(tmp_path)
    assert back.cfg.n_exclusive == [3, 2] and same_weights(back, cc) and masked_are_zero(back)
    x = torch.randn(8, 2, 8)
    torch.testing.assert_close(back(x), cc(x))
