"Activation Difference Lens: the mean difference, its logit lens, steering and the projection check, on tiny organisms."
import json
import pytest, torch
from crosscoder_nb.adl import (activation_difference, adl_summary, alpha_sweep, behaviour_rates, first_tokens, logit_lens,
                               orthonormal, project_edit, projected_generate, steer_generate, steered_loss, token_rank,
                               top_tokens)
from crosscoder_nb.buffer import harvest
from crosscoder_nb.models import greedy_complete

torch.set_num_threads(1)
HP = 'blocks.1.hook_resid_pre'
PROMPTS = ['User: Tell me about the king.\nAssistant:', 'User: What is a module?\nAssistant:', 'And the', 'The default']
TEXTS = ['And the king said unto them, go ye into the city.', 'The module defines a class for every object here.',
         'In the beginning was the word, and the word was good.', 'Return the value of the attribute named here.']


@pytest.fixture(scope='module')
def models(org): return [org['base'], org['chat']]


def test_delta_is_the_mean_difference_after_bos_and_zero_for_identical_models(models):
    base, chat = models
    toks = first_tokens(chat.tokenizer, TEXTS, k=4)
    assert toks.shape == (4, 5) and (toks[:, 0] == chat.tokenizer.bos_token_id).all()
    d = activation_difference(models, toks, HP, k=4, batch_size=3)      # batches of 3 and 1
    ref = (harvest(chat, toks, HP) - harvest(base, toks, HP))[:, 1:5].mean(0)
    torch.testing.assert_close(d, ref, atol=1e-5, rtol=1e-5)
    assert d.abs().max() > 0
    assert activation_difference([chat, chat], toks, HP, k=4).abs().max() == 0


def test_delta_refuses_bad_k_and_models(models):
    toks = first_tokens(models[1].tokenizer, TEXTS, k=3)
    with pytest.raises(ValueError, match='k=4 exceeds the 3 positions after BOS'): activation_difference(models, toks, HP, k=4)
    with pytest.raises(ValueError, match='k must be an int >= 1'): activation_difference(models, toks, HP, k=0)
    with pytest.raises(ValueError, match=r'models must be \(base, chat\)'): activation_difference(models[:1], toks, HP, k=2)
    with pytest.raises(ValueError, match='No text has 500 tokens'): first_tokens(models[1].tokenizer, TEXTS, k=500)


def test_logit_lens_reads_a_direction_and_ranks(models):
    chat, v = models[1], torch.randn(models[1].cfg.d_model, generator=torch.Generator().manual_seed(0))
    l = logit_lens(chat, v)
    assert l.shape == (chat.cfg.d_vocab,)
    torch.testing.assert_close(logit_lens(chat, 3 * v), l, atol=1e-4, rtol=1e-4)   # the final norm removes the scale
    assert token_rank(l, int(l.argmax())) == 0 and token_rank(l, int(l.argmin())) == len(l) - 1
    top = top_tokens(chat, l, 3)
    assert top['up'][0][1] == pytest.approx(l.max().item()) and top['down'][0][1] == pytest.approx(l.min().item())


def test_steering_cached_equals_uncached_and_alpha_zero_is_the_base_model(models):
    base = models[0]
    v = torch.randn(base.cfg.d_model, generator=torch.Generator().manual_seed(1))
    assert steer_generate(base, PROMPTS, HP, v, 0.0, max_new_tokens=8) == greedy_complete(base, PROMPTS, 8)
    cached = steer_generate(base, PROMPTS, HP, v, 3.0, max_new_tokens=8)
    assert cached == steer_generate(base, PROMPTS, HP, v, 3.0, max_new_tokens=8, cache=False)
    assert cached != greedy_complete(base, PROMPTS, 8)      # the steering changed something


def test_loss_sweep_keeps_the_largest_alpha_within_budget(models):
    base = models[0]
    toks = first_tokens(base.tokenizer, TEXTS, k=8)
    v = torch.randn(base.cfg.d_model, generator=torch.Generator().manual_seed(2))
    sw = alpha_sweep(base, toks, HP, v, alphas=(0.5, 2, 8, 32), budget=0.3)
    assert sw['clean_loss'] == pytest.approx(steered_loss(base, toks, HP, v, 0.0))
    assert sw['loss'][32.0] - sw['clean_loss'] > 0.3        # a large push costs loss
    ok = [a for a, l in sw['loss'].items() if l - sw['clean_loss'] <= 0.3]
    assert sw['alpha'] == (max(ok) if ok else None)
    assert alpha_sweep(base, toks, HP, v, alphas=(0.5, 2), budget=1e9)['alpha'] == 2.0


def test_projection_with_no_direction_is_the_chat_model_and_cached_equals_uncached(models):
    base, chat = models
    d = torch.randn(2, chat.cfg.d_model, generator=torch.Generator().manual_seed(3))
    assert projected_generate(models, PROMPTS, HP, d[:0], max_new_tokens=8) == greedy_complete(chat, PROMPTS, 8)
    assert (projected_generate(models, PROMPTS, HP, d, max_new_tokens=8)
            == projected_generate(models, PROMPTS, HP, d, max_new_tokens=8, cache=False))
    h, hb, u = torch.randn(2, 3, 5), torch.randn(2, 3, 5), orthonormal(torch.tensor([[1., 1, 0, 0, 0]]))
    out = project_edit(u)(h, {0: hb})
    assert torch.allclose(out @ u.T, hb @ u.T, atol=1e-6) and torch.allclose(out - (out @ u.T) * u, h - (h @ u.T) * u, atol=1e-6)


def test_projection_and_steering_refuse_bad_input(models):
    base, chat = models
    v = torch.ones(chat.cfg.d_model)
    with pytest.raises(ValueError, match='linearly dependent'): orthonormal(torch.stack([v, 2 * v]))
    with pytest.raises(ValueError, match='directions have 3 values each'): projected_generate(models, PROMPTS, HP, torch.ones(1, 3))
    with pytest.raises(ValueError, match='alpha must be a finite number'): steer_generate(base, PROMPTS, HP, v, float('nan'))
    with pytest.raises(ValueError, match='steering vector has 3 values'): steer_generate(base, PROMPTS, HP, v[:3], 1.0)
    with pytest.raises(ValueError, match='budget must be a finite number >= 0'): alpha_sweep(base, None, HP, v, budget=-1)


def test_summary_is_plain_numbers_and_checks_its_splits(models):
    chat = models[1]
    toks = first_tokens(chat.tokenizer, TEXTS, k=3)
    det = {'says_the': lambda s: 'the' in s, 'empty': lambda s: not s.strip()}
    prompts = {s: {'says_the': PROMPTS[:2], 'empty': PROMPTS[2:]} for s in ('validation', 'test')}
    loss = {'validation': toks, 'test': toks}
    with pytest.raises(ValueError, match="need a 'test' entry"):
        adl_summary(models, HP, toks, {'validation': toks}, prompts, det)
    res = adl_summary(models, HP, toks, loss, prompts, det, {'says_the': 5}, k=2, alphas=(1.0,), max_new_tokens=6)
    json.dumps(res)
    assert res['position'] in (1, 2) and len(res['marker_ranks']['says_the']) == 2
    assert res['projection']['none'] == res['test']['chat_rates']
    gen = greedy_complete(models[0], PROMPTS, 6)
    assert [r[0] for r in res['test']['rates'].values()] == [behaviour_rates(gen[:2], det)['says_the'],
                                                            behaviour_rates(gen[2:], det)['empty']]
