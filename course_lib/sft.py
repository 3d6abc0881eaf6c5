"""Supervised fine-tuning on demonstrations, with the loss on response tokens only.

    <|user|> what is 3 plus 4 ? <|assistant|> 3 plus 4 is 7 . <|end|>
    -100     -100 ...           -100          3 plus 4 is 7 . <|end|>     <- labels

The prompt is context, not something to imitate, so its tokens get label -100.
"""
from .data import chat_prompt
from .training import IGNORE, train


def sft_example(tokenizer, prompt, response, mask_prompt=True):
    """(input_ids, labels) for one demonstration; labels are -100 on the prompt when mask_prompt."""
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError("prompt and response must be strings")
    p_ids = tokenizer(chat_prompt(prompt), add_special_tokens=False).input_ids
    r_ids = tokenizer(f"{response} <|end|>", add_special_tokens=False).input_ids
    ids = p_ids + r_ids
    labels = ([IGNORE] * len(p_ids) if mask_prompt else list(p_ids)) + r_ids
    return ids, labels


def sft_examples(tokenizer, rows, mask_prompt=True):
    return [sft_example(tokenizer, r["prompt"], r["response"], mask_prompt) for r in rows]


def train_sft(model, tokenizer, rows, steps=300, batch_size=32, lr=5e-4, seed=0, mask_prompt=True, **kw):
    """Fine-tune `model` in place on demonstration rows {"prompt", "response"}; returns train()'s log."""
    examples = sft_examples(tokenizer, rows, mask_prompt)
    return train(model, examples, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                 pad_id=tokenizer.pad_token_id, desc="SFT", **kw)
