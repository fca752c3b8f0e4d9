"""Accuracy of the server formulas against the simulator, over the grid of issue 15.

- M/G/c (Lee–Longton with exact Erlang C): c ∈ {2, 4, 8}, per-server load
  ρ = λE[S]/c ∈ {0.3, 0.6, 0.9, 0.95}, service-time coefficient of variation
  cv ∈ {0, 0.5, 1};
- continuous batching (the birth–death chain): B ∈ {4, 64}, β ∈ {0, 0.05, 0.3},
  load λE[S]/r(B) ∈ {0.3, 0.6, 0.9, 0.95}, cv ∈ {0, 0.5, 1}.

One task type, batch-1 service time 1 s times a lognormal factor (mean 1,
the given cv; cv = 0 is deterministic service), so cv is the service time's.
Each point: `--replications` × `--queries` simulated queries (10% warm-up),
all points of one (kind, cv) in one vmapped call on common random numbers.
Writes a table per point (theory, simulated mean, its 95% interval, relative
error) as markdown and JSON, and prints the worst relative errors against
the targets (≤ 5% for M/G/c at ρ ≤ 0.9, ≤ 3% for batching).

Run:  python bench/bench_server_accuracy.py [--quick] [--out DIR]
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import jaxalloc as ja
from jaxalloc.servers import FIFO, Batching
from jaxalloc.servers.batching import batch_rate
from jaxalloc.simulate import point

LOADS = (0.3, 0.6, 0.9, 0.95)
CVS = (0.0, 0.5, 1.0)


def one_type(server, lam):
    return ja.make_problem(arrival_rate=lam, alpha=1.0, max_tokens=10.0, A=[0.5], b=[0.1], D=[0.1], t0=[1.0],
                           c=[0.01], server=server)


def fifo_points():
    return [({"kind": "fifo", "servers": c, "load": rho}, FIFO(servers=jnp.asarray(float(c)), size=8), rho * c)
            for c, rho in itertools.product((2, 4, 8), LOADS)]


def batching_points():
    out = []
    for B, beta, rho in itertools.product((4, 64), (0.0, 0.05, 0.3), LOADS):
        server = Batching(max_batch=jnp.asarray(float(B)), batch_slowdown=jnp.asarray(beta), size=64)
        out.append(({"kind": "batching", "max_batch": B, "batch_slowdown": beta, "load": rho}, server,
                    rho * float(batch_rate(B, beta))))
    return out


def run_group(points, cv, queries, replications, seed):
    problems = [one_type(server, lam) for _, server, lam in points]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *problems)
    budgets = np.zeros((len(points), 1))
    res = ja.simulate_points(stacked, budgets, queries=queries, replications=replications, seed=seed,
                             warmup=queries // 10, service_cv=cv, store_limit=0)
    rows = []
    for i, (desc, _, lam) in enumerate(points):
        rep = ja.simulation_report(problems[i], budgets[i], point(res, i), service_cv=cv)
        theory, sim = rep["theory_mean_system_time"], rep["mean_system_time"]
        lo, hi = rep["mean_system_time_ci95"]
        rows.append({**desc, "cv": cv, "arrival_rate": lam, "theory": theory, "simulated": sim, "ci95": [lo, hi],
                     "rel_error": theory / sim - 1, "ci_half_rel": (hi - lo) / 2 / sim,
                     "queries": queries * replications})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer queries (indicative only)")
    ap.add_argument("--queries", type=int, help="queries per replication (default 100000; 20000 with --quick)")
    ap.add_argument("--replications", type=int, help="replications per point (default 20; 8 with --quick)")
    ap.add_argument("--kinds", default="fifo,batching")
    ap.add_argument("--out", default="bench/results", help="folder for server_accuracy.md / .json")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    Q = a.queries or (20_000 if a.quick else 100_000)
    R = a.replications or (8 if a.quick else 20)
    rows = []
    for kind in a.kinds.split(","):
        pts = fifo_points() if kind == "fifo" else batching_points()
        for cv in CVS:
            t = time.perf_counter()
            rows += run_group(pts, cv, Q, R, a.seed)
            print(f"{kind} cv = {cv}: {len(pts)} points in {time.perf_counter() - t:.0f} s", flush=True)
    lines = ["| kind | c / B | β | load | cv | theory E[T] | simulated E[T] | 95% CI | rel. error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = r.get("servers", r.get("max_batch"))
        beta = r.get("batch_slowdown", "")
        lines.append(f"| {r['kind']} | {size} | {beta} | {r['load']} | {r['cv']} | {r['theory']:.4f} | "
                     f"{r['simulated']:.4f} | [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}] | {100 * r['rel_error']:+.2f}% |")
    summary = {}
    for name, sel, target in (("fifo (rho <= 0.9)", lambda r: r["kind"] == "fifo" and r["load"] <= 0.9, 0.05),
                              ("fifo (all)", lambda r: r["kind"] == "fifo", None),
                              ("batching", lambda r: r["kind"] == "batching", 0.03)):
        chosen = [r for r in rows if sel(r)]
        if not chosen:
            continue
        worst = max(chosen, key=lambda r: abs(r["rel_error"]))
        summary[name] = {"worst_rel_error": worst["rel_error"], "at": {k: worst[k] for k in worst
                         if k in ("servers", "max_batch", "batch_slowdown", "load", "cv")},
                         "ci_half_rel": worst["ci_half_rel"], "target": target,
                         "met": None if target is None else abs(worst["rel_error"]) <= target}
        lines.append(f"\nworst {name}: {100 * worst['rel_error']:+.2f}% at {summary[name]['at']} "
                     f"(CI half-width {100 * worst['ci_half_rel']:.2f}%)"
                     + ("" if target is None else f", target {100 * target:.0f}%: "
                        f"{'met' if summary[name]['met'] else 'MISSED'}"))
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "server_accuracy.md").write_text(text + "\n", encoding="utf-8")
    (out / "server_accuracy.json").write_text(json.dumps({"rows": rows, "summary": summary, "queries": Q,
                                                          "replications": R}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
