"""Jitted prefill and decode loop with a static KV cache, and budget forcing.

:class:`Engine` runs one request at a time (batch 1, as the paper's single
FIFO server does) in two jitted calls:

- **prefill**: the prompt, padded to a bucket length (powers of two, at
  least `min_bucket`), goes through the model once; the cache holds its keys
  and values, and the logits of the last real token come back.
- **decode**: one ``lax.while_loop`` that generates token after token.
  Step `i` is in one of three phases: *thinking* (``i < think``: sampled with
  the `suppress_ids` masked out), *forced* (the next ``len(forced)`` steps
  emit the forced ids), *answer* (sampled freely; a token in `stop_ids` ends
  the loop, and so does reaching ``think + len(forced) + answer`` tokens).
  The model runs once per token after the first (whose logits come from
  prefill), never on the last one.

Phase lengths are traced values, so budgets never recompile; shapes depend
only on the (prompt bucket, cache bucket) pair. The first request of a new
pair is preceded by a short untimed warm-up run that compiles both calls.
Times are wall-clock around each call with ``block_until_ready``: compile
and warm-up are excluded; prefill and decode are separate.

:func:`generate` is budget forcing as in s1 (Muennighoff et al. 2025):
exactly ℓ thinking tokens, ``</think>`` and end-of-sequence suppressed until
then, then ``</think>`` forced and the answer generated up to a cap.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .chat import ThinkingFormat
from .qwen3 import KVCache, Qwen3

FORCED_CAPACITY = 16  # most forced ids in one run (the closing "\n</think>\n\n" is 3-4)


class Run(NamedTuple):
    """One decoded request.

    **Fields:** `tokens` (generated ids, int array, forced ids included, a
    final stop token included); `think`, `forced`, `answer` (tokens in each
    phase); `stopped` (the answer ended on a stop token); `prefill_s`,
    `decode_s` (seconds); `prompt_tokens`; `buckets` ((prompt, cache) lengths).
    """

    tokens: np.ndarray
    think: int
    forced: int
    answer: int
    stopped: bool
    prefill_s: float
    decode_s: float
    prompt_tokens: int
    buckets: tuple[int, int]


def _bucket(n: int, least: int) -> int:
    return max(least, 1 << max(0, int(n - 1).bit_length()))


def _sample(logits, temperature, key):
    """Greedy for temperature 0 (no random numbers drawn), else softmax sampling at that temperature."""
    return jax.lax.cond(
        temperature > 0,
        lambda: jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6)).astype(jnp.int32),
        lambda: jnp.argmax(logits).astype(jnp.int32),
    )


def _prefill(graphdef, state, tokens, length, cache_len: int):
    model = nnx.merge(graphdef, state)
    cache = KVCache.zeros(model.config, 1, cache_len, model.dtype)
    logits, cache = model(tokens, 0, cache, last=length - 1)
    return logits[0], cache


def _decode(graphdef, state, cache, logits, start, think, forced, n_forced, answer, suppress, stop, temperature, key):
    model = nnx.merge(graphdef, state)
    total = think + n_forced + answer
    out = jnp.zeros((cache.length,), jnp.int32)

    def choose(i, logits):
        """Token `i` from its logits: thinking (suppressed ids masked), forced, or answer."""
        masked = jnp.where((i < think) & suppress, -jnp.inf, logits)
        token = _sample(masked, temperature, jax.random.fold_in(key, i))
        in_forced = (i >= think) & (i < think + n_forced)
        token = jnp.where(in_forced, forced[jnp.clip(i - think, 0, forced.shape[0] - 1)], token)
        stopped = (i >= think + n_forced) & stop[token]
        return token, stopped, stopped | (i + 1 >= total)

    def body(carry):  # the model runs on the previous token only when another one is due
        i, cache, previous, out, _, _ = carry
        logits, cache = model(previous[None, None], start + i - 1, cache)
        token, stopped, done = choose(i, logits[0, 0])
        return i + 1, cache, token, out.at[i].set(token), done, stopped

    token, stopped, done = choose(0, logits)
    carry = (jnp.int32(1), cache, token, out.at[0].set(token), done | (total <= 0), stopped)
    n, cache, _, out, _, stopped = jax.lax.while_loop(lambda c: ~c[4], body, carry)
    # the cache is returned so that the donated input buffers alias it (updated in place, not copied)
    return out, jnp.where(total <= 0, 0, n), stopped & (total > 0), cache


class Engine:
    """Runs a :class:`~jaxalloc.calibrate.qwen3.Qwen3` on one request at a time.

    **Arguments:** `model`; `min_bucket`: the smallest prompt bucket (prompt
    lengths are padded to powers of two at least this); `pad_id`: the id used
    for padding (never attended to).
    """

    def __init__(self, model: Qwen3, *, min_bucket: int = 64, pad_id: int = 0):
        self.graphdef, self.state = nnx.split(model)
        self.config = model.config
        self.min_bucket = int(min_bucket)
        self.pad_id = int(pad_id)
        self._prefill = jax.jit(partial(_prefill, self.graphdef), static_argnames=("cache_len",))
        # the cache is donated: the loop updates it in place instead of copying it first
        self._decode = jax.jit(partial(_decode, self.graphdef), donate_argnames=("cache",))
        self._warm: set[tuple[int, int]] = set()
        self._masks: dict[tuple[int, ...], jax.Array] = {}

    def _mask(self, ids: Sequence[int]) -> jax.Array:
        key = tuple(sorted({int(i) for i in ids}))
        if key not in self._masks:
            mask = np.zeros(self.config.vocab_size, bool)
            mask[list(key)] = True
            self._masks[key] = jnp.asarray(mask)
        return self._masks[key]

    def buckets(self, prompt_tokens: int, steps: int, min_cache: int = 0) -> tuple[int, int]:
        """(prompt bucket, cache bucket) for a prompt of `prompt_tokens` and up to `steps` generated
        tokens, the cache at least `min_cache` long."""
        prompt_bucket = _bucket(prompt_tokens, self.min_bucket)
        return prompt_bucket, _bucket(max(prompt_bucket, prompt_tokens + steps, min_cache), self.min_bucket)

    def _call(self, prompt, buckets, think, forced, answer, suppress, stop, temperature, seed):
        prompt_bucket, cache_len = buckets
        tokens = np.full((1, prompt_bucket), self.pad_id, np.int32)
        tokens[0, : len(prompt)] = prompt
        forced_buf = np.zeros(FORCED_CAPACITY, np.int32)
        forced_buf[: len(forced)] = forced
        t0 = time.perf_counter()
        logits, cache = self._prefill(self.state, jnp.asarray(tokens), jnp.int32(len(prompt)), cache_len=cache_len)
        jax.block_until_ready((logits, cache))
        t1 = time.perf_counter()
        out, n, stopped, cache = self._decode(
            self.state, cache, logits, jnp.int32(len(prompt)), jnp.int32(think), jnp.asarray(forced_buf),
            jnp.int32(len(forced)), jnp.int32(answer), suppress, stop, jnp.float32(temperature),
            jax.random.key(seed),
        )
        jax.block_until_ready((out, n, stopped, cache))
        t2 = time.perf_counter()
        return np.asarray(out)[: int(n)], bool(stopped), t1 - t0, t2 - t1

    def run(self, prompt: Sequence[int], *, think: int = 0, forced: Sequence[int] = (), answer: int = 0,
            suppress_ids: Sequence[int] = (), stop_ids: Sequence[int] = (), temperature: float = 0.0,
            seed: int = 0, min_cache: int = 0) -> Run:
        """Prefill `prompt`, then decode `think` tokens, the `forced` ids, and up to `answer` tokens.

        **Arguments:** `prompt`: token ids; `think`: tokens generated with
        `suppress_ids` forbidden; `forced`: ids emitted next (at most
        ``FORCED_CAPACITY``); `answer`: most tokens generated after them, a
        token in `stop_ids` ending early; `temperature`: 0 for greedy, else
        softmax sampling at that temperature; `seed`: sampling seed;
        `min_cache`: the least cache length (one bucket for several requests,
        so that they share one compiled decode loop).

        **Returns:** a :class:`Run`. Raises ValueError for an empty prompt,
        negative counts or a request longer than the model's context.
        """
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise ValueError("prompt: empty")
        if think < 0 or answer < 0:
            raise ValueError(f"think = {think}, answer = {answer}: must be >= 0")
        if len(forced) > FORCED_CAPACITY:
            raise ValueError(f"forced: {len(forced)} ids, at most {FORCED_CAPACITY}")
        steps = think + len(forced) + answer
        if len(prompt) + steps > self.config.max_position_embeddings:  # rotary positions beyond training
            raise ValueError(f"prompt ({len(prompt)}) + tokens ({steps}) exceed the model's context "
                             f"({self.config.max_position_embeddings})")
        buckets = self.buckets(len(prompt), steps, min_cache)
        suppress, stop = self._mask(suppress_ids), self._mask(stop_ids)
        if buckets not in self._warm:  # compile both calls on a short run, untimed
            self._call(prompt, buckets, 0, (), 1, suppress, stop, 0.0, 0)
            self._warm.add(buckets)
        tokens, stopped, prefill_s, decode_s = self._call(
            prompt, buckets, think, list(forced), answer, suppress, stop, temperature, seed)
        n_think = min(think, len(tokens))
        n_forced = min(len(forced), len(tokens) - n_think)
        return Run(tokens, n_think, n_forced, len(tokens) - n_think - n_forced, stopped, prefill_s, decode_s,
                   len(prompt), buckets)


class Generation(NamedTuple):
    """A budget-forced reply.

    **Fields:** `thinking_ids`, `answer_ids` (stop token left out);
    `thinking_tokens` (= the budget); `answer_tokens` (generated after
    ``</think>``, a final stop token counted); `stopped`; `prompt_tokens`;
    `prefill_s`, `decode_s`, `service_s` (prefill + decode); `requests`:
    per request to a server, ``{"ttft_s", "e2e_s", "itl_s": [...]}`` (empty
    for the local engine).
    """

    thinking_ids: list[int]
    answer_ids: list[int]
    thinking_tokens: int
    answer_tokens: int
    stopped: bool
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    service_s: float
    requests: tuple = ()


def generate(engine: Engine, fmt: ThinkingFormat, prompt: Sequence[int], budget: int, answer_tokens: int, *,
             temperature: float = 0.0, seed: int = 0) -> Generation:
    """Answer `prompt` after exactly `budget` thinking tokens (budget forcing).

    **Arguments:** `engine`; `fmt`: the model's :class:`~jaxalloc.calibrate.chat.ThinkingFormat`;
    `prompt`: ids ending with the opened thinking block
    (:func:`~jaxalloc.calibrate.chat.prompt_ids`); `budget`: thinking tokens ℓ
    (0: an empty block); `answer_tokens`: cap on the answer; `temperature`, `seed`.

    **Returns:** the :class:`Generation`.
    """
    run = engine.run(prompt, think=budget, forced=fmt.close_ids, answer=answer_tokens,
                     suppress_ids=fmt.suppressed_ids, stop_ids=fmt.stop_ids, temperature=temperature, seed=seed)
    ids = [int(t) for t in run.tokens]
    answer = ids[run.think + run.forced:]
    if run.stopped:
        answer = answer[:-1]
    return Generation(ids[: run.think], answer, run.think, run.answer, run.stopped, run.prompt_tokens,
                      run.prefill_s, run.decode_s, run.prefill_s + run.decode_s)


class LocalBackend(NamedTuple):
    """Budget-forced generation on the local :class:`Engine` (the ``flax`` backend of a measuring run)."""

    engine: Engine
    fmt: ThinkingFormat
    name: str = "flax"

    def generate(self, prompt: Sequence[int], budget: int, answer_tokens: int, *, temperature: float = 0.0,
                 seed: int = 0) -> Generation:
        """See :func:`generate`."""
        return generate(self.engine, self.fmt, prompt, budget, answer_tokens, temperature=temperature, seed=seed)
