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


def test_summary_is_independent_of_latent_order(tmp_path):
    released_standin(tmp_path, seed=1)
    cc = load(tmp_path)
    perm = torch.randperm(cc.cfg.d_latent, generator=torch.Generator().manual_seed(0))
    shuffled = write_released_format(tmp_path / 'shuffled', cc.W_enc[..., perm], cc.W_dec[perm], cc.b_enc[perm], cc.b_dec)
    assert released_summary(load(shuffled)).counts == released_summary(cc).counts


def test_write_released_format_round_trip_and_bad_shapes(tmp_path):
    cc = CrossCoder(CrossCoderConfig(d_model=8, d_latent=32, seed=4))
    write_released_format(tmp_path, cc.W_enc, cc.W_dec, cc.b_enc, cc.b_dec, 'blocks.3.hook_resid_pre', model_name='x')
    back = load(tmp_path)
    x = torch.randn(5, 2, 8)
    torch.testing.assert_close(back(x), cc(x))
    assert back.cfg.hook_point == 'blocks.3.hook_resid_pre' and json.loads((tmp_path / SEED_CONFIG_FILE).read_text())['model_name'] == 'x'
    with pytest.raises(ValueError, match='W_dec has shape'): write_released_format(tmp_path, cc.W_enc, cc.W_dec[:, :1], cc.b_enc, cc.b_dec)


def test_colab_badge_and_install_cell_follow_settings():
    ini = configparser.ConfigParser(); ini.read(ROOT / 'settings.ini')
    git_url, branch = ini['DEFAULT']['git_url'].rstrip('/'), ini['DEFAULT']['branch']
    org_repo = re.sub(r'^https://github\.com/', '', git_url)
    cells = json.loads((ROOT / 'nbs' / '11_replicate_gemma.ipynb').read_text())['cells']
    src = lambda c: ''.join(c['source'])
    assert f'https://colab.research.google.com/github/{org_repo}/blob/{branch}/nbs/11_replicate_gemma.ipynb' in src(cells[0])
    install = [c for c in cells[1:4] if src(c).startswith('! [ -e /content ] && pip install')]   # after the first screen
    assert install and f'git+{git_url}' in src(install[0])
    flagged = [src(c) for c in cells if c['cell_type'] == 'code' and re.search(r"load_model\('google/gemma|from_pretrained\(SEED_REPO|train_run\(cfg", src(c))]
    assert flagged and all(re.search(r'^#\| (slow|gpu)', s, re.M) for s in flagged)   # nothing that needs the hub runs in nbdev_test
