"""Benchmark the sweep engine end to end (solve + derived columns + Parquet).

What it measures, in one run:

- N = 6 (the paper profile), a λ × α grid of ``--points`` (default 10^6;
  λ ∈ [0.005, 0.4] linear, α ∈ [1, 1000] log), float64 and float32:
  wall time of ``jaxalloc.sweep(..., out=FILE.parquet)`` from the call to the
  renamed file, *after* a warm-up sweep of the same block shape (compilation
  excluded), median of ``--repeats``; without the p95/p99 columns
  (``quantiles="none"``: the solver's rate, comparable across servers and with
  earlier runs; bench_quantiles.py times the columns); points/s, share converged, and the
  largest float32 − float64 budget difference in tokens;
- N = 6, the same grid, on other servers (issue 15): FIFO with c = 4 servers
  (λ scaled by c, so that each server sees the same load) and continuous
  batching (B = 64, β = 0.05, λ scaled by its capacity r(B)); points/s and
  the ratio to the single-FIFO rate of the same run (target: within 2×,
  i.e. ratio ≥ 0.5);
- N = 64 and N = 1024 (seeded random task parameters, see ``make_problem``),
  ``--wide-points`` points (default 10^4) the same way;
- peak resident memory of a child process that sweeps ``--memory-points``
  (default 10^7) points into Parquet;
- scipy L-BFGS-B (tight tolerances, from ℓ = 0, one point at a time, the
  objective of ``tests/reference.py``) on a seeded sample of the N = 6 grid:
  the baseline of the ratio.

Targets from the issue (printed as measured facts; the script exits 0):
≥ 2×10^6 points/s at N = 6 float64 end to end (≥ 2000× scipy), ≥ 3×10^4
points/s at N = 1024, 100% converged.

Run:  python bench/bench_sweep.py [--quick] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bench_solvers.py
from jaxalloc.cli import use_every_core

use_every_core()

import jax

jax.config.update("jax_enable_x64", True)

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import jaxalloc
from jaxalloc.servers import make_server
from jaxalloc.sweep import sweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_solvers import scipy_baseline

LAM, ALPHA = (0.005, 0.4), (1.0, 1000.0)


def grid(points: int, lam_scale: float = 1.0) -> dict[str, str]:
    n_alpha = max(2, round(np.sqrt(points)))
    n_lam = max(2, round(points / n_alpha))
    lo, hi = LAM[0] * lam_scale, LAM[1] * lam_scale
    return {"arrival_rate": f"{lo}:{hi}:{n_lam}", "alpha": f"{ALPHA[0]}:{ALPHA[1]}:{n_alpha}:log"}


SERVERS = {  # name: (kind, parameters), each swept over the N = 6 grid with λ scaled by its capacity
    "N=6 fifo c=4": ("fifo", {"servers": 4}),
    "N=6 batching B=64": ("batching", {"max_batch": 64, "batch_slowdown": 0.05}),
}


def make_problem(n: int, seed: int = 0) -> jaxalloc.Problem:
    """N task types with the paper's parameter ranges: A, D, b, t0, c drawn
    around the paper's six (seeded), π uniform, utilisation ~0.05 at ℓ = 0 for λ = 0.1."""
    paper = jaxalloc.paper_profile()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, paper.num_tasks, n)
    jitter = lambda x: np.asarray(x)[pick] * np.exp(rng.normal(0, 0.2, n))
    A = np.minimum(jitter(paper.A), 0.95)
    D = np.minimum(np.asarray(paper.D)[pick], 1 - A)
    return jaxalloc.make_problem(arrival_rate=0.1, alpha=30.0, max_tokens=32768.0, A=A, b=jitter(paper.b), D=D,
                                 t0=jitter(paper.t0), c=jitter(paper.c), prob=np.full(n, 1.0 / n),
                                 names=[f"task{k}" for k in range(n)])


def timed_sweep(problem, axes, repeats, dtype=None, block=None):
    """Median seconds of a sweep into a fresh Parquet file, compile excluded; and the table."""
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: the same sweep, so nothing compiles in the timed calls
        sweep(problem, axes, out=Path(tmp) / "warm.parquet", dtype=dtype, progress=False, block=block,
              quantiles="none")
        times = []
        for r in range(repeats):
            out = Path(tmp) / f"run{r}.parquet"
            t = time.perf_counter()
            res = sweep(problem, axes, out=out, dtype=dtype, progress=False, block=block, quantiles="none")
            times.append(time.perf_counter() - t)
        import pyarrow.parquet as pq

        table = pq.read_table(out)
    return float(np.median(times)), res, table


def summarise(res, table, seconds):
    status = np.asarray(table["status"].to_pylist())
    conv = status == "converged"
    return {"points": int(table.num_rows), "seconds": seconds, "points_per_s": table.num_rows / seconds,
                "converged_share": float(conv.mean()), "worst_kkt": float(table["kkt_residual"].to_numpy()[conv].max()),
                "median_iterations": float(np.median(table["iterations"].to_numpy())),
                "max_iterations": int(table["iterations"].to_numpy().max()), "blocks": res.plan.num_blocks,
                "block": res.plan.block}


MEMORY_CHILD = """
import os, sys, resource
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=%d")
import jax
jax.config.update("jax_enable_x64", True)
import jaxalloc
from jaxalloc.servers import make_server
from jaxalloc.sweep import sweep
res = sweep(jaxalloc.paper_profile(), %r, out=sys.argv[1], progress=False)
print(res.seconds, res.plan.size, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2e4 points, 1e3 wide, 1e5 memory, scipy 20")
    ap.add_argument("--points", type=int, help="N = 6 grid size (default 1e6)")
    ap.add_argument("--wide-points", type=int, help="points for N = 64 and N = 1024 (default 1e4)")
    ap.add_argument("--memory-points", type=int, help="points of the peak-memory run (default 1e7)")
    ap.add_argument("--scipy-sample", type=int, help="scipy sample size (default 200)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    points = a.points or (20_000 if a.quick else 1_000_000)
    wide = a.wide_points or (1_000 if a.quick else 10_000)
    mem_points = a.memory_points or (100_000 if a.quick else 10_000_000)
    n_scipy = a.scipy_sample or (20 if a.quick else 200)
    dev = jax.devices()[0]
    out = {"machine": {"jax": jax.__version__, "device": f"{dev.platform}:{dev.device_kind}",
                            "devices": jax.local_device_count(), "cpu_count": os.cpu_count(),
                            "python": platform.python_version()}, "runs": {}}
    print(f"jax {jax.__version__} on {out['machine']['device']} × {jax.local_device_count()}, {os.cpu_count()} CPUs",
          flush=True)

    paper = jaxalloc.paper_profile()
    axes = grid(points)
    secs, res, t64 = timed_sweep(paper, axes, a.repeats)
    out["runs"]["N=6 float64"] = summarise(res, t64, secs)
    print(f"  N=6 float64   {secs:8.3f} s for {t64.num_rows:,} points", flush=True)
    secs, res, t32 = timed_sweep(paper, axes, a.repeats, dtype=jnp.float32)
    out["runs"]["N=6 float32"] = summarise(res, t32, secs)
    diff = max(float(np.max(np.abs(t32[f"budget_{n}"].to_numpy().astype(np.float64) - t64[f"budget_{n}"].to_numpy())))
               for n in paper.names)
    out["runs"]["N=6 float32"]["max_token_diff_vs_float64"] = diff
    print(f"  N=6 float32   {secs:8.3f} s (max |Δℓ| vs float64 {diff:.3g} tokens)", flush=True)
    for name, (kind, params) in SERVERS.items():
        server = make_server(kind, paper.names, **params)
        secs, res, t = timed_sweep(paper.replace(server=server), grid(points, float(server.capacity())), a.repeats)
        out["runs"][name] = summarise(res, t, secs)
        out["runs"][name]["ratio_vs_single_fifo"] = out["runs"][name]["points_per_s"] / out["runs"]["N=6 float64"][
            "points_per_s"]
        print(f"  {name:<18s} {secs:8.3f} s for {t.num_rows:,} points "
              f"({out['runs'][name]['ratio_vs_single_fifo']:.2f} × the single-FIFO rate)", flush=True)
    for n in (64, 1024):
        secs, res, t = timed_sweep(make_problem(n), grid(wide), a.repeats)
        out["runs"][f"N={n} float64"] = summarise(res, t, secs)
        print(f"  N={n:<5d} float64 {secs:8.3f} s for {t.num_rows:,} points", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        child = MEMORY_CHILD % (os.cpu_count(), grid(mem_points))
        proc = subprocess.run([sys.executable, "-c", child, str(Path(tmp) / "big.parquet")],
                              check=False, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        seconds, size, rss_kb = proc.stdout.split()
        size_mb = (Path(tmp) / "big.parquet").stat().st_size / 1e6
    out["memory"] = {"points": int(size), "seconds": float(seconds), "peak_rss_gib": int(rss_kb) / 2**20,
                         "parquet_mb": size_mb, "points_per_s_including_compile": int(size) / float(seconds)}
    print(f"  memory run    {float(seconds):8.3f} s for {int(size):,} points, peak RSS "
          f"{out['memory']['peak_rss_gib']:.2f} GiB, file {size_mb:.0f} MB", flush=True)

    lam = t64["arrival_rate"].to_numpy()
    alpha = t64["alpha"].to_numpy()
    idx = np.random.default_rng(0).choice(lam.size, size=min(n_scipy, lam.size), replace=False)
    sp, ells = scipy_baseline(paper, lam[idx], alpha[idx], tight=True)
    ref = np.stack([t64[f"budget_{n}"].to_numpy() for n in paper.names], axis=1)[idx]
    sp["max_token_diff_vs_sweep"] = float(np.abs(ells - ref).max())
    out["scipy_tight"] = sp
    print(f"  scipy         {sp['points_per_s']:.4g} points/s (median per point), "
          f"max |Δℓ| vs sweep {sp['max_token_diff_vs_sweep']:.3g}", flush=True)

    base = sp["points_per_s"]
    print(f"\n{'run':16s} {'points':>10s} {'seconds':>9s} {'points/s':>11s} {'× scipy':>9s} {'conv %':>8s} "
          f"{'worst KKT':>10s} {'it med/max':>11s}")
    for name, r in out["runs"].items():
        r["ratio_vs_scipy"] = r["points_per_s"] / base
        print(f"{name:16s} {r['points']:10,d} {r['seconds']:9.3f} {r['points_per_s']:11.4g} {r['ratio_vs_scipy']:9.0f} "
              f"{100 * r['converged_share']:8.3f} {r['worst_kkt']:10.1e} {r['median_iterations']:>5.0f}/{r['max_iterations']:<5d}")
    r6, rw = out["runs"]["N=6 float64"], out["runs"]["N=1024 float64"]
    targets = {
        "n6_float64_ge_2e6_points_per_s": r6["points_per_s"] >= 2e6,
        "n6_float64_ge_2000x_scipy": r6["ratio_vs_scipy"] >= 2000,
        "n1024_ge_3e4_points_per_s": rw["points_per_s"] >= 3e4,
        "all_100pct_converged": all(r["converged_share"] == 1.0 for r in out["runs"].values()),
        **{f"{name.split()[1]}_within_2x_of_single_fifo": out["runs"][name]["ratio_vs_single_fifo"] >= 0.5
           for name in SERVERS},
    }
    targets = {k: bool(v) for k, v in targets.items()}
    out["targets"] = targets
    print("\nTargets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in targets.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
