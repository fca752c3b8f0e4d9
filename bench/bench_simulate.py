"""Benchmark jaxalloc's M/G/1 simulator against ciw and simpy on the same problem.

The problem (float64): the paper profile at its optimal integer budgets
(``jaxalloc.solve`` + ``jaxalloc.integer_budgets``): Poisson arrivals at rate λ,
each query of type k with probability π_k, deterministic service t_k(ℓ_k), one
FIFO server. Every tool simulates that model:

- jaxalloc: ``jaxalloc.simulate`` with 1 replication × Q queries and with
  R replications × Q queries (vmapped); compilation excluded (one warm-up call
  of the same shapes), the median of ``--repeats`` timed calls counts;
- ciw: one node, ``Exponential(λ)`` arrivals, service ``Pmf(t_k, π_k)`` (the
  discrete mixture of the deterministic t_k), run until Q queries have
  arrived (``simulate_until_max_customers``, method "Arrive"); once per repeat;
- simpy: the textbook generator model (arrival process + ``Resource(capacity=1)``),
  Q queries, inter-arrival and type from ``random.Random(seed)``.

Reported per tool: queries/s, ratio vs ciw, mean system time of the run next
to Pollaczek–Khinchine (eq. 6), so the comparison is also a correctness check
(1 replication of 10^4 queries is noisy: a few % off P-K is normal).

Server models (issue 15), on the same profile and budgets, in the same run:

- jaxalloc batching (``kind = "batching"``, B = 64, β = 0.05) and priority
  (non-preemptive, the profile's task order), R × Q vmapped;
- ciw priority: the same priority M/G/1 (one ``Exponential(λπ_k)`` arrival
  stream and ``Deterministic(t_k)`` service per class, ``priority_classes``),
  the peer the priority ratio is taken against; ciw has no batching server
  with a state-dependent slowdown, so the batching ratio is taken against
  ciw's FIFO M/G/1 on the same problem (the row above).

Targets from the issues (printed as measured facts; the script always exits 0):
≥ 2.5×10^7 simulated queries/s vmapped and ≥ 300× ciw (M/G/1); ≥ 2×10^6
queries/s for batching, ≥ 10^7 for priority, each ≥ 50× ciw.

Run:  python bench/bench_simulate.py [--quick] [--json out.json]
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import jaxlib
import numpy as np

import jaxalloc

TARGET_RATE, TARGET_RATIO = 2.5e7, 300.0
SERVER_TARGETS = {"batching": 2e6, "priority": 1e7}
SERVER_RATIO = 50.0


def time_jax(problem, ell, queries, replications, repeats):
    run = lambda s: jax.block_until_ready(
        jaxalloc.simulate(problem, ell, queries=queries, replications=replications, seed=s))
    run(0)  # compile
    times, result = [], None
    for i in range(repeats):
        t = time.perf_counter()
        result = run(i + 1)
        times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    mean = float(np.sum(result.sum_system_time) / np.sum(result.counts))
    return {"queries": queries * replications, "seconds": sec, "seconds_all": times,
                "queries_per_s": queries * replications / sec, "mean_system_time": mean}


def run_ciw(lam, t, prob, queries, seed):
    import ciw

    ciw.seed(seed)
    network = ciw.create_network(
        arrival_distributions=[ciw.dists.Exponential(rate=lam)],
        service_distributions=[ciw.dists.Pmf(values=t.tolist(), probs=prob.tolist())],
        number_of_servers=[1],
    )
    return _time_ciw(ciw, network, queries)


def _time_ciw(ciw, network, queries):
    """(seconds, records, mean system time) of one ciw run of `network` to `queries` arrivals."""
    sim = ciw.Simulation(network)
    start = time.perf_counter()
    sim.simulate_until_max_customers(queries, method="Arrive")
    sec = time.perf_counter() - start
    recs = sim.get_all_records()
    return sec, len(recs), float(np.mean([r.exit_date - r.arrival_date for r in recs]))


def run_ciw_priority(lam, t, prob, queries, seed):
    import ciw

    ciw.seed(seed)
    classes = [f"Class {k}" for k in range(len(t))]
    network = ciw.create_network(
        arrival_distributions={c: [ciw.dists.Exponential(rate=lam * float(prob[k]))] for k, c in enumerate(classes)},
        service_distributions={c: [ciw.dists.Deterministic(value=float(t[k]))] for k, c in enumerate(classes)},
        number_of_servers=[1],
        priority_classes={c: k for k, c in enumerate(classes)},
    )
    return _time_ciw(ciw, network, queries)


def run_simpy(lam, t, prob, queries, seed):
    import simpy

    rng = random.Random(seed)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    cum = np.cumsum(prob).tolist()
    times = []

    def query(service):
        arrive = env.now
        with server.request() as req:
            yield req
            yield env.timeout(service)
        times.append(env.now - arrive)

    def source():
        for _ in range(queries):
            yield env.timeout(rng.expovariate(lam))
            u = rng.random() * cum[-1]
            k = next((i for i, c in enumerate(cum) if u < c), len(cum) - 1)
            env.process(query(float(t[k])))

    env.process(source())
    start = time.perf_counter()
    env.run()
    sec = time.perf_counter() - start
    return sec, len(times), float(np.mean(times))


def time_python(fn, lam, t, prob, queries, repeats):
    secs, means, n = [], [], 0
    for i in range(repeats):
        sec, n, mean = fn(lam, t, prob, queries, seed=i)
        secs.append(sec)
        means.append(mean)
    sec = float(np.median(secs))
    return {"queries": n, "seconds": sec, "seconds_all": secs, "queries_per_s": n / sec,
                "mean_system_time": float(np.mean(means)), "mean_system_time_runs": means}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run (< 30 s): 100 replications, 1 repeat of ciw/simpy")
    ap.add_argument("--queries", type=int, default=10_000, help="queries per replication (default 10^4)")
    ap.add_argument("--replications", type=int, help="vmapped replications (default 1000; 100 with --quick)")
    ap.add_argument("--repeats", type=int, help="timed JAX calls, the median counts (default 5; 3 with --quick)")
    ap.add_argument("--python-repeats", type=int, help="ciw/simpy runs (default 3; 1 with --quick)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    a = ap.parse_args(argv)
    reps = a.replications or (100 if a.quick else 1000)
    repeats = a.repeats or (3 if a.quick else 5)
    py_repeats = a.python_repeats or (1 if a.quick else 3)
    Q = a.queries

    problem = jaxalloc.paper_profile()
    ell = np.asarray(jaxalloc.integer_budgets(problem, jaxalloc.solve(problem).budgets))
    lam = float(problem.arrival_rate)
    t = np.asarray(jaxalloc.service_times(problem, jax.numpy.asarray(ell, float)))
    prob = np.asarray(problem.prob)
    m1, m2 = jaxalloc.moments(problem, jax.numpy.asarray(ell, float))
    pk = float(jaxalloc.mean_system_time(lam, m1, m2))
    dev = jax.devices()[0]
    out = {"machine": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "device": f"{dev.platform}:{dev.device_kind}",
                            "cpu_count": os.cpu_count(), "python": platform.python_version()},
               "problem": {"profile": "paper", "budgets": ell.tolist(), "arrival_rate": lam, "service_times": t.tolist(),
                            "prob": prob.tolist(), "utilization": float(lam * m1), "theory_mean_system_time": pk},
               "tools": {}}
    print(f"jax {jax.__version__} on {out['machine']['device']}, {os.cpu_count()} CPUs; paper profile, budgets "
          f"{ell.tolist()}, λ = {lam:g}/s, ρ = {float(lam * m1):.3f}, P-K E[T] = {pk:.4f} s", flush=True)

    out["tools"][f"jax 1 × {Q}"] = time_jax(problem, ell, Q, 1, repeats)
    out["tools"][f"jax {reps} × {Q}"] = time_jax(problem, ell, Q, reps, repeats)
    for name, fn in (("ciw", run_ciw), ("simpy", run_simpy)):
        try:
            out["tools"][f"{name} 1 × {Q}"] = time_python(fn, lam, t, prob, Q, py_repeats)
        except ImportError:
            print(f"  {name} not installed (pip install {name}); skipped", flush=True)

    from jaxalloc.servers import make_server

    names = tuple(problem.names)
    servers = {"batching": make_server("batching", names, max_batch=64, batch_slowdown=0.05),
               "priority": make_server("priority", names)}
    theory = {}
    for kind, server in servers.items():
        sp = problem.replace(server=server)
        theory[kind] = float(jaxalloc.system_time(sp, jax.numpy.asarray(ell, float)))
        out["tools"][f"jax {kind} {reps} × {Q}"] = time_jax(sp, ell, Q, reps, repeats)
    try:
        out["tools"][f"ciw priority 1 × {Q}"] = time_python(run_ciw_priority, lam, t, prob, Q, py_repeats)
    except ImportError:
        pass

    ciw_key = f"ciw 1 × {Q}"
    base = out["tools"].get(ciw_key, {}).get("queries_per_s")
    base_prio = out["tools"].get(f"ciw priority 1 × {Q}", {}).get("queries_per_s")
    print(f"\n{'tool':22s} {'queries':>10s} {'seconds':>9s} {'queries/s':>11s} {'× ciw':>8s} "
          f"{'E[T] sim':>9s} {'E[T] th.':>9s} {'rel. diff':>9s}")
    for name, r in out["tools"].items():
        kind = next((k for k in servers if k in name), None)
        peer = base_prio if kind == "priority" else base
        r["ratio_vs_ciw"] = r["queries_per_s"] / peer if peer else None
        ref = theory[kind] if kind else pk
        r["theory_mean_system_time"] = ref
        r["rel_diff_vs_pk"] = r["mean_system_time"] / ref - 1  # against the server's own theory
        ratio = f"{r['ratio_vs_ciw']:8.1f}" if peer else f"{'-':>8s}"
        print(f"{name:22s} {r['queries']:10d} {r['seconds']:9.4f} {r['queries_per_s']:11.4g} {ratio} "
              f"{r['mean_system_time']:9.4f} {ref:9.4f} {100 * r['rel_diff_vs_pk']:+8.2f}%")
    vm = out["tools"][f"jax {reps} × {Q}"]
    targets = {"vmapped_queries_per_s_ge_2.5e7": bool(vm["queries_per_s"] >= TARGET_RATE),
               "vmapped_ratio_vs_ciw_ge_300": bool(base and vm["ratio_vs_ciw"] >= TARGET_RATIO)}
    for kind, target in SERVER_TARGETS.items():
        r = out["tools"][f"jax {kind} {reps} × {Q}"]
        targets[f"{kind}_queries_per_s_ge_{target:.0e}"] = bool(r["queries_per_s"] >= target)
        targets[f"{kind}_ratio_vs_ciw_ge_50"] = bool(r["ratio_vs_ciw"] and r["ratio_vs_ciw"] >= SERVER_RATIO)
    out["targets"] = targets
    ratio = f"{vm['ratio_vs_ciw']:.0f}×" if base else "n/a"
    print(f"\nTargets (jax {reps} × {Q}): ≥ 2.5e7 queries/s: "
          f"{'met' if targets['vmapped_queries_per_s_ge_2.5e7'] else 'MISSED'} ({vm['queries_per_s']:.3g}); "
          f"≥ 300× ciw: {'met' if targets['vmapped_ratio_vs_ciw_ge_300'] else 'MISSED'} ({ratio})")
    for kind, target in SERVER_TARGETS.items():
        r = out["tools"][f"jax {kind} {reps} × {Q}"]
        rr = f"{r['ratio_vs_ciw']:.0f}×" if r["ratio_vs_ciw"] else "n/a"
        print(f"  {kind}: ≥ {target:.0e} queries/s: "
              f"{'met' if targets[f'{kind}_queries_per_s_ge_{target:.0e}'] else 'MISSED'} ({r['queries_per_s']:.3g}); "
              f"≥ 50× ciw: {'met' if targets[f'{kind}_ratio_vs_ciw_ge_50'] else 'MISSED'} ({rr})")
    if a.quick:
        print("(--quick: fewer replications and repeats; numbers are indicative only)")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
