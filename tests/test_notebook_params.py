"""Notebooks run with other parameters than their defaults (what a learner with a real model does)."""
import json

import papermill as pm
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from course_lib import data as D
from course_lib.paths import NOTEBOOKS_DIR


def test_sft_notebook_runs_on_a_local_huggingface_gpt2(tmp_path, monkeypatch):
    tok = D.load_tokenizer()
    torch.manual_seed(0)
    model_dir = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=96, n_embd=32, n_layer=1, n_head=2)) \
        .save_pretrained(model_dir)
    tok.save_pretrained(model_dir)  # a model folder holds the tokenizer it was trained with
    monkeypatch.setenv("COURSE_METRICS_DIR", str(tmp_path / "metrics"))
    pm.execute_notebook(str(NOTEBOOKS_DIR / "05_sft.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters={"model_name_or_path": str(model_dir), "sft_steps": 5},
                        kernel_name="python3", cwd=str(NOTEBOOKS_DIR), progress_bar=False)
    metrics = json.loads((tmp_path / "metrics" / "05_sft.json").read_text())
    assert "sft_gold_reward" in metrics and "sft_gold_reward_noisy_large" in metrics
    out = (tmp_path / "out.ipynb").read_text()
    assert "GPT2LMHeadModel" in out
