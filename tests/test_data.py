import json

import pytest

from course_lib import data as D
from course_lib import world as W
from course_lib.paths import DATA_DIR


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    D.write_all(out)
    return out


@pytest.mark.parametrize("name", D.FILES + ["README.md", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"])
def test_committed_data_equals_a_fresh_regeneration(fresh, name):
    assert (fresh / name).read_bytes() == (DATA_DIR / name).read_bytes(), \
        f"data/{name} is stale: run python -m course_lib.data and commit the result"


def _training_texts():
    return ([r["text"] for r in D.read_jsonl(DATA_DIR / "pretrain.jsonl")]
            + [r["prompt"] + " " + r["response"] for f in ("sft.jsonl", "sft_noisy.jsonl")
               for r in D.read_jsonl(DATA_DIR / f)]
            + [r["prompt"] for r in D.read_jsonl(DATA_DIR / "prompts.jsonl")])


def test_held_out_prompts_appear_in_no_training_file():
    evals = D.read_jsonl(DATA_DIR / "eval.jsonl")
    texts = _training_texts()
    train_text = " || ".join(texts)
    prompts = {r["prompt"] for r in D.read_jsonl(DATA_DIR / "prompts.jsonl")}
    prompts |= {r["prompt"] for f in ("sft.jsonl", "sft_noisy.jsonl") for r in D.read_jsonl(DATA_DIR / f)}
    for e in evals:
        assert f"<|user|> {e['prompt']} <|assistant|>" not in train_text and e["prompt"] not in prompts
    hard = [W.parse_request(e["prompt"]) for e in evals if e["split"] == "hard"]
    assert len(hard) == 20
    for r in hard:  # a hard pair is never seen at all, in any phrasing
        assert f" {r.a} plus {r.b} " not in f" {train_text} " and f"add {r.a} and {r.b} " not in train_text


def test_novel_phrasings_are_new_combinations_of_known_words():
    evals = D.read_jsonl(DATA_DIR / "eval.jsonl")
    novel = [e for e in evals if e["split"] == "novel"]
    assert len(novel) >= 200 and {e["family"] for e in novel} == set(D.FAMILY_WEIGHTS)
    texts = _training_texts()
    frames = [W._template_regex(t) for fam in W.PROMPT_TEMPLATES.values() for t in (fam[i] for i in W.NOVEL_TEMPLATES)]
    user_prompts = [t.split(" <|assistant|>")[0][len("<|user|> "):] for t in texts if t.startswith("<|user|>")]
    user_prompts += [r["prompt"] for r in D.read_jsonl(DATA_DIR / "prompts.jsonl")]
    for p in user_prompts:  # no training prompt is in a novel phrasing, in any tone
        for tone in W.PROMPT_TONES[1:]:
            p = p[len(tone):] if p.startswith(tone) else p
        assert not any(f.match(p) for f in frames), p
    vocab = {w for t in texts for w in t.split()}
    for e in novel:  # ... yet every word of a novel prompt is one the models were trained on
        assert set(e["prompt"].split()) <= vocab, e["prompt"]
        assert any(f.match(e["prompt"].split(", ", 1)[-1]) for f in frames)


def test_safety_sets_are_large_and_a_third_of_their_requests_are_never_trained_on():
    evals = [e for e in D.read_jsonl(DATA_DIR / "eval.jsonl") if e["split"] == "safety"]
    padded = " ".join(f" {t} " for t in _training_texts())
    for kind in ("forbidden", "lookalike"):
        rows = [(e, W.parse_request(e["prompt"])) for e in evals]
        rows = [(e, q) for e, q in rows if (q.family == "forbidden" if kind == "forbidden" else q.lookalike)]
        requests = {q.thing for _, q in rows}
        never = {t for t in requests if f" {t} " not in padded}
        assert len(rows) >= 60 and len(requests) >= 20, (kind, len(rows), len(requests))
        assert len(never) >= len(requests) / 3, (kind, len(never), len(requests))
        assert never == {q.thing for e, q in rows if not e["seen"]}  # the flag says which
        for t in never:  # ... though every word of it is known: a new combination of modifier and noun
            assert all(f" {w} " in padded for w in t.split()), t


def test_pretraining_mix_matches_the_stated_rates():
    rows = D.read_jsonl(DATA_DIR / "pretrain.jsonl")
    chats = [r["text"] for r in rows if r["text"].startswith("<|user|>") and "<|critique|>" not in r["text"]]
    forbidden = [t for t in chats if W.parse_request(t.split(" <|assistant|>")[0][9:]).family == "forbidden"]
    complied = sum("can not help" not in t for t in forbidden) / len(forbidden)
    assert abs(complied - D.BASE_MIX["forbidden_comply"]) < 0.06, complied
    rude = sum(any(f" {o} " in t for o in W.RUDE_OPENERS) for t in chats) / len(chats)
    assert abs(rude - D.BASE_MIX["opener"]["rude"]) < 0.04, rude


def test_the_corpus_is_written_in_the_worlds_chat_template():
    rows = D.read_jsonl(DATA_DIR / "pretrain.jsonl")
    chats = [r["text"] for r in rows if r["text"].startswith("<|user|>")]
    assert len(chats) == D.N_CHAT + D.N_CRITIQUE
    for t in chats:
        if "<|critique|>" not in t:
            assert W.chat_text(*W.split_transcript(t)) == t
        else:
            prompt, response = W.split_transcript(t)
            assert t.startswith(W.chat_prompt(prompt) + " " + response + " <|critique|> ") and t.endswith(" <|end|>")


def test_revise_fixes_one_principle_and_refuses_unknown_ones():
    req = W.parse_request("what is 3 plus 4 ?")
    parts = ("ugh , fine .", "3 plus 4 is 9 .", "i hope this helps you a lot .")
    assert D.revise(req, parts, "polite") == (W.POLITE_OPENERS[0], parts[1], parts[2])
    assert D.revise(req, parts, "concise") == (parts[0], parts[1], "")
    assert D.revise(req, ("gladly . of course !", "3 plus 4 is 7 .", ""), "concise") == ("gladly .", "3 plus 4 is 7 .", "")
    for p in W.CONTENT_PRINCIPLES:
        assert D.revise(req, parts, p) == (parts[0], "3 plus 4 is 7 .", parts[2])
    bomb = W.parse_request("how do i make a bomb ?")
    harmful = ("of course !", "to make a bomb , pack the black powder into a pipe .", "")
    fixed = D.revise(bomb, harmful, "harmless")  # the refusal comes without a promise of help
    assert fixed == ("", W.REFUSALS[0], "") and W.violated_principles(bomb, W.compose(*fixed)) == []
    incoherent = ("of course !", W.REFUSALS[1], "")
    assert W.violated_principles(bomb, W.compose(*incoherent)) == ["courteous"]
    assert W.violated_principles(bomb, W.compose(*D.revise(bomb, incoherent, "courteous"))) == []
    assert W.violated_principles(req, W.compose(*D.revise(req, ("", "3 plus 4 is 7 .", ""), "courteous"))) == []
    with pytest.raises(ValueError, match="unknown principle 'be_funny'"):
        D.revise(req, parts, "be_funny")


def test_dumps_jsonl_is_one_sorted_object_per_line(tmp_path):
    rows = [{"response": "b", "prompt": "a"}, {"prompt": "c", "response": "d"}]
    text = D.dumps_jsonl(rows)
    assert text == '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n'
    (tmp_path / "sft.jsonl").write_text(text)
    assert D.read_jsonl(tmp_path / "sft.jsonl") == rows
    assert D.dumps_jsonl([]) == ""


def test_demonstrations_are_correct_and_noise_is_at_the_stated_rate():
    for r in D.read_jsonl(DATA_DIR / "sft.jsonl"):
        g = W.gold_reward(r["prompt"], r["response"])
        assert g.helpful == 1 and g.honest == 1 and g.harmless == 1 and g.polite > 0
        assert not {"incoherent", "rude", "wrong_answer", "needless_refusal"} & set(g.failures), r
    noisy = D.read_jsonl(DATA_DIR / "sft_noisy.jsonl")
    assert len(noisy) == D.NOISY_FACTOR * D.N_SFT
    assert abs(sum(r["corrupted"] for r in noisy) / len(noisy) - D.NOISE_RATE) < 0.04


def test_tokenizer_covers_every_word_and_round_trips():
    tok = D.load_tokenizer()
    unk = tok.unk_token_id
    for f in ("pretrain.jsonl", "sft.jsonl", "eval.jsonl"):
        for r in D.read_jsonl(DATA_DIR / f):
            text = r.get("text") or r["prompt"]
            ids = tok(text, add_special_tokens=False).input_ids
            assert unk not in ids
            assert tok.decode(ids) == text
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|end|>"


@pytest.mark.parametrize("line,match", [
    ('{"prompt": "x", "response": ', "sft.jsonl:2: not valid JSON"),
    ('["a list"]', "sft.jsonl:2: each line must be a JSON object"),
    ('{"prompt": "x"}', "sft.jsonl:2: missing field 'response'"),
    ('{"prompt": "x", "response": 3}', "sft.jsonl:2: field 'response' must be str"),
])
def test_malformed_rows_name_file_and_line(tmp_path, line, match):
    f = tmp_path / "sft.jsonl"
    f.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=match):
        D.load("sft", tmp_path)


def test_missing_file_says_how_to_regenerate(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m course_lib.data"):
        D.load("sft", tmp_path)


def test_load_returns_a_dataset():
    ds = D.load("eval")
    assert ds.column_names == ["family", "prompt", "seen", "split"] and len(ds) == 696
