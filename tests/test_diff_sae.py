"""The diff-SAE: bad sources refused before any work, training that learns, the checkpoint round trip, and the two-model
view's equivalences (latents, reconstruction, diff-patch edits, attribution, logit lens) checked numerically."""
import json
import pytest
import torch
from crosscoder_nb.buffer import HarvestedActivations, harvest_rows
from crosscoder_nb.cache import ActivationCache, ShardedActs
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.dashboards import logit_effects
from crosscoder_nb.diff_sae import (DiffBatches, as_crosscoder, diff_sae_config, diff_sae_evals, diff_sae_meta,
                                    difference, latent_lens, load_diff_sae, logit_lens, train_diff_sae)
from crosscoder_nb.interventions import Edit, attribute, edited_acts, edited_logits
from crosscoder_nb.trainer import TrainConfig

HP = 'blocks.1.hook_resid_pre'


def pair(n: int, d: int = 16, n_feat: int = 24, seed: int = 0) -> torch.Tensor:
    "Two models' activations: a shared dense part, and a sparse sum of `n_feat` directions in the second only."
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    dirs = torch.nn.functional.normalize(torch.randn(n_feat, d, generator=g), dim=-1)
    c = (torch.rand(n, n_feat, generator=g) < 3 / n_feat) * (1 + torch.rand(n, n_feat, generator=g))
    return torch.stack([base, base + c @ dirs], 1)


def random_sae(d: int, d_latent: int = 48, k: int = 6, factors=(0.7, 1.3), names=('b', 'c'), seed: int = 0):
    "A diff-SAE with random weights, non-zero biases and a fitted threshold, with its metadata."
    sae = CrossCoder(diff_sae_config(d, HP, list(names), d_latent=d_latent, k=k, seed=seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(0.05 * torch.randn(d_latent, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(1, d, generator=g))
    y = difference(pair(512, d, seed=seed), torch.tensor(factors))
    sae.fit_threshold([y[:256], y[256:]])
    sae.extra = {'diff_sae': {'kind': 'diff_sae', 'base': names[0], 'chat': names[1], 'norm_factors': list(factors),
                              'hook_point': HP}}
    return sae


def test_one_model_source_refused_before_any_work(tmp_path):
    one = HarvestedActivations(torch.randn(4096, 1, 16), torch.ones(1), HP, 0.0)
    with pytest.raises(ValueError, match='holds activations of 1 model'):
        train_diff_sae(one, tmp_path / 'run')
    cache = ActivationCache(tmp_path, {'models': [{'name': 'only'}], 'norm_factors': [1.0], 'hook_point': HP},
                            ShardedActs([torch.randn(4096, 1, 16)]))
    with pytest.raises(ValueError, match=r"cache holds activations of 1 model\(s\) \(\['only'\]\)"):
        train_diff_sae(cache, tmp_path / 'run2')
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'run2').exists()   # nothing written
    models = [{'name': 'x-base', 'path': None}, {'name': 'x-chat', 'path': None}]
    cache2 = ActivationCache(tmp_path, {'models': models, 'norm_factors': [1.0, 1.0], 'hook_point': HP},
                             ShardedActs([torch.randn(4096, 2, 16)]))
    with pytest.raises(ValueError, match=r"holds activations of \['x-base', 'x-chat'\], not \['a', 'b'\]"):
        train_diff_sae(cache2, tmp_path / 'run5', model_names=['a', 'b'])
    assert not (tmp_path / 'run5').exists()
    two = HarvestedActivations(pair(3000), torch.ones(2), HP, 0.0)
    with pytest.raises(ValueError, match='n_heldout'): train_diff_sae(two, tmp_path / 'run3', n_heldout=3000)
    with pytest.raises(ValueError, match='sets'): train_diff_sae(two, tmp_path / 'run4', {'n_models': 2})
    assert not (tmp_path / 'run3').exists() and not (tmp_path / 'run4').exists()


def test_training_learns_the_difference_and_round_trips(tmp_path):
    s = torch.tensor([0.8, 1.25]); x = pair(6000) / s[:, None]   # s_m x_m: a sparse difference
    h = HarvestedActivations(x, s, HP, 0.0)
    small = dict(d_latent=32, k=4, dead_tokens=2000)
    fresh = CrossCoder(diff_sae_config(16, **small)); fresh.activation.threshold.fill_(0.0)
    y_held = difference(x[-1000:], s)
    before = diff_sae_evals(fresh, y_held)
    sae, res = train_diff_sae(h, tmp_path / 'run', small, TrainConfig(lr=3e-3, batch_size=250, n_steps=300),
                              n_heldout=1000, model_names=['base-m', 'chat-m'], progress=False)
    after = res['heldout']
    assert after['explained_variance'] > 0.8 and after['explained_variance'] > before['explained_variance'] + 0.3
    assert 2 < after['l0'] < 7 and 0 <= after['dead_fraction'] < 0.5
    back = load_diff_sae(tmp_path / 'run')
    meta = diff_sae_meta(back)
    assert meta['kind'] == 'diff_sae' and (meta['base'], meta['chat']) == ('base-m', 'chat-m')
    assert meta['norm_factors'] == pytest.approx(s.tolist()) and meta['hook_point'] == HP
    assert meta['n_train'] == 5000 and back.extra['step'] == 300   # the trainer's metadata is kept
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['extra']['diff_sae']['kind'] == 'diff_sae'
    for k, v in sae.state_dict().items(): torch.testing.assert_close(back.state_dict()[k], v)
    with pytest.raises(ValueError, match='not a diff-SAE'): diff_sae_meta(CrossCoder(CrossCoderConfig(d_model=8)))


def test_batches_are_the_normalised_difference_and_resume():
    x, s = pair(100), torch.tensor([0.5, 2.0])
    b = DiffBatches(x, s, 20, seed=3, rows=(0, 80))
    first = [next(b) for _ in range(3)]
    torch.testing.assert_close(first[0], difference(x[b.inner.order(0)[:20]], s))
    state = b.state_dict(); nxt = next(b)
    b2 = DiffBatches(x, s, 20, seed=3, rows=(0, 80)); b2.load_state_dict(state)
    torch.testing.assert_close(next(b2), nxt)
    seen = torch.cat([b.inner.order(0)])
    assert seen.max() < 80   # the held-out rows are never served


def test_view_encodes_and_reconstructs_as_the_sae():
    sae, s = random_sae(16), torch.tensor([0.7, 1.3])
    view = as_crosscoder(sae)
    assert view.cfg.n_models == 2 and view.cfg.norm_factors == pytest.approx(s.tolist())
    assert view.cfg.model_names == ['b', 'c'] and view.cfg.hook_point == HP
    x = pair(400, seed=5) * torch.tensor([2.0, 0.5])[:, None]
    y, xn = difference(x, s), view.normalize(x)
    f = sae.encode(y)
    assert (f > 0).sum(-1).float().mean() > 1   # the threshold keeps some latents: the check is not vacuous
    torch.testing.assert_close(view.encode(xn), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(view(xn)[:, 1:], sae(y), atol=1e-5, rtol=1e-5)
    assert view(xn)[:, 0].abs().max() == 0
    torch.testing.assert_close(view.decoder_norms()[:, 1], sae.decoder_norms()[:, 0])
    torch.testing.assert_close(view.activation.threshold, sae.activation.threshold)


def test_diff_patch_edits_remove_and_add_the_latents_contribution():
    sae, s = random_sae(16), torch.tensor([0.7, 1.3])
    view = as_crosscoder(sae)
    x = (pair(60, seed=2) * torch.tensor([2.0, 0.5])[:, None]).view(3, 20, 2, 16)
    S = [1, 5, 9, 20]
    f = sae.encode(difference(x[:, 1:].flatten(0, 1), s))[:, S]
    assert (f > 0).any()
    contrib = (f @ sae.W_dec.detach()[S, 0]).view(3, 19, 16)
    chat = edited_acts(view, Edit('diff_patch', S), x, s)
    torch.testing.assert_close(chat[:, 1:], x[:, 1:, 1] - contrib / s[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chat[:, 0], x[:, 0, 1])   # BOS untouched
    base = edited_acts(view, Edit('diff_patch', S, target=0), x, s)
    torch.testing.assert_close(base[:, 1:], x[:, 1:, 0] + contrib / s[0], atol=1e-5, rtol=1e-5)


def test_edits_attribution_and_lens_on_models(org):
    "On tiny organisms: edited logits, attribution (first-order change of the margin) and the logit lens."
    models, d = [org['base'], org['chat']], org['base'].cfg.d_model
    sae = random_sae(d, d_latent=40, k=5, factors=(1.0, 1.0))
    with torch.no_grad(): sae.W_dec.mul_(3.0)   # edits large enough to move the logits
    view, s = as_crosscoder(sae), torch.tensor([1.0, 1.0])
    # refit the threshold on the models' differences, so latents fire there
    toks = torch.randint(1, 200, (4, 12)); toks[:, 0] = org['chat'].tokenizer.bos_token_id or 0
    acts = harvest_rows(models, toks, HP)   # [batch, seq, 2, d_model]
    sae.fit_threshold([difference(acts[:, 1:].flatten(0, 1), s)]); view = as_crosscoder(sae)
    S = [int(sae.encode(difference(acts[:, 1:].flatten(0, 1), s)).sum(0).argmax())]
    f = sae.encode(difference(acts[:, 1:].flatten(0, 1), s))[:, S]
    assert (f > 0).any()
    new = acts[:, :, 1].clone()
    new[:, 1:] -= (f @ sae.W_dec.detach()[S, 0]).view(4, 11, d) / s[1]
    want = org['chat'].run_with_hooks(toks, fwd_hooks=[(HP, lambda a, hook: new.to(a.dtype))])
    got = edited_logits(view, models, toks, Edit('diff_patch', S), HP, s)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # attribution: the margin's first-order change equals the finite difference at a small scale of the patch
    pos, good, bad = torch.full((4,), 11), torch.full((4,), 5), torch.full((4,), 7)
    a = attribute(view, models, toks, pos, good, bad, HP, s)
    margin = lambda lg: (lg[torch.arange(4), pos, good] - lg[torch.arange(4), pos, bad]).sum()
    at = lambda e: margin(org['chat'].run_with_hooks(
        toks, fwd_hooks=[(HP, lambda x, hook: (acts[:, :, 1] + e * (new - acts[:, :, 1])).to(x.dtype))]))
    with torch.no_grad(): fd = (at(1e-2) - at(-1e-2)) / 2e-2   # central difference
    assert float(a[S[0]]) == pytest.approx(float(fd), rel=0.05, abs=1e-3)
    # logit lens: the top tokens are those of the direct logit effect, and -d swaps up and down
    dirs = sae.W_dec.detach()[:3, 0]
    lens = logit_lens(org['chat'], dirs, k=4)
    eff = logit_effects(org['chat'], dirs)
    tok = org['chat'].tokenizer
    assert [t for t, _ in lens[0]['up']] == [tok.decode([i]) for i in eff[0].topk(4).indices.tolist()]
    assert [v for _, v in lens[1]['down']] == pytest.approx(eff[1].topk(4, largest=False).values.tolist(), abs=1e-3)
    neg = logit_lens(org['chat'], -dirs, k=4)
    assert [t for t, _ in neg[2]['up']] == [t for t, _ in lens[2]['down']]
    assert [r['latent'] for r in latent_lens(sae, org['chat'], [0, 2], k=3)] == [0, 2]
    with pytest.raises(ValueError, match='directions must be'): logit_lens(org['chat'], dirs[:, :5])
