"""The evals on tiny organisms: known answers (perfect and zero reconstructions), batching invariance, BOS left alone,
general n_models, stable JSON keys, and every bad input refused before a forward pass."""
import json, math, warnings
import pytest
import torch
from einops import rearrange
from transformers import Gemma2Config, Gemma2ForCausalLM
from crosscoder_nb import buffer as B, evals as E
from crosscoder_nb.buffer import estimate_norm_factors
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.data import organisms_mix
from crosscoder_nb.evals import EvalResult, eval_tokens, evaluate, frequency_histogram, is_organism_tokenizer, resolve_norm_factors, sample_positions, splice_hook
from crosscoder_nb.buffer import harvest_rows, model_names
from crosscoder_nb.models import load_model
from crosscoder_nb.organisms import OrganismConfig, build_organisms
from crosscoder_nb.corpus import load_corpus

torch.set_num_threads(1)
from conftest import TINY_ORGANISMS as TINY
HOOK, D = 'blocks.1.hook_resid_pre', 32
KEYS = {'l0', 'explained_variance', 'ce_clean', 'ce_spliced', 'ce_ablated', 'ce_delta', 'ce_recovered', 'dead_fraction',
        'n_seqs', 'seq_len', 'n_tokens', 'n_activations', 'hook_point', 'model_names', 'norm_factors', 'norm_factors_source'}


@pytest.fixture(scope='module')
def models(org): return [org['base'], org['chat']]


@pytest.fixture(scope='module')
def toks(models):
    return eval_tokens(models[0], organisms_mix('heldout', seq_len=32, n_dialogs=300), n_seqs=12)


@pytest.fixture(scope='module')
def factors(models, toks):
    return estimate_norm_factors([harvest_rows(models, toks, HOOK)[:, 1:].flatten(0, 1)]).tolist()


def perfect(n_models=2, d_model=D, **kw):
    "A crosscoder that reconstructs every input exactly: latents +e_i and -e_i."
    cc = CrossCoder(CrossCoderConfig(d_model=d_model, n_models=n_models, d_latent=2 * n_models * d_model, **{'hook_point': HOOK, **kw}))
    eye = torch.eye(n_models * d_model).view(n_models * d_model, n_models, d_model)
    with torch.no_grad():
        cc.W_dec.copy_(torch.cat([eye, -eye]))
        cc.W_enc.copy_(rearrange(cc.W_dec, 'd_latent n_models d_model -> n_models d_model d_latent'))
    return cc


def random_gemma(path, tokenizer, d_model=32, n_layers=2, n_ctx=64):
    cfg = Gemma2Config(vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=d_model // 2, max_position_embeddings=n_ctx,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    Gemma2ForCausalLM(cfg).save_pretrained(path); tokenizer.save_pretrained(path)
    return load_model(path, device='cpu')


@pytest.fixture
def no_forward(monkeypatch, models):
    "Make any forward pass fail loudly: the checks must all run before one."
    def boom(*a, **k): raise AssertionError('a forward pass ran before the checks')
    monkeypatch.setattr(B, 'harvest', boom); monkeypatch.setattr(E, '_eval_batch', boom); monkeypatch.setattr(E, 'eval_tokens', boom)
    for m in models:
        monkeypatch.setattr(m, 'run_with_hooks', boom); monkeypatch.setattr(m, 'forward', boom)


# ---- known answers ------------------------------------------------------------------------------------------------

def test_perfect_reconstruction_recovers_everything(models, toks, factors):
    res = evaluate(perfect(norm_factors=factors), models, toks, progress=False)
    for name in ('base', 'chat'):
        assert abs(res['ce_delta'][name]) < 1e-5
        assert res['ce_recovered'][name] == pytest.approx(1.0, abs=1e-4)
        assert res['explained_variance'][name] == pytest.approx(1.0, abs=1e-6)
        assert res['ce_ablated'][name] > res['ce_clean'][name]
    assert res['norm_factors_source'] == 'checkpoint' and res['norm_factors'] == pytest.approx(factors)


def test_zero_reconstruction_equals_zero_ablation(models, toks, factors):
    cc = perfect(norm_factors=factors)
    with torch.no_grad(): cc.W_dec.zero_()
    res = evaluate(cc, models, toks, progress=False)
    for name in ('base', 'chat'):
        assert res['ce_spliced'][name] == pytest.approx(res['ce_ablated'][name], abs=1e-6)
        assert res['ce_recovered'][name] == pytest.approx(0.0, abs=1e-6)


def test_clean_loss_is_the_models_own(models, toks, factors):
    res = evaluate(perfect(norm_factors=factors), models, toks, progress=False)
    for name, m in zip(('base', 'chat'), models):
        assert res['ce_clean'][name] == pytest.approx(m(toks, return_type='loss').item(), abs=1e-5)


def test_ce_recovered_formula_and_delta(models, toks, factors):
    cc = perfect(norm_factors=factors)
    with torch.no_grad(): cc.W_dec.mul_(0.7)
    res = evaluate(cc, models, toks, progress=False)
    for n in ('base', 'chat'):
        c, s, a = res['ce_clean'][n], res['ce_spliced'][n], res['ce_ablated'][n]
        assert res['ce_delta'][n] == pytest.approx(s - c)
        assert res['ce_recovered'][n] == pytest.approx((a - s) / (a - c))
        assert 0 < res['ce_recovered'][n] < 1


def test_batching_changes_nothing(models, toks, factors):
    cc = CrossCoder(CrossCoderConfig(d_model=D, d_latent=64, hook_point=HOOK, norm_factors=factors, seed=3))
    a = evaluate(cc, models, toks, batch_size=1, n_activations=200, progress=False)
    b = evaluate(cc, models, toks, batch_size=5, n_activations=200, progress=False)
    for k in KEYS:
        if isinstance(a[k], dict): assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
        elif isinstance(a[k], float): assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
        else: assert a[k] == b[k], k
    torch.testing.assert_close(a.frequencies, b.frequencies)


def test_frequencies_and_dead_fraction(models, toks, factors):
    cc = CrossCoder(CrossCoderConfig(d_model=D, d_latent=64, hook_point=HOOK, norm_factors=factors, seed=3))
    with torch.no_grad(): cc.b_enc[:8] = -1e6   # these latents can never fire
    res = evaluate(cc, models, toks, progress=False)
    x = harvest_rows(models, toks, HOOK)[:, 1:].flatten(0, 1) * torch.tensor(factors)[:, None]
    torch.testing.assert_close(res.frequencies, (cc.encode(x) > 0).double().mean(0))
    assert (res.frequencies[:8] == 0).all()
    assert res['dead_fraction'] == pytest.approx((res.frequencies == 0).double().mean().item())
    assert res['dead_fraction'] >= 8 / 64


def test_explained_variance_on_the_sampled_positions(models, toks, factors):
    cc = CrossCoder(CrossCoderConfig(d_model=D, d_latent=64, hook_point=HOOK, norm_factors=factors, seed=3))
    res = evaluate(cc, models, toks, n_activations=100, seed=7, progress=False)
    x = (harvest_rows(models, toks, HOOK)[:, 1:].flatten(0, 1) * torch.tensor(factors)[:, None])[sample_positions(12, 32, 100, 7)]
    out = cc.losses(x)
    assert res['l0'] == pytest.approx(out.l0.item())
    assert list(res['explained_variance'].values()) == pytest.approx(out.explained_variance.tolist(), abs=1e-6)
    assert res['n_activations'] == 100


def test_json_has_stable_keys_and_no_tensors(models, toks, factors):
    res = evaluate(perfect(norm_factors=factors), models, toks, progress=False)
    assert isinstance(res, EvalResult) and set(res) == KEYS
    back = json.loads(json.dumps(res))
    assert back['model_names'] == ['base', 'chat'] and set(back['ce_recovered']) == {'base', 'chat'}
    assert res.frequencies.shape == (4 * D,)


def test_estimated_norm_factors(models, toks, factors):
    res = evaluate(perfect(), models, toks, norm_factors='estimate', progress=False)
    assert res['norm_factors_source'] == 'estimated' and res['norm_factors'] == pytest.approx(factors, rel=1e-5)
    given = evaluate(perfect(), models, toks, norm_factors=[1.0, 2.0], progress=False)
    assert given['norm_factors_source'] == 'given' and given['norm_factors'] == [1.0, 2.0]


def test_three_models_and_names(org, models, toks, tmp_path):
    third = random_gemma(tmp_path / 'third', models[0].tokenizer)
    cc = perfect(3, norm_factors=[1.0, 1.0, 1.0])
    res = evaluate(cc, models + [third], toks[:4], progress=False)
    assert res['model_names'] == ['model_0', 'model_1', 'model_2']
    assert all(v == pytest.approx(1.0, abs=1e-4) for v in res['ce_recovered'].values())
    named = evaluate(perfect(3, norm_factors=[1.0] * 3, model_names=['a', 'b', 'c']), models + [third], toks[:4], progress=False)
    assert list(named['ce_clean']) == ['a', 'b', 'c']
    by_dict = evaluate(perfect(norm_factors=[1.0, 1.0]), {'pre': models[0], 'post': models[1]}, toks[:4], progress=False)
    assert list(by_dict['explained_variance']) == ['pre', 'post']


# ---- eval tokens --------------------------------------------------------------------------------------------------


def test_eval_tokens_bad_counts(models):
    assert not is_organism_tokenizer(models[0].tokenizer)
    for n in (0, -1, 2.5):
        with pytest.raises(ValueError, match='n_seqs'): eval_tokens(models[0], organisms_mix('heldout', seq_len=32), n_seqs=n)


# ---- bad input, refused before any forward pass ------------------------------------------------------------------

def test_no_norm_factors(models, toks, no_forward):
    with pytest.raises(ValueError, match="norm_factors='estimate'"): evaluate(perfect(), models, toks, progress=False)
    with pytest.raises(ValueError, match="norm_factors='estimate'"): evaluate(perfect(), models, progress=False)  # before reading tokens


@pytest.mark.parametrize('bad, msg', [('guess', "use None"), ([1.0], '2 finite numbers'), ([1.0, -1.0], '2 finite numbers'),
                                      ([1.0, float('nan')], '2 finite numbers')])
def test_bad_norm_factors(models, toks, bad, msg):
    with pytest.raises(ValueError, match=msg): evaluate(perfect(), models, toks, norm_factors=bad, progress=False)


def test_wrong_number_of_models(models, toks, no_forward):
    with pytest.raises(ValueError, match='reads 3 models .* but 2 were given'):
        evaluate(perfect(3, norm_factors=[1.0] * 3, model_names=['a', 'b', 'c']), models, toks, progress=False)
    with pytest.raises(ValueError, match='reads 2 models but 1 were given'):
        evaluate(perfect(norm_factors=[1.0, 1.0]), models[:1], toks, progress=False)


def test_mismatched_d_model(models, toks, tmp_path):
    wide = random_gemma(tmp_path / 'wide', models[0].tokenizer, d_model=64)
    cc = perfect(norm_factors=[1.0, 1.0], model_names=['tiny-base', 'tiny-chat'])
    with pytest.raises(ValueError, match=r"Model 1 \(chat\) has d_model 64 but the crosscoder \(trained on \['tiny-base', 'tiny-chat'\]\) reads d_model 32"):
        evaluate(cc, [models[0], wide], toks, progress=False)


def test_missing_hook_point(models, toks, no_forward):
    cc = perfect(norm_factors=[1.0, 1.0], hook_point='blocks.5.hook_resid_pre')
    with pytest.raises(ValueError, match=r"Model 0 \(base\) has no hook point 'blocks.5.hook_resid_pre'.*it has 2 layers"):
        evaluate(cc, models, toks, progress=False)
    cc.cfg.hook_point = None
    with pytest.raises(ValueError, match='pass hook_point='): evaluate(cc, models, toks, progress=False)


def test_hook_point_argument_overrides(models, toks):
    cc = perfect(norm_factors=[1.0, 1.0], hook_point=None)
    assert evaluate(cc, models, toks[:2], hook_point=HOOK, progress=False)['hook_point'] == HOOK


@pytest.mark.parametrize('make, msg', [(lambda t: t[:0], '0 rows'), (lambda t: t[:, 1:], 'start with BOS'),
                                       (lambda t: t[0], r'\[n_seqs, seq\] integer tensor'), (lambda t: t.float(), 'integer tensor'),
                                       (lambda t: t[:, :1], 'at least 2 tokens'),
                                       (lambda t: torch.cat([t, t], 1).repeat(1, 2)[:, :65], "exceed model 0's context"),
                                       (lambda t: torch.where(t == t[0, 1], 10_000, t), 'another tokenizer')])
def test_bad_tokens(models, toks, no_forward, make, msg):
    with pytest.raises(ValueError, match=msg): evaluate(perfect(norm_factors=[1.0, 1.0]), models, make(toks.clone()), progress=False)


def test_bad_batch_size_and_names(models, toks, no_forward):
    with pytest.raises(ValueError, match='batch_size'): evaluate(perfect(norm_factors=[1.0, 1.0]), models, toks, batch_size=0, progress=False)
    with pytest.raises(ValueError, match='one name per model'): evaluate(perfect(norm_factors=[1.0, 1.0]), models, toks, names=['a'], progress=False)
    with pytest.raises(ValueError, match='distinct'): model_names(perfect(), ['a', 'a'])


