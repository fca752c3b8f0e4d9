"""A Qwen3 decoder in Flax NNX, with weights loaded from a Hugging Face checkpoint.

The architecture is Qwen3's (as in `transformers`' ``Qwen3ForCausalLM``): token
embedding; per layer RMSNorm → grouped-query self-attention (q/k RMSNorm per
head, rotary position embedding, causal) → residual, RMSNorm → SwiGLU MLP →
residual; final RMSNorm; a language-model head, tied to the embedding or not.
Module attribute names mirror the checkpoint's tensor names, so loading is a
mechanical rename (``…q_proj.kernel`` ← ``…q_proj.weight`` transposed).

Attention always reads a static key/value cache (:class:`KVCache`, one buffer
per layer of shape ``[batch, length, kv_heads, head_dim]``): a forward pass
writes the keys and values of its `T` tokens at positions
``start … start + T − 1`` and attends causally over positions ``≤`` its own.
Without a cache the model makes a temporary one of exactly `T` positions, so
the full forward and incremental decoding run the same code.

Numerics follow the reference: RMSNorm and softmax in float32, rotary
cos/sin computed in float32 and cast to the activation dtype, everything
else in the parameter dtype (bfloat16 for real checkpoints).
"""

from __future__ import annotations

import glob
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class ModelError(ValueError):
    """A checkpoint or configuration that this module cannot load."""


class ModelConfig(NamedTuple):
    """The Qwen3 hyperparameters this implementation uses (hashable, so jit-static).

    **Arguments** (fields): `vocab_size`, `hidden_size`, `intermediate_size`,
    `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads`,
    `head_dim`, `rms_norm_eps`, `rope_theta`, `tie_word_embeddings`,
    `attention_bias`, `max_position_embeddings`, named as in `config.json`.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    max_position_embeddings: int = 40960

    def weight_count(self) -> int:
        """Number of parameters (embedding and head counted once each, once if tied)."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * q + 2 * h * kv + q * h + 2 * d + (q + 2 * kv if self.attention_bias else 0)
        layer = attn + 3 * h * self.intermediate_size + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.num_hidden_layers * layer + self.vocab_size * h + h + head


# Qwen3-8B as published (config.json of the Hugging Face checkpoint).
QWEN3_8B = ModelConfig(
    vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
    rope_theta=1_000_000.0, tie_word_embeddings=False, attention_bias=False,
    max_position_embeddings=40960,
)


def config_from_hf(hf) -> ModelConfig:
    """:class:`ModelConfig` from a `transformers` config object or a `config.json` dict.

    **Arguments:** `hf`: a ``transformers.Qwen3Config`` (or any object with
    the same attributes) or the parsed `config.json`.

    **Returns:** the :class:`ModelConfig`. Raises :class:`ModelError` for
    another model type, a rope scaling other than the default, or sliding-window
    attention.
    """
    get = (lambda k, d=None: hf.get(k, d)) if isinstance(hf, dict) else (lambda k, d=None: getattr(hf, k, d))
    model_type = get("model_type")
    if model_type not in (None, "qwen3"):
        raise ModelError(f"config model_type = {model_type!r}: only 'qwen3' is supported")
    rope = get("rope_parameters") or get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", None):
        raise ModelError(f"config rope_type = {rope_type!r}: only the default rotary embedding is supported")
    theta = (rope.get("rope_theta") if isinstance(rope, dict) else None) or get("rope_theta") or 10000.0
    if get("use_sliding_window", False):
        raise ModelError("config use_sliding_window = true: sliding-window attention is not supported")
    heads = int(get("num_attention_heads"))
    head_dim = get("head_dim") or int(get("hidden_size")) // heads
    return ModelConfig(
        vocab_size=int(get("vocab_size")), hidden_size=int(get("hidden_size")),
        intermediate_size=int(get("intermediate_size")), num_hidden_layers=int(get("num_hidden_layers")),
        num_attention_heads=heads, num_key_value_heads=int(get("num_key_value_heads") or heads),
        head_dim=int(head_dim), rms_norm_eps=float(get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        attention_bias=bool(get("attention_bias", False)),
        max_position_embeddings=int(get("max_position_embeddings", 40960)),
    )


class KVCache(NamedTuple):
    """Static key/value cache: `keys[i]`, `values[i]` of shape ``[batch, length, kv_heads, head_dim]``."""

    keys: tuple
    values: tuple

    @staticmethod
    def zeros(config: ModelConfig, batch: int, length: int, dtype) -> KVCache:
        """An empty cache of `length` positions.

        **Arguments:** `config`; `batch`; `length` (positions); `dtype`.

        **Returns:** the :class:`KVCache` of zeros.
        """
        shape = (batch, length, config.num_key_value_heads, config.head_dim)
        layers = range(config.num_hidden_layers)
        return KVCache(tuple(jnp.zeros(shape, dtype) for _ in layers), tuple(jnp.zeros(shape, dtype) for _ in layers))

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x²) + eps) · weight, the normalisation in float32."""

    def __init__(self, dim: int, eps: float, *, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x):
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * h.astype(x.dtype)


def rotary(positions, head_dim: int, theta: float, dtype):
    """cos and sin tables ``[batch, T, 1, head_dim]`` for integer `positions` ``[batch, T]``."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _linear(n_in: int, n_out: int, bias: bool, param_dtype, rngs):
    return nnx.Linear(n_in, n_out, use_bias=bias, dtype=param_dtype, param_dtype=param_dtype, rngs=rngs,
                      kernel_init=nnx.initializers.normal(0.02))


class Attention(nnx.Module):
    """Grouped-query self-attention with per-head q/k RMSNorm and rotary embedding."""

    def __init__(self, config: ModelConfig, *, param_dtype, rngs: nnx.Rngs):
        c, d = config, config.head_dim
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, d
        self.q_proj = _linear(c.hidden_size, c.num_attention_heads * d, c.attention_bias, param_dtype, rngs)
        self.k_proj = _linear(c.hidden_size, c.num_key_value_heads * d, c.attention_bias, param_dtype, rngs)
        self.v_proj = _linear(c.hidden_size, c.num_key_value_heads * d, c.attention_bias, param_dtype, rngs)
        self.o_proj = _linear(c.num_attention_heads * d, c.hidden_size, c.attention_bias, param_dtype, rngs)
        self.q_norm = RMSNorm(d, c.rms_norm_eps, param_dtype=param_dtype)
        self.k_norm = RMSNorm(d, c.rms_norm_eps, param_dtype=param_dtype)

    def __call__(self, x, cos, sin, keys, values, start, mask, span):
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, t, self.heads, self.head_dim))
        k = self.k_norm(self.k_proj(x).reshape(b, t, self.kv_heads, self.head_dim))
        v = self.v_proj(x).reshape(b, t, self.kv_heads, self.head_dim)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        keys = jax.lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), start, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), start, axis=1)
        group = self.heads // self.kv_heads
        q = q.reshape(b, t, self.kv_heads, group, self.head_dim)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, keys[:, :span].astype(q.dtype),
                            preferred_element_type=jnp.float32) * self.head_dim ** -0.5
        scores = jnp.where(mask, scores, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, values[:, :span].astype(v.dtype))
        return self.o_proj(out.reshape(b, t, self.heads * self.head_dim)), keys, values


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) · up(x))."""

    def __init__(self, config: ModelConfig, *, param_dtype, rngs: nnx.Rngs):
        h, m = config.hidden_size, config.intermediate_size
        self.gate_proj = _linear(h, m, False, param_dtype, rngs)
        self.up_proj = _linear(h, m, False, param_dtype, rngs)
        self.down_proj = _linear(m, h, False, param_dtype, rngs)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm transformer block: attention and MLP, each with a residual."""

    def __init__(self, config: ModelConfig, *, param_dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(config, param_dtype=param_dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(config, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, cos, sin, keys, values, start, mask, span):
        h, keys, values = self.self_attn(self.input_layernorm(x), cos, sin, keys, values, start, mask, span)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), keys, values


class Qwen3Body(nnx.Module):
    """Embedding, decoder layers and final norm (the checkpoint's ``model.*`` tensors)."""

    def __init__(self, config: ModelConfig, *, param_dtype, rngs: nnx.Rngs):
        self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=param_dtype,
                                      param_dtype=param_dtype, rngs=rngs,
                                      embedding_init=nnx.initializers.normal(0.02))
        self.layers = nnx.List([DecoderLayer(config, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)


class Qwen3(nnx.Module):
    """Qwen3 causal language model.

    **Arguments:** `config` (:class:`ModelConfig`); `param_dtype` (float32 or
    bfloat16); `rngs` for the random initialisation (normal, std 0.02), which
    :func:`load_qwen3` overwrites with checkpoint weights.
    """

    def __init__(self, config: ModelConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = param_dtype
        self.model = Qwen3Body(config, param_dtype=param_dtype, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config.hidden_size, config.vocab_size, False, param_dtype, rngs)

    def __call__(self, tokens, start=0, cache: KVCache | None = None, last: jax.Array | None = None):
        """Logits for `tokens` ``[batch, T]`` at positions ``start … start + T − 1``.

        **Arguments:** `tokens` (int); `start` (int scalar, may be traced): the
        position of the first token and where its key/value are written (a
        Python ``0`` means prefill: attention then reads only the first `T`
        cache positions, the rest being masked anyway);
        `cache`: a :class:`KVCache` holding positions ``< start`` (None: a
        fresh one of `T` positions, `start` must be 0); `last`: if given, an
        int scalar ``i < T`` and only the logits of token `i` are computed
        (``[batch, vocab]``), as prefill of a padded prompt needs.

        **Returns:** ``(logits, cache)``: float32 logits ``[batch, T, vocab]``
        (or ``[batch, vocab]`` with `last`) and the updated cache.
        """
        c = self.config
        b, t = tokens.shape
        from_zero = isinstance(start, int) and start == 0  # prefill: keys beyond the T tokens are all masked
        start = jnp.asarray(start, jnp.int32)
        if cache is None:
            cache = KVCache.zeros(c, b, t, self.dtype)
        positions = start + jnp.arange(t, dtype=jnp.int32)[None, :].repeat(b, axis=0)
        cos, sin = rotary(positions, c.head_dim, c.rope_theta, self.dtype)
        span = t if from_zero else cache.length  # key positions attended to
        key_pos = jnp.arange(span, dtype=jnp.int32)
        mask = key_pos[None, :] <= (start + jnp.arange(t, dtype=jnp.int32))[:, None]  # [T, span], causal
        x = self.model.embed_tokens(tokens)
        keys, values = [], []
        for i, layer in enumerate(self.model.layers):
            x, k, v = layer(x, cos, sin, cache.keys[i], cache.values[i], start, mask, span)
            keys.append(k)
            values.append(v)
        if last is not None:
            x = jax.lax.dynamic_index_in_dim(x, last, axis=1, keepdims=False)
        x = self.model.norm(x)
        if c.tie_word_embeddings:
            logits = self.model.embed_tokens.attend(x)
        else:
            logits = self.lm_head(x)
        return logits.astype(jnp.float32), KVCache(tuple(keys), tuple(values))


def abstract_model(config: ModelConfig, param_dtype=jnp.bfloat16) -> Qwen3:
    """The model's structure with shapes only (no memory), for loading or random init."""
    return nnx.eval_shape(lambda: Qwen3(config, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


def random_model(config: ModelConfig, param_dtype=jnp.bfloat16, seed: int = 0) -> Qwen3:
    """A model with random weights, created directly on the default device under jit.

    **Arguments:** `config`; `param_dtype`; `seed`.

    **Returns:** the :class:`Qwen3` (normal(0, 0.02) weights, unit norms).
    """
    graphdef, _ = nnx.split(abstract_model(config, param_dtype))

    @jax.jit
    def init():
        return nnx.state(Qwen3(config, param_dtype=param_dtype, rngs=nnx.Rngs(seed)))

    return nnx.merge(graphdef, init())


def checkpoint_name(path: tuple) -> tuple[str, bool]:
    """The checkpoint tensor name of an NNX parameter path, and whether it is transposed.

    **Arguments:** `path`: e.g. ``('model', 'layers', 0, 'self_attn', 'q_proj', 'kernel')``.

    **Returns:** ``('model.layers.0.self_attn.q_proj.weight', True)``: linear
    kernels are stored ``[out, in]`` in the checkpoint, ``[in, out]`` here.
    """
    *head, leaf = (str(p) for p in path)
    transpose = leaf == "kernel"
    leaf = {"kernel": "weight", "embedding": "weight"}.get(leaf, leaf)
    return ".".join([*head, leaf]), transpose


def _safetensors_files(path: str) -> dict[str, str]:
    """Tensor name → file for a checkpoint folder (single file or sharded with an index)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(path, file) for name, file in weight_map.items()}
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ModelError(f"model path {path!r}: no *.safetensors files")
    from safetensors import safe_open

    names = {}
    for file in files:
        with safe_open(file, framework="flax") as f:
            names.update(dict.fromkeys(f.keys(), file))
    return names


def load_config(path: str) -> ModelConfig:
    """:class:`ModelConfig` of the checkpoint folder `path`, read by `transformers` from local files only."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelError(f"model path {path!r}: no config.json")
    from transformers import AutoConfig

    return config_from_hf(AutoConfig.from_pretrained(path, local_files_only=True))


def load_qwen3(path: str, param_dtype=None) -> Qwen3:
    """Load a Qwen3 checkpoint in Hugging Face format from a local folder.

    Tensors are read with ``safetensors`` (framework ``flax``, which keeps
    bfloat16 without a float32 detour), transposed where needed and cast to
    `param_dtype`.

    **Arguments:** `path`: folder with `config.json` and ``*.safetensors``
    (optionally sharded with ``model.safetensors.index.json``); `param_dtype`:
    parameter dtype (default: the checkpoint's dtype, e.g. bfloat16).

    **Returns:** the :class:`Qwen3`. Raises :class:`ModelError` naming the
    tensor for a missing tensor or a shape mismatch.
    """
    from safetensors import safe_open

    config = load_config(path)
    files = _safetensors_files(path)
    if param_dtype is None:
        first = next(iter(files))
        with safe_open(files[first], framework="flax") as f:
            param_dtype = f.get_slice(first).get_dtype()
        param_dtype = {"BF16": jnp.bfloat16, "F16": jnp.float16, "F32": jnp.float32}.get(param_dtype, jnp.float32)
    graphdef, state = nnx.split(abstract_model(config, param_dtype))
    flat = nnx.to_flat_state(state)
    handles = {}
    try:
        for p, var in flat:
            name, transpose = checkpoint_name(p)
            if name not in files:
                raise ModelError(f"checkpoint {path!r}: missing tensor {name!r}")
            file = files[name]
            if file not in handles:
                handles[file] = safe_open(file, framework="flax").__enter__()
            tensor = handles[file].get_tensor(name)
            if transpose:
                tensor = tensor.T
            if tensor.shape != var.shape:
                raise ModelError(f"checkpoint tensor {name!r}: shape {tuple(tensor.shape)}, expected {var.shape}")
            var.set_value(jnp.asarray(tensor, dtype=param_dtype))
    finally:
        for handle in handles.values():
            handle.__exit__(None, None, None)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
