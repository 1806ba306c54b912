"The report: stable metrics keys, refusals of bad input before any work, and the page in a headless browser (offline)."
import json
from pathlib import Path
import pytest, torch
from browser import chrome, console_errors, requested_urls
from crosscoder_nb.crosscoder import CrossCoder
from crosscoder_nb.pipeline import organisms_config, set_fields, train_run
from crosscoder_nb.report import METRICS_FILE, REPORT_FILE, demo, report_run

TINY = {'train.n_tokens': 256 * 40, 'train.batch_size': 256, 'buffer.batch_size': 256, 'buffer.buffer_batches': 8,
        'buffer.n_norm_batches': 1, 'crosscoder.d_latent': 96, 'train.log_every': 10}
FAST = dict(device='cpu', n_eval_seqs=6, dashboard_tokens=2000, n_top=2, progress=False, causal=False)   # the causal checks: in `report` only

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp('r') / 'run'
    train_run(set_fields(organisms_config(), TINY), d, device='cpu', progress=False)
    return d

@pytest.fixture(scope='module')
def report(run, tmp_path_factory):
    out = tmp_path_factory.mktemp('rep') / 'report'
    return out, report_run(run, out, **{**FAST, 'causal': True, 'n_validation': 4, 'n_test': 4})

def test_metrics_have_the_stable_keys(report):
    out, m = report
    on_disk = json.loads((out / METRICS_FILE).read_text())
    assert list(on_disk)[0] == 'behaviours' and set(on_disk['behaviours']) == {'signoff', 'refusal'}   # metrics.json leads with them
    for n, b in on_disk['behaviours'].items():
        assert 1 <= len(b['latents']) <= 40 and all(0 <= j < 96 for j in b['latents']) and 'greedy attribution' in b['method']
        assert b['detection_at_decision']['n_labelled_tokens'] < b['n_labelled_tokens'] and 'density_mix' in b['detection_at_decision']['best_detector']
        dd = b['detection_at_decision']   # detection against the decision tokens too, with densities on the data mix
        assert 0 < dd['n_labelled_tokens'] and len(dd['latents']) == len(b['latents']) and 0 <= dd['best_detector']['density_mix'] <= 1
        assert 0 <= b['rates']['clean'] <= 1 and len(b['rates']['random_diff_patch']) == 3 and 0.5 <= b['best_detector']['auroc'] <= 1
        (o, x), = b['rates']['other_behaviours'].items()   # specificity: the other behaviour, clean and under this one's diff patch
        assert o in {'signoff', 'refusal'} - {n} and x['clean'] == on_disk['behaviours'][o]['rates']['clean'] and 0 <= x['diff_patch'] <= 1
    for k in ('explained_variance', 'ce_recovered', 'ce_delta'): assert set(on_disk[k]) == {'base', 'chat'}
    for k in ('l0', 'n_base_specific', 'n_chat_specific', 'n_shared'): assert isinstance(on_disk[k], (int, float))
    assert set(on_disk['planted_recovery']) == {'signoff', 'refusal'} and 'latent_scaling' in m
    assert on_disk['n_base_specific'] + on_disk['n_chat_specific'] + on_disk['n_shared'] <= 96
    assert 0 < on_disk['explained_variance']['base'] <= 1 and on_disk['ce_clean']['chat'] < on_disk['ce_ablated']['chat']

def test_bad_input_is_refused_before_work(run, tmp_path):
    (tmp_path / 'busy').mkdir(); (tmp_path / 'busy' / 'x').write_text('keep')
    with pytest.raises(ValueError, match='not empty'): report_run(run, tmp_path / 'busy', **FAST)
    assert (tmp_path / 'busy' / 'x').read_text() == 'keep'
    with pytest.raises(ValueError, match=r"trained on \['organism-base', 'organism-chat'\], not on \['organism-chat', 'organism-base'\]"):
        report_run(run, tmp_path / 'a', models=['organism-chat', 'organism-base'], **FAST)
    with pytest.raises(TypeError, match=r"Unknown report settings \['n_tset'\]"): report_run(run, tmp_path / 'd', n_tset=3, **FAST)
    with pytest.raises(FileNotFoundError, match='no crosscoder checkpoint'): report_run(tmp_path / 'busy', tmp_path / 'b', **FAST)
    with pytest.raises(ValueError, match='not empty'): demo(tmp_path / 'busy', settings=TINY, progress=False)
    with pytest.raises(ValueError, match='train fields'): demo(tmp_path / 'c', settings={'train.bogus': 1}, progress=False)
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'c').exists() and not (tmp_path / 'd').exists()

def test_missing_norm_factors_error_or_estimate(run, tmp_path):
    cc = CrossCoder.load(run)
    cc.cfg.norm_factors = None
    cc.save(tmp_path / 'nofactors')
    with pytest.raises(ValueError, match='no normalisation factors'): report_run(tmp_path / 'nofactors', tmp_path / 'a', **FAST)
    m = report_run(tmp_path / 'nofactors', tmp_path / 'b', norm_factors='estimate', dashboards=False, planted=False,
                   **{k: v for k, v in FAST.items() if k not in ('dashboard_tokens',)})
    assert m['eval']['norm_factors_source'] != 'checkpoint' and m['planted_recovery'] is None

def test_report_page_in_a_browser(report):
    from selenium.webdriver.common.by import By
    out, m = report
    driver = chrome()
    try:
        driver.get((out / REPORT_FILE).as_uri())
        plots = driver.find_elements(By.CSS_SELECTOR, 'div.plotly-graph-div')
        # the training curves, 3 figures of the diff, + the Latent Scaling scatter when there are latents to test
        assert len(plots) == 4 + bool(m['latent_scaling']['latents'])
        for p in plots:   # plotly drew each figure: an SVG with at least one bar, point or line
            assert p.find_elements(By.CSS_SELECTOR, 'svg.main-svg') and p.find_elements(By.CSS_SELECTOR, 'g.trace.bars, g.point, g.trace.scatter')
        first = driver.find_element(By.TAG_NAME, 'h2').text   # the page opens with what the diff found, as generated
        items = [li.text for li in driver.find_elements(By.CSS_SELECTOR, 'ul.findings li')]
        tested = any(v['tested'] for v in m['latent_scaling']['summary'].values())   # a Latent Scaling sentence, when it tested any
        assert first == 'What the diff found' and items == m['findings'] and len(items) == 2 + tested + len(m['behaviours'])
        heads = {c.text for c in driver.find_elements(By.CSS_SELECTOR, 'th')}
        assert not {h for h in heads if '_' in h}, heads   # headers in words, not metrics.json's keys
        assert 'move or share the whole folder' in driver.find_element(By.TAG_NAME, 'body').text
        assert driver.execute_script('return typeof Plotly') == 'object'
        cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, 'table.evals th')]
        assert cells[0] == 'L0' and 'CE recovered (chat)' in cells and 'explained variance (base)' in cells
        assert not console_errors(driver), console_errors(driver)
        link = driver.find_element(By.PARTIAL_LINK_TEXT, 'all dashboards')
        link.click()
        assert driver.current_url.endswith('dashboards/index.html') and driver.find_elements(By.CSS_SELECTOR, 'tr.latent-row')
        urls = requested_urls(driver)
        assert urls and all(u.startswith(('file://', 'data:')) for u in urls), urls
    finally:
        driver.quit()


def test_demo_harvests_once_and_compares_the_methods(tmp_path, monkeypatch):
    "The demo's layout and metrics: one harvest; BatchTopK, L1 and DFC crosscoders and a diff-SAE on it; a comparison."
    import crosscoder_nb.cache as cachemod, crosscoder_nb.pipeline as pipemod
    calls, trained_on = [], []
    real_write, real_train = cachemod.write_cache, pipemod.train_run
    monkeypatch.setattr(cachemod, 'write_cache', lambda *a, **k: calls.append(1) or real_write(*a, **k))
    monkeypatch.setattr(pipemod, 'train_run', lambda *a, **k: trained_on.append(k.get('cache')) or real_train(*a, **k))
    settings = {**TINY, 'crosscoder.k': 8, 'crosscoder.threshold_start': 10}
    m = demo(tmp_path / 'd', settings=settings, **FAST)
    out = tmp_path / 'd'
    assert len(calls) == 1 and trained_on == [out / 'cache'] * 3   # one harvest, into the cache the crosscoders train on
    assert json.loads((out / 'cache' / 'cache.json').read_text())['complete']
    for f in ('report.html', 'metrics.json', 'dashboards/index.html', 'batchtopk/crosscoder.safetensors', 'l1/crosscoder.safetensors',
              'l1/report/report.html', 'l1/report/metrics.json', 'dfc/crosscoder.safetensors', 'diff_sae/crosscoder.safetensors'):
        assert (out / f).exists(), f
    on_disk = json.loads((out / METRICS_FILE).read_text())
    assert on_disk['headline_arch'] == 'batchtopk' and set(on_disk['comparison']) == {'batchtopk', 'l1', 'dfc'}
    assert set(on_disk['methods']) == {'batchtopk', 'l1', 'dfc', 'diff_sae'}   # no causal checks: no ADL or amplification
    assert on_disk['methods']['diff_sae']['heldout']['explained_variance'] > 0   # the diff-SAE learnt something
    assert on_disk['comparison']['dfc']['arch']['n_exclusive'] and on_disk['methods']['dfc']['checkpoint'] == 'dfc/'
    assert CrossCoder.load(out / 'dfc').cfg.n_exclusive
    assert on_disk['arch']['activation'] == 'batchtopk' and on_disk['arch']['k'] == 8
    assert on_disk['comparison']['l1']['arch']['activation'] == 'relu' and on_disk['comparison']['l1']['arch']['d_latent'] == 96
    assert on_disk['comparison']['batchtopk']['l0'] < on_disk['comparison']['l1']['l0']   # BatchTopK is the sparser code
    assert sum(on_disk['relative_norm_counts']['counts']) <= 96 and set(on_disk['specific_density']) == {'chat_specific', 'base_specific'}
    b, l = (CrossCoder.load(out / a) for a in ('batchtopk', 'l1'))
    assert b.cfg.norm_factors == l.cfg.norm_factors   # trained on the same harvest
    page = (out / REPORT_FILE).read_text()
    assert 'Architectures compared on the same activations' in page and 'l1/report/report.html' in page
    assert 'How dense are the model-specific latents?' in page


def test_three_models_get_a_section_per_pair(tmp_path):
    "A crosscoder of three models: relative norms, clusters and tables for every pair, in metrics.json and on the page."
    import shutil
    from crosscoder_nb.models import resolve_model
    third = tmp_path / 'org' / 'third'
    shutil.copytree(resolve_model('organism-chat'), third)   # a third model of the same architecture (here: a copy of the chat organism)
    for f in ('ground_truth.json', 'organism_config.json'): shutil.copy(Path(resolve_model('organism-chat')).parent / f, tmp_path / 'org' / f)
    cfg = set_fields(organisms_config(arch='l1'), {**TINY, 'models': ['organism-base', 'organism-chat', str(third)]})
    train_run(cfg, tmp_path / 'run', device='cpu', progress=False)
    m = report_run(tmp_path / 'run', tmp_path / 'rep', dashboards=False, planted=False, **{k: v for k, v in FAST.items() if k != 'dashboard_tokens'})
    assert 'behaviours' not in m and 'latent_scaling' not in m   # both compare a base and a chat model: not run on three
    assert set(m['pairs']) == {'model_0 vs model_1', 'model_0 vs model_2', 'model_1 vs model_2'}
    assert set(m['explained_variance']) == {'model_0', 'model_1', 'model_2'}
    for p in m['pairs'].values(): assert sum(v for k, v in p['counts'].items() if k not in ('total', 'designated_shared')) == 96
    page = (tmp_path / 'rep' / REPORT_FILE).read_text()
    for pair in m['pairs']: assert f'Relative decoder norms ({pair})' in page and f'Lowest-cosine shared latents ({pair})' in page
