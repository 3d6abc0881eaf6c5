"""A tiny course GPT for fast unit tests (one layer, 16 dimensions), seeded."""
import torch

from course_lib.model import GPT, GPTConfig


def tiny_gpt(tok, seed=0, n_positions=96):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=len(tok), n_positions=n_positions, n_embd=16, n_layer=1, n_head=2,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()


def tiny_llama_folder(folder, steps=200, seed=0):
    """A local Hugging Face model folder that is not the course's: a tiny Llama (LlamaForCausalLM) with a byte-level
    BPE tokenizer trained here on the course's corpus (no pad token, no role tokens: <|user|> is BPE pieces),
    pretrained `steps` steps on that corpus in its own tokens, saved with save_pretrained. Nothing is downloaded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from course_lib import data as D
    from course_lib.training import TrainConfig, lm_example, train

    texts = [r["text"] for r in D.read_jsonl(D.DATA_DIR / "pretrain.jsonl")]
    tok = D.build_bpe_tokenizer(texts)
    assert tok.pad_token is None and "<|user|>" not in tok.get_vocab()  # what makes it a real model's tokenizer
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160,
                                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                         tie_word_embeddings=True))
    if steps:
        train(model, [lm_example(tok, t) for t in texts], TrainConfig(steps=steps, batch_size=32, lr=3e-3, seed=seed),
              pad_id=tok.eos_token_id, progress=False)
    model.eval().save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
