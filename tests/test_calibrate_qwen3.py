"""Flax Qwen3 against transformers' PyTorch Qwen3; KV-cache decoding; exact thinking budgets."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("transformers")

import jax.numpy as jnp
from flax import nnx
from tiny_qwen3 import make_checkpoint

from jaxalloc.calibrate.chat import decode, load_tokenizer, prompt_ids, thinking_format
from jaxalloc.calibrate.generate import Engine, generate
from jaxalloc.calibrate.qwen3 import (
    QWEN3_8B,
    KVCache,
    ModelError,
    checkpoint_name,
    config_from_hf,
    load_qwen3,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("qwen3"))
    make_checkpoint(folder)
    return folder


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_qwen3(checkpoint)


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return load_tokenizer(checkpoint)


@nnx.jit(static_argnames="last")
def _forward(model, ids, start, cache, last=None):
    return model(ids, start, cache, last=None if last is None else jnp.int32(last))


def _greedy_by_recomputation(model, prompt, steps, width=64):
    """Greedy continuation, each token from a full forward pass over the padded sequence."""
    ids = list(prompt)
    for _ in range(steps):
        padded = np.zeros((1, width), np.int32)
        padded[0, : len(ids)] = ids
        logits, _ = _forward(model, jnp.asarray(padded), 0, None)
        ids.append(int(jnp.argmax(logits[0, len(ids) - 1])))
    return ids[len(prompt):]


def _ids(seed=0, shape=(2, 19)):
    return np.random.default_rng(seed).integers(0, 300, shape)


def _torch_logits(folder, ids):
    torch = pytest.importorskip("torch")
    from transformers import Qwen3ForCausalLM

    ref = Qwen3ForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        return ref, ref(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("tie", [False, True])
def test_logits_equal_pytorch(tmp_path, tie):
    make_checkpoint(str(tmp_path), seed=1, tie=tie)
    ids = _ids()
    _, expected = _torch_logits(str(tmp_path), ids)
    model = load_qwen3(str(tmp_path))
    assert model.dtype == jnp.float32 and model.config.tie_word_embeddings == tie
    logits, _ = model(jnp.asarray(ids))
    assert np.abs(expected).max() > 1.0  # not a trivially small comparison
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)


def test_greedy_tokens_equal_pytorch(checkpoint, model, tokenizer):
    torch = pytest.importorskip("torch")
    fmt = thinking_format(tokenizer, checkpoint)
    prompt = prompt_ids(tokenizer, fmt, "How many clips did Natalia sell?")
    ref, _ = _torch_logits(checkpoint, np.asarray([prompt]))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(ref(torch.tensor([ids])).logits[0, -1].argmax()))
    run = Engine(model, min_bucket=16).run(prompt, answer=12)
    assert [int(t) for t in run.tokens] == ids[len(prompt):]


def test_kv_cache_decoding_equals_full_recomputation(model):
    ids = _ids(2, (1, 23))
    full, _ = _forward(model, jnp.asarray(ids), 0, None)
    cache = KVCache.zeros(model.config, 1, 32, model.dtype)
    first, cache = _forward(model, jnp.asarray(ids[:, :9]), 0, cache)
    steps = [first]
    for i in range(9, ids.shape[1]):
        logits, cache = _forward(model, jnp.asarray(ids[:, i:i + 1]), jnp.int32(i), cache)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), np.asarray(full), atol=2e-5, rtol=0)
    # prefill of a padded prompt: the logits of the last real token
    padded = np.zeros((1, 32), np.int64)
    padded[0, :23] = ids[0]
    last, _ = _forward(model, jnp.asarray(padded), 0, None, last=22)
    np.testing.assert_allclose(np.asarray(last)[0], np.asarray(full)[0, -1], atol=2e-5, rtol=0)


def test_engine_greedy_equals_full_recomputation_across_buckets(model):
    engine = Engine(model, min_bucket=8)
    for length in (3, 9, 30):
        prompt = [int(t) for t in _ids(length, (length,))]
        run = engine.run(prompt, answer=6)
        assert [int(t) for t in run.tokens] == _greedy_by_recomputation(model, prompt, 6), length
        assert run.buckets[0] >= length and run.buckets[1] >= length + 6


def _wanting(model, token: int):
    """Bias the model so that `token` is the greedy choice after every prefix.

    Residual dimension 0 is made a large constant (embedding 50, no layer
    writes to it), and only `token`'s head column reads it.
    """
    model = nnx.clone(model)  # the fixture's model stays as is
    emb = model.model.embed_tokens.embedding
    emb[...] = emb[...].at[:, 0].set(50.0)
    for layer in model.model.layers:
        for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
            proj.kernel[...] = proj.kernel[...].at[:, 0].set(0.0)
    head = model.lm_head.kernel
    head[...] = head[...].at[0, :].set(0.0).at[0, token].set(10.0)
    return model


@pytest.mark.parametrize("wants", ["</think>", "<|im_end|>", "<|endoftext|>"])
def test_exact_thinking_budget_when_the_model_wants_to_stop(model, tokenizer, checkpoint, wants):
    fmt = thinking_format(tokenizer, checkpoint)
    token = tokenizer.convert_tokens_to_ids(wants)
    biased = _wanting(model, token)
    prompt = prompt_ids(tokenizer, fmt, "What is 2+2?")
    engine = Engine(biased, min_bucket=128)
    assert int(engine.run(prompt, answer=1).tokens[0]) == token  # unforced, it stops at once
    compiled = engine._decode._cache_size()
    for budget in (0, 1, 2, 7, 33, 100):
        g = generate(engine, fmt, prompt, budget, answer_tokens=5)
        assert g.thinking_tokens == budget == len(g.thinking_ids)
        assert not set(g.thinking_ids) & set(fmt.suppressed_ids)
        if wants == "</think>":  # not a stop token: the answer runs to its cap
            assert g.answer_tokens == 5 and not g.stopped and g.answer_ids == [token] * 5
        else:  # a stop token: the answer ends at once
            assert g.answer_tokens == 1 and g.stopped and g.answer_ids == []
        assert g.prefill_s > 0 and g.decode_s > 0 and g.service_s == pytest.approx(g.prefill_s + g.decode_s)
    # budgets are traced: one more compile, for the cache bucket of the largest budget only
    assert engine._decode._cache_size() == compiled + 1


def test_forced_closing_and_sampling(model, tokenizer, checkpoint):
    fmt = thinking_format(tokenizer, checkpoint)
    assert decode(tokenizer, fmt.close_ids) == "\n</think>\n\n"
    prompt = prompt_ids(tokenizer, fmt, "Name a colour.")
    assert decode(tokenizer, prompt).endswith("<|im_start|>assistant\n<think>\n")
    engine = Engine(model, min_bucket=16)
    run = engine.run(prompt, think=4, forced=fmt.close_ids, answer=3, suppress_ids=fmt.suppressed_ids)
    assert list(run.tokens[4:4 + len(fmt.close_ids)]) == list(fmt.close_ids)
    a = generate(engine, fmt, prompt, 20, 8, temperature=1.0, seed=3)
    b = generate(engine, fmt, prompt, 20, 8, temperature=1.0, seed=3)
    c = generate(engine, fmt, prompt, 20, 8, temperature=1.0, seed=4)
    assert a.thinking_ids == b.thinking_ids and a.thinking_ids != c.thinking_ids


def test_bf16_and_sharded_checkpoint(tmp_path, checkpoint):
    torch = pytest.importorskip("torch")
    from transformers import Qwen3ForCausalLM

    ref = Qwen3ForCausalLM.from_pretrained(checkpoint, local_files_only=True, dtype=torch.float32)
    ref.to(torch.bfloat16).save_pretrained(str(tmp_path), max_shard_size="100KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    model = load_qwen3(str(tmp_path))
    assert model.dtype == jnp.bfloat16
    ids = _ids(5, (1, 11))
    logits, _ = model(jnp.asarray(ids))
    _, expected = _torch_logits(checkpoint, ids)
    err = np.abs(np.asarray(logits) - expected).max()
    assert err < 0.1 * np.abs(expected).max()
    float32 = load_qwen3(str(tmp_path), param_dtype=jnp.float32)
    assert float32.dtype == jnp.float32


def test_config_and_errors(tmp_path, checkpoint):
    with open(os.path.join(checkpoint, "config.json")) as f:
        config = config_from_hf(json.load(f))
    assert config.num_key_value_heads == 2 and config.rope_theta == 10000.0
    assert 8.1e9 < QWEN3_8B.weight_count() < 8.3e9  # "Qwen3-8B": 8.2 B parameters
    assert checkpoint_name(("model", "layers", 3, "mlp", "up_proj", "kernel")) == ("model.layers.3.mlp.up_proj.weight", True)
    with pytest.raises(ModelError, match="model_type = 'llama'"):
        config_from_hf({"model_type": "llama"})
    with pytest.raises(ModelError, match="rope_type = 'yarn'"):
        config = json.loads(Path(checkpoint, "config.json").read_text())
        config_from_hf(dict(config, rope_parameters={"rope_type": "yarn", "rope_theta": 1e6}))
    with pytest.raises(ModelError, match="no config.json"):
        load_qwen3(str(tmp_path))
    (tmp_path / "config.json").write_text(Path(checkpoint, "config.json").read_text())
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        load_qwen3(str(tmp_path))
