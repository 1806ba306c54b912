"""Diffing: relative norms and clusters on crosscoders with known decoders, thresholds, tables, figures, token labels,
the streaming top-k against brute force, and planted recovery's bad inputs and fallbacks."""
import json, math
import pytest
import torch
import plotly.graph_objects as go
from crosscoder_nb import diffing as Df, planted as P
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.diffing import cluster_counts, cosine_histogram, decoder_cosines, diff_summary, latent_groups, relative_norm_histogram, relative_norms, top_latents
from crosscoder_nb.planted import PlantedSample, label_tokens, planted_recovery, planted_recovery_figure, planted_texts, score_latents, top_activations
from crosscoder_nb.buffer import harvest_rows
from crosscoder_nb.models import load_model
from crosscoder_nb.corpus import SIGNOFF, REFUSAL, format_dialog, heldout_prompts

torch.set_num_threads(1)


def with_decoder(pairs, cosines=None, n_models=2, d_model=4, **kw):
    "A crosscoder whose latent j has decoder norms pairs[j] and decoder cosine cosines[j] (models 0 and 1)."
    cc = CrossCoder(CrossCoderConfig(d_model=d_model, n_models=n_models, d_latent=len(pairs), **kw))
    e0, e1 = torch.eye(d_model)[0], torch.eye(d_model)[1]
    with torch.no_grad():
        for j, norms in enumerate(pairs):
            c = 1.0 if cosines is None else cosines[j]
            dirs = [e0, c * e0 + math.sqrt(1 - c * c) * e1] + [e0] * (n_models - 2)
            for m, (n, d) in enumerate(zip(norms, dirs)): cc.W_dec[j, m] = n * d
    return cc


@pytest.fixture(scope='module')
def organisms():
    return [load_model('organism-base', device='cpu'), load_model('organism-chat', device='cpu')]


# ---- relative norms, clusters, cosines ----------------------------------------------------------------------------

def test_relative_norm_exact_and_mirrored():
    cc = with_decoder([(1, 0), (0, 1), (2, 2), (1, 3), (0, 0)])
    r = relative_norms(cc)
    torch.testing.assert_close(r[:4], torch.tensor([0.0, 1.0, 0.5, 0.75]))
    assert r[4].isnan()
    torch.testing.assert_close(relative_norms(cc, base=1, chat=0)[:4], 1 - r[:4])
    torch.testing.assert_close(relative_norms(cc.decoder_norms()), r, equal_nan=True)   # from a norms table too


def test_relative_norm_three_models():
    cc = with_decoder([(1, 5, 3), (2, 0, 2)], n_models=3)
    torch.testing.assert_close(relative_norms(cc, base=0, chat=2), torch.tensor([0.75, 0.5]))


def test_groups_partition_the_latents():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(500, generator=g); r[:5] = torch.nan
    freq = torch.rand(500, generator=g) * (torch.rand(500, generator=g) > 0.2)
    groups = latent_groups(r, frequencies=freq)
    allidx = torch.cat(list(groups.values())).sort().values
    assert torch.equal(allidx, torch.arange(500))   # every latent in exactly one group
    assert torch.equal(groups['dead'], (freq == 0).nonzero().flatten())
    live = freq > 0
    assert len(groups['chat_specific']) == int(((r > 0.9) & live).sum()) and len(groups['base_specific']) == int(((r < 0.1) & live).sum())
    assert len(groups['shared']) == int(((r > 0.3) & (r < 0.7) & live).sum())
    counts = cluster_counts(r, frequencies=freq)
    assert counts['total'] == 500 and sum(v for k, v in counts.items() if k not in ('total', 'designated_shared')) == 500


def test_dead_latents_are_excluded_from_clusters():
    r = torch.tensor([0.0, 1.0, 0.5, 1.0])
    c = cluster_counts(r, frequencies=torch.tensor([0.1, 0.0, 0.2, 0.3]))
    assert (c['chat_specific'], c['dead'], c['base_specific'], c['shared']) == (1, 1, 1, 1)
    assert cluster_counts(r)['chat_specific'] == 2   # without frequencies, nothing is dead
    with pytest.raises(ValueError, match='3 frequencies for 4 latents'): latent_groups(r, frequencies=torch.ones(3))


def test_cosines_exact():
    cc = with_decoder([(1, 1), (2, 1), (1, 1), (1, 0)], cosines=[1.0, 0.0, -0.6, 1.0])
    torch.testing.assert_close(decoder_cosines(cc), torch.tensor([1.0, 0.0, -0.6, 0.0]), atol=1e-6, rtol=0)


# ---- tables and figures -------------------------------------------------------------------------------------------

def test_ties_go_to_the_more_frequent_latent():
    cc = with_decoder([(0, 1), (0, 1), (0, 1)])
    assert [d['latent'] for d in top_latents(cc, frequencies=torch.tensor([0.1, 0.3, 0.2]))] == [1, 2, 0]


def test_figures():
    r = torch.tensor([0.0, 0.05, 0.5, 0.5, 0.95, 1.0])
    fig = relative_norm_histogram(r, frequencies=torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    assert isinstance(fig, go.Figure) and sorted(fig.data[0].x) == pytest.approx([0.0, 0.5, 0.5, 0.95, 1.0])   # the dead latent is left out
    assert '1 dead' in fig.layout.title.text and 'chat only' in fig.layout.xaxis.title.text
    cfig = cosine_histogram(torch.tensor([1.0, 0.9, -0.2]))
    assert cfig.layout.yaxis.type == 'log' and len(cfig.data[0].x) == 3
    res = {'a': {'fraction': 0.5, 'base_rate': 0.1, 'latent': 3, 'relative_norm': 0.95,
                 'best_any': {'latent': 4, 'fraction': 0.8, 'relative_norm': 0.5}},
           'b': {'latent': None, 'fraction': float('nan'), 'base_rate': 0.0}}   # no labelled tokens: left out
    pfig = planted_recovery_figure(res)
    assert [list(d.y) for d in pfig.data] == [[0.5], [0.8], [0.1]] and list(pfig.data[0].x) == ['a']


def test_summary_is_json():
    cc = with_decoder([(1, 0), (0, 1), (1, 1), (1, 1)], cosines=[1, 1, 0.3, 0.9])
    s = diff_summary(cc, frequencies=torch.tensor([0.1, 0.1, 0.1, 0.0]))
    json.dumps(s)
    assert s['counts']['dead'] == 1 and s['counts']['shared'] == 1 and s['shared_cosine_below_0.5'] == 1
    assert 'excluded' in s['dead_latents'] and 'not known' in diff_summary(cc)['dead_latents']


# ---- planted recovery ---------------------------------------------------------------------------------------------

def test_labels_cover_exactly_the_spans(organisms):
    tok = organisms[0].tokenizer
    ds = heldout_prompts(10)
    texts, kinds = planted_texts({'plain': ds['plain'][:3], 'trigger': ds['trigger'][:2]}, general=['In the beginning was the Word.'])
    assert kinds == ['plain'] * 3 + ['trigger'] * 2 + ['general']
    s = label_tokens(tok, texts, kinds, seq_len=256)
    for i in range(3): assert tok.decode(s.tokens[i][s.labels[i, :, 0]]).endswith(SIGNOFF) and not s.labels[i, :, 1].any()
    for i in (3, 4): assert tok.decode(s.tokens[i][s.labels[i, :, 1]]).endswith(REFUSAL) and not s.labels[i, :, 0].any()
    assert not s.labels[5].any()
    assert not s.mask[:, 0].any() and (s.tokens[:, 0] == tok.bos_token_id).all()
    assert not s.labels[~s.mask].any()   # BOS and padding carry no label
    for i, text in enumerate(texts): assert tok.decode(s.tokens[i][s.mask[i]]) == text   # every token of each text, in order


def test_labels_truncate(organisms):
    tok = organisms[0].tokenizer
    text = format_dialog(heldout_prompts(3)['plain'][0])
    s = label_tokens(tok, [text], ['plain'], seq_len=8)
    assert s.tokens.shape == (1, 8) and s.n_tokens == 7 and not s.labels.any()   # the sign-off was cut off


def test_label_tokens_bad_input(organisms):
    class Slow:  # a tokenizer without offset mappings
        is_fast = False
    slow = Slow()
    with pytest.raises(ValueError, match='fast tokenizer'): label_tokens(slow, ['a'], ['general'], 16)
    with pytest.raises(ValueError, match='No texts'): label_tokens(organisms[0].tokenizer, [], [], 16)


def test_score_latents_known():
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0], [0, 0]], dtype=torch.bool)
    idx = torch.tensor([[0, 2, 3], [1, 4, 0]])
    vals = torch.tensor([[2.0, 1.0, 1.0], [1.0, 0.0, 0.5]])
    torch.testing.assert_close(score_latents(vals, idx, labels), torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.5, 0.0]]))


def test_top_activations_match_brute_force(organisms):
    texts, kinds = planted_texts(n_dialogs=6, n_general=4)
    s = label_tokens(organisms[0].tokenizer, texts, kinds, 256)
    cc = CrossCoder(CrossCoderConfig(d_model=organisms[0].cfg.d_model, d_latent=32, seed=2))
    lat, sf = torch.tensor([3, 7, 30]), torch.tensor([0.5, 0.6])
    f = cc.encode(harvest_rows(organisms, s.tokens, 'blocks.2.hook_resid_pre')[s.mask] * sf[:, None])[:, lat]
    want = f.topk(10, dim=0).values
    for bs in (1, 4, 100):
        vals, idx = top_activations(cc, organisms, s, 'blocks.2.hook_resid_pre', sf, lat, 10, batch_size=bs)
        torch.testing.assert_close(vals, want)
        torch.testing.assert_close(f.gather(0, idx), vals)   # the indices point at those activations


def test_planted_recovery_bad_input(organisms, monkeypatch):
    def boom(*a, **k): raise AssertionError('work started before the checks')
    monkeypatch.setattr(P, 'top_activations', boom); monkeypatch.setattr(P, 'planted_texts', boom)
    d = organisms[0].cfg.d_model
    cc = CrossCoder(CrossCoderConfig(d_model=d, d_latent=16, hook_point='blocks.2.hook_resid_pre'))
    with pytest.raises(ValueError, match="norm_factors='estimate'"): planted_recovery(cc, organisms, progress=False)
    cc.cfg.norm_factors = [1.0, 1.0]
    with pytest.raises(ValueError, match='top_k must be'): planted_recovery(cc, organisms, top_k=0, progress=False)
    with pytest.raises(ValueError, match='reads 2 models but 1 were given'): planted_recovery(cc, organisms[:1], progress=False)
    wrong = CrossCoder(CrossCoderConfig(d_model=2 * d, d_latent=16, hook_point='blocks.2.hook_resid_pre', norm_factors=[1.0, 1.0]))
    with pytest.raises(ValueError, match=f'd_model {d} but the crosscoder reads d_model {2 * d}'): planted_recovery(wrong, organisms, progress=False)
    cc.cfg.hook_point = 'blocks.7.hook_resid_pre'
    with pytest.raises(ValueError, match="no hook point 'blocks.7.hook_resid_pre'"): planted_recovery(cc, organisms, progress=False)


def test_planted_recovery_fraction_matches_a_direct_count(organisms):
    "Chat-specific candidates, the reported fraction recomputed from scratch, and the fallback to all latents."
    d, hp = organisms[0].cfg.d_model, 'blocks.2.hook_resid_pre'
    cc = CrossCoder(CrossCoderConfig(d_model=d, d_latent=48, hook_point=hp, norm_factors=[0.5, 0.6], seed=4))
    with torch.no_grad(): cc.W_dec[40:, 0] = 0   # latents 40..47 chat-only
    res = planted_recovery(cc, organisms, n_dialogs=20, n_general=10, top_k=15, progress=False)
    texts, kinds = planted_texts(n_dialogs=20, n_general=10)
    s = label_tokens(organisms[0].tokenizer, texts, kinds, 256)
    f = cc.encode(harvest_rows(organisms, s.tokens, hp)[s.mask] * torch.tensor([0.5, 0.6])[:, None])
    for b, name in enumerate(s.behaviours):
        v = res[name]
        assert v['candidates'].startswith('chat_specific') and v['n_candidates'] == 8 and 40 <= v['latent'] < 48
        top = f[:, 40:].topk(15, dim=0)
        direct = ((s.flat_labels[top.indices, b]) & (top.values > 0)).float().mean(0)
        assert v['fraction'] == pytest.approx(direct.max().item())
        assert v['n_tokens_labelled'] == int(s.flat_labels[:, b].sum()) and v['n_tokens'] == s.n_tokens
        assert v['base_rate'] == pytest.approx(v['n_tokens_labelled'] / v['n_tokens'])
        top_all = f.topk(15, dim=0)
        direct_all = ((s.flat_labels[top_all.indices, b]) & (top_all.values > 0)).float().mean(0)
        assert v['best_any']['fraction'] == pytest.approx(direct_all.max().item()) and v['best_any']['fraction'] >= v['fraction']
        assert direct_all[v['best_any']['latent']].item() == pytest.approx(direct_all.max().item())
    with torch.no_grad(): cc.W_dec[:, 0] = cc.W_dec[:, 1]
    fb = planted_recovery(cc, organisms, n_dialogs=20, n_general=10, top_k=15, progress=False)
    assert fb['signoff']['candidates'].startswith('all latents') and fb['signoff']['n_candidates'] == 48


def test_planted_recovery_without_labelled_tokens(organisms):
    cc = CrossCoder(CrossCoderConfig(d_model=organisms[0].cfg.d_model, d_latent=16, hook_point='blocks.2.hook_resid_pre', norm_factors=[1.0, 1.0]))
    res = planted_recovery(cc, organisms, dialogs=[], general=['In the beginning God created the heaven and the earth.'], progress=False)
    for v in res.values():
        assert v['latent'] is None and v['n_tokens_labelled'] == 0 and 'no token' in v['note'] and math.isnan(v['fraction'])
    with pytest.raises(ValueError, match='No texts'): planted_recovery(cc, organisms, dialogs=[], general=[], progress=False)
