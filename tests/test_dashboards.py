"""Latent dashboards on the bundled organisms with a small random crosscoder: the summaries against a brute-force
computation, logit effects against the model, one pass, bad inputs, escaping, and the pages in a headless browser
(offline: no request may leave the machine)."""
from browser import chrome
import dataclasses, json, math, shutil
from html.parser import HTMLParser
from pathlib import Path
import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM
from crosscoder_nb import dashboards as D   # the pass (and its `harvest`) lives there
from crosscoder_nb.buffer import estimate_norm_factors, harvest
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.dashboards import DashboardConfig, compute_dashboards, load_run, logit_effects, select_latents, token_sample
from crosscoder_nb.dashboard_html import latent_file, render_latent, write_dashboards
from crosscoder_nb.scaling import check_latents
from crosscoder_nb.data import TokenStream, organisms_mix
from crosscoder_nb.models import load_model

HOOK, ROWS, SEQ, N_LAT = 'blocks.2.hook_resid_pre', 24, 48, 64
CFG = DashboardConfig(top_k=8, left=5, right=2, n_intervals=4, per_interval=3, res_size=4, res_bins=8, hist_bins=32, batch_rows=5)


@pytest.fixture(scope='module')
def models(): return [load_model('organism-base', device='cpu'), load_model('organism-chat', device='cpu')]


@pytest.fixture(scope='module')
def tokens(models): return TokenStream(organisms_mix('heldout', seq_len=SEQ, n_dialogs=200), models[0].tokenizer).take(ROWS)


@pytest.fixture(scope='module')
def cc(models, tokens):
    "A random crosscoder made sparse (each latent fires on 0.5% to 10% of the tokens) with varied relative norms."
    with torch.no_grad():
        acts = torch.stack([harvest(m, tokens, HOOK)[:, 1:].flatten(0, 1) for m in models], 1)
        s = estimate_norm_factors([acts])
        cc = CrossCoder(CrossCoderConfig(d_model=128, d_latent=N_LAT, hook_point=HOOK, model_names=['organism-base', 'organism-chat'],
                                         norm_factors=s.tolist(), seed=1))
        g = torch.Generator().manual_seed(0)
        cc.W_dec.mul_(torch.rand(N_LAT, 2, 1, generator=g))
        pre = torch.einsum('bmd,mdl->bl', acts * s[:, None], cc.W_enc)
        cc.b_enc.copy_(-torch.quantile(pre, torch.linspace(0.9, 0.995, N_LAT), dim=0).diagonal())
    return cc


@pytest.fixture(scope='module')
def brute(models, tokens, cc):
    "Every latent's activation on every token but BOS, all at once: [rows, seq - 1, d_latent]."
    with torch.no_grad():
        x = torch.stack([harvest(m, tokens, HOOK)[:, 1:] for m in models], 2)
        return cc.encode(cc.normalize(x).flatten(0, 1)).view(ROWS, SEQ - 1, -1)


@pytest.fixture(scope='module')
def data(models, tokens, cc): return compute_dashboards(cc, models, tokens, cfg=CFG, progress=False)


def window(brute, tokens, row, col, j):
    "The brute-force window around (row, col) of latent j: token ids (-1 outside the row or at BOS) and activations."
    ids, acts = [], []
    for c in range(col - CFG.left, col + CFG.right + 1):
        inside = 1 <= c < SEQ
        ids.append(int(tokens[row, c]) if inside else -1); acts.append(float(brute[row, c - 1, j]) if inside else 0.0)
    return ids, acts


# ---- the summaries against brute force -------------------------------------------------------------------------

def test_top_k_are_the_largest_activations(data, brute, tokens):
    assert data.latents == list(range(N_LAT))
    for j in range(N_LAT):
        top = data[j].top
        want = brute[..., j].flatten().topk(CFG.top_k).values
        torch.testing.assert_close(top.acts, want[want > 0])
        assert len(top) > 0
        for e in range(len(top)):
            r, c = int(top.rows[e]), int(top.cols[e])
            assert brute[r, c - 1, j] == top.acts[e]
            ids, acts = window(brute, tokens, r, c, j)
            assert top.tokens[e].tolist() == ids
            torch.testing.assert_close(top.window_acts[e], torch.tensor(acts))
        assert top.tokens[:, top.center].tolist() == [int(tokens[r, c]) for r, c in zip(top.rows, top.cols)]


def test_density_histogram_and_stats(data, brute):
    torch.testing.assert_close(data.density, (brute > 0).float().mean((0, 1)))
    assert data.n_tokens == ROWS * (SEQ - 1) and data.n_rows == ROWS
    for j in range(N_LAT):
        d, a = data[j], brute[..., j][brute[..., j] > 0]
        assert d.n_active == len(a) and math.isclose(d.max_act, a.max().item(), rel_tol=1e-6)
        assert math.isclose(d.mean_act, a.double().mean().item(), rel_tol=1e-5)
        edges = torch.tensor(d.hist_edges)
        assert edges[-2] <= a.max() < edges[-1] and sum(d.hist_counts) == len(a)
        width = edges[1] - edges[0]
        assert d.hist_counts == torch.bincount((a / width).long(), minlength=len(d.hist_counts)).tolist()


def test_interval_examples_lie_in_their_intervals(data, brute, tokens):
    for j in range(N_LAT):
        d, a = data[j], brute[..., j][brute[..., j] > 0]
        ivs = d.intervals
        assert len(ivs) == CFG.n_intervals and ivs[0].lo == 0 and ivs[-1].hi > d.max_act
        assert all(x.hi == y.lo for x, y in zip(ivs, ivs[1:]))                  # they tile [0, max]
        for iv in ivs:
            assert iv.count == int(((a >= iv.lo) & (a < iv.hi)).sum())          # exact counts
            assert len(iv.examples) == min(CFG.per_interval, iv.count)          # as many as possible
            assert ((iv.examples.acts >= iv.lo) & (iv.examples.acts < iv.hi)).all()
            assert len(set(zip(iv.examples.rows.tolist(), iv.examples.cols.tolist()))) == len(iv.examples)   # no repeats
            for e in range(len(iv.examples)):
                r, c = int(iv.examples.rows[e]), int(iv.examples.cols[e])
                assert brute[r, c - 1, j] == iv.examples.acts[e]
                assert iv.examples.tokens[e].tolist() == window(brute, tokens, r, c, j)[0]


def test_a_subset_gives_the_same_dashboards(models, tokens, cc, data):
    some = compute_dashboards(cc, models, tokens, latents=[40, 3, 40, 17], cfg=CFG, progress=False)
    assert some.latents == [40, 3, 17]
    for j in some.latents:
        assert torch.equal(some[j].top.acts, data[j].top.acts) and torch.equal(some[j].top.tokens, data[j].top.tokens)
        assert some[j].hist_counts == data[j].hist_counts
        assert [i.count for i in some[j].intervals] == [i.count for i in data[j].intervals]
        assert [[t for t, _ in lg.boosted] for lg in some[j].logits] == [[t for t, _ in lg.boosted] for lg in data[j].logits]
    torch.testing.assert_close(some.density, data.density)


def test_one_pass(models, tokens, cc, monkeypatch):
    "Each batch of rows goes once through each model and once through the encoder, whatever the number of latents."
    calls = {'harvest': 0, 'encode': 0}
    real_harvest, real_encode = D.harvest, cc.encode
    def count_harvest(*a, **k): calls['harvest'] += 1; return real_harvest(*a, **k)
    def count_encode(*a, **k): calls['encode'] += 1; return real_encode(*a, **k)
    monkeypatch.setattr(D, 'harvest', count_harvest); monkeypatch.setattr(cc, 'encode', count_encode)
    out = compute_dashboards(cc, models, tokens, cfg=CFG, progress=False)
    n_batches = math.ceil(ROWS / CFG.batch_rows)
    assert calls == {'harvest': 2 * n_batches, 'encode': n_batches}
    assert out.seconds > 0 and out.tokens_per_s > 0 and 0 < out.seconds_models <= out.seconds


# ---- logit effects ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('m', [0, 1])
def test_logit_effects_match_the_model(models, m):
    "Replacing the final residual by d, the model's logits are softcap(effect / rms(d) + b_U)."
    model = models[m]
    d = torch.randn(4, 128, generator=torch.Generator().manual_seed(m))
    eff, cap = logit_effects(model, d), model.cfg.output_logits_soft_cap
    toks = model.to_tokens('User: Hi.\nAssistant:')
    for i in range(len(d)):
        out = model.run_with_hooks(toks, fwd_hooks=[('ln_final.hook_in', lambda x, hook: d[i].expand_as(x).clone())])[0, -1]
        rms = (d[i].pow(2).mean() + model.cfg.eps).sqrt()
        torch.testing.assert_close((cap * torch.atanh(out / cap) - model.b_U) * rms, eff[i], rtol=1e-4, atol=1e-4)
        assert out.topk(10).indices.tolist() == eff[i].topk(10).indices.tolist()
    w = model.ln_final.original_component.weight           # Gemma's RMSNorm multiplies by (1 + w)
    torch.testing.assert_close(eff, (d * (1 + w)) @ model.W_U, rtol=1e-4, atol=1e-4)


def test_dashboard_logits_are_the_decoder_effects(data, models, cc):
    for j in (0, 31):
        for m, lg in enumerate(data[j].logits):
            e = logit_effects(models[m], cc.W_dec.detach()[j:j + 1, m] / cc.cfg.norm_factors[m])[0]
            top, bottom = e.topk(CFG.n_logits), e.topk(CFG.n_logits, largest=False)
            assert [t for t, _ in lg.boosted] == top.indices.tolist() and [t for t, _ in lg.suppressed] == bottom.indices.tolist()
            torch.testing.assert_close(torch.tensor([v for _, v in lg.boosted]), top.values)
        assert [lg.model for lg in data[j].logits] == data.model_names


# ---- selection -----------------------------------------------------------------------------------------------------

def test_select_latents(cc, data):
    r = data.rel_norm
    assert select_latents(cc, top_chat=3) == r.argsort(descending=True)[:3].tolist()
    assert select_latents(cc, top_base=2) == r.argsort()[:2].tolist()
    assert select_latents(cc, top_shared=2) == (r - 0.5).abs().argsort()[:2].tolist()
    both = select_latents(cc, [5], top_chat=2, top_base=2)
    assert both[0] == 5 and len(both) == len(set(both))
    dead = data.density.clone(); dead[r.argmax()] = 0
    assert r.argmax().item() not in select_latents(cc, top_chat=5, density=dead)
    assert select_latents(cc) == []


# ---- bad input, all caught before any forward pass -----------------------------------------------------------------

@pytest.fixture
def no_forward(monkeypatch):
    def boom(*a, **k): raise AssertionError('a forward pass ran before the checks')
    monkeypatch.setattr(D, 'harvest', boom)


def test_latents_out_of_range(models, tokens, cc, data, no_forward):
    with pytest.raises(ValueError, match=r'has 64 latents, ids 0\.\.63'): compute_dashboards(cc, models, tokens, latents=[3, 64], cfg=CFG)
    with pytest.raises(ValueError, match=r'ids 0\.\.63'): select_latents(cc, [-1])
    with pytest.raises(TypeError, match='must be ints'): check_latents([1.5], 64)
    with pytest.raises(ValueError, match='No latents'): check_latents([], 64)
    with pytest.raises(ValueError, match='top_chat must be an int >= 0'): select_latents(cc, top_chat=-1)
    with pytest.raises(ValueError, match='density has 3 values'): select_latents(cc, top_chat=1, density=torch.ones(3))
    with pytest.raises(ValueError, match='have no dashboard'):
        write_dashboards(D.DashboardData({}, data.model_names, HOOK, data.rel_norm, data.cosine, data.density, 1, 1, 1.0, 1.0, CFG), '/tmp/x', [3])


def test_bad_token_samples(models, tokens, cc, no_forward):
    with pytest.raises(ValueError, match='shorter than one context window of 8 tokens'): compute_dashboards(cc, models, tokens[:, :8], cfg=CFG)
    with pytest.raises(ValueError, match='empty'): compute_dashboards(cc, models, tokens[:0], cfg=CFG)
    with pytest.raises(ValueError, match='start with BOS'): compute_dashboards(cc, models, tokens[:, 1:], cfg=CFG)
    with pytest.raises(ValueError, match='integer tensor'): compute_dashboards(cc, models, tokens.float(), cfg=CFG)
    with pytest.raises(ValueError, match='integer tensor'): compute_dashboards(cc, models, tokens[0], cfg=CFG)
    bad = tokens.clone(); bad[0, 3] = 10 ** 6
    with pytest.raises(ValueError, match='vocabulary'): compute_dashboards(cc, models, bad, cfg=CFG)
    too_long = torch.cat([tokens] * 6, 1)[:, :models[0].cfg.n_ctx + 1]
    with pytest.raises(ValueError, match='context'): compute_dashboards(cc, models, too_long, cfg=CFG)


def random_gemma(path, tokenizer, d_model):
    cfg = Gemma2Config(vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=4,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=d_model // 2, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    Gemma2ForCausalLM(cfg).save_pretrained(path); tokenizer.save_pretrained(path)
    return load_model(path, device='cpu')


def test_models_that_do_not_match(models, tokens, cc, tmp_path, no_forward):
    with pytest.raises(ValueError, match='reads 2 models'): compute_dashboards(cc, models[:1], tokens, cfg=CFG)
    with pytest.raises(ValueError, match='reads 2 models'): compute_dashboards(cc, models + models[:1], tokens, cfg=CFG)
    wide = random_gemma(tmp_path / 'wide', models[0].tokenizer, 64)
    with pytest.raises(ValueError, match='d_model 64'): compute_dashboards(cc, [models[0], wide], tokens, cfg=CFG)
    far = CrossCoder(CrossCoderConfig(**{**cc.cfg.to_dict(), 'hook_point': 'blocks.7.hook_resid_pre'}))
    with pytest.raises(ValueError, match='no hook point'): compute_dashboards(far, models, tokens, cfg=CFG)
    with pytest.raises(ValueError, match='not the crosscoder'): compute_dashboards(cc, models, tokens, cfg=CFG, hook_point='blocks.1.hook_resid_pre')
    unscaled = CrossCoder(CrossCoderConfig(**{**cc.cfg.to_dict(), 'norm_factors': None}))
    with pytest.raises(ValueError, match='norm_factors'): compute_dashboards(unscaled, models, tokens, cfg=CFG)
    nohook = CrossCoder(CrossCoderConfig(**{**cc.cfg.to_dict(), 'hook_point': None}))
    with pytest.raises(ValueError, match='hook point'): compute_dashboards(nohook, models, tokens, cfg=CFG)


def test_load_run(cc, tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'): load_run(tmp_path / 'missing')
    with pytest.raises(FileNotFoundError, match='holds no crosscoder checkpoint'): load_run(tmp_path)
    CrossCoder(CrossCoderConfig(**{**cc.cfg.to_dict(), 'model_names': None})).save(tmp_path / 'anon')
    with pytest.raises(ValueError, match='does not record its models'): load_run(tmp_path / 'anon')
    cc.save(tmp_path / 'run')
    cc2, ms = load_run(tmp_path / 'run', device='cpu')
    assert cc2.cfg == cc.cfg and len(ms) == 2


def test_token_sample(models):
    tok = models[0].tokenizer
    x = token_sample(organisms_mix('heldout', seq_len=32, n_dialogs=50), tok, n_tokens=100)
    assert x.shape == (4, 32) and (x[:, 0] == tok.bos_token_id).all()          # ceil(100 / 31) rows


# ---- rendering ----------------------------------------------------------------------------------------------------

class Doc(HTMLParser):
    def __init__(self): super().__init__(); self.text, self.tags = [], []
    def handle_starttag(self, tag, attrs): self.tags.append((tag, dict(attrs)))
    def handle_data(self, d): self.text.append(d)


EVIL = '<script>alert("x")</script> & \n'


def evil(d):
    "A copy of a dashboard whose top token reads as markup, an ampersand and a newline."
    return dataclasses.replace(d, token_strs={**d.token_strs, int(d.top.tokens[0, d.top.center]): EVIL})


def test_text_is_escaped(data):
    doc = Doc(); doc.feed(render_latent(evil(data[0])))
    assert 'script' not in [t for t, _ in doc.tags]
    assert EVIL.replace('\n', '↵') in ''.join(doc.text)
    assert any(EVIL.replace('\n', '\\n') in a.get('title', '') for t, a in doc.tags if t == 'span')   # hover shows it too


def test_notebook_display(data):
    html = data[3]._repr_html_()
    assert html.count('class="example"') == len(data[3].top) + sum(len(i.examples) for i in data[3].intervals)
    assert data._repr_html_().count('class="latent-row"') == N_LAT


def test_pages_in_a_browser(data, tmp_path):
    from selenium.webdriver.common.by import By
    ids = [5, 17, 40]
    data = dataclasses.replace(data, dashboards={**data.dashboards, 17: evil(data[17])})
    index = write_dashboards(data, tmp_path / 'dash', ids)
    driver = chrome()
    try:
        driver.get(index.as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, 'tr.latent-row')
        assert len(rows) == 3
        r = [float(x.find_elements(By.TAG_NAME, 'td')[1].get_attribute('data-v')) for x in rows]
        assert r == sorted(r, reverse=True)                                                      # by relative norm
        driver.find_elements(By.CSS_SELECTOR, 'table.latents th')[0].click()                     # sort by latent id
        assert [x.find_element(By.TAG_NAME, 'a').text for x in driver.find_elements(By.CSS_SELECTOR, 'tr.latent-row')] == ['5', '17', '40']
        driver.find_element(By.LINK_TEXT, '17').click()
        assert driver.current_url.endswith(latent_file(17))
        d = data[17]
        assert len(driver.find_elements(By.CSS_SELECTOR, 'div.top tr.example')) == len(d.top)
        assert len(driver.find_elements(By.CSS_SELECTOR, 'div.interval')) == CFG.n_intervals
        assert len(driver.find_elements(By.CSS_SELECTOR, 'tr.example')) == len(d.top) + sum(len(i.examples) for i in d.intervals)
        tables = driver.find_elements(By.CSS_SELECTOR, 'div.logits')
        assert [t.get_attribute('data-model') for t in tables] == data.model_names
        assert all(len(t.find_elements(By.CSS_SELECTOR, 'tbody tr')) == CFG.n_logits for t in tables)
        assert len(driver.find_elements(By.CSS_SELECTOR, 'svg.hist rect')) == len(d.hist_counts)
        centre = driver.find_element(By.CSS_SELECTOR, 'div.top tr.example span.tk.c')
        assert centre.text == EVIL.replace('\n', '↵').strip() and EVIL.replace('\n', '\\n') in centre.get_attribute('title')
        assert not driver.find_elements(By.TAG_NAME, 'script')                                   # the token stayed text
        driver.find_element(By.LINK_TEXT, 'all latents').click()
        assert driver.current_url.endswith('index.html')
        errors = [e for e in driver.get_log('browser') if e['level'] in ('SEVERE', 'ERROR')]
        assert not errors, errors
        urls = [m['params']['request']['url'] for m in (json.loads(e['message'])['message'] for e in driver.get_log('performance'))
                if m['method'] == 'Network.requestWillBeSent']
        assert urls and all(u.startswith(('file://', 'data:')) for u in urls), urls
    finally:
        driver.quit()
