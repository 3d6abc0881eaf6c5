"""The course's recipes in TRL's conventions (notebook 11): its data as Hugging Face datasets, its gold reward as a
TRL reward function, and the settings TRL's trainers need on this CPU.

    sft_rows(rows)                  demonstrations -> {"prompt", "completion"}     SFTTrainer (completion_only_loss)
    preference_rows(pairs)          pairs -> {"prompt", "chosen", "rejected"}      RewardTrainer, DPOTrainer
    prompt_rows(prompts)            prompts -> {"prompt"}                          GRPOTrainer, RLOOTrainer
    conversation(prompt, response)  the same exchange as messages, and CHAT_TEMPLATE, which writes it as the course does
    gold_reward_func(prompts, completions)   the world's gold reward, called as TRL calls a reward function
    cpu_args(config_class, ...)     a TRL config for this CPU (no GPU, no bf16, nothing saved or reported)
    stop_like_the_course(model, tokenizer)   generation ends where the course's does (<|end|> or <|critique|>)
    quiet(trainer)                  no log dict printed at each step (the values stay logged)
    logged(trainer, key)            one logged value per step

TRL writes a standard example as prompt + completion and appends the tokenizer's EOS, which `chat.prepare_tokenizer`
makes <|end|>: so "<|user|> P <|assistant|>" + " R" + <|end|> is exactly the course's exchange, token for token
(checked in notebook 11 and tests/test_trl_bridge.py). The course's GPT runs in TRL unchanged: it is its own base
model and returns `last_hidden_state` (course_lib.model.GPTOutput), and `GPTForSequenceClassification` is its reward
model form.
"""
import copy

from transformers import PrinterCallback
from trl import GRPOConfig

from . import chat
from . import dpo as D
from . import world as W

IGNORE = -100

# The course's exchange as a Jinja chat template, for TRL's conversational form: a user turn is
# "<|user|> P <|assistant|>", an assistant turn " R <|end|>".
CHAT_TEMPLATE = ("{% for m in messages %}"
                 "{% if m['role'] == 'user' %}{% if not loop.first %} {% endif %}<|user|> {{ m['content'] }} <|assistant|>"
                 "{% elif m['role'] == 'assistant' %} {{ m['content'] }} <|end|>"
                 "{% else %}{{ raise_exception('the course has user and assistant turns only, got ' + m['role']) }}"
                 "{% endif %}{% endfor %}")


def _check_strings(name, xs):
    if isinstance(xs, str) or not all(isinstance(x, str) for x in xs):
        raise ValueError(f"{name} must be a list of strings (wrap a single one in a list)")


def sft_rows(rows):
    """Demonstrations {"prompt", "response"} in TRL's prompt-completion form: the prompt in the chat template, the
    completion " " + response (TRL appends the EOS, <|end|>). With completion_only_loss, TRL's labels are -100 on the
    prompt: `sft.sft_example`'s prompt masking."""
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
            raise ValueError(f"row {i} must be a dict with string 'prompt' and 'response', got {r!r}")
    return [{"prompt": W.chat_prompt(r["prompt"]), "completion": " " + r["response"]} for r in rows]


# Preference pairs {"prompt", "chosen", "rejected"} in TRL's standard preference form, for RewardTrainer and
# DPOTrainer: one function, taught with DPO (notebook 08 checks it against DPOTrainer's tokens).
preference_rows = D.trl_preference_rows


def prompt_rows(prompts):
    """Prompts in TRL's prompt-only form, for the online trainers: each in the chat template."""
    _check_strings("prompts", prompts)
    return [{"prompt": W.chat_prompt(p)} for p in prompts]


def conversation(prompt, response=None):
    """The exchange as TRL's conversational messages: [{"role": "user", ...}, {"role": "assistant", ...}]."""
    msgs = [{"role": "user", "content": prompt}]
    return msgs if response is None else msgs + [{"role": "assistant", "content": response}]


def request_of(prompt_text):
    """The user's request P back out of "<|user|> P <|assistant|>" (what TRL hands a reward function)."""
    head, tail = "<|user|> ", " <|assistant|>"
    if not isinstance(prompt_text, str) or not (prompt_text.startswith(head) and prompt_text.endswith(tail)):
        raise ValueError(f"expected a prompt in the chat template '<|user|> P <|assistant|>', got {prompt_text!r}; "
                         "build the dataset with prompt_rows")
    return prompt_text[len(head):-len(tail)]


def gold_reward_func(prompts, completions, **kwargs):
    """The world's gold reward of each completion, as TRL calls a reward function (prompts and completions as the
    dataset and the decoder give them; extra dataset columns arrive as keyword arguments and are ignored)."""
    _check_strings("prompts", prompts)
    _check_strings("completions", completions)
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return [W.gold_reward(request_of(p), c.strip()).total for p, c in zip(prompts, completions)]


def cpu_args(config_class, output_dir, **options):
    """A TRL config (SFTConfig, RewardConfig, DPOConfig, GRPOConfig, ...) for this CPU: use_cpu, float32, no
    gradient checkpointing (TRL turns it on; the course's GPT recomputes nothing), no checkpoints saved, no reports,
    no progress bars, one log line per step. `options` are the recipe (steps, batch, learning rate, beta, ...)."""
    base = dict(output_dir=str(output_dir), use_cpu=True, bf16=False, report_to="none", disable_tqdm=True,
                save_strategy="no", logging_steps=1, gradient_checkpointing=False, dataloader_num_workers=0)
    if config_class is GRPOConfig:
        base["log_completions"] = False
    return config_class(**{**base, **options})


def stop_like_the_course(model, tokenizer):
    """Make `model.generate` (what TRL's online trainers sample with) stop where `chat.generate` does: at any of
    chat.RESPONSE_STOPS. Returns the model."""
    model.generation_config = copy.deepcopy(model.generation_config)
    model.generation_config.eos_token_id = chat.stop_ids(tokenizer)
    model.generation_config.pad_token_id = chat.pad_id(tokenizer)
    return model


def quiet(trainer):
    """Stop `trainer` printing its log dict at every step (what transformers does when progress bars are off); the
    values stay in trainer.state.log_history, for `logged`. Returns the trainer."""
    trainer.remove_callback(PrinterCallback)
    return trainer


def logged(trainer, key):
    """The values of one logged key (e.g. "loss", "reward", "kl"), one per logged step, as floats."""
    values = [float(h[key]) for h in trainer.state.log_history if key in h]
    if not values:
        keys = sorted({k for h in trainer.state.log_history for k in h})
        raise ValueError(f"the trainer logged no {key!r}; it logged: {', '.join(keys)}")
    return values
