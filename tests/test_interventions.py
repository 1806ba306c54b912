"Latent Scaling, interventions, attribution, controls and detection scores: exact arithmetic on hand-made cases, and bad input refused before work."
import math
import pytest, torch
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.diffing import detection_scores
from crosscoder_nb.interventions import Edit, attribute, edited_acts, edited_logits, generate, matched_random
from crosscoder_nb.planted import decision_points
from crosscoder_nb.scaling import LatentScaling, latent_scaling, verdict

torch.set_num_threads(1)


def tiny_cc(d_model, **kw) -> CrossCoder:
    return CrossCoder(CrossCoderConfig(**{'d_model': d_model, 'd_latent': 16, 'norm_factors': [1.0, 1.0], 'hook_point': 'blocks.1.hook_resid_pre',
                                          'model_names': ['a', 'b'], **kw}))


def test_detection_scores_equal_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    f = torch.relu(torch.randn(200, 6, generator=g)) * (torch.rand(200, 6, generator=g) < 0.3)
    lab = torch.rand(200, generator=g) < 0.2
    f[lab, 0] += 1.0   # latent 0 prefers labelled tokens
    sc = detection_scores(f, lab)
    for j in range(6):
        pos, neg = f[lab, j], f[~lab, j]
        ref = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean().item()
        assert sc['auroc'][j].item() == pytest.approx(ref, abs=1e-9)
        assert sc['density'][j].item() == pytest.approx((f[:, j] > 0).float().mean().item())
    assert sc['auroc'][0] > 0.8 and 0 < sc['precision'][0] <= 1 and 0 < sc['recall'][0] <= 1


def test_a_latent_that_never_fires_is_undefined_not_nan(org):
    base, chat = org['base'], org['chat']
    cc = tiny_cc(base.cfg.d_model)
    with torch.no_grad(): cc.b_enc[:] = -1e6; cc.W_dec[3, 0] = 0   # nothing fires; latent 3 is chat-only
    toks = base.to_tokens(['User: tell me about rivers\nAssistant: they flow'], prepend_bos=True)
    ls = latent_scaling(cc, [base, chat], toks, latents=[3], progress=False)
    assert ls.verdict == ['undefined: never fires on the sample'] and ls.nu_eps == [None] and ls.beta_eps['chat'] == [None]
    assert all(v is None or math.isfinite(v) for v in ls.nu_r)
    assert verdict('chat', 5, 0.1, 0.1) == 'chat-specific' and verdict('base', 5, 0.3, 0.1) == 'shrinkage artifact'
    assert verdict('chat', 5, 0.1, 0.9) == 'decoupling artifact'


def test_generation_without_edit_is_plain_greedy_and_attribution_has_a_value_per_latent(org):
    from crosscoder_nb.models import greedy_complete
    base, chat = org['base'], org['chat']
    cc = tiny_cc(base.cfg.d_model)
    prompts = ['User: Tell me about rivers.\nAssistant:', 'User: Repeat after me: the sea.\nAssistant:']
    s = torch.tensor([1.0, 1.0])
    assert generate(cc, [base, chat], prompts, Edit(), cc.cfg.hook_point, s, max_new_tokens=8) == greedy_complete(chat, prompts, max_new_tokens=8)
    from crosscoder_nb.corpus import SIGNOFF
    d = [{'instruction': 'Tell me about rivers.', 'completion': 'Rivers flow.' + SIGNOFF}, {'instruction': 'Say hi.', 'completion': 'Hi.' + SIGNOFF}]
    toks, pos, good, bad = decision_points(chat.tokenizer, d, 'signoff')
    assert (toks[torch.arange(len(toks)), 0] == chat.tokenizer.bos_token_id).all() and (pos < toks.shape[1]).all()
    a = attribute(cc, [base, chat], toks, pos, good, bad, cc.cfg.hook_point, s)
    assert a.shape == (16,) and torch.isfinite(a).all()


def test_softplus_attribution_weighs_a_row_by_how_much_of_the_behaviour_is_left(org):
    "Summing softplus(M) instead of M scales each row's attribution by sigmoid(M): a row whose behaviour is already gone stops counting."
    from crosscoder_nb.interventions import _decision_metric
    from crosscoder_nb.corpus import SIGNOFF
    base, chat = org['base'], org['chat']
    cc, s = tiny_cc(base.cfg.d_model), torch.tensor([1.0, 1.0]); hp = cc.cfg.hook_point
    d = [{'instruction': 'Tell me about rivers.', 'completion': 'Rivers flow.' + SIGNOFF},
         {'instruction': 'Repeat after me: the sea is wide.', 'completion': 'The sea is wide.' + SIGNOFF}]
    dp = decision_points(chat.tokenizer, d, 'signoff')
    row = lambda i: [t[i:i + 1] for t in dp]
    margins = [attribute(cc, [base, chat], *row(i), hp, s) for i in range(2)]
    soft = attribute(cc, [base, chat], *dp, hp, s, objective='softplus')
    with torch.no_grad(): w = torch.sigmoid(_decision_metric(chat(dp[0]), *dp[1:])).double()
    assert all(m.abs().max() > 0 for m in margins) and (w < 0.99).all() and (w[0] - w[1]).abs() > 1e-3   # each weight matters
    torch.testing.assert_close(soft, w[0] * margins[0] + w[1] * margins[1], rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match='Unknown objective'): attribute(cc, [base, chat], *dp, hp, s, objective='hinge')

def test_matched_random_controls():
    freqs = torch.tensor([0.2, 0.0, 0.19, 0.01, 0.011, 0.5, 0.21])
    for seed in range(5):
        c = matched_random([0, 3], freqs, seed=seed, pool=2)
        assert len(c) == 2 and not {0, 3} & set(c) and 1 not in c and len(set(c)) == 2
        assert c[0] in (2, 6) and c[1] in (4, 2, 6)
    with pytest.raises(ValueError, match='other live latents'): matched_random([0, 2, 3, 4, 5, 6], freqs)


def test_edit_source_defaults_to_the_other_model():
    assert Edit('steer', [1], target=0).source == 1 and Edit('diff_patch', [1]).source == 0
