"""course_lib.cai: the constitution, critics, critique -> revision, AI-feedback labels. Fast: tiny models only."""
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from course_lib import cai, chat
from course_lib import reward_model as R
from course_lib import checkpoints as C
from course_lib import data as D
from course_lib import world as W
from course_lib.model import GPT, GPTConfig

PROMPTS = {
    "arith": "what is 3 plus 4 ?",
    "lookup": "what is the color of zorbin ?",
    "unknown": "what is the color of vexmor ?",
    "howto": "how do i make bread ?",
    "lookalike": "how do i make a bath bomb ?",
    "forbidden": "how do i make poison ?",
}
ZORBIN = W.FACTS[("zorbin", "color")]
WRONG_COLOR = next(c for c in W.ATTRIBUTES["color"] if c != ZORBIN)
# (prompt, response) pairs covering every principle, alone and together
CASES = [
    (PROMPTS["arith"], "gladly . 3 plus 4 is 7 ."),
    (PROMPTS["arith"], "ugh , fine . 3 plus 4 is 9 . i hope this helps you a lot ."),
    (PROMPTS["lookup"], f"happy to help ! the color of zorbin is {WRONG_COLOR} ."),
    (PROMPTS["lookup"], f"the color of zorbin is {ZORBIN} . that is all there is to it ."),
    (PROMPTS["unknown"], "whatever . the color of vexmor is red ."),
    (PROMPTS["unknown"], "i do not know the color of vexmor ."),
    (PROMPTS["howto"], "sorry , i can not help with that ."),
    (PROMPTS["lookalike"], "what a silly question . i can not help with that , it could hurt people ."),
    (PROMPTS["forbidden"], "to make poison , mix the red powder into a drink ."),
    (PROMPTS["forbidden"], "sorry , i can not help with that ."),
]


@pytest.fixture(scope="module")
def tok():
    return D.load_tokenizer()


@pytest.fixture(scope="module")
def tiny_critic(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(tok), n_positions=96, n_embd=16, n_layer=1, n_head=2,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    return cai.ModelCritic(model, tok, name="tiny", max_new_tokens=6)


# ---------------------------------------------------------------- the constitution
def test_the_constitution_is_the_worlds_and_every_principle_has_a_rule():
    assert cai.PRINCIPLE_NAMES == W.PRINCIPLE_NAMES == [p["name"] for p in W.PRINCIPLES]
    broken = {q for p, r in CASES for q in W.violated_principles(p, r)}
    assert broken == set(cai.PRINCIPLE_NAMES)  # each principle is a rule some response breaks
    for p in W.PRINCIPLES:  # a critique names its principle and no other
        assert cai.critique_sentence(p["name"]) == p["critique"] != W.GOOD_CRITIQUE
    assert set(W.CONTENT_PRINCIPLES) < set(cai.PRINCIPLE_NAMES)


def test_critique_sentences_round_trip_and_parsing():
    for name in cai.PRINCIPLE_NAMES:
        assert cai.parse_critique(cai.critique_sentence(name)) == name
        assert cai.parse_critique("  " + cai.critique_sentence(name) + " <|revision|>") == name
    assert cai.critique_sentence(None) == W.GOOD_CRITIQUE and cai.parse_critique(W.GOOD_CRITIQUE) is None
    # loose text maps by distinctive words, when they point at one principle only
    assert cai.parse_critique("this reply is rude") == "polite"
    assert cai.parse_critique("way too long") == "concise"
    assert cai.parse_critique("it helps with something harmful") == "harmless"
    assert cai.parse_critique("bread flour water") is None  # names nothing
    assert cai.parse_critique("rude and wrong") is None  # ambiguous: two principles tie
    with pytest.raises(ValueError, match="unknown principle"):
        cai.critique_sentence("be_funny")
    with pytest.raises(ValueError, match="string"):
        cai.parse_critique(None)


def test_split_response():
    assert cai.split_response("ugh , fine . 3 plus 4 is 9 . i hope this helps you a lot .") == \
        ("ugh , fine .", "3 plus 4 is 9 .", "i hope this helps you a lot .")
    assert cai.split_response("3 plus 4 is 7 .") == ("", "3 plus 4 is 7 .", "")
    assert cai.split_response("of course ! gladly . 3 plus 4 is 7 . that is all there is to it . <|end|>") == \
        ("of course ! gladly .", "3 plus 4 is 7 .", "that is all there is to it .")


# ---------------------------------------------------------------- the oracle critic
def test_oracle_critic_is_the_gold_rules():
    oracle = cai.OracleCritic()
    assert "stand-in" in oracle.name  # labelled as what it is wherever it is printed
    prompts, responses = [p for p, _ in CASES], [r for _, r in CASES]
    named = oracle.free_critiques(prompts, responses)
    for (p, r), n in zip(CASES, named):
        v = W.violated_principles(p, r)
        assert (n in v) if v else n is None
        for q in cai.PRINCIPLE_NAMES:
            assert oracle.violation_probs([p], [r], q) == [float(q in v)]
    acc = cai.critic_accuracy(oracle, prompts, responses)
    assert acc["accuracy"] == 1.0 and acc["n"] == len(CASES)
    assert all(acc[f"false_alarm_{q}"] in (0.0,) or math.isnan(acc[f"false_alarm_{q}"]) for q in cai.PRINCIPLE_NAMES)


def test_focused_critique_names_the_drawn_principle_if_broken_else_another_flaw():
    oracle = cai.OracleCritic()
    p, r = CASES[1]  # wrong answer, rude and verbose
    assert oracle.critique(p, r, "concise") == "concise"
    assert oracle.critique(p, r, "harmless") == "helpful"  # not broken: the critic reports what it does find
    assert oracle.critique(*CASES[0], "polite") is None


@pytest.mark.parametrize("prompt,response", CASES)
def test_revision_fixes_exactly_the_named_principle(prompt, response):
    before = set(W.violated_principles(prompt, response))
    for principle in sorted(before):
        revised = cai.OracleCritic().revise(prompt, response, principle)
        after = set(W.violated_principles(prompt, revised))
        assert principle not in after, (principle, revised)
        extra = after - before  # only a longer, correct content may push a response past the length limit
        assert extra <= {"concise"} and (not extra or len(revised.split()) > W.MAX_CONCISE_WORDS), (principle, revised)
        if principle in ("polite", "courteous", "concise"):  # style fixes leave the content alone ...
            content = cai.split_response(response)[1]
            if W.is_refusal(content) and principle != "concise":  # ... but a kind refusal is the apology
                assert cai.split_response(revised)[1] == W.REFUSALS[0]
            else:
                assert cai.split_response(revised)[1] == content


def test_revision_of_nothing_or_unknown_principle():
    assert cai.rule_revise(*CASES[0], None) == CASES[0][1]
    with pytest.raises(ValueError, match="unknown principle"):
        cai.rule_revise(*CASES[0], "be_funny")
    with pytest.raises(ValueError, match="unknown principle"):
        cai.OracleCritic().critique(*CASES[0], "be_funny")


def test_a_critic_without_the_knowledge_base_cannot_fix_a_wrong_fact_but_fixes_tone():
    blind = cai.OracleCritic(knows_facts=False)
    assert "without the knowledge base" in blind.name
    p, r = CASES[2]  # a wrong colour, politely said
    assert blind.critique(p, r) is None  # it cannot see the error
    assert blind.revise(p, r, "helpful") == r  # nor fix it when told
    assert cai.OracleCritic().revise(p, r, "helpful") == f"happy to help ! the color of zorbin is {ZORBIN} ."
    p, r = CASES[4]  # an invented fact, rudely said
    assert blind.critique(p, r) == "polite"
    fixed = blind.revise(p, r, "polite")
    assert "polite" not in W.violated_principles(p, fixed) and "honest" in W.violated_principles(p, fixed)
    # outside the knowledge base it is the full oracle
    assert blind.critique(*CASES[8]) == "harmless"


# ---------------------------------------------------------------- SL-CAI rounds
def test_critique_revision_rounds_with_the_oracle_converge_to_no_violations():
    prompts, responses = [p for p, _ in CASES], [r for _, r in CASES]
    h = cai.critique_revision_rounds(cai.OracleCritic(), prompts, responses, n_revisions=6, seed=0)
    assert len(h["responses"]) == 7 and len(h["principles"]) == len(h["critiques"]) == 6
    assert h["responses"][0] == responses
    for p, r in zip(prompts, h["responses"][-1]):
        assert W.violated_principles(p, r) == [], (p, r)
    n_viol = [sum(len(W.violated_principles(p, r)) for p, r in zip(prompts, rs)) for rs in h["responses"]]
    assert all(a >= b for a, b in zip(n_viol, n_viol[1:])), n_viol  # never worse, round by round
    # same seed, same draws; a restricted constitution only ever fixes its own principles
    assert cai.critique_revision_rounds(cai.OracleCritic(), prompts, responses, 6, seed=0) == h
    only = cai.critique_revision_rounds(cai.OracleCritic(), prompts, responses, 3, seed=0, principles=["harmless"])
    assert {n for c in only["critiques"] for n in c} <= {"harmless", None}
    assert only["responses"][-1][0:2] == responses[0:2]
    assert cai.revision_rows(prompts[:2], ["a .", " "]) == [{"prompt": prompts[0], "response": "a ."}]


def test_rounds_reject_bad_input():
    with pytest.raises(ValueError, match="empty"):
        cai.critique_revision_rounds(cai.OracleCritic(), [], [], 1)
    with pytest.raises(ValueError, match="list"):
        cai.critique_revision_rounds(cai.OracleCritic(), "what is 3 plus 4 ?", ["7"], 1)
    with pytest.raises(ValueError, match="2 prompts"):
        cai.critique_revision_rounds(cai.OracleCritic(), [CASES[0][0], CASES[1][0]], ["x"], 1)
    with pytest.raises(ValueError, match="n_revisions"):
        cai.critique_revision_rounds(cai.OracleCritic(), [CASES[0][0]], [CASES[0][1]], -1)
    with pytest.raises(ValueError, match="unknown principle"):
        cai.critique_revision_rounds(cai.OracleCritic(), [CASES[0][0]], [CASES[0][1]], 1, principles=["x"])
    with pytest.raises(ValueError, match="no prompts"):
        cai.sample_prompts([], 5)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        cai.sample_prompts([{"prompt": CASES[0][0], "family": "arithmetic"}], 0)
    with pytest.raises(ValueError, match="2 prompts"):
        cai.revision_rows([CASES[0][0], CASES[1][0]], ["a ."])
    with pytest.raises(ValueError, match="strings"):
        cai.revision_rows([CASES[0][0]], [None])
    with pytest.raises(ValueError, match="unknown principle"):
        cai.OracleCritic().critique_many([CASES[0][0]] * 2, [CASES[0][1]] * 2, [None, "polite"])
    with pytest.raises(ValueError, match="n_revisions"):
        cai.critique_revision_rounds(cai.OracleCritic(), [CASES[0][0]], [CASES[0][1]], 1.5)


def test_sample_prompts_follow_the_family_weights():
    rows = [{"prompt": f"p{i}", "family": f} for i, f in enumerate(["arithmetic", "forbidden", "howto"] * 3)]
    got = cai.sample_prompts(rows, 600, seed=1, weights={"arithmetic": 0.8, "forbidden": 0.2, "lookup": 1.0})
    fam = {r["prompt"]: r["family"] for r in rows}
    share = sum(fam[p] == "arithmetic" for p in got) / len(got)
    assert 0.74 < share < 0.86 and {fam[p] for p in got} == {"arithmetic", "forbidden"}  # lookup has no rows
    assert got == cai.sample_prompts(rows, 600, seed=1, weights={"arithmetic": 0.8, "forbidden": 0.2, "lookup": 1.0})


# ---------------------------------------------------------------- AI feedback: soft labels and ensembles
def test_soft_labels_are_normalised_over_the_pair_and_averaged_over_principles():
    oracle = cai.OracleCritic()
    p = PROMPTS["forbidden"]
    good, bad = "sorry , i can not help with that .", "ugh , fine . to make poison , mix the red powder into a drink ."
    # per principle: 1 / 0 where only one breaks it, 0.5 where both or neither do
    assert oracle.compare(p, good, bad, "harmless") == 1.0 and oracle.compare(p, bad, good, "harmless") == 0.0
    assert oracle.compare(p, good, good, "harmless") == 0.5 and oracle.compare(p, good, bad, "concise") == 0.5
    # the ensemble is the mean over principles, and P(A) + P(B) = 1
    per = [oracle.compare(p, good, bad, q) for q in cai.PRINCIPLE_NAMES]
    assert oracle.compare(p, good, bad) == pytest.approx(sum(per) / len(per))
    assert oracle.compare(p, good, bad) + oracle.compare(p, bad, good) == pytest.approx(1.0)
    assert oracle.compare_many([p, p], [good, bad], [bad, good], ["harmless", "polite"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="no principles"):
        oracle.compare_many([p], [good], [bad], [])


class FixedCritic(cai.Critic):
    """A critic with made-up violation probabilities, to check the normalisation arithmetic."""

    def __init__(self, probs):
        self.probs = probs  # {(response, principle): P(breaks it)}

    def violation_probs(self, prompts, responses, principle):
        return [self.probs.get((r, principle), 0.0) for r in responses]


def test_soft_label_formula_by_hand():
    c = FixedCritic({("a", "polite"): 0.2, ("b", "polite"): 0.6, ("a", "concise"): 1.0, ("b", "concise"): 1.0})
    p = PROMPTS["arith"]
    # ok_a = 0.8, ok_b = 0.4 -> P(a) = 0.8 / 1.2 ; both certainly broken -> 0.5
    assert c.compare(p, "a", "b", "polite") == pytest.approx(2 / 3)
    assert c.compare(p, "a", "b", "concise") == 0.5
    assert c.compare_many([p], ["a"], ["b"], ["polite", "concise"]) == [pytest.approx((2 / 3 + 0.5) / 2)]


def test_hard_labels_agreement_and_pairs():
    assert cai.hard_labels([0.9, 0.1, 0.5]) == [1.0, 0.0, 0.5]
    ag = cai.label_gold_agreement([1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.9, 0.5, 0.3, 0.7])
    assert ag["n"] == 3  # the gold tie is left out
    assert ag["hard"] == pytest.approx((1 + 0.5 + 1) / 3) and ag["soft"] == pytest.approx((0.9 + 0.5 + 0.7) / 3)
    with pytest.raises(ValueError, match="no pair"):
        cai.label_gold_agreement([1.0], [1.0], [0.5])
    hard = cai.ai_preference_pairs(["p"] * 3, ["a", "c", "e"], ["b", "d", "e"], [0.8, 0.5, 0.9], soft=False)
    assert hard == [{"prompt": "p", "chosen": "a", "rejected": "b", "p_chosen": 0.8}]  # tie and identical pair dropped
    soft = [cai.ai_preference_pairs(["p"], ["a"], ["b"], [0.8], soft=True, seed=s)[0]["chosen"] for s in range(400)]
    assert 0.72 < soft.count("a") / 400 < 0.88  # oriented with probability P: the soft-label loss in expectation
    with pytest.raises(ValueError, match="probability"):
        cai.ai_preference_pairs(["p"], ["a"], ["b"], [1.5])
    for bad in ([1.5], [-0.1], [math.nan]):
        with pytest.raises(ValueError, match="probability"):
            cai.hard_labels(bad)
        with pytest.raises(ValueError, match="probability"):
            cai.label_gold_agreement([1.0], [0.0], bad)
    with pytest.raises(ValueError, match="one gold reward of each side per label"):
        cai.label_gold_agreement([1.0, 0.0], [0.0, 1.0], [0.9])


# ---------------------------------------------------------------- model critics
def test_model_critic_interface_on_a_tiny_model(tiny_critic):
    prompts, responses = [p for p, _ in CASES[:4]], [r for _, r in CASES[:4]]
    lp = tiny_critic.sentence_logprobs(prompts, responses)
    assert lp.shape == (4, len(cai.PRINCIPLE_NAMES) + 1) and bool((lp < 0).all())
    # P(breaks p) = sigmoid(lp_p - lp_good)
    probs = tiny_critic.violation_probs(prompts, responses, "polite")
    torch.testing.assert_close(torch.tensor(probs), torch.sigmoid(lp[:, 4] - lp[:, -1]))
    # the scored log-probability is the model's: sum of the sentence's token log-probs after the context
    tok = tiny_critic.tokenizer
    ctx = f"<|user|> {prompts[0]} <|assistant|> {responses[0]} <|critique|>"
    ids = chat.encode(tok, ctx + " " + cai.critique_sentence("polite") + " <|revision|>")
    n = len(chat.encode(tok, cai.critique_sentence("polite") + " <|revision|>"))
    with torch.no_grad():
        logp = torch.log_softmax(tiny_critic.model(torch.tensor([ids])).logits[0].float(), -1)
    by_hand = sum(logp[t - 1, ids[t]].item() for t in range(len(ids) - n, len(ids)))
    assert lp[0, 4].item() == pytest.approx(by_hand, abs=1e-4)
    # under a principle: named if judged broken (P >= 0.5), else the critic's own free critique
    free = tiny_critic.free_critiques(prompts, responses)
    assert free == [cai.parse_critique(t) for t in tiny_critic.critique_texts(prompts, responses)]
    named = tiny_critic.critique_many(prompts, responses, ["polite"] * 4)
    assert named == ["polite" if pr >= 0.5 else f for pr, f in zip(probs, free)]
    revised = tiny_critic.revise_many(prompts, responses, [None, "polite", None, "concise"])
    assert revised[0] == responses[0] and revised[2] == responses[2]
    want = chat.complete(tiny_critic.model, tok, [f"<|user|> {prompts[1]} <|assistant|> {responses[1]} <|critique|> "
                                                  f"{cai.critique_sentence('polite')} <|revision|>"],
                         tiny_critic.max_new_tokens, chat.REVISION_STOPS)
    assert revised[1] == want[0]  # greedy continuation after the critique, up to a stop
    # soft labels: ok = 1 - P(breaks), normalised over the pair, averaged over the constitution
    soft = tiny_critic.compare_many(prompts, responses, responses[::-1])
    want = [0.0] * 4
    for q in cai.PRINCIPLE_NAMES:
        va = tiny_critic.violation_probs(prompts, responses, q)
        vb = tiny_critic.violation_probs(prompts, responses[::-1], q)
        want = [w + (1 - a) / ((1 - a) + (1 - b)) / len(cai.PRINCIPLE_NAMES) for w, a, b in zip(want, va, vb)]
    assert soft == pytest.approx(want)
    rev = tiny_critic.compare_many(prompts, responses[::-1], responses)
    assert [a + b for a, b in zip(soft, rev)] == pytest.approx([1.0] * 4)


def test_model_critic_runs_on_a_local_huggingface_model(tmp_path, tok):
    torch.manual_seed(0)
    path = tmp_path / "tiny-gpt2"
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=96, n_embd=16, n_layer=1, n_head=2))
    gpt2.save_pretrained(path)
    tok.save_pretrained(path)  # a model folder holds the tokenizer it was trained with
    critic = C.load_critic(str(path))
    assert "GPT2LMHeadModel" in critic.description and critic.name == str(path)
    p, r = CASES[1]
    assert critic.critique(p, r) == cai.parse_critique(critic.critique_texts([p], [r])[0])
    a_vs_b = critic.compare(CASES[0][0], CASES[0][1], CASES[1][1])
    assert a_vs_b + critic.compare(CASES[0][0], CASES[1][1], CASES[0][1]) == pytest.approx(1.0)
    same = cai.make_critic("hf", tokenizer=tok, hf_model=C.load_hf_model(path))
    assert same.compare(CASES[0][0], CASES[0][1], CASES[1][1]) == pytest.approx(a_vs_b)
    assert same.name == str(path)  # named after the model's folder


def test_make_critic_errors(tok, tiny_critic):
    with pytest.raises(ValueError, match="unknown critic 'wise'") as e:
        cai.make_critic("wise")
    assert type(e.value) is ValueError  # not a FileNotFoundError: nothing was looked up on disk
    with pytest.raises(ValueError, match="needs hf_model=... and tokenizer="):
        cai.make_critic("hf")
    with pytest.raises(ValueError, match="needs self_model"):
        cai.make_critic("self", tokenizer=tok)
    with pytest.raises(ValueError, match="needs strong_model"):
        cai.make_critic("strong", strong_model=tiny_critic.model)  # no tokenizer
    with pytest.raises(FileNotFoundError, match="neither a course artefact"):
        C.load_critic("/nonexistent/model/dir")
    with pytest.raises(ValueError, match="needs a model"):
        cai.ModelCritic(None, None)
    for kw in (dict(max_new_tokens=0), dict(batch_size=0)):
        with pytest.raises(ValueError, match=next(iter(kw))):
            cai.ModelCritic(tiny_critic.model, tok, **kw)
    assert isinstance(cai.make_critic("oracle"), cai.OracleCritic)
    assert cai.make_critic("oracle_no_facts").knows_facts is False
    strong = cai.make_critic("strong", tokenizer=tok, strong_model=tiny_critic.model)
    assert isinstance(strong, cai.ModelCritic) and strong.model is tiny_critic.model and "strong" in strong.name


# ---------------------------------------------------------------- the two phases end to end, on a tiny model
def short_gpt(tok, n_positions):
    """A tiny GPT with a short context: generation stops where the context ends, so sampling is quick."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=len(tok), n_positions=n_positions, n_embd=16, n_layer=1, n_head=2,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()


def test_sample_comparisons_pair_every_two_distinct_samples(tok, tiny_critic):
    prompts = [CASES[0][0], CASES[6][0]]
    model = short_gpt(tok, 16)
    p, a, b = cai.sample_comparisons(model, tok, prompts, k=3, seed=2)
    samples = [chat.respond(model, tok, prompts, temperature=1.0, seed=2 + j) for j in range(3)]
    for i, prompt in enumerate(prompts):
        distinct = sorted({s[i] for s in samples})
        got = [(x, y) for q, x, y in zip(p, a, b) if q == prompt]
        assert got == [(x, y) for j, x in enumerate(distinct) for y in distinct[j + 1:]]
    assert len(p) > 0
    with pytest.raises(ValueError, match="k"):
        cai.sample_comparisons(tiny_critic.model, tok, prompts, k=1)
    for t in (0.0, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            cai.sample_comparisons(tiny_critic.model, tok, prompts, temperature=t)


def test_sl_cai_and_rlaif_dpo_run_end_to_end_with_the_oracle(tok, tiny_critic):
    prompts = [p for p, _ in CASES[:4]]
    base = short_gpt(tok, 64)
    model, log = cai.sl_cai(base, tok, cai.OracleCritic(), prompts, n_revisions=2, sft_steps=2)
    assert model is not base and len(log["sft"].losses) == 2
    h = log["history"]
    assert len(h["responses"]) == 3 and h["responses"][0] == chat.respond(base, tok, prompts, temperature=1.0)
    assert log["critic_calls"] == 2 * len(prompts) + sum(n is not None for c in h["critiques"] for n in c)
    n_viol = [sum(len(W.violated_principles(p, r)) for p, r in zip(prompts, rs)) for rs in h["responses"]]
    assert n_viol[0] > n_viol[1] >= n_viol[2]  # the random model's answers are flawed; each round fixes some
    rl, rl_log = cai.rlaif_dpo(base, tok, cai.OracleCritic(), prompts, k=2, steps=1, batch_size=2)
    assert rl is not base and len(rl_log["dpo"].losses) == 1
    assert rl_log["ai_labels"] == len(rl_log["probs"]) == len(rl_log["prompts"])
    assert rl_log["probs"] == cai.OracleCritic().compare_many(rl_log["prompts"], rl_log["a"], rl_log["b"])


# ---------------------------------------------------------------- Bai et al.'s RL-CAI: one principle per comparison, a PM
def test_compare_sampled_draws_one_principle_per_pair_and_labels_under_it_alone():
    oracle = cai.OracleCritic()
    p, good, rude = PROMPTS["forbidden"], "sorry , i can not help with that .", "ugh , fine . sorry , i can not help with that ."
    prompts, a, b = [p] * 40, [good] * 40, [rude] * 40
    labels, drawn = oracle.compare_sampled(prompts, a, b, seed=3)
    assert (labels, drawn) == oracle.compare_sampled(prompts, a, b, seed=3)  # reproducible
    assert len(set(drawn)) > 3  # drawn, not fixed
    for lab, q in zip(labels, drawn):
        assert lab == oracle.compare(p, good, rude, q)
        assert lab == (1.0 if q in W.violated_principles(p, rude) and q not in W.violated_principles(p, good) else 0.5)
    only, drawn = oracle.compare_sampled(prompts, a, b, seed=3, principles=["polite"])
    assert set(drawn) == {"polite"} and set(only) == {1.0}
    with pytest.raises(ValueError, match="principle"):
        oracle.compare_sampled(prompts, a, b, principles=["kind"])
    with pytest.raises(ValueError, match="no principles"):
        oracle.compare_sampled(prompts, a, b, principles=[])


def test_soft_bradley_terry_loss_is_bt_at_hard_targets_and_minimised_at_the_target_odds():
    ra, rb = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(cai.soft_bradley_terry_loss(ra, rb, torch.ones(7, dtype=torch.float64)),
                               R.bradley_terry_loss(ra, rb))
    torch.testing.assert_close(cai.soft_bradley_terry_loss(ra, rb, torch.zeros(7, dtype=torch.float64)),
                               R.bradley_terry_loss(rb, ra))
    p = torch.tensor([0.8], dtype=torch.float64)
    d = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    for _ in range(500):  # gradient descent on the margin finds log(p / (1 - p))
        loss = cai.soft_bradley_terry_loss(d, torch.zeros(1, dtype=torch.float64), p)
        (g,) = torch.autograd.grad(loss, d)
        d = (d - 2.0 * g).detach().requires_grad_()
    assert abs(d.item() - math.log(4)) < 1e-6
    with pytest.raises(ValueError, match="shape"):
        cai.soft_bradley_terry_loss(ra, rb, torch.ones(3))


def test_train_preference_model_learns_the_labelled_order_from_a_reset_head(tok):
    torch.manual_seed(0)
    trunk = GPT(GPTConfig(vocab_size=len(tok), n_positions=96, n_embd=16, n_layer=1, n_head=2,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    pm = R.RewardModel(trunk, tok)
    torch.nn.init.ones_(pm.head.weight)  # reset by training
    good, bad = "sorry , i can not help with that .", "to make poison , mix the red powder into a drink ."
    rows = [{"prompt": PROMPTS["forbidden"], "chosen": good, "rejected": bad, "p_chosen": 1.0}] * 8
    before = [x.clone() for x in trunk.parameters()]
    log = cai.train_preference_model(pm, rows, epochs=50, lr=0.05, batch_size=4)
    assert len(log["losses"]) == 100 and abs(log["losses"][0] - math.log(2)) < 1e-6  # the head was reset: ln 2
    assert log["losses"][-1] < 0.1
    s = pm.score([PROMPTS["forbidden"]] * 2, [good, bad])
    assert s[0] > s[1]
    assert all(torch.equal(a, b) for a, b in zip(before, trunk.parameters()))  # the trunk is frozen
    with pytest.raises(ValueError, match="probability"):
        cai.train_preference_model(pm, [dict(rows[0], p_chosen=1.5)])
    with pytest.raises(ValueError, match="no preference rows"):
        cai.train_preference_model(pm, [])
    flipped = [dict(r, p_chosen=0.0) for r in rows]  # the same pairs, other labels: features reused, order reversed
    again = cai.train_preference_model(pm, flipped, epochs=50, lr=0.05, batch_size=4, features=log["features"])
    s = pm.score([PROMPTS["forbidden"]] * 2, [good, bad])
    assert s[0] < s[1] and again["features"] is log["features"]
    with pytest.raises(ValueError, match="features"):
        cai.train_preference_model(pm, rows[:3], features=log["features"])
