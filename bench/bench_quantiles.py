"""Benchmark the system-time quantiles and the SLO-constrained solve (issue 18).

Targets (issue 18): a quantile evaluated in a vmapped sweep costs at most 1 µs per point per task
with the fast method (the Cramér–Lundberg asymptote); a constrained solve, compiled, takes at most
20 ms. Measured in one run, medians of ``--repeats`` after a warm-up call (compilation excluded):

- the paper profile (N = 6) at its optimum budgets, λ over ``--points`` values: the overall p95
  and p99 per point, vmapped and jitted, for "lundberg" and "exact"; µs per point per task, and,
  as the same-run baseline, the rate of solving those points (``solve_many``) for the ratio;
- ``solve --slo p99=8`` on the paper profile, compiled (:func:`jaxalloc.slo.solve_slo_point`),
  for each quantile method; and scipy's SLSQP on the same formulas from the unconstrained optimum
  as the baseline a user would reach for (ratio: SLSQP time / ours).

Run:  python bench/bench_quantiles.py [--quick] [--points 100000] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import numpy as np

import jaxalloc as ja
from jaxalloc.quantiles import quantile, system_time_quantiles
from jaxalloc.slo import solve_slo_point


def median_time(fn, repeats):
    fn()  # warm-up: compiles
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def quantile_sweep(points, repeats):
    paper = ja.paper_profile()
    ell = ja.solve(paper).budgets
    lam = jnp.linspace(0.005, 0.4, points)
    out = {}
    for method in ("lundberg", "exact"):
        n = points if method == "lundberg" else max(100, points // 100)
        f = jax.jit(jax.vmap(lambda x, m=method: system_time_quantiles(paper.replace(arrival_rate=x), ell,
                                                                           levels=(0.95, 0.99), method=m).overall))
        secs = median_time(lambda f=f, n=n: f(lam[:n]), repeats)
        out[method] = {"points": n, "seconds": secs, "us_per_point_per_task": 1e6 * secs / n / paper.num_tasks}
    secs = median_time(lambda: ja.solve_many(paper, arrival_rate=lam).budgets, repeats)
    out["solve_us_per_point"] = 1e6 * secs / points
    out["lundberg_over_solve"] = out["lundberg"]["us_per_point_per_task"] * paper.num_tasks / out["solve_us_per_point"]
    return out


def constrained(repeats):
    from scipy.optimize import minimize

    paper = ja.paper_profile()
    spec, limits = ((None, 0.99),), np.array([8.0])
    out = {}
    for method in ("lundberg", "exact"):
        run = eqx.filter_jit(lambda p, lim, m=method: solve_slo_point(p, spec, lim, m)[0])
        secs = median_time(lambda run=run: run(paper, limits), repeats)
        out[method] = {"ms": 1e3 * secs, "budgets": np.asarray(run(paper, limits)).round(3).tolist()}
    f = jax.jit(lambda x: -ja.objective(paper, x))
    df = jax.jit(jax.grad(lambda x: -ja.objective(paper, x)))
    q = jax.jit(lambda x: 8.0 - quantile(paper, x, 0.99, None, "exact"))
    dq = jax.jit(jax.grad(lambda x: -quantile(paper, x, 0.99, None, "exact")))
    x0 = np.asarray(ja.solve(paper).budgets)

    def slsqp():
        return minimize(lambda x: float(f(jnp.asarray(x))), x0, jac=lambda x: np.asarray(df(jnp.asarray(x))),
                        method="SLSQP", bounds=[(0.0, 32768.0)] * 6,
                        constraints=[{"type": "ineq", "fun": lambda x: float(q(jnp.asarray(x))),
                                      "jac": lambda x: np.asarray(dq(jnp.asarray(x)))}],
                        options={"ftol": 1e-14, "maxiter": 500}).x

    out["slsqp_ms"] = 1e3 * median_time(slsqp, repeats)
    out["slsqp_budgets"] = np.asarray(slsqp()).round(3).tolist()
    out["slsqp_over_exact"] = out["slsqp_ms"] / out["exact"]["ms"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="10^4 points, 3 repeats")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    points, repeats = (10_000, 3) if a.quick else (a.points, a.repeats)
    res = {"quantiles": quantile_sweep(points, repeats), "constrained": constrained(repeats)}
    qs, cs = res["quantiles"], res["constrained"]
    print(f"quantiles (overall p95 + p99), N = 6, vmapped: lundberg {qs['lundberg']['us_per_point_per_task']:.3f} "
          f"µs/point/task (target <= 1), exact {qs['exact']['us_per_point_per_task']:.1f}; solving the same points "
          f"{qs['solve_us_per_point']:.2f} µs/point (lundberg columns / solve = {qs['lundberg_over_solve']:.2f})")
    print(f"solve --slo p99=8, compiled: lundberg {cs['lundberg']['ms']:.1f} ms, exact {cs['exact']['ms']:.1f} ms "
          f"(target <= 20); scipy SLSQP on the same formulas {cs['slsqp_ms']:.1f} ms "
          f"(SLSQP / exact = {cs['slsqp_over_exact']:.2f})")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
