"""The Gemma replication notebook's functions, offline: released-format stand-ins with known clusters, the checks
against the post, one norm-factor estimate through evals and dashboards, the computed training costs, the Colab badge."""
import configparser, dataclasses, json, re, warnings
from pathlib import Path
import pytest, torch
from crosscoder_nb.checkpoint import SEED_CONFIG_FILE, SEED_WEIGHTS_FILE
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.data import TokenStream, organisms_mix
from crosscoder_nb.evals import norm_factor_estimate
from crosscoder_nb.models import load_model
from crosscoder_nb.pipeline import seed_config, set_field
from crosscoder_nb.replicate import (GPUS, SEED_COUNTS, check_against_seed, colab_t4_config, cost_table, eval_vs_seed,
                                     released_standin, released_summary, replicate, training_hours, training_memory,
                                     write_released_format)

ROOT = Path(__file__).resolve().parents[1]

def load(folder) -> CrossCoder:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # seed-format checkpoints carry no normalisation factors
        return CrossCoder.from_pretrained(folder)

@pytest.mark.parametrize('counts', [dict(n_base=60, n_chat=225, n_other=40, n_misaligned=20),
                                    dict(n_base=7, n_chat=0, n_other=13, n_misaligned=0, d_latent=100, seed=3),
                                    dict(n_base=0, n_chat=50, n_other=0, n_misaligned=49, d_latent=99, d_model=8, seed=5)])
def test_standin_counts_are_recovered_exactly(tmp_path, counts):
    known = released_standin(tmp_path, **counts)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SEED_CONFIG_FILE, SEED_WEIGHTS_FILE])
    sd = torch.load(tmp_path / SEED_WEIGHTS_FILE, weights_only=True)
    n, d = counts.get('d_latent', 1024), counts.get('d_model', 16)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {'W_enc': (2, d, n), 'W_dec': (n, 2, d), 'b_enc': (n,), 'b_dec': (2, d)}
    s = released_summary(load(tmp_path))
    assert {k: s.counts[k] for k in ('base_specific', 'shared', 'chat_specific', 'other')} == {k: known[k] for k in ('base_specific', 'shared', 'chat_specific', 'other')}
    assert s.counts['total'] == n and len(s.shared_cosines) == known['shared']
    assert int((s.shared_cosines < 0).sum()) == known['misaligned'] and int((s.shared_cosines > 0.999).sum()) == known['shared'] - known['misaligned']

def test_summary_is_independent_of_latent_order(tmp_path):
    released_standin(tmp_path, seed=1)
    cc = load(tmp_path)
    perm = torch.randperm(cc.cfg.d_latent, generator=torch.Generator().manual_seed(0))
    shuffled = write_released_format(tmp_path / 'shuffled', cc.W_enc[..., perm], cc.W_dec[perm], cc.b_enc[perm], cc.b_dec)
    assert released_summary(load(shuffled)).counts == released_summary(cc).counts

def test_check_against_seed_passes_then_names_each_failure(tmp_path):
    released_standin(tmp_path / 'ok')
    rows = check_against_seed(released_summary(load(tmp_path / 'ok')))
    assert all(r['ok'] for r in rows) and len(rows) == 6
    released_standin(tmp_path / 'few', n_base=20, n_chat=400)   # both counts outside ±50%, still asymmetric
    with pytest.raises(AssertionError) as e: check_against_seed(released_summary(load(tmp_path / 'few')))
    assert 'base_specific latents within' in str(e.value) and 'chat_specific latents within' in str(e.value) and 'more chat-specific' not in str(e.value)
    assert check_against_seed(released_summary(load(tmp_path / 'few')), tolerance=0.8)   # a wider tolerance lets it pass
    released_standin(tmp_path / 'misaligned', n_misaligned=400)   # 400 of 699 shared latents point opposite ways
    with pytest.raises(AssertionError, match='cosine > 0.5'): check_against_seed(released_summary(load(tmp_path / 'misaligned')))
    released_standin(tmp_path / 'aligned', n_misaligned=0)   # no exception with a low cosine
    with pytest.raises(AssertionError, match='some shared latents with cosine'): check_against_seed(released_summary(load(tmp_path / 'aligned')))

def test_write_released_format_round_trip_and_bad_shapes(tmp_path):
    cc = CrossCoder(CrossCoderConfig(d_model=8, d_latent=32, seed=4))
    write_released_format(tmp_path, cc.W_enc, cc.W_dec, cc.b_enc, cc.b_dec, 'blocks.3.hook_resid_pre', model_name='x')
    back = load(tmp_path)
    x = torch.randn(5, 2, 8)
    torch.testing.assert_close(back(x), cc(x))
    assert back.cfg.hook_point == 'blocks.3.hook_resid_pre' and json.loads((tmp_path / SEED_CONFIG_FILE).read_text())['model_name'] == 'x'
    with pytest.raises(ValueError, match='W_dec has shape'): write_released_format(tmp_path, cc.W_enc, cc.W_dec[:, :1], cc.b_enc, cc.b_dec)

def test_replicate_uses_one_estimate_for_evals_and_dashboards(tmp_path):
    models, hook = [load_model('organism-base', device='cpu'), load_model('organism-chat', device='cpu')], 'blocks.2.hook_resid_pre'
    released_standin(tmp_path / 'cc', d_model=128, d_latent=64, n_base=4, n_chat=6, n_other=4, n_misaligned=2, hook_point=hook)
    cc = load(tmp_path / 'cc')
    rows = TokenStream(organisms_mix('heldout', seq_len=32, n_dialogs=50), models[0].tokenizer).take(6)
    rep = replicate(cc, models, rows[:4], rows, [0, 5, 63], tmp_path / 'dash', batch_size=2, progress=False)
    s = norm_factor_estimate(models, rows[:4], hook)
    torch.testing.assert_close(torch.tensor(rep.norm_factors), s)
    assert rep.evals['norm_factors_source'] == 'checkpoint' and rep.evals['norm_factors'] == rep.norm_factors == cc.cfg.norm_factors
    assert sorted(rep.dashboards.latents) == [0, 5, 63] and (tmp_path / 'dash' / 'latent_63.html').exists()
    table = eval_vs_seed(rep.evals)
    assert [r['metric'] for r in table] == ['L0'] + [f'{k} ({u})' for k, u in (('explained_variance', '%'), ('ce_recovered', '%'), ('ce_delta', 'nats')) for _ in (0, 1)]
    assert table[1]['ours'] == pytest.approx(100 * rep.evals['explained_variance']['base']) and table[1]['seed'] == pytest.approx(77.9)
    with pytest.raises(ValueError, match='has d_model 128'):   # wrong models fail before any forward pass
        replicate(CrossCoder(CrossCoderConfig(d_model=16, d_latent=8, hook_point=hook)), models, rows, rows, [0], tmp_path / 'x')

def test_training_memory_is_sane_and_grows_with_width():
    seed, t4 = training_memory(seed_config()), training_memory(colab_t4_config())
    assert 15 < seed['total'] < 25 and 8 < t4['total'] < 15
    assert seed['total'] == pytest.approx(sum(v for k, v in seed.items() if k != 'total'))
    widths = [training_memory(set_field(seed_config(), 'crosscoder.d_latent', w))['total'] for w in (4096, 16384, 65536)]
    assert widths[0] < widths[1] < widths[2]
    assert training_memory(set_field(seed_config(), 'model_dtype', 'float32'))['models'] == pytest.approx(2 * seed['models'])

def test_training_time_orders_gpus_and_scales_with_tokens():
    cfg = seed_config()
    hours = [training_hours(cfg, g) for g in GPUS]
    assert all(a > b > 0 for a, b in zip(hours, hours[1:]))   # T4, L4, A100, H100: each faster than the last
    half = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, n_tokens=cfg.train.n_tokens // 2))
    assert training_hours(half, GPUS[2]) == pytest.approx(training_hours(cfg, GPUS[2]) / 2, rel=1e-3)
    fits = {(r['config'], r['gpu']): r['fits'] for r in cost_table({'seed': cfg, 't4': colab_t4_config()})}
    assert fits[('t4', 'T4')] and not fits[('seed', 'T4')] and fits[('seed', 'H100 80GB SXM')]

def test_colab_badge_and_install_cell_follow_settings():
    ini = configparser.ConfigParser(); ini.read(ROOT / 'settings.ini')
    git_url, branch = ini['DEFAULT']['git_url'].rstrip('/'), ini['DEFAULT']['branch']
    org_repo = re.sub(r'^https://github\.com/', '', git_url)
    cells = json.loads((ROOT / 'nbs' / '11_replicate_gemma.ipynb').read_text())['cells']
    src = lambda c: ''.join(c['source'])
    assert f'https://colab.research.google.com/github/{org_repo}/blob/{branch}/nbs/11_replicate_gemma.ipynb' in src(cells[0])
    assert src(cells[1]).startswith('! [ -e /content ] && pip install') and f'git+{git_url}' in src(cells[1])
    flagged = [src(c) for c in cells if c['cell_type'] == 'code' and re.search(r"load_model\('google/gemma|from_pretrained\(SEED_REPO|train_run\(cfg", src(c))]
    assert flagged and all(re.search(r'^#\| (slow|gpu)', s, re.M) for s in flagged)   # nothing that needs the hub runs in nbdev_test
