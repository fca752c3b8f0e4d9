"""A tiny random Qwen3 checkpoint and tokenizer, made on the spot (no download).

`make_checkpoint(folder)` writes what a Hugging Face Qwen3 checkpoint folder
holds: config.json, generation_config.json, model.safetensors (random
weights) and tokenizer files (a byte-level BPE trained on a few sentences,
with Qwen3's special tokens and a Qwen3-like chat template). The weights are
written by transformers' own PyTorch Qwen3 when torch is installed (so the
test compares against it), else by numpy.
"""

from __future__ import annotations

import json
import os

import numpy as np

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? The answer is 72.",
    "Let me think step by step. First, compute the total. So the answer is (C).",
    "def f(x): return x + 1\nassert f(1) == 2\n[ANSWER] 2 [/ANSWER]",
    "Answer: B. The final answer is \\boxed{1,234}. Question: which option is correct? A) B) C) D)",
    "0123456789 + - * / = ( ) [ ] { } , . ; : ' \" \\ $ # _",
]

CONFIG = {
    "vocab_size": 320, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
    "tie_word_embeddings": False, "attention_bias": False,
}

# what a real vLLM serves: its CPU attention kernels reject head_dim 16 (../shared/notes/vllm-on-cpu.md)
VLLM_CONFIG = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 64}


def make_tokenizer(folder: str):
    """Train a byte-level BPE with Qwen3's special tokens and save it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.add_tokens(["<think>", "</think>"])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def make_checkpoint(folder: str, seed: int = 0, tie: bool = False, **overrides) -> dict:
    """Write a tiny random Qwen3 checkpoint with tokenizer into `folder`; return its config dict."""
    os.makedirs(folder, exist_ok=True)
    tokenizer = make_tokenizer(folder)
    config = dict(CONFIG, tie_word_embeddings=tie, **overrides)
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    assert len(tokenizer) <= config["vocab_size"], len(tokenizer)
    try:
        import torch
        from transformers import Qwen3Config, Qwen3ForCausalLM
    except ImportError:
        torch = None
    if torch is not None:
        torch.manual_seed(seed)
        hf_config = Qwen3Config(**config, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                bos_token_id=eos[1], eos_token_id=eos, pad_token_id=eos[1])
        model = Qwen3ForCausalLM(hf_config).float()
        with torch.no_grad():  # larger-than-default weights so logits are not all ~0
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.2)
                else:
                    p.uniform_(0.5, 1.5)
        model.save_pretrained(folder)
    else:  # numpy-only path: the same tensor names and layout
        _write_numpy_checkpoint(folder, config, seed)
    with open(os.path.join(folder, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump({"eos_token_id": eos, "pad_token_id": eos[1]}, f)
    return config


def _write_numpy_checkpoint(folder: str, config: dict, seed: int) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    h, m, v, d = config["hidden_size"], config["intermediate_size"], config["vocab_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    w = lambda *s: rng.normal(0.0, 0.2, s).astype(np.float32)
    n = lambda s: rng.uniform(0.5, 1.5, s).astype(np.float32)
    t = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": n(h)}
    if not config["tie_word_embeddings"]:
        t["lm_head.weight"] = w(v, h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t |= {p + "self_attn.q_proj.weight": w(q, h), p + "self_attn.k_proj.weight": w(kv, h),
              p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, q),
              p + "self_attn.q_norm.weight": n(d), p + "self_attn.k_norm.weight": n(d),
              p + "mlp.gate_proj.weight": w(m, h), p + "mlp.up_proj.weight": w(m, h),
              p + "mlp.down_proj.weight": w(h, m), p + "input_layernorm.weight": n(h),
              p + "post_attention_layernorm.weight": n(h)}
    save_file(t, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(config, model_type="qwen3", architectures=["Qwen3ForCausalLM"], torch_dtype="float32",
               rope_theta=10000.0)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f)
