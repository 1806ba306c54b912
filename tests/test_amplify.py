"Model diff amplification: alpha 0 and -1 are the two models, the KV cache changes nothing, bad input is refused first."
import json
import pytest, torch
import crosscoder_nb.amplify as amp
from crosscoder_nb.amplify import (amplification_table, amplified_logits, amplified_loss, amplify_alpha, amplify_generate,
                                   check_amplify)
from crosscoder_nb.evals import ce_sum
from crosscoder_nb.models import greedy_complete, load_model

torch.set_num_threads(1)
PROMPTS = ['User: Tell me about the king.\nAssistant:', 'User: What is a module?\nAssistant:', 'And the', 'The default']


@pytest.fixture(scope='module')
def models(org): return [org['base'], org['chat']]


def test_alpha_zero_is_the_chat_model_and_minus_one_the_base_model(models):
    base, chat = models
    assert amplify_generate(models, PROMPTS, 0.0, max_new_tokens=10) == greedy_complete(chat, PROMPTS, 10)
    assert amplify_generate(models, PROMPTS, -1.0, max_new_tokens=10) == greedy_complete(base, PROMPTS, 10)


def test_cached_equals_uncached_and_sampling_is_seeded(models):
    for a in (0.5, 3.0):
        assert (amplify_generate(models, PROMPTS, a, max_new_tokens=10)
                == amplify_generate(models, PROMPTS, a, max_new_tokens=10, cache=False))
    s = lambda seed: amplify_generate(models, PROMPTS * 3, 1.0, max_new_tokens=10, temperature=1.0, seed=seed)
    assert s(0) == s(0) and s(0) != s(1)


def test_amplified_logits_and_loss(models):
    lc, lb = torch.randn(3, 11), torch.randn(3, 11)
    torch.testing.assert_close(amplified_logits(lc, lb, 1.5), lc + 1.5 * (lc - lb))
    base, chat = models
    toks = torch.tensor([base.to_tokens(p, prepend_bos=True)[0, :6].tolist() for p in PROMPTS[:2]])
    ref = ce_sum(base(toks), toks) / (2 * 5)
    assert amplified_loss(models, toks, -1.0) == pytest.approx(ref, rel=1e-5)
    ch = amplify_alpha(models, toks, alphas=(0.5, 8.0), budget=0.25)
    assert ch['chat_loss'] == pytest.approx(amplified_loss(models, toks, 0.0))
    ok = [a for a, l in ch['loss'].items() if l - ch['chat_loss'] <= 0.25]
    assert ch['alpha'] == (max(ok) if ok else None)


def test_bad_input_is_refused_before_any_work(models, monkeypatch):
    def no_work(*a, **k): raise AssertionError('work started before the input was checked')
    monkeypatch.setattr(amp, 'greedy_complete', no_work)
    for bad in (float('nan'), float('inf'), '1'):
        with pytest.raises(ValueError, match='alpha must be a finite number'): amplify_generate(models, PROMPTS, bad)
    with pytest.raises(ValueError, match='temperature must be a finite number >= 0'):
        amplify_generate(models, PROMPTS, 1.0, temperature=float('nan'))
    with pytest.raises(ValueError, match=r'models must be \(base, chat\)'): amplify_generate(models[:1], PROMPTS, 1.0)
    other = load_model('organism-chat', device='cpu')      # the bundled organism: another tokenizer, 2048 tokens
    with pytest.raises(ValueError, match=r'models\[0\] \(base\) and models\[1\] \(chat\) have different vocabularies'):
        amplify_generate([models[0], other], PROMPTS, 1.0)
    with pytest.raises(ValueError, match='alpha must be a finite number'):
        amplification_table(models, {'p': PROMPTS}, {'d': bool}, alphas=(0.0, float('nan')))
    with pytest.raises(ValueError, match='budget must be a finite number >= 0'):
        amplify_alpha(models, None, budget=float('inf'))


def test_table_is_plain_numbers_matching_the_generations(models):
    det = {'says_the': lambda s: 'the' in s, 'empty': lambda s: not s.strip()}
    tab = amplification_table(models, {'chat': PROMPTS[:2], 'text': PROMPTS[2:]}, det, alphas=(0.0, 2.0),
                              max_new_tokens=6)
    json.dumps(tab)
    assert tab['alphas'] == [-1.0, 0.0, 2.0] and tab['n_prompts'] == {'chat': 2, 'text': 2}
    out = greedy_complete(models[1], PROMPTS[2:], 6)
    assert tab['rates']['says_the']['text'][1] == sum('the' in o for o in out) / 2
    check_amplify(models, 2.0)
