"""Why the gateway matters: one trace with a rate step, replayed on a real vLLM in several ways.

The same Poisson trace (default: 2 queries/s for 40 s, 8/s for 40 s, 2/s for 40 s; tasks drawn
by the profile's mix) is sent through ``jaxalloc gateway`` to a real vLLM, once per policy. The
gateway enforces the budgets exactly by default (every query thinks ℓ tokens, as the paper's
model and the profile's fitted t(ℓ) assume); ``--enforce cap`` uses vLLM's cap instead, under
which the random test model stops thinking early at random:

- ``gateway``: the budgets follow the load (window 10 s, a re-solve every second), the
  profile's calibrated batching server;
- ``fixed l*(light)``: the optimum at the light rate, pinned (``--pin``);
- ``fixed uniform``: the best single budget for every task at the light rate, pinned;
- ``gateway, one FIFO server``: the budgets follow the load, but solved with the paper's single
  FIFO server in place of the calibrated batching server.

For each it reports the measured mean and p95 latency, the predicted accuracy Σ p_k(ℓ) over
the requests served (ℓ: the budget each was given, from the gateway's ``X-Jaxalloc-Budget``),
and the measured J = α · accuracy − mean latency (eq. 7 with the measured E[T]), overall and
per phase. The thinking tokens each request used (vLLM's ``usage.reasoning_tokens``) are
checked against its budget.

The server is the small random Qwen3 of the tests (or ``--upstream URL`` and ``--model DIR``
for a running one); the profile (default ``bench/profiles/tiny_vllm.toml``) has its fitted times
and assumed accuracy curves, since a random model answers nothing right.

Run:  python bench/gateway_replay.py [--phases 2:40,8:40,2:40] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny checkpoint builder the tests use
PROFILE = ROOT / "bench" / "profiles" / "tiny_vllm.toml"
QUESTION = "Tom has {n} apples and buys {m} more. How many?"


def make_trace(phases, prob, seed: int = 0) -> list[tuple[float, int, int]]:
    """(send time s, task index, phase) of Poisson arrivals, phase by phase (rate, seconds)."""
    rng = np.random.default_rng(seed)
    out, start = [], 0.0
    for phase, (rate, span) in enumerate(phases):
        t = start
        while (t := t + rng.exponential(1 / rate)) < start + span:
            out.append((t, int(rng.choice(len(prob), p=prob)), phase))
        start += span
    return out


def best_uniform(problem) -> int:
    """The single budget u for every task that maximises J at the profile's rate (a scan)."""
    import jax.numpy as jnp

    import jaxalloc as ja

    n = problem.num_tasks
    scores = [float(ja.objective(problem, jnp.full(n, float(u)))) for u in range(int(problem.max_tokens) + 1)]
    return int(np.argmax(scores))


async def replay(url: str, trace, names, timeout: float, open_thinking: bool) -> tuple[list[dict], list[tuple[float, dict]]]:
    """Send the trace to the gateway at `url`; the answers, and /budgets polled every half second."""
    from aiohttp import ClientSession, ClientTimeout, TCPConnector

    records, budgets = [], []
    async with ClientSession(connector=TCPConnector(limit=0), timeout=ClientTimeout(total=timeout)) as s:
        start = time.monotonic()
        end = trace[-1][0] if trace else 0.0

        async def one(i: int, t: float, k: int, phase: int) -> None:
            await asyncio.sleep(max(0.0, start + t - time.monotonic()))
            messages = [{"role": "user", "content": QUESTION.format(n=i % 9 + 1, m=i % 7 + 2)}]
            body = {"model": "tiny-qwen3", "messages": messages, "temperature": 0.8}
            if open_thinking:  # cap: a thinking model's opening, which the random model never emits (see docs)
                messages.append({"role": "assistant", "content": "<think>\n"})
                body.update(add_generation_prompt=False, continue_final_message=True)
            sent = time.monotonic()
            row = {"t": t, "task": k, "phase": phase, "ok": False}
            try:
                async with s.post(url + "/v1/chat/completions", json=body, headers={"X-Task": names[k]}) as r:
                    answer = await r.json()
                    row["latency"] = time.monotonic() - sent
                    row["ok"] = r.status == 200
                    row["budget"] = int(r.headers.get("X-Jaxalloc-Budget", -1))
                    details = (answer.get("usage") or {}).get("completion_tokens_details") or {}
                    row["used"] = details.get("reasoning_tokens")
            except (OSError, asyncio.TimeoutError) as err:
                row["error"] = f"{type(err).__name__}: {err}"
            records.append(row)

        async def watch() -> None:
            while time.monotonic() - start < end + 1:
                async with s.get(url + "/budgets") as r:
                    budgets.append((time.monotonic() - start, await r.json()))
                await asyncio.sleep(0.5)

        await asyncio.gather(watch(), *(one(i, t, k, ph) for i, (t, k, ph) in enumerate(trace)))
    return sorted(records, key=lambda r: r["t"]), budgets


def run_policy(problem, upstream: str, trace, *, pin=None, window: float, every: float, timeout: float,
               enforce: str = "exact", model: str | None = None):
    from jaxalloc.gateway.app import Gateway

    names = tuple(str(n) for n in problem.names)
    gw = Gateway(problem, upstream, window=window, resolve_every=every, answer_tokens=8, pin=pin, timeout=timeout,
                 enforce=enforce, tokenizer_dir=model)

    async def main():
        runner = await gw.serve("127.0.0.1", 0)
        try:
            return await replay(f"http://127.0.0.1:{gw.port}", trace, names, timeout, open_thinking=enforce == "cap")
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def score(problem, rows) -> dict:
    """Mean and p95 latency, predicted accuracy over what was served, measured J (eq. 7)."""
    import jax

    import jaxalloc as ja

    ok = [r for r in rows if r["ok"]]
    if not ok:
        return {"served": 0, "failed": len(rows)}
    tasks = np.array([r["task"] for r in ok])
    given = np.repeat(np.array([[float(r["budget"])] for r in ok]), problem.num_tasks, axis=1)
    acc = np.asarray(jax.vmap(lambda l: ja.task_accuracy(problem, l))(given))[np.arange(len(ok)), tasks]  # eq. 2
    lat = np.array([r["latency"] for r in ok])
    alpha = float(problem.alpha)
    used = [r["used"] for r in ok if r.get("used") is not None]
    over = sum(1 for r in ok if r.get("used") is not None and r["used"] > r["budget"])
    return {"served": len(ok), "failed": len(rows) - len(ok), "mean_s": float(lat.mean()),
            "p95_s": float(np.percentile(lat, 95)), "accuracy": float(acc.mean()),
            "mean_budget": float(np.mean([r["budget"] for r in ok])),
            "mean_thinking_used": float(np.mean(used)) if used else None, "over_budget": over,
            "J": alpha * float(acc.mean()) - float(lat.mean())}


def plot(results, phases, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for name, res in results.items():
        t = [r["t"] for r in res["rows"] if r["ok"]]
        top.plot(t, [r["latency"] for r in res["rows"] if r["ok"]], ".", ms=3, label=name)
        if res["budgets"]:
            bt = [b[0] for b in res["budgets"]]
            bottom.step(bt, [np.mean(list(b[1]["budgets"].values())) for b in res["budgets"]], where="post",
                        label=name)
    edge = 0.0
    for _, span in phases[:-1]:
        edge += span
        for ax in (top, bottom):
            ax.axvline(edge, color="grey", lw=0.8, ls=":")
    top.set_ylabel("latency (s)")
    top.set_yscale("log")
    bottom.set_ylabel("mean budget (tokens)")
    bottom.set_xlabel("time in the trace (s)")
    top.legend(fontsize=8)
    top.set_title("one trace with a rate step, replayed on a real vLLM: " +
                  " → ".join(f"{r:g}/s" for r, _ in phases))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=str(PROFILE), help="the server's profile (default %(default)s)")
    ap.add_argument("--phases", default="2:40,8:40,2:40", help="RATE:SECONDS,... (default %(default)s)")
    ap.add_argument("--window", type=float, default=10.0, help="the gateway's --window (default %(default)s)")
    ap.add_argument("--resolve-every", type=float, default=1.0, help="the gateway's --resolve-every (default 1)")
    ap.add_argument("--policies", default="gateway,fixed,uniform,fifo",
                    help="which of gateway, fixed, uniform, fifo to run, in this order (default: all)")
    ap.add_argument("--enforce", choices=("exact", "cap"), default="exact",
                    help="exact (default): every query thinks exactly its budget, as the profile's t(l) and the "
                         "paper assume; cap: vLLM's thinking_token_budget (the random model stops early at random)")
    ap.add_argument("--upstream", help="a running vLLM (default: start the tiny test model here)")
    ap.add_argument("--model", help="the running vLLM's model folder (its tokenizer; --enforce exact)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take (default 300)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="write the latency and budget figure here (PNG)")
    a = ap.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import jaxalloc as ja
    from jaxalloc.model import load_profile
    from jaxalloc.servers import default_server

    phases = [tuple(float(x) for x in p.split(":")) for p in a.phases.split(",")]
    problem = load_profile(a.profile, stability=False)
    light = problem.replace(arrival_rate=phases[0][0])
    fixed = tuple(int(x) for x in np.asarray(ja.integer_budgets(light, ja.solve(light).budgets)))
    uniform = (best_uniform(light),) * problem.num_tasks
    fifo = problem.replace(server=default_server(jnp.result_type(problem.t0)))  # the paper's single server
    trace = make_trace(phases, np.asarray(problem.prob, np.float64), a.seed)
    policies = {"gateway": (problem, None), "fixed": (problem, fixed), "uniform": (problem, uniform),
                "fifo": (fifo, None)}
    labels = {"gateway": "gateway (batching model)", "fixed": f"fixed l*(light) = {list(fixed)}",
              "uniform": f"fixed uniform = {uniform[0]}", "fifo": "gateway (one FIFO server)"}
    chosen = [p for p in a.policies.split(",") if p]
    bad = [p for p in chosen if p not in policies]
    if bad:
        ap.error(f"--policies: unknown {', '.join(bad)} (choose from {', '.join(policies)})")
    print(f"trace: {len(trace)} requests, phases {a.phases}; l*(light) = {list(fixed)}, uniform {uniform[0]}",
          flush=True)

    def run_all(upstream: str, model: str | None) -> dict:
        results = {}
        for name in chosen:
            prob_, pin = policies[name]
            tic = time.perf_counter()
            rows, budgets = run_policy(prob_, upstream, trace, pin=pin, window=a.window, every=a.resolve_every,
                                       timeout=a.timeout, enforce=a.enforce, model=model)
            overall = score(problem, rows)  # accuracy and J on the profile's curves and α, whatever was solved
            by_phase = [score(problem, [r for r in rows if r["phase"] == k]) for k in range(len(phases))]
            results[labels[name]] = {"overall": overall, "phases": by_phase, "rows": rows, "budgets": budgets}
            print(f"{labels[name]}: J {overall.get('J', float('nan')):.3f}, mean {overall.get('mean_s', 0):.3f} s, "
                  f"p95 {overall.get('p95_s', 0):.3f} s, accuracy {overall.get('accuracy', 0):.3f}, "
                  f"failed {overall.get('failed')}, over budget {overall.get('over_budget')} "
                  f"({time.perf_counter() - tic:.0f} s)", flush=True)
        return results

    if a.upstream:
        if a.enforce == "exact" and not a.model:
            ap.error("--enforce exact with --upstream: give the served model's folder with --model")
        results = run_all(a.upstream, a.model)
    else:
        from bench_vllm import MAX_NUM_SEQS, make_inputs

        from jaxalloc.serving import VLLMServer

        folder, _ = make_inputs(Path(tempfile.mkdtemp(prefix="gateway-replay-")))
        with VLLMServer(folder, "tiny-qwen3", max_num_seqs=MAX_NUM_SEQS) as server:
            print(f"vLLM ready (pid {server.pid}, {server.base_url})", flush=True)
            results = run_all(server.base_url, folder)

    print(f"\nOne trace ({len(trace)} requests: {' -> '.join(f'{r:g}/s for {s:g} s' for r, s in phases)}), "
          f"alpha = {float(problem.alpha):g}; J = alpha * accuracy - mean latency")
    print(f"{'policy':<34} {'J':>7} {'mean s':>8} {'p95 s':>8} {'accuracy':>9} {'budget':>7} {'failed':>6}   "
          + "   ".join(f"J phase {k + 1}" for k in range(len(phases))))
    for name, res in results.items():
        o = res["overall"]
        print(f"{name:<34} {o.get('J', float('nan')):7.3f} {o.get('mean_s', float('nan')):8.3f} "
              f"{o.get('p95_s', float('nan')):8.3f} {o.get('accuracy', float('nan')):9.3f} "
              f"{o.get('mean_budget', float('nan')):7.1f} {o.get('failed', 0):6d}   "
              + "   ".join(f"{p.get('J', float('nan')):9.3f}" for p in res["phases"]))
    if a.json:
        Path(a.json).write_text(json.dumps({"phases": phases, "profile": a.profile, "results": results}, indent=1))
    if a.plot:
        plot(results, phases, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
