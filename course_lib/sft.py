"""Supervised fine-tuning on demonstrations, with the loss on response tokens only.

    <|user|> what is 3 plus 4 ? <|assistant|> 3 plus 4 is 7 . <|end|>
    -100     -100 ...           -100          3 plus 4 is 7 . <|end|>     <- labels

The prompt is context, not something to imitate, so its tokens get label -100.
"""
from dataclasses import dataclass

from . import chat
from .training import TrainConfig, train


@dataclass
class SFTConfig(TrainConfig):
    """SFT: next-token training on demonstrations (TrainConfig's fields, SFT's defaults)."""

    steps: int = 300  # AdamW steps
    lr: float = 5e-4  # peak learning rate, lower than pretraining's
    mask_prompt: bool = True  # no loss on the prompt's tokens (labels -100)


def sft_example(tokenizer, prompt, response, mask_prompt=True):
    """(input_ids, labels) for one demonstration; labels are -100 on the prompt when mask_prompt.

    Taught inline in notebook 05 §2 (The SFT loss, with the prompt masked); the notebook asserts they agree."""
    return chat.response_example(tokenizer, prompt, response, mask_prompt)


def sft_examples(tokenizer, rows, mask_prompt=True):
    """Examples of demonstration rows {"prompt", "response"}."""
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "prompt" not in r or "response" not in r:
            raise ValueError(f"row {i} must be a dict with 'prompt' and 'response', got {r!r}")
    return [sft_example(tokenizer, r["prompt"], r["response"], mask_prompt) for r in rows]


def train_sft(model, tokenizer, rows, cfg=None, eval_fn=None, eval_every=None, progress=True):
    """Fine-tune `model` in place on demonstration rows {"prompt", "response"}; returns a TrainResult."""
    cfg = SFTConfig() if cfg is None else cfg
    if not rows:
        raise ValueError("no demonstrations to fine-tune on")
    return train(model, sft_examples(tokenizer, rows, cfg.mask_prompt), cfg, pad_id=chat.pad_id(tokenizer),
                 eval_fn=eval_fn, eval_every=eval_every, progress=progress, desc="SFT")
