"""The Hugging Face hub: CrossCoder.from_pretrained / push_to_hub against a hand-built hub cache and stand-ins for the upload, the
mapping of hub failures to one clear error, and .pt files that hold anything but tensors. Nothing here reaches the network."""
import json, os, shutil
from pathlib import Path
from types import SimpleNamespace
import huggingface_hub, pytest, torch
from huggingface_hub import errors as E
from crosscoder_nb.checkpoint import (CONFIG_FILE, SEED_CONFIG_FILE, SEED_WEIGHTS_FILE, WEIGHTS_FILE, eval_markdown, load_pt,
                                      model_card)
from crosscoder_nb.crosscoder import CrossCoder, CrossCoderConfig
from crosscoder_nb.models import HubError

SUB = 'blocks.14.hook_resid_pre'
COMMIT = 'a' * 40

def resp(code): return SimpleNamespace(status_code=code, headers={}, request=None)

def small(**kw) -> CrossCoder:
    return CrossCoder(CrossCoderConfig(**{'d_model': 6, 'd_latent': 16, 'hook_point': 'blocks.2.hook_resid_pre',
                                          'model_names': ['org/base', 'org/chat'], 'norm_factors': [1.5, 0.5], **kw}))

def same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) or torch.allclose(sa[k], sb[k], rtol=0, atol=0, equal_nan=True) for k in sa)   # an untrained threshold is NaN

def seed_folder(path: Path, d_in=6, dict_size=16) -> dict:
    g = torch.Generator().manual_seed(1)
    sd = {'W_enc': torch.randn(2, d_in, dict_size, generator=g), 'W_dec': torch.randn(dict_size, 2, d_in, generator=g),
          'b_enc': torch.randn(dict_size, generator=g), 'b_dec': torch.randn(2, d_in, generator=g)}
    path.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path / SEED_WEIGHTS_FILE)
    (path / SEED_CONFIG_FILE).write_text(json.dumps({'d_in': d_in, 'dict_size': dict_size, 'hook_point': SUB, 'enc_dtype': 'fp32', 'num_tokens': 400_000_000}))
    return sd

def hub_cache(cache: Path, repo_id: str, folder: Path, prefix: str = '') -> Path:
    "huggingface_hub's cache layout: models--org--name/refs/main names a commit, snapshots/<commit>/ holds the files."
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / 'refs').mkdir(parents=True, exist_ok=True); (repo / 'refs' / 'main').write_text(COMMIT)
    shutil.copytree(folder, repo / 'snapshots' / COMMIT / prefix, dirs_exist_ok=True)
    return cache

@pytest.fixture
def quiet(recwarn): return recwarn   # seed-format loads warn about their missing normalisation factors


# ---------------------------------------------------------------- from_pretrained

def test_from_pretrained_local_folder_is_load(tmp_path):
    cc = small(); cc.save(tmp_path / 'run' / 'sub')
    assert same(CrossCoder.from_pretrained(tmp_path / 'run', subfolder='sub'), cc)
    assert same(CrossCoder.from_pretrained(str(tmp_path / 'run' / 'sub')), cc)
    with pytest.raises(FileNotFoundError, match='does not exist'): CrossCoder.from_pretrained(tmp_path / 'nothing' / 'here')


def test_from_pretrained_seed_release_from_hub_cache(tmp_path, quiet):
    sd = seed_folder(tmp_path / 'release' / SUB)
    seed_folder(tmp_path / 'release' / 'blocks.3.hook_resid_pre', dict_size=8)   # another layer, which must not be fetched
    cache = hub_cache(tmp_path / 'cache', 'ckkissane/crosscoder-gemma-2-2b-model-diff', tmp_path / 'release')
    cc = CrossCoder.from_pretrained('ckkissane/crosscoder-gemma-2-2b-model-diff', subfolder=SUB, cache_dir=cache)
    assert (cc.cfg.d_model, cc.cfg.d_latent, cc.cfg.hook_point) == (6, 16, SUB)
    for k, v in sd.items(): torch.testing.assert_close(cc.state_dict()[k], v)
    x = torch.randn(3, 2, 6)
    ref = torch.einsum('bh,hnd->bnd', torch.relu(torch.einsum('bnd,ndh->bh', x, sd['W_enc']) + sd['b_enc']), sd['W_dec']) + sd['b_dec']
    torch.testing.assert_close(cc(x), ref)


def test_from_pretrained_native_at_root_and_revision(tmp_path):
    cc = small(); cc.save(tmp_path / 'repo')
    cache = hub_cache(tmp_path / 'cache', 'me/cc', tmp_path / 'repo')
    assert same(CrossCoder.from_pretrained('me/cc', cache_dir=cache), cc)
    assert same(CrossCoder.from_pretrained('me/cc', revision=COMMIT, cache_dir=cache), cc)   # a commit that is cached
    with pytest.raises(HubError, match='not in the local Hugging Face cache'): CrossCoder.from_pretrained('me/cc', revision='v2', cache_dir=cache)


def test_from_pretrained_missing_subfolder_or_repo_is_one_clear_error(tmp_path, quiet):
    seed_folder(tmp_path / 'release' / SUB)
    cache = hub_cache(tmp_path / 'cache', 'org/cc', tmp_path / 'release')
    with pytest.raises(HubError, match=r"no checkpoint .* in subfolder 'blocks\.9\.hook_resid_pre'") as e:
        CrossCoder.from_pretrained('org/cc', subfolder='blocks.9.hook_resid_pre', cache_dir=cache)
    assert '\n' not in str(e.value)
    with pytest.raises(HubError, match='no checkpoint .* in its root'): CrossCoder.from_pretrained('org/cc', cache_dir=cache)
    with pytest.raises(HubError, match='org/other is not in the local Hugging Face cache and the hub cannot be reached.*pass a local folder'):
        CrossCoder.from_pretrained('org/other', cache_dir=cache)


@pytest.mark.parametrize('exc, msg', [   # the message of each failure is checked in nbs/00_models.ipynb
    (E.GatedRepoError('401 Client Error', response=resp(401)), 'gated crosscoder org/cc'),
    (E.LocalEntryNotFoundError('not cached'), 'not in the local Hugging Face cache')])
def test_hub_failures_of_the_download_are_mapped(monkeypatch, tmp_path, exc, msg):
    def download(*a, **kw): raise exc
    monkeypatch.setattr(huggingface_hub, 'snapshot_download', download)
    with pytest.raises(HubError, match=msg) as e: CrossCoder.from_pretrained('org/cc', subfolder=SUB)
    assert e.value.__cause__ is exc and '\n' not in str(e.value)


# ---------------------------------------------------------------- push_to_hub

@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    "Stand-ins for create_repo / upload_folder that record the calls and keep a copy of what would be uploaded."
    calls = {'create': [], 'upload': []}
    def create_repo(repo_id, **kw): calls['create'].append((repo_id, kw))
    def upload_folder(*, repo_id, folder_path, **kw):
        calls['upload'].append((repo_id, kw)); shutil.copytree(folder_path, tmp_path / 'uploaded' / repo_id)
        return SimpleNamespace(commit_url=f'https://huggingface.co/{repo_id}/commit/{COMMIT}')
    monkeypatch.setattr(huggingface_hub, 'create_repo', create_repo); monkeypatch.setattr(huggingface_hub, 'upload_folder', upload_folder)
    return calls


def test_push_to_hub_uploads_safetensors_and_a_card_that_loads_back(tmp_path, fake_hub):
    cc = small(activation='batchtopk', k=4, threshold_start=0)
    cc.extra, cc.train_config = {'tokens': 123_456, 'step': 9}, {'lr': 1e-4}
    url = cc.push_to_hub('me/cc', subfolder='blocks.2.hook_resid_pre', private=True, token='t0k',
                         metrics={'l0': 4.0, 'dead_fraction': 0.125, 'explained_variance': {'org/base': 0.8125, 'org/chat': 0.75}})
    assert url == f'https://huggingface.co/me/cc/commit/{COMMIT}'
    assert fake_hub['create'] == [('me/cc', {'private': True, 'token': 't0k', 'exist_ok': True})] and fake_hub['upload'][0][1]['token'] == 't0k'
    up = tmp_path / 'uploaded' / 'me/cc'
    assert sorted(p.name for p in (up / 'blocks.2.hook_resid_pre').iterdir()) == [CONFIG_FILE, WEIGHTS_FILE, 'metrics.json']
    assert not list(up.rglob('*.pt'))                                     # nothing pickled goes up
    back = CrossCoder.from_pretrained(up, subfolder='blocks.2.hook_resid_pre')
    assert same(back, cc) and back.extra == cc.extra and back.train_config == cc.train_config
    card = (up / 'README.md').read_text()
    for s in ('base_model:\n- org/base\n- org/chat', '`blocks.2.hook_resid_pre`', '123,456', 'batchtopk, k = 4',
              '| metric | org/base | org/chat |', '| explained_variance | 0.8125 | 0.75 |', '| dead_fraction | 0.125 |',
              "CrossCoder.from_pretrained('me/cc', subfolder='blocks.2.hook_resid_pre')"):
        assert s in card, s


def test_push_to_hub_finds_metrics_in_the_run_folder(tmp_path, fake_hub):
    (tmp_path / 'run' / 'report').mkdir(parents=True)
    (tmp_path / 'run' / 'report' / 'metrics.json').write_text(json.dumps({'l0': 31.5, 'ce_recovered': {'org/base': 0.9, 'org/chat': 0.875}}))
    small().push_to_hub('me/cc2', run_dir=tmp_path / 'run')
    card = (tmp_path / 'uploaded' / 'me/cc2' / 'README.md').read_text()
    assert '| ce_recovered | 0.9 | 0.875 |' in card and '| l0 | 31.5 |' in card
    small().push_to_hub('me/cc3')
    assert '## Evaluation' not in (tmp_path / 'uploaded' / 'me/cc3' / 'README.md').read_text()   # no metrics: no table


def test_push_to_hub_without_login_names_the_fix(monkeypatch):
    def create_repo(repo_id, **kw): raise E.HfHubHTTPError('401 Client Error: Unauthorized', response=resp(401))
    monkeypatch.setattr(huggingface_hub, 'create_repo', create_repo)
    with pytest.raises(HubError, match='hf auth login'): small().push_to_hub('me/cc')


def test_model_card_of_a_seed_checkpoint_and_eval_markdown(tmp_path, quiet):
    seed_folder(tmp_path / 's')
    card = model_card(CrossCoder.load(tmp_path / 's'), 'me/seed', SUB)
    assert '400,000,000' in card and 'none stored' in card and 'base_model' not in card   # no model names: no hub ids to link
    assert eval_markdown({'l0': 3, 'note': 'text', 'flag': True}) == ['| metric | value |', '|---|---|', '| l0 | 3 |']


# ---------------------------------------------------------------- .pt files that hold more than tensors

class Payload:
    "An object whose unpickling would run a command."
    def __reduce__(self): return (os.system, ('touch PWNED_BY_PICKLE',))


def test_pt_with_code_is_refused_unread_by_every_loader(tmp_path, monkeypatch, quiet):
    monkeypatch.chdir(tmp_path)
    seed_folder(tmp_path / 'release' / SUB)
    torch.save({'W_enc': Payload()}, tmp_path / 'release' / SUB / SEED_WEIGHTS_FILE)
    cache = hub_cache(tmp_path / 'cache', 'evil/cc', tmp_path / 'release')
    loaders = [lambda: load_pt(tmp_path / 'release' / SUB / SEED_WEIGHTS_FILE), lambda: CrossCoder.load(tmp_path / 'release' / SUB),
               lambda: CrossCoder.from_pretrained(tmp_path / 'release', subfolder=SUB),
               lambda: CrossCoder.from_pretrained('evil/cc', subfolder=SUB, cache_dir=cache)]
    for load in loaders:
        with pytest.raises(ValueError, match=r'holds a pickled Python object \((posix|nt)\.system\), not only tensors: it was refused unread') as e: load()
        assert '\n' not in str(e.value)
    assert not (tmp_path / 'PWNED_BY_PICKLE').exists()


def test_pt_of_plain_non_tensor_values_is_refused(tmp_path):
    torch.save({'W_enc': [1.0, 2.0], 'b_enc': torch.zeros(2)}, tmp_path / 'a.pt')
    with pytest.raises(ValueError, match=r"not a dict of tensors \(not tensors: \['W_enc'\]\)"): load_pt(tmp_path / 'a.pt')
    torch.save([torch.zeros(2)], tmp_path / 'b.pt')
    with pytest.raises(ValueError, match='not a dict of tensors'): load_pt(tmp_path / 'b.pt')
    (tmp_path / 'c.pt').write_bytes(b'not a pickle')
    with pytest.raises(ValueError, match='could not be read as a torch state dict .* damaged'): load_pt(tmp_path / 'c.pt')


def test_dfc_round_trips_through_a_local_hub_folder(tmp_path, fake_hub):
    "A dedicated-feature crosscoder: n_exclusive and the exact zeros survive push_to_hub and from_pretrained."
    from crosscoder_nb.crosscoder import model_mask
    cc = small(n_exclusive=[3, 2], n_shared=2)
    cc.push_to_hub('me/dfc', metrics={'l0': 4.0})
    assert 'dedicated latents per model [3, 2]' in (tmp_path / 'uploaded' / 'me/dfc' / 'README.md').read_text()
    back = CrossCoder.from_pretrained(tmp_path / 'uploaded' / 'me/dfc')
    assert same(back, cc) and back.cfg.n_exclusive == [3, 2]
    off = ~model_mask(back.cfg)
    assert (back.W_dec[off] == 0).all() and (back.W_enc.permute(2, 0, 1)[off] == 0).all() and off.sum() == 5
    x = torch.randn(4, 2, 6)
    torch.testing.assert_close(back(x), cc(x))
