import os
# Tests never reach the model hub: everything they load is bundled or built on the spot.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')


import pytest
from crosscoder_nb.models import load_model
from crosscoder_nb.organisms import OrganismConfig, build_organisms
from crosscoder_nb.corpus import load_corpus

# A pair of tiny organisms (2 layers, d_model 32) built once per test session in about a second: the same recipe
# as the bundled ones, small enough for tests that need real models with known shapes (built per test file).
TINY_ORGANISMS = OrganismConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_mlp=64, n_ctx=64, seq_len=32,
                                batch_size=8, base_tokens=8 * 32 * 200, chat_tokens=8 * 32 * 20, n_dialogs=200,
                                tokenizer_chars=50_000, base_lr=1e-2)

@pytest.fixture(scope='module')   # fresh models per test file: no test sees hooks or state another file left
def org(tmp_path_factory):
    out = tmp_path_factory.mktemp('organisms')
    corpus = load_corpus(['kjv', 'python_docs'])
    build_organisms(out, TINY_ORGANISMS, {'kjv': corpus['kjv'][:150], 'python_docs': corpus['python_docs'][:1500]}, progress=False)
    return {'dir': out, 'base': load_model(out / 'base', device='cpu'), 'chat': load_model(out / 'chat', device='cpu')}
