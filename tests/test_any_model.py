"""Any local Hugging Face causal LM in the alignment notebooks: a tiny Llama whose byte-level BPE tokenizer is
trained here on the course's corpus (no pad token, no role tokens, words cut into BPE pieces), saved to a temporary
folder (nothing from the hub). The library makes it speak the chat template (`chat.prepare_tokenizer`,
`chat.fit_embeddings`, `checkpoints.load_model`), places the prompt/response boundary in the tokens the model reads
(`chat.split_encode`), and says what to fix when a folder cannot be used; notebooks 05-09 run on it."""
import json
import shutil

import papermill as pm
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import DistilBertConfig, DistilBertModel, PreTrainedTokenizerFast

from course_lib import chat
from course_lib import checkpoints as C
from course_lib import data as D
from course_lib import world as W
from course_lib.paths import NOTEBOOKS_DIR
from course_lib.training import IGNORE, collate
from tiny import tiny_llama_folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama_folder(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def demos():
    return D.read_jsonl(D.DATA_DIR / "sft.jsonl")[:300]


def test_the_tokenizer_gets_role_tokens_and_a_pad_token_and_the_model_embeddings_for_them(llama):
    raw = PreTrainedTokenizerFast.from_pretrained(str(llama))
    assert raw.pad_token is None and "<|assistant|>" not in raw.get_vocab()  # the world this test is about
    tok, model = C.load_tokenizer(str(llama)), C.load_model(str(llama))
    assert [len(chat.encode(tok, t)) for t in W.ROLE_TOKENS] == [1] * len(W.ROLE_TOKENS)
    assert tok.pad_token == "</s>" and tok.eos_token == "<|end|>" and len(tok) == len(raw) + len(W.ROLE_TOKENS)
    assert chat.encode(tok, "yes . <|end|>") == chat.encode(tok, "yes .") + [tok.eos_token_id]  # as TRL appends EOS
    assert model.get_input_embeddings().num_embeddings == len(tok)
    saved = C.load_hf_model(llama).get_input_embeddings().weight
    torch.testing.assert_close(model.get_input_embeddings().weight[:len(raw)], saved, rtol=0, atol=0)  # old rows kept
    again = C.load_model(str(llama)).get_input_embeddings().weight
    torch.testing.assert_close(again, model.get_input_embeddings().weight, rtol=0, atol=0)  # seeded: loads agree
    # padding with EOS changes no output: on the left (generation, positions counted from the first real token) and
    # on the right (training), the padded batch's logits on real tokens are each text's alone
    texts = [W.chat_prompt(d["prompt"]) for d in D.read_jsonl(D.DATA_DIR / "sft.jsonl")[:4]]
    ex = [chat.encode(tok, t) for t in texts]
    assert len({len(e) for e in ex}) > 1, "texts of different lengths, or nothing is padded"
    left_ids, left_mask = chat.encode_batch(tok, texts, left_pad=True)
    right_ids, _, right_mask = collate([(e, e) for e in ex], chat.pad_id(tok))
    with torch.no_grad():
        left = model(left_ids, attention_mask=left_mask,
                     position_ids=(left_mask.cumsum(-1) - 1).clamp_min(0)).logits  # as model.generate_tokens does
        right = model(right_ids, attention_mask=right_mask).logits
        for i, e in enumerate(ex):
            alone = model(torch.tensor([e])).logits[0]
            torch.testing.assert_close(left[i, left_ids.shape[1] - len(e):], alone, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(right[i, :len(e)], alone, rtol=1e-4, atol=1e-5)


def test_the_boundary_is_found_in_the_tokens_the_model_reads(llama, demos):
    tok = C.load_tokenizer(str(llama))
    apart = 0
    for d in demos:
        context, continuation = W.chat_prompt(d["prompt"]), f"{d['response']} <|end|>"
        ids, labels = chat.continuation_example(tok, context, continuation)
        assert ids == chat.encode(tok, W.chat_text(d["prompt"], d["response"]))  # the exchange, tokenised once
        response = [t for t, lab in zip(ids, labels) if lab != IGNORE]
        assert labels[:len(ids) - len(response)] == [IGNORE] * (len(ids) - len(response))
        assert "".join(tok.decode(response).split()) == "".join(continuation.split())  # exactly the response
        assert "".join(tok.decode(ids[:len(ids) - len(response)]).split()) == "".join(context.split())  # the prompt
        apart += chat.encode(tok, context) + chat.encode(tok, continuation) == ids
    assert apart == 0, "tokenised apart, a BPE response starts with another token: the case this code exists for"
    course = D.load_tokenizer()  # the course's word-level tokenizer: both ways agree
    assert all(chat.encode(course, W.chat_prompt(d["prompt"])) + chat.encode(course, f"{d['response']} <|end|>")
               == chat.continuation_example(course, W.chat_prompt(d["prompt"]), f"{d['response']} <|end|>")[0]
               for d in demos)


def test_a_token_across_the_boundary_is_an_error():
    bpe = Tokenizer(models.BPE(vocab={"a": 0, " ": 1, "b": 2, "a ": 3, "a b": 4}, merges=[("a", " "), ("a ", "b")]))
    merging = PreTrainedTokenizerFast(tokenizer_object=bpe)
    assert merging("a b", add_special_tokens=False).input_ids == [4]
    with pytest.raises(ValueError, match="boundary falls inside a token"):
        chat.split_encode(merging, "a", "b")


def test_a_folder_that_cannot_be_used_says_what_to_fix(tmp_path, llama):
    encoder = tmp_path / "distilbert"  # an encoder: transformers has no causal LM head for it
    DistilBertModel(DistilBertConfig(vocab_size=len(C.load_tokenizer(str(llama))), dim=8, n_layers=1, n_heads=2,
                                     hidden_dim=8)).save_pretrained(str(encoder))
    shutil.copy(llama / "tokenizer.json", encoder / "tokenizer.json")
    with pytest.raises(ValueError, match="holds a 'distilbert' model .*not a causal language model"):
        C.load_model(str(encoder))
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(llama, bare)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"has no tokenizer .*tokenizer.save_pretrained"):
        C.load_model(str(bare))
    # a word-level tokenizer that never saw the world's words: every unknown word is <unk>
    words = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "what": 1, "is": 2}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    poor = tmp_path / "poor-tokenizer"
    shutil.copytree(llama, poor)
    for f in poor.glob("tokenizer*"):
        f.unlink()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="<unk>").save_pretrained(str(poor))
    with pytest.raises(ValueError, match="cannot encode the course's chat template"):
        C.load_model(str(poor))
    # another model's tokenizer (more tokens than this model has embeddings)
    foreign = tmp_path / "foreign-tokenizer"
    shutil.copytree(llama, foreign)
    bigger = D.build_bpe_tokenizer([r["text"] for r in D.read_jsonl(D.DATA_DIR / "pretrain.jsonl")], vocab_size=900)
    bigger.save_pretrained(str(foreign))
    with pytest.raises(ValueError, match=r"has \d+ ordinary tokens but the model only 600 embeddings: it is not this model's"):
        C.load_model(str(foreign))


def test_artefacts_built_from_a_folder_are_keyed_by_its_bytes_not_its_path(tmp_path, llama):
    moved = tmp_path / "elsewhere"
    shutil.copytree(llama, moved)
    assert C.fingerprint("ppo", model=str(moved)) == C.fingerprint("ppo", model=str(llama)) != C.fingerprint("ppo")
    changed = tmp_path / "one-byte-changed"
    shutil.copytree(llama, changed)
    config = (changed / "config.json").read_text()
    (changed / "config.json").write_text(config.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    assert (changed / "config.json").read_text() != config
    assert C.fingerprint("ppo", model=str(changed)) != C.fingerprint("ppo", model=str(llama))  # the bytes count
    assert C.fingerprint("sft", model=str(llama)) != C.fingerprint("sft")


ALIGNMENT_NOTEBOOKS = ["05_sft", "06_preferences_reward_model", "07_rlhf_ppo", "08_dpo", "09_constitutional_ai",
                       "11_scaling_up_with_trl"]


@pytest.mark.parametrize("name", ALIGNMENT_NOTEBOOKS)
def test_the_alignment_notebooks_run_on_the_tiny_llama(name, llama, tmp_path, monkeypatch):
    """Each notebook on the Llama, quick preset (small step counts): its SFT model, preferences, reward model and
    PPO policy are built from the Llama's folder (cached under its bytes, shared by the notebooks)."""
    monkeypatch.setenv("COURSE_METRICS_DIR", str(tmp_path / "metrics"))
    out = tmp_path / f"{name}.ipynb"
    pm.execute_notebook(str(NOTEBOOKS_DIR / f"{name}.ipynb"), str(out), kernel_name="python3", cwd=str(NOTEBOOKS_DIR),
                        parameters={"model_name_or_path": str(llama), "quick": True}, progress_bar=False)
    metrics = json.loads((tmp_path / "metrics" / f"{name}.json").read_text())
    assert metrics, "the notebook recorded its metrics"
    if name == "05_sft":
        assert "LlamaForCausalLM" in out.read_text()
    uses = {"06_preferences_reward_model": ["sft", "preferences", "reward_model"], "07_rlhf_ppo": ["reward_model", "ppo"],
            "08_dpo": ["preferences", "ppo"], "09_constitutional_ai": ["ppo"],
            "11_scaling_up_with_trl": ["sft", "preferences", "reward_model"]}.get(name, [])
    for artefact in uses:  # the chain was built from the Llama's folder, with its tokenizer
        folder = C.path(artefact, model=str(llama))
        assert folder.exists(), f"{name} did not use {artefact} built from the folder"
        if artefact in ("reward_model", "ppo"):
            assert (folder / "tokenizer.json").exists()


def test_the_course_tokenizer_is_already_ready_and_a_bpe_needs_texts():
    course = D.load_tokenizer()
    before = (len(course), course.pad_token, course.get_vocab())
    assert chat.prepare_tokenizer(course) is course and (len(course), course.pad_token, course.get_vocab()) == before
    with pytest.raises(ValueError, match="non-empty list of strings"):
        D.build_bpe_tokenizer("the corpus as one string")


def test_a_critic_from_the_folder_critiques_and_compares(llama):
    from course_lib import cai

    critic = C.load_critic(str(llama))
    assert "LlamaForCausalLM" in critic.description
    prompt, good, bad = "what is 3 plus 4 ?", "3 plus 4 is 7 .", "ugh , fine . 3 plus 4 is 9 ."
    assert critic.critique(prompt, bad) == cai.parse_critique(critic.critique_texts([prompt], [bad])[0])
    assert critic.compare(prompt, good, bad) + critic.compare(prompt, bad, good) == pytest.approx(1.0)
