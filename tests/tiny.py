"""A tiny course GPT for fast unit tests (one layer, 16 dimensions), seeded."""
import torch

from course_lib.model import GPT, GPTConfig


def tiny_gpt(tok, seed=0, n_positions=96):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=len(tok), n_positions=n_positions, n_embd=16, n_layer=1, n_head=2,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()
