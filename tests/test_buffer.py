"""The activation buffer on tiny organisms: every model check, BOS and padding dropped, normalisation, refills,
three models, resume."""
import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM
from crosscoder_nb import buffer as B
from crosscoder_nb.buffer import ActivationBuffer, BufferConfig, check_models, estimate_norm_factors, harvest
from crosscoder_nb.data import DataConfig, Source, TokenStream, organisms_mix
from crosscoder_nb.models import load_model
from crosscoder_nb.organisms import OrganismConfig, build_organisms, train_tokenizer
from crosscoder_nb.corpus import load_corpus

from conftest import TINY_ORGANISMS as TINY
SEQ = 32


@pytest.fixture(scope='module')
def models(org): return [org['base'], org['chat']]


def random_gemma(path, tokenizer, d_model=32, n_layers=2, n_ctx=64):
    cfg = Gemma2Config(vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model,
                       num_hidden_layers=n_layers, num_attention_heads=2, num_key_value_heads=1, head_dim=d_model // 2,
                       max_position_embeddings=n_ctx, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    Gemma2ForCausalLM(cfg).save_pretrained(path); tokenizer.save_pretrained(path)
    return load_model(path, device='cpu')


def data(seq_len=SEQ): return organisms_mix(seq_len=seq_len, n_dialogs=300, split='heldout')


def small(**kw):
    return BufferConfig(**{'layer': 1, 'batch_size': 64, 'buffer_batches': 8, 'model_batch_size': 4, 'n_norm_batches': 2, **kw})


@pytest.fixture
def no_forward(monkeypatch):
    "Make any forward pass fail loudly: checks must all run before one."
    def boom(*a, **k): raise AssertionError('a forward pass ran before the checks')
    monkeypatch.setattr(B, 'harvest', boom)


# ---- checks, all before any forward pass ---------------------------------------------------------------------

def test_one_model_is_refused(models, no_forward):
    with pytest.raises(ValueError, match='at least 2 models'): ActivationBuffer(models[:1], data(), small())


def test_mismatched_d_model(models, tmp_path, no_forward):
    wide = random_gemma(tmp_path / 'wide', models[0].tokenizer, d_model=64)
    with pytest.raises(ValueError, match='different d_model'): ActivationBuffer([models[0], wide], data(), small())


def test_different_tokenizer(models, tmp_path, no_forward):
    other = train_tokenizer(['Completely different text for another vocabulary.'] * 30, vocab_size=300)
    m = random_gemma(tmp_path / 'other', other)
    with pytest.raises(ValueError, match='tokenizer differs'): ActivationBuffer([models[0], m], data(), small())


def test_missing_hook_point(models, no_forward):
    with pytest.raises(ValueError, match='no hook point'):
        ActivationBuffer(models, data(), small(hook_point='blocks.1.hook_resid_middle'))


def test_layer_out_of_range(models, no_forward):
    with pytest.raises(ValueError, match='out of range'): ActivationBuffer(models, data(), small(layer=2))


def test_seq_len_beyond_context(models, no_forward):
    with pytest.raises(ValueError, match='exceed model 0'): ActivationBuffer(models, data(seq_len=65), small())


def test_empty_data_fails_at_construction(models, tmp_path, no_forward):
    (tmp_path / 'empty.txt').write_text('')
    cfg = DataConfig([Source('corpus', split='heldout'), Source('text', str(tmp_path / 'empty.txt'))], seq_len=SEQ)
    with pytest.raises(ValueError, match='empty.txt'): ActivationBuffer(models, cfg, small())


def test_stream_with_other_tokenizer_is_refused(models, no_forward):
    other = train_tokenizer(['Completely different text for another vocabulary.'] * 30, vocab_size=300)
    with pytest.raises(ValueError, match="not the models' tokenizer"): ActivationBuffer(models, TokenStream(data(), other), small())


def test_rows_without_bos_are_refused(models):
    rows = torch.randint(3, 300, (4, SEQ))
    buf = ActivationBuffer(models, iter([rows]), small(), progress=False)
    with pytest.raises(ValueError, match='start with BOS'): next(buf)


def test_generic_iterator_rows_too_long_are_refused_before_forward(models, monkeypatch):
    rows = torch.full((2, 65), models[0].tokenizer.bos_token_id)
    buf = ActivationBuffer(models, iter([rows]), small(), progress=False)
    monkeypatch.setattr(B, 'harvest', lambda *a, **k: (_ for _ in ()).throw(AssertionError('forward ran')))
    with pytest.raises(ValueError, match='exceed model 0'): next(buf)


# ---- what is harvested ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('hook', ['blocks.0.hook_resid_pre', 'blocks.1.hook_resid_pre', 'blocks.1.hook_resid_mid',
                                  'blocks.0.hook_resid_post', 'hook_embed'])
def test_harvest_equals_cache(models, hook):
    toks = TokenStream(data(), models[0].tokenizer).take(3)
    _, cache = models[0].run_with_cache(toks, names_filter=hook)
    assert torch.equal(harvest(models[0], toks, hook), cache[hook])


def test_bos_and_padding_dropped(models):
    tok = models[0].tokenizer
    toks = TokenStream(data(), tok).take(3)
    toks[2, -5:] = tok.pad_token_id                        # a right-padded row
    buf = ActivationBuffer(models, iter([]), small(), progress=False)
    acts = buf.activations(toks)
    keep = torch.ones_like(toks, dtype=torch.bool); keep[:, 0] = False; keep[2, -5:] = False
    assert acts.shape == (int(keep.sum()), 2, 32)
    for i, m in enumerate(models):
        _, cache = m.run_with_cache(toks, names_filter='blocks.1.hook_resid_pre')
        assert torch.equal(acts[:, i], cache['blocks.1.hook_resid_pre'][keep])


def test_served_batches_are_exactly_the_non_bos_activations(models):
    tok = models[0].tokenizer
    rows = TokenStream(data(), tok).take(8)
    n = 8 * (SEQ - 1)                                       # 248 activations
    cfg = small(batch_size=31, buffer_batches=8, model_batch_size=8, dtype='float32', normalize=False, refill_at=1.0)
    buf = ActivationBuffer(models, iter([rows]), cfg, progress=False)
    buf.refill()                                            # the first fill: all 248 activations, shuffled
    manual = torch.stack([m.run_with_cache(rows, names_filter='blocks.1.hook_resid_pre')[1]['blocks.1.hook_resid_pre'][:, 1:]
                          .reshape(-1, 32) for m in models], 1)
    key = lambda x: x.reshape(len(x), -1)[:, 0].argsort()
    assert buf.buffer.shape == (n, 2, 32)
    assert torch.equal(buf.buffer[key(buf.buffer)], manual[key(manual)])
    assert not torch.equal(buf.buffer, manual)              # and shuffled


# ---- normalisation -------------------------------------------------------------------------------------------

def test_norm_factors_give_mean_norm_sqrt_d(models):
    buf = ActivationBuffer(models, data(), small(n_norm_batches=4), progress=False)
    s = buf.norm_factors
    assert s.shape == (2,) and (s > 0).all()
    raw = torch.cat([p.float() for p in buf._pending])
    assert torch.allclose(s, 32 ** 0.5 / raw.norm(dim=-1).mean(0), rtol=1e-2)   # bf16 storage of the same tokens
    x = torch.cat([next(buf) for _ in range(8)])
    assert torch.allclose(x.norm(dim=-1).mean(0), torch.full((2,), 32 ** 0.5), rtol=0.05)


def test_given_factors_and_normalize_off(models):
    buf = ActivationBuffer(models, data(), small(), norm_factors=torch.tensor([2.0, 3.0]), progress=False)
    x = next(buf)
    assert torch.equal(buf.norm_factors, torch.tensor([2.0, 3.0]))     # not re-estimated
    assert torch.equal(x, buf.buffer[:64].float() * torch.tensor([2.0, 3.0])[None, :, None])
    off = ActivationBuffer(models, data(), small(normalize=False), progress=False)
    assert torch.equal(off.norm_factors, torch.ones(2))
    assert torch.equal(next(off), off.buffer[:64].float())


# ---- buffer mechanics ----------------------------------------------------------------------------------------

def test_batches_shape_dtype_and_storage(models):
    buf = ActivationBuffer(models, data(), small(), progress=False)
    x = next(buf)
    assert x.shape == (64, 2, 32) and x.dtype == torch.float32 and buf.buffer.dtype == torch.bfloat16
    assert buf.buffer.shape == (8 * 64, 2, 32) and torch.isfinite(x).all()


def test_refill_when_half_used(models):
    buf = ActivationBuffer(models, data(), small(normalize=False), progress=False)
    next(buf)
    first = buf.tokens_harvested
    for _ in range(2): next(buf)
    assert buf.n_refills == 0 and buf.tokens_harvested == first and buf.pointer == 3 * 64
    unserved = buf.buffer[4 * 64:].clone()                  # the half that is not served before the refill
    next(buf)                                               # 4 of 8 batches served: refill
    assert buf.n_refills == 1 and buf.pointer == 0
    assert buf.tokens_harvested >= first + 4 * 64 - (SEQ - 1) * 4   # about half a buffer of fresh tokens (surplus kept)
    kept = {tuple(r.flatten()[:8].tolist()) for r in buf.buffer}
    assert all(tuple(r.flatten()[:8].tolist()) in kept for r in unserved)   # the unserved half stayed


def test_three_models(models, tmp_path):
    third = random_gemma(tmp_path / 'third', models[0].tokenizer)
    buf = ActivationBuffer(models + [third], data(), small(), progress=False)
    x = next(buf)
    assert x.shape == (64, 3, 32) and buf.norm_factors.shape == (3,)


def test_models_by_path(org):
    buf = ActivationBuffer([org['dir'] / 'base', str(org['dir'] / 'chat')], data(), small(device='cpu'), progress=False)
    assert next(buf).shape == (64, 2, 32)


def test_exact_resume_with_buffer_and_data_resume_without(models):
    make = lambda: ActivationBuffer(models, data(), small(), progress=False)
    a = make()
    for _ in range(3): next(a)
    full, light = a.state_dict(include_buffer=True), a.state_dict()
    expected = [next(a) for _ in range(6)]                 # crosses refills
    b = make(); b.load_state_dict(full)
    assert all(torch.equal(next(b), e) for e in expected)
    c = make(); c.load_state_dict(light)
    assert c.data.state_dict() == light['data'] and torch.equal(c.norm_factors, full['norm_factors'])
    h = c.tokens_harvested
    next(c)
    assert c.tokens_harvested > h                          # refilled from the saved stream position


def test_generic_iterator_state_cannot_seek(models):
    a = ActivationBuffer(models, data(), small(), progress=False)
    next(a)
    g = ActivationBuffer(models, iter([]), small(), progress=False)
    with pytest.raises(ValueError, match='cannot seek'): g.load_state_dict(a.state_dict())
