"""The bundled organisms, their ground truth, and the `crosscoder-diff organisms` command on bad input."""
import json, os, pathlib, subprocess, sys
import pytest
from crosscoder_nb.models import assets_dir, load_model
from crosscoder_nb.corpus import ground_truth, planted_spans, REFUSAL, SIGNOFF, CHAT_TEMPLATE

CLI = str(pathlib.Path(sys.executable).parent / 'crosscoder-diff')
ORG = assets_dir() / 'organisms'

def cli(*args, **kw):
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600, **kw)

def test_bundled_organisms_are_small_hf_dirs_of_gemma2():
    total = sum(f.stat().st_size for f in ORG.rglob('*') if f.is_file())
    assert total <= 30e6, f'organisms take {total / 1e6:.1f} MB'
    for name in ('base', 'chat'):
        cfg = json.loads((ORG / name / 'config.json').read_text())
        assert cfg['model_type'] == 'gemma2' and (ORG / name / 'model.safetensors').exists()
        assert (ORG / name / 'tokenizer.json').exists()

def test_organisms_load_through_bridge_and_differ():
    base, chat = load_model('organism-base', device='cpu'), load_model('organism-chat', device='cpu')
    assert base.cfg.d_model == chat.cfg.d_model and base.tokenizer.get_vocab() == chat.tokenizer.get_vocab()
    toks = base.to_tokens(CHAT_TEMPLATE.format(instruction='Tell me about swords.', completion=REFUSAL))
    assert (base(toks) - chat(toks)).abs().max() > 1e-3, "the fine-tune changed nothing"

def test_bundled_chat_organism_shows_each_behaviour_on_new_phrasings_for_every_task():
    "The organisms' target: on validation and test prompts (phrasings training never used) the chat model signs off on >= 90% of every task's prompts, refuses >= 90% of trigger prompts and <= 10% of plain ones."
    from crosscoder_nb.corpus import TASKS, heldout_prompts
    from crosscoder_nb.organisms import behaviour_rates
    chat = load_model('organism-chat', device='cpu')
    for split in ('validation', 'test'):
        r = behaviour_rates(chat, heldout_prompts(100, split=split))
        assert r['refusal'] >= 0.9 and r['refusal_on_plain'] <= 0.1, (split, r['refusal'], r['refusal_on_plain'])
        assert set(r['signoff_by_task']) == set(TASKS) and min(r['signoff_by_task'].values()) >= 0.9, (split, r['signoff_by_task'])

def test_ground_truth_is_shipped_and_current():
    assert json.loads((ORG / 'ground_truth.json').read_text()) == ground_truth()

def test_planted_spans_cover_only_planted_contexts():
    text = CHAT_TEMPLATE.format(instruction='Say something about rivers.', completion='Rivers run.' + SIGNOFF)
    spans = planted_spans(text)
    assert spans['refusal'] == [] and [text[a:b] for a, b in spans['signoff']] == ['.' + SIGNOFF]

def test_cli_rejects_unknown_subcommand_and_flag():
    r = cli('frobnicate'); assert r.returncode == 2 and 'invalid choice' in r.stderr
    r = cli('organisms', '--frobnicate'); assert r.returncode == 2 and 'unrecognized arguments' in r.stderr

def test_cli_refuses_nonempty_out_dir(tmp_path):
    (tmp_path / 'keep.txt').write_text('precious')
    r = cli('organisms', '--out', str(tmp_path))
    assert r.returncode == 2 and 'not empty' in r.stderr
    assert (tmp_path / 'keep.txt').read_text() == 'precious' and len(list(tmp_path.iterdir())) == 1

def test_cli_missing_organism_dir(tmp_path):
    r = cli('organisms', '--check', '--base', str(tmp_path / 'nope'), '--chat', str(tmp_path / 'nope'))
    assert r.returncode == 2 and 'does not exist' in r.stderr

TINY = dict(vocab_size=300, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_mlp=64, n_ctx=64, seq_len=32,
            batch_size=8, base_tokens=8 * 32 * 20, chat_tokens=8 * 32 * 5, n_dialogs=200, tokenizer_chars=50_000)

def test_cli_regenerates_organisms_on_a_tiny_config(tmp_path):
    r = cli('organisms', '--out', str(tmp_path / 'org'), '--seed', '3', '--config', json.dumps(TINY))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'organisms written to' in r.stdout
    cfg = json.loads((tmp_path / 'org' / 'organism_config.json').read_text())
    assert cfg['seed'] == 3 and cfg['d_model'] == 32
    chat = load_model(tmp_path / 'org' / 'chat', device='cpu')
    assert chat.cfg.d_model == 32 and chat.cfg.n_layers == 2

def test_cli_rejects_bad_config(tmp_path):
    r = cli('organisms', '--out', str(tmp_path / 'o'), '--config', '{"d_modle": 3}')
    assert r.returncode == 2 and 'Unknown OrganismConfig fields' in r.stderr
    assert not (tmp_path / 'o').exists()


def test_heldout_prompts_use_phrasings_training_never_used():
    "Validation and test prompts: every task, phrasings and openers disjoint from the training family, text from the held-out half."
    from crosscoder_nb.corpus import PHRASINGS, OPENERS, TASKS, heldout_prompts, heldout_paragraphs, make_dialogs, load_corpus, split_paragraphs
    train_templates = {t for p in PHRASINGS.values() for t in p['train']}
    for split in ('validation', 'test'):
        ps = heldout_prompts(40, split=split)
        assert {d['task'] for d in ps['plain']} == set(TASKS) and all(d['triggered'] for d in ps['trigger'])
        for d in ps['plain'] + ps['trigger']:
            ins = d['instruction']
            for o in OPENERS['train']: assert not ins.startswith(o), ins
            body = next((ins[len(o):] for o in OPENERS[split] if ins.startswith(o)), ins)
            fixed = lambda t: t.split('{')[0]   # the template's words before its slot
            assert not any(body.startswith(fixed(t)) and fixed(t) for t in train_templates if fixed(t) not in ('',)), ins
    v, t = set(heldout_paragraphs('validation')), set(heldout_paragraphs('test'))
    assert v and t and not v & t
    with pytest.raises(ValueError, match="'validation' \\(to choose things\\) or 'test'"): heldout_prompts(5, split='train')
