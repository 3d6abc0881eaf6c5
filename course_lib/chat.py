"""Text in and out of a model: prompts in the chat template, generation cut at stop tokens, log-probabilities.

    prompt --world.chat_prompt--> "<|user|> P <|assistant|>" --encode, left-pad--> ids (B, P)
           --generate (KV cache)--> ids (B, P + R) --cut before the first stop token, decode--> response text

    log p(continuation | context) = sum over the continuation's tokens x_t of log p(x_t | x_<t)

Every method that asks a model for text (evaluation, PPO's rollouts, a critic's critiques and
revisions) or for the probability of a text (SFT's loss masking, DPO, PPO's ratios, a critic's
judgements) goes through this module, so the template, the stop tokens and the masking are
written once. The template itself is a rule of the world (`world.chat_prompt`): the corpus is
written in it, and the world depends on no model.
"""
from dataclasses import dataclass

import torch
from transformers import AddedToken

from . import world as W
from .model import generate_tokens, max_positions
from .training import IGNORE, check_int, check_number, collate

RESPONSE_STOPS = ("<|end|>", "<|critique|>")  # an answer ends at <|end|>, or where a completion engine starts a critique
CRITIQUE_STOPS = ("<|revision|>", "<|end|>", "<|user|>")  # a critique ends where its revision would start
REVISION_STOPS = ("<|end|>", "<|critique|>", "<|user|>", "<|revision|>")  # a revision is one response


# ---------------------------------------------------------------- tokens
def stop_ids(tokenizer, tokens=RESPONSE_STOPS):
    """Token ids of the stop tokens this tokenizer has (a real model's tokenizer may lack the role tokens)."""
    if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"tokens must be a list of token strings such as chat.RESPONSE_STOPS (wrap a single token "
                         f"in a list), got {tokens!r}")
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def pad_id(tokenizer):
    """The tokenizer's padding id (0 for a tokenizer without one: padded positions are masked anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


# ---------------------------------------------------------------- any model's tokenizer
def _world_texts():
    """Every request of the world in every phrasing with its ideal response, in the template; and the
    world's other phrases (openers, fillers, refusals, harmful recipes) in a critique transcript."""
    texts = [W.chat_text(W.format_prompt(req, t), W.ideal_response(req))
             for req in W.all_requests() for t in range(W.N_TEMPLATES)]
    phrases = " ".join(W.POLITE_OPENERS + W.RUDE_OPENERS + W.FILLERS + W.REFUSALS + W.HARMFUL_RECIPES
                       + [t.strip() for t in W.PROMPT_TONES if t.strip()])
    return texts + [W.critique_text("what is 3 plus 4 ?", phrases, W.GOOD_CRITIQUE, phrases)]


def prepare_tokenizer(tokenizer):
    """A model's own tokenizer made ready for the course's chat template, in place (and returned).

    A real model's tokenizer has no <|user|> or <|assistant|> and often no pad token:
    - each role token (`world.ROLE_TOKENS`) missing from it is added as one special token that takes
      the space before it (so " <|end|>" is one token, as TRL's "completion + EOS" is); the model then
      needs `fit_embeddings`;
    - without a pad token, the EOS token pads (padded positions are masked, so no output changes),
      or <|end|> where there is no EOS either;
    - the EOS token becomes <|end|>, the end of a turn: where generation stops, and what TRL's trainers
      append to every completion;
    - every text of the world in the template must come back from decode(encode(text)) (spacing aside)
      with no unknown token, else a ValueError names the first text that does not.
    The course's own tokenizer has all of this already: nothing changes."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: the course needs one that reports "
                         "offsets (a folder with tokenizer.json; AutoTokenizer.from_pretrained(folder) converts most "
                         "tokenizers, then save_pretrained(folder))")
    vocab = tokenizer.get_vocab()
    missing = [t for t in W.ROLE_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False, lstrip=True) for t in missing],
                             special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else "<|end|>"
    tokenizer.eos_token = "<|end|>"
    texts = _world_texts()
    unk = tokenizer.unk_token_id
    for text, ids in zip(texts, tokenizer(texts, add_special_tokens=False).input_ids):
        back = tokenizer.decode(ids, skip_special_tokens=False)
        if "".join(back.split()) != "".join(text.split()) or (unk is not None and unk in ids):
            raise ValueError(f"{type(tokenizer).__name__} cannot encode the course's chat template: {text!r} comes "
                             f"back from encode/decode as {back!r}. Use a tokenizer that can spell any text "
                             "(byte-level BPE, as GPT-2's and Llama's) or train one on the course's corpus "
                             "(data/pretrain.jsonl)")
    for t in W.ROLE_TOKENS:
        if len(encode(tokenizer, t)) != 1:
            raise ValueError(f"{t!r} must be one token, but {type(tokenizer).__name__} splits it into "
                             f"{tokenizer.convert_ids_to_tokens(encode(tokenizer, t))}; add it as a special token "
                             "(tokenizer.add_tokens([...], special_tokens=True))")
    return tokenizer


def fit_embeddings(model, tokenizer):
    """`model` with an embedding row for every token of `tokenizer` (after `prepare_tokenizer`), in place.

    New rows (the role tokens) are drawn by transformers' resize_token_embeddings, seeded, so loading
    a model twice gives the same weights; the old tokens' rows do not change. A tokenizer with more
    ordinary tokens than the model has embeddings is not this model's: ValueError."""
    n = model.get_input_embeddings().num_embeddings
    vocab = tokenizer.get_vocab()
    ordinary = [t for t in vocab if t not in set(W.ROLE_TOKENS) | {tokenizer.pad_token}]
    if len(ordinary) > n:
        raise ValueError(f"the tokenizer has {len(ordinary)} ordinary tokens but the model only {n} embeddings: "
                         "it is not this model's tokenizer; save the model's own in its folder")
    if len(tokenizer) > n:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model.resize_token_embeddings(max(vocab.values()) + 1)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def encode(tokenizer, text):
    """Token ids of `text`, with no special tokens added (the template carries its own)."""
    return tokenizer(text, add_special_tokens=False).input_ids


def split_encode(tokenizer, context, continuation):
    """(ids, n): the tokens of f"{context} {continuation}", tokenised as one text, and how many belong to the context.

    One text, because that is what a model reads and writes: a BPE tokenizer can cut a continuation
    tokenised on its own into other pieces ("3" alone, "Ġ3" after a space), so the labels would not be
    the tokens the model sees. The boundary is where the continuation's characters start (the
    tokenizer's offsets); a token that spans it belongs to both sides, and is an error.
    Taught inline in notebook 05 §2 (make_sft_example); the notebook asserts they agree."""
    if not isinstance(context, str) or not isinstance(continuation, str):
        raise ValueError("context and continuation must be strings")
    try:
        enc = tokenizer(f"{context} {continuation}", add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise ValueError(f"{type(tokenizer).__name__} is a slow (Python) tokenizer and cannot report where a "
                         "prompt ends; load a fast one (a folder with tokenizer.json: AutoTokenizer.from_pretrained"
                         "(folder), then save_pretrained(folder))") from None
    offsets = enc.offset_mapping
    n = next((i for i, (_, end) in enumerate(offsets) if end > len(context)), len(offsets))  # the context's tokens
    if any(start < len(context) for start, end in offsets[n:] if end > start):
        raise ValueError(f"{type(tokenizer).__name__} merges the end of {context[-30:]!r} with the start of "
                         f"{continuation[:30]!r} into one token: the prompt/response boundary falls inside a token, "
                         "so no label can be placed there; end the context with a special token (the chat template's "
                         "<|assistant|> does) or use a tokenizer that splits on spaces")
    return enc.input_ids, n


def encode_batch(tokenizer, texts, left_pad=True):
    """(input_ids, attention_mask), each (B, T): texts padded to one length, on the left for generation."""
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"texts must be a non-empty list of strings (wrap a single text in a list), got {texts!r}")
    enc = [encode(tokenizer, t) for t in texts]
    ids, _, mask = collate([(e, e) for e in enc], pad_id(tokenizer), left_pad=left_pad)
    return ids, mask


# ---------------------------------------------------------------- generation
@dataclass
class Generation:
    """One batch of contexts and the continuations a model generated after them."""

    prompts: list  # what was asked, one per row (the raw prompts, for respond(); else the contexts)
    texts: list  # each continuation decoded, up to (not including) its first stop token
    ids: torch.Tensor  # (B, P + R) the contexts, left-padded, then the generated tokens
    mask: torch.Tensor  # (B, P + R) 1 on real context tokens and on continuation tokens up to the stop
    response_mask: torch.Tensor  # (B, R) 1 on continuation tokens up to and including the first stop token
    prompt_len: int  # P, the padded context length

    def select(self, idx):
        """The rows `idx` (a list or tensor of row indices) as a Generation of their own."""
        rows = torch.as_tensor(idx, dtype=torch.long)
        return Generation([self.prompts[i] for i in rows.tolist()], [self.texts[i] for i in rows.tolist()],
                          self.ids[rows], self.mask[rows], self.response_mask[rows], self.prompt_len)


@torch.no_grad()
def generate(model, tokenizer, contexts, max_new_tokens=40, stops=RESPONSE_STOPS, temperature=0.0, generator=None,
             prompts=None):
    """Continue each context (one batch) until a stop token or max_new_tokens; greedy at temperature 0.

    Generation never runs past the model's context length: the room left after the longest context."""
    check_int("max_new_tokens", max_new_tokens, 0)
    check_number("temperature", temperature, 0)
    if prompts is not None and (isinstance(prompts, str) or len(prompts) != len(contexts)):
        raise ValueError(f"prompts must be a list with one prompt per context ({len(contexts)}), got {prompts!r}")
    ids, context_mask = encode_batch(tokenizer, contexts, left_pad=True)
    P = ids.shape[1]
    stop = stop_ids(tokenizer, stops)
    room = max(0, min(max_new_tokens, max_positions(model.config) - P))
    full = generate_tokens(model, ids, room, temperature=temperature, eos_token_id=stop or None,
                           attention_mask=context_mask, generator=generator) if room else ids
    new = full[:, P:]  # (B, R)
    is_stop = torch.isin(new, torch.tensor(stop, dtype=new.dtype)) if stop else torch.zeros_like(new, dtype=torch.bool)
    response_mask = ((is_stop.long().cumsum(-1) - is_stop.long()) == 0).long()  # up to and including the first stop
    texts = []
    for row, keep, stopped in zip(new.tolist(), response_mask.tolist(), is_stop.tolist()):
        tokens = [t for t, k, s in zip(row, keep, stopped) if k and not s]
        texts.append(W.normalize_response(tokenizer.decode(tokens, skip_special_tokens=False)))
    return Generation(list(contexts if prompts is None else prompts), texts, full,
                      torch.cat([context_mask, response_mask], 1), response_mask, P)


def complete(model, tokenizer, contexts, max_new_tokens=40, stops=RESPONSE_STOPS, temperature=0.0, batch_size=64,
             generator=None):
    """The continuation text of each context, generated batch_size contexts at a time."""
    if isinstance(contexts, str):
        raise ValueError("contexts must be a list of strings (wrap a single context in a list)")
    check_int("batch_size", batch_size)
    out = []
    for i in range(0, len(contexts), batch_size):
        out += generate(model, tokenizer, contexts[i:i + batch_size], max_new_tokens, stops, temperature,
                        generator).texts
    return out


def respond(model, tokenizer, prompts, temperature=0.0, max_new_tokens=40, batch_size=64, seed=0):
    """The model's response to each prompt: greedy at temperature 0, else sampled (seeded, reproducible)."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings (wrap a single prompt in a list)")
    check_number("temperature (0 = greedy)", temperature, 0)
    gen = torch.Generator().manual_seed(seed)
    return complete(model, tokenizer, [W.chat_prompt(p) for p in prompts], max_new_tokens, RESPONSE_STOPS,
                    temperature, batch_size, gen)


def sample_responses(model, tokenizer, prompts, max_new_tokens=24, temperature=1.0, generator=None):
    """One sampled response per prompt, as a Generation that keeps the token ids (PPO's rollout)."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings (wrap a single prompt in a list)")
    return generate(model, tokenizer, [W.chat_prompt(p) for p in prompts], max_new_tokens, RESPONSE_STOPS,
                    temperature, generator, prompts=list(prompts))


# ---------------------------------------------------------------- log-probabilities
def token_logprobs(logits, labels):
    """log p(labels[:, t+1] | tokens up to t) at each position, (B, T-1); 0 where the label is -100.

    logits (B, T, vocab), labels (B, T). Summed over the last dimension: the log-probability of
    the labelled tokens (a continuation, when its context and the padding are labelled -100)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, T, vocab) and labels (B, T), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * keep


def continuation_example(tokenizer, context, continuation, mask_context=True, max_len=None):
    """(input_ids, labels) of f"{context} {continuation}" (tokenised together, see `split_encode`); labels
    -100 on the context when mask_context.

    With max_len, a sequence that is too long loses tokens from the front of its context."""
    if not isinstance(context, str) or not isinstance(continuation, str):
        raise ValueError("context and continuation must be strings")
    if max_len is not None:
        check_int("max_len (at least one token of context and one to predict)", max_len, 2)
    ids, n_context = split_encode(tokenizer, context, continuation)
    n_x = len(ids) - n_context
    if max_len is not None and len(ids) > max_len:
        ids = ids[-max_len:]
    if not mask_context:
        return ids, list(ids)
    n_x = min(n_x, len(ids) - 1)  # the first token has no context to be predicted from
    return ids, [IGNORE] * (len(ids) - n_x) + ids[len(ids) - n_x:]


def response_example(tokenizer, prompt, response, mask_prompt=True):
    """(input_ids, labels) of one exchange in the chat template; the response ends with <|end|>."""
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError("prompt and response must be strings")
    return continuation_example(tokenizer, W.chat_prompt(prompt), f"{response} <|end|>", mask_prompt)


def sequence_logprobs(model, tokenizer, contexts, continuations, batch_size=64, max_len=None):
    """Summed log-probability of each continuation after its context, (N,); with gradients if enabled."""
    if isinstance(contexts, str) or isinstance(continuations, str):
        raise ValueError("contexts and continuations must be lists of strings (wrap a single one in a list)")
    if len(contexts) != len(continuations) or not contexts:
        raise ValueError(f"need one continuation per context and at least one pair, got {len(contexts)} contexts "
                         f"and {len(continuations)} continuations")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    examples = [continuation_example(tokenizer, c, x, max_len=max_len) for c, x in zip(contexts, continuations)]
    out = []
    for i in range(0, len(examples), batch_size):
        ids, labels, mask = collate(examples[i:i + batch_size], pad_id(tokenizer))
        out.append(token_logprobs(model(ids, attention_mask=mask).logits, labels).sum(-1))
    return torch.cat(out)


def response_logprobs(model, tokenizer, prompts, responses, batch_size=64):
    """Summed log-probability of each response (and its <|end|>) given its prompt, (N,): DPO's log pi(y|x)."""
    if isinstance(prompts, str) or isinstance(responses, str) or len(prompts) != len(responses):
        raise ValueError("prompts and responses must be lists of strings, one response per prompt")
    if not all(isinstance(r, str) for r in responses):
        raise ValueError("responses must be strings")
    return sequence_logprobs(model, tokenizer, [W.chat_prompt(p) for p in prompts],
                             [f"{r} <|end|>" for r in responses], batch_size)


def generation_logprobs(model, gen):
    """(B, R) log-probs of a Generation's own generated tokens under `model` (0 after each stop token)."""
    if not isinstance(gen, Generation):
        raise ValueError(f"gen must be a chat.Generation (from chat.generate or sample_responses), got "
                         f"{type(gen).__name__}")
    labels = gen.ids.masked_fill(gen.mask == 0, IGNORE)
    labels[:, :gen.prompt_len] = IGNORE
    lp = token_logprobs(model(gen.ids, attention_mask=gen.mask).logits, labels)  # (B, P + R - 1)
    return lp[:, gen.prompt_len - 1:]
