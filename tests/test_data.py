"""The token stream: config round trips, bad inputs, offline construction, packing, mixing, determinism and resume."""
import json
import pytest
import torch
from crosscoder_nb import data as D
from crosscoder_nb.data import (DataConfig, Packer, Source, TokenStream, documents, load_documents, organisms_mix,
                                pile_lmsys_mix, record_text)
from crosscoder_nb.corpus import CHAT_TEMPLATE, load_corpus
from crosscoder_nb.organisms import pack, train_tokenizer


@pytest.fixture(scope='module')
def tok():
    texts = load_corpus(['kjv'])['kjv'][:300] + [CHAT_TEMPLATE.format(instruction='Hi there.', completion='Hello.')] * 20
    return train_tokenizer(texts + ['alpha beta gamma delta'] * 20, vocab_size=400)


def write(path, text):
    path.write_text(text)
    return str(path)


def lmsys_record(i, reply=True):
    conv = [{'role': 'user', 'content': f'Question number {i}?'}]
    if reply: conv.append({'role': 'assistant', 'content': f'Answer number {i}.'})
    return {'conversation_id': str(i), 'model': 'm', 'conversation': conv, 'language': 'English'}


# ---- config -------------------------------------------------------------------------------------------------


def test_construction_touches_no_network(tok, monkeypatch):
    import datasets
    def boom(*a, **k): raise ConnectionError('no network in tests')
    monkeypatch.setattr(datasets, 'load_dataset', boom)
    s = TokenStream(pile_lmsys_mix(), tok)            # builds without opening anything
    assert s.state_dict() == {'rows': 0, 'sources': [[0, 0], [0, 0]], 'seed': 0}
    with pytest.raises(RuntimeError, match='pile-uncopyrighted'): s.check()   # opening names the source


def test_tokenizer_without_bos_is_refused(tok):
    class NoBos: bos_token_id = None
    with pytest.raises(ValueError, match='no BOS'): TokenStream(organisms_mix(), NoBos())


# ---- documents ----------------------------------------------------------------------------------------------

def test_lmsys_formatting_through_datasets_matches_jsonl_reader(tmp_path, tok):
    path = tmp_path / 'lmsys.jsonl'
    recs = [lmsys_record(i, reply=i % 3 != 2) for i in range(9)]   # every third record has no reply: skipped
    path.write_text(''.join(json.dumps(r) + '\n' for r in recs))
    hub = list(documents(Source('hub', str(path), field='conversation'), repeat=False)(0))
    local = load_documents(Source('jsonl', str(path), field='conversation'))
    assert hub == local == [CHAT_TEMPLATE.format(instruction=f'Question number {i}?', completion=f'Answer number {i}.')
                            for i in range(9) if i % 3 != 2]
    cfg = lambda kind: DataConfig([Source(kind, str(path), field='conversation')], seq_len=16, seed=0)
    assert torch.equal(TokenStream(cfg('hub'), tok).take(30), TokenStream(cfg('jsonl'), tok).take(30))


def test_text_file_layouts(tmp_path):
    assert load_documents(Source('text', write(tmp_path / 'a.txt', 'p1 l1\np1 l2\n\np2\n'))) == ['p1 l1\np1 l2', 'p2']
    assert load_documents(Source('text', write(tmp_path / 'b.txt', 'd1\nd2\r\nd3'))) == ['d1', 'd2', 'd3']


# ---- packing and mixing -------------------------------------------------------------------------------------

def test_single_source_rows_equal_organisms_pack(tmp_path, tok):
    paras = load_corpus(['kjv'])['kjv'][:120]
    path = write(tmp_path / 'kjv.txt', '\n\n'.join(paras))
    s = TokenStream(DataConfig([Source('text', path)], seq_len=48, repeat=False), tok)
    expected = pack(tok, paras, 48)
    rows = s.take(len(expected))
    assert torch.equal(rows, expected)
    with pytest.raises(StopIteration): s.take(1)     # a finite stream ends


def test_rows_start_with_bos_and_have_seq_len(tok):
    b = TokenStream(organisms_mix(seq_len=40, n_dialogs=300, split='heldout'), tok, batch_size=32).__next__()
    assert b.shape == (32, 40) and b.dtype == torch.long
    assert (b[:, 0] == tok.bos_token_id).all() and not (b[:, 1:] == tok.bos_token_id).any()


def test_mix_follows_weights_and_rows_come_from_their_source(tmp_path, tok):
    words = ['kiwi', 'bob', 'zed']   # no letter in common: a row's letters tell its source
    paths = [write(tmp_path / f'{w}.txt', '\n'.join(f'{w} {w} {w}.' for _ in range(50))) for w in words]
    cfg = DataConfig([Source('text', p, weight=wt) for p, wt in zip(paths, (1, 2, 5))], seq_len=12, seed=7)
    s = TokenStream(cfg, tok)
    sched = s.schedule(0, 20_000)
    shares = torch.bincount(sched, minlength=3).double() / len(sched)
    assert torch.allclose(shares, torch.tensor([1, 2, 5], dtype=torch.float64) / 8, atol=0.015), shares
    rows = s.take(200)
    for r, k in zip(rows, sched[:200].tolist()):
        assert set(tok.decode(r[1:])) - set(' .\n') == set(words[k])


def test_determinism_under_seed(tok):
    make = lambda seed: TokenStream(organisms_mix(seq_len=32, n_dialogs=300, split='heldout', seed=seed), tok)
    assert torch.equal(make(1).take(50), make(1).take(50))
    assert not torch.equal(make(1).take(50), make(2).take(50))
    a = make(1); parts = torch.cat([a.take(n) for n in (3, 17, 30)])
    assert torch.equal(parts, make(1).take(50))      # batch boundaries do not matter


def test_packer_position_is_exact_inside_long_documents(tok):
    docs = [' '.join(['lorem'] * 90), 'x', ' '.join(['ipsum'] * 70)]
    src = lambda start: iter(docs[start:])
    p = Packer(src, tok, seq_len=10)
    rows = []
    for i in range(12):
        q = Packer(src, tok, seq_len=10); q.seek(*p.position())
        r = p.next_row(); rows.append(r)
        assert q.next_row() == r, f'row {i}'
    assert all(r[0] == tok.bos_token_id and len(r) == 10 for r in rows)


def test_sharded_streams_split_the_rows_between_ranks():
    "Data-parallel ranks each keep every world-th row of the same stream: together, the unsharded stream, nothing twice."
    from crosscoder_nb.data import TokenStream, organisms_mix
    from crosscoder_nb.models import load_model
    tok = load_model('organism-base', device='cpu').tokenizer
    cfg = organisms_mix('train', seq_len=32, n_dialogs=200)
    whole = TokenStream(cfg, tok).take(12)
    ranks = [TokenStream(cfg, tok).shard(r, 3) for r in range(3)]
    parts = [s.take(4) for s in ranks]
    for r in range(3): assert torch.equal(parts[r], whole[r::3])
    assert all(s.state_dict() == ranks[0].state_dict() for s in ranks)   # one position for every rank
    with pytest.raises(ValueError, match='not in 0..2'): TokenStream(cfg, tok).shard(3, 3)
