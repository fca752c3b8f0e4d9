"""The M/G/1 simulator against queueing theory, an independent simulator (ciw), and the CLI."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import random_problem

import jaxalloc as ja
from jaxalloc.cli import main
from jaxalloc.simulate import SimulationError, point, t975
from jaxalloc.solvers.integer import integer_budgets

CONTRACT_KEYS = {
    "mean_system_time", "mean_system_time_ci95", "theory_mean_system_time", "p50", "p95", "p99",
    "accuracy", "utilization",
}


def optimal_integer(problem):
    return np.asarray(integer_budgets(problem, ja.solve(problem).budgets))


def inside(value, ci):
    return ci[0] <= value <= ci[1]


@pytest.fixture(scope="module")
def paper_run(paper):
    ell = optimal_integer(paper)
    result = ja.simulate(paper, ell, queries=10_000, replications=100, seed=0, warmup=200)
    return ell, result, ja.simulation_report(paper, ell, result)


def test_paper_profile_matches_pollaczek_khinchine(paper, paper_run):
    ell, result, rep = paper_run
    assert ell.tolist() == [0, 341, 0, 0, 346, 30]
    m1, m2 = ja.moments(paper, jnp.asarray(ell, float))
    theory = float(ja.mean_system_time(paper.arrival_rate, m1, m2))
    assert rep["theory_mean_system_time"] == pytest.approx(theory, rel=1e-12)
    assert inside(theory, rep["mean_system_time_ci95"]), rep
    assert inside(rep["theory_mean_wait"], rep["mean_wait_ci95"])
    assert rep["stable"] and rep["status"] == "stable" and rep["quantiles"] == "exact"
    assert rep["utilization"] == pytest.approx(float(ja.utilization(paper.arrival_rate, m1)), rel=0.01)
    assert rep["p50"] <= rep["p95"] <= rep["p99"]
    # FIFO with Poisson arrivals: every type sees the same mean wait, E[T_k] = E[W] + t_k
    for task in rep["per_task"]:
        assert inside(task["theory_mean_system_time"], task["mean_system_time_ci95"]), task
        assert task["p50"] >= task["service_time"] - 1e-12
        assert task["share"] == pytest.approx(task["prob"], abs=0.005)
    assert result.counts.shape == (100, 6) and int(result.counts.sum()) == 100 * 9_800


def test_theory_quantiles_beside_the_simulated_ones(paper, paper_run):
    """At the paper's point (ρ = 0.17, deterministic service) the model's p95 and p99 (exact inversion)
    lie within 2% of the simulated ones over 10^6 queries, per task within 4%; p50 is a service time."""
    ell, result, _ = paper_run
    rep = ja.simulation_report(paper, ell, result, theory_quantiles=True)
    assert rep["theory_quantiles"] == "exact" and rep["theory_quantiles_note"] == ""
    for key in ("p95", "p99"):
        assert rep[f"theory_{key}"] == pytest.approx(rep[key], rel=0.02), key
    assert rep["theory_p50"] == pytest.approx(rep["p50"], rel=1e-3)  # ARC-Challenge's t_k: the CDF jumps there
    for task in rep["per_task"]:
        assert task["theory_p50"] <= task["theory_p95"] <= task["theory_p99"]
        assert task["theory_p99"] == pytest.approx(task["p99"], rel=0.04), task
    line = [x for x in ja.format_simulation_report(rep).splitlines() if x.startswith("p50 / p95 / p99 (theory)")]
    values = " / ".join(f"{rep[k]:.4f}" for k in ("theory_p50", "theory_p95", "theory_p99"))
    assert line == [f"p50 / p95 / p99 (theory) {values} s (exact inversion)"]
    # not asked (the default): null, and the line says so
    plain = ja.simulation_report(paper, ell, result)
    assert plain["theory_p99"] is None and plain["per_task"][0]["theory_p99"] is None
    assert "(not computed (theory_quantiles=False))" in ja.format_simulation_report(plain)


def test_realised_accuracy_in_binomial_interval(paper, paper_run):
    ell, _, rep = paper_run
    theory = float(ja.mean_accuracy(paper, jnp.asarray(ell, float)))
    assert rep["theory_accuracy"] == pytest.approx(theory, rel=1e-12)
    assert inside(theory, rep["accuracy_ci95"]), rep["accuracy_ci95"]
    # Given the realised task counts, each type's correct answers are binomial(n_k, p_k)
    for task in rep["per_task"]:
        assert inside(task["theory_accuracy"], task["accuracy_ci95"]), task


@pytest.mark.parametrize("seed, n, rho0", [(3, 3, 0.5), (11, 5, 0.3)])
def test_random_stable_problems_match_pollaczek_khinchine(seed, n, rho0):
    problem = random_problem(seed, n, rho0, log_alpha=1.0)
    ell = optimal_integer(problem)
    result = ja.simulate(problem, ell, queries=10_000, replications=64, seed=0, warmup=500)
    rep = ja.simulation_report(problem, ell, result)
    assert rep["stable"] and rep["theory_utilization"] < 1
    assert inside(rep["theory_mean_system_time"], rep["mean_system_time_ci95"]), rep


def test_md1_closed_form():
    """One task, deterministic service 1 s, ρ = 0.8: E[W] = ρ / (2μ(1 − ρ)) = 2 s."""
    problem = ja.make_problem(arrival_rate=0.8, alpha=1.0, max_tokens=1000.0, A=[0.5], b=[0.01], D=[0.1],
                              t0=[0.5], c=[0.005])
    result = ja.simulate(problem, [100.0], queries=20_000, replications=50, seed=1, warmup=2_000)
    rep = ja.simulation_report(problem, [100.0], result)
    rho, mu = 0.8, 1.0
    closed = rho / (2 * mu * (1 - rho))
    assert rep["theory_mean_wait"] == pytest.approx(closed, rel=1e-12)
    assert inside(closed, rep["mean_wait_ci95"]), rep["mean_wait_ci95"]
    assert inside(closed + 1.0, rep["mean_system_time_ci95"])


def test_mm1_closed_form():
    """One task, exponential service with mean 1 s, λ = 0.7: E[T] = 1/(μ − λ) = 10/3 s."""
    problem = ja.make_problem(arrival_rate=0.7, alpha=1.0, max_tokens=1000.0, A=[0.5], b=[0.01], D=[0.1],
                              t0=[0.5], c=[0.005])
    result = ja.simulate(problem, [100.0], queries=20_000, replications=50, seed=2, warmup=2_000,
                         exponential_service=True)
    rep = ja.simulation_report(problem, [100.0], result, service_cv=1.0)
    closed = 1.0 / (1.0 - 0.7)
    assert rep["theory_mean_system_time"] == pytest.approx(closed, rel=1e-12)
    assert inside(closed, rep["mean_system_time_ci95"]), rep["mean_system_time_ci95"]
    with pytest.raises(ja.SimulationError, match="exponential service has cv = 1"):
        ja.simulate(problem, [100.0], queries=1000, service_cv=0.5, exponential_service=True)


def test_lognormal_jitter_matches_pollaczek_khinchine():
    """Service t_k × lognormal(mean 1, cv 1): E[S²] = Σ π t_k² (1 + cv²) in P-K."""
    problem = random_problem(5, 3, 0.4, log_alpha=1.0)
    ell = optimal_integer(problem)
    cv = 1.0
    result = ja.simulate(problem, ell, queries=10_000, replications=64, seed=2, warmup=500, service_cv=cv)
    rep = ja.simulation_report(problem, ell, result, service_cv=cv)
    m1, m2 = ja.moments(problem, jnp.asarray(ell, float))
    theory = float(ja.mean_system_time(problem.arrival_rate, m1, m2 * (1 + cv**2)))
    assert rep["theory_mean_system_time"] == pytest.approx(theory, rel=1e-12)
    assert inside(theory, rep["mean_system_time_ci95"]), rep
    deterministic = float(ja.mean_system_time(problem.arrival_rate, m1, m2))
    assert not inside(deterministic, rep["mean_system_time_ci95"])  # the jitter matters
    mean_service = float(result.busy_time.sum() / result.counts.sum())
    assert mean_service == pytest.approx(float(m1), rel=0.01)  # jitter has mean 1


def test_reproducible_from_seed(paper):
    ell = optimal_integer(paper)
    a = ja.simulate(paper, ell, queries=3_000, replications=4, seed=7)
    b = ja.simulate(paper, ell, queries=3_000, replications=4, seed=7)
    c = ja.simulate(paper, ell, queries=3_000, replications=4, seed=8)
    for x, y in zip(a[:-2], b[:-2]):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a.sum_system_time), np.asarray(c.sum_system_time))
    # replication r's stream does not depend on how many replications run
    d = ja.simulate(paper, ell, queries=3_000, replications=2, seed=7)
    np.testing.assert_array_equal(np.asarray(a.system_times[:2]), np.asarray(d.system_times))


@pytest.mark.parametrize("cv", [0.0, 0.5])
def test_chunk_size_does_not_change_the_result(paper, cv):
    ell = optimal_integer(paper)
    kw = {"queries": 10_000, "replications": 3, "seed": 4, "warmup": 100, "service_cv": cv}
    a = ja.simulate(paper, ell, chunk=1024, **kw)
    b = ja.simulate(paper, ell, chunk=4096, **kw)
    c = ja.simulate(paper, ell, chunk=4096, store_limit=0, **kw)  # histogram path
    np.testing.assert_array_equal(np.asarray(a.counts), np.asarray(b.counts))
    np.testing.assert_array_equal(np.asarray(a.correct), np.asarray(b.correct))
    for field in ("sum_system_time", "sum_wait", "busy_time", "elapsed"):
        np.testing.assert_allclose(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(getattr(b, field)), np.asarray(getattr(c, field)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(a.system_times[:, :10_000]), np.asarray(b.system_times[:, :10_000]),
                               rtol=1e-12, atol=1e-12)
    d = ja.simulate(paper, ell, chunk=256, **kw)  # the smallest chunk: one random-number block
    np.testing.assert_array_equal(np.asarray(a.counts), np.asarray(d.counts))
    np.testing.assert_allclose(np.asarray(a.sum_system_time), np.asarray(d.sum_system_time), rtol=1e-12)
    ra, rc = ja.simulation_report(paper, ell, a, cv), ja.simulation_report(paper, ell, c, cv)
    assert ra["quantiles"] == "exact" and rc["quantiles"] == "histogram"
    assert rc["per_task"][0]["p50"] is None
    for q in ("p50", "p95", "p99"):
        assert rc[q] == pytest.approx(ra[q], rel=0.02)


def test_vmapped_over_operating_points(paper):
    ell = optimal_integer(paper)
    rates = [0.05, 0.1, 0.2]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[paper.replace(arrival_rate=r) for r in rates])
    budgets = np.tile(ell, (3, 1)).astype(float)
    many = ja.simulate_points(stacked, budgets, queries=2_000, replications=3, seed=5)
    assert many.counts.shape == (3, 3, 6)
    for i, rate in enumerate(rates):
        one = ja.simulate(paper.replace(arrival_rate=rate), ell, queries=2_000, replications=3, seed=5)
        np.testing.assert_allclose(np.asarray(point(many, i).sum_system_time), np.asarray(one.sum_system_time),
                                   rtol=1e-12)
        assert float(point(many, i).theory_mean_system_time) == pytest.approx(float(one.theory_mean_system_time))


def test_unstable_load_is_flagged(paper):
    ell = np.array([0, 4000, 0, 0, 4000, 0], float)
    result = ja.simulate(paper, ell, queries=2_000, replications=4, seed=0)
    rep = ja.simulation_report(paper, ell, result, theory_quantiles=True)
    assert not rep["stable"] and rep["status"] == "unstable" and "unstable" in rep["message"]
    assert rep["theory_p99"] is None and rep["theory_quantiles_note"] == "queue unstable: no quantiles"
    assert rep["theory_utilization"] > 1 and rep["theory_mean_system_time"] is None
    for key in ("mean_system_time", "p50", "p95", "p99", "mean_wait"):
        assert rep[key] is None
    assert rep["mean_system_time_ci95"] == [None, None]
    assert rep["accuracy"] is not None and rep["utilization"] > 1
    assert "UNSTABLE" in ja.format_simulation_report(rep)


@pytest.mark.parametrize("kwargs, message", [
    ({"queries": 0}, "queries = 0"),
    ({"queries": -5}, "queries = -5"),
    ({"replications": 0}, "replications = 0"),
    ({"warmup": -1}, "warmup = -1"),
    ({"queries": 100, "warmup": 100}, "warmup = 100"),
    ({"service_cv": -0.1}, "service_cv = -0.1"),
    ({"chunk": 1000}, "chunk = 1000: must be a multiple of 256"),
    ({"chunk": 0}, "chunk = 0"),
    ({"budgets": [1.0, 2.0]}, "2 values for 6 tasks"),
    ({"budgets": [-1.0, 0, 0, 0, 0, 0]}, "must be >= 0"),
    ({"budgets": [1e9, 0, 0, 0, 0, 0]}, "exceed max_tokens"),
    ({"budgets": [math.nan, 0, 0, 0, 0, 0]}, "finite"),
])
def test_bad_input_raises(paper, kwargs, message):
    budgets = kwargs.pop("budgets", [0.0] * 6)
    with pytest.raises(SimulationError, match=message.replace("+", r"\+")):
        ja.simulate(paper, budgets, **kwargs)


def test_t_quantile_table():
    stats = pytest.importorskip("scipy.stats")
    for df in list(range(1, 40)) + [50, 99, 200, 10_000]:
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4)


def test_agrees_with_ciw():
    """Independent discrete-event simulator: means agree within combined 95% intervals."""
    ciw = pytest.importorskip("ciw")
    problem = random_problem(3, 3, 0.5, log_alpha=1.0)
    ell = optimal_integer(problem)
    t = np.asarray(ja.service_times(problem, jnp.asarray(ell, float)))
    prob = np.asarray(problem.prob)
    lam = float(problem.arrival_rate)
    warm, horizon = 200 / lam, 3_200 / lam
    means = []
    for rep in range(12):
        ciw.seed(rep)
        network = ciw.create_network(
            arrival_distributions=[ciw.dists.Exponential(rate=lam)],
            service_distributions=[ciw.dists.Pmf(values=t.tolist(), probs=prob.tolist())],
            number_of_servers=[1],
        )
        sim = ciw.Simulation(network)
        sim.simulate_until_max_time(horizon)
        recs = [r for r in sim.get_all_records() if r.arrival_date > warm]
        means.append(np.mean([r.exit_date - r.arrival_date for r in recs]))
    means = np.asarray(means)
    half_ciw = t975(len(means) - 1) * means.std(ddof=1) / math.sqrt(len(means))
    result = ja.simulate(problem, ell, queries=10_000, replications=32, seed=9, warmup=200)
    rep = ja.simulation_report(problem, ell, result)
    lo, hi = rep["mean_system_time_ci95"]
    half_jax = (hi - lo) / 2
    assert abs(rep["mean_system_time"] - means.mean()) <= math.hypot(half_ciw, half_jax)


# --- command line -------------------------------------------------------------------------------

def run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "jaxalloc.cli", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_simulate_json_contract():
    out = run("simulate", "--json", "--queries", "4000", "--replications", "20", "--seed", "3", "--warmup", "100")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert CONTRACT_KEYS <= set(data)
    assert data["budgets"] == [0, 341, 0, 0, 346, 30]  # default: the optimal integer budgets
    lo, hi = data["mean_system_time_ci95"]
    assert lo <= data["mean_system_time"] <= hi
    assert data["theory_mean_system_time"] == pytest.approx(2.17767, abs=1e-4)
    assert data["queries"] == 4000 and data["replications"] == 20 and data["warmup"] == 100
    assert len(data["per_task"]) == 6 and data["per_task"][1]["task"] == "GSM8K"
    # the model's quantiles beside the simulated ones (8 × 10^4 queries: p99 within a few %)
    assert data["theory_quantiles"] == "exact" and data["theory_p50"] <= data["theory_p95"] <= data["theory_p99"]
    assert data["theory_p99"] == pytest.approx(data["p99"], rel=0.05)
    assert all(t["theory_p99"] >= t["service_time"] for t in data["per_task"])


def test_cli_simulate_table_and_unstable(capsys):
    assert main(["simulate", "--queries", "2000", "--replications", "4", "--budgets", "0,300,0,0,300,30",
                 "--service-cv", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "Pollaczek–Khinchine" in out and "GSM8K" in out and "95% CI" in out
    assert main(["simulate", "--queries", "2000", "--replications", "4", "--budgets", "0,4000,0,0,4000,0",
                 "--json"]) == 1
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["stable"] is False and data["mean_system_time"] is None
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "unstable" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["--queries", "-1"], "queries = -1"),
    (["--queries", "many"], "--queries"),
    (["--replications", "0"], "replications = 0"),
    (["--budgets", "1,2"], "--budgets: 2 values for 6 tasks"),
    (["--budgets", "a,b,c,d,e,f"], "--budgets"),
    (["--budgets", "0,-1,0,0,0,0"], "must be >= 0"),
    (["--seed", "x"], "--seed"),
    (["--warmup", "20000"], "warmup = 20000"),
    (["--service-cv", "-1"], "service_cv = -1"),
    (["--arrival-rate", "-1"], "arrival_rate = -1"),
    (["missing.toml"], "missing.toml"),
])
def test_cli_simulate_bad_input_one_line(capsys, args, message):
    assert main(["simulate", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], captured.err
    assert captured.out == ""


def test_cli_simulate_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "hist.png"
    assert main(["simulate", "--queries", "3000", "--replications", "10", "--seed", "1", "--plot", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_plot_from_histogram_path(paper, tmp_path):
    pytest.importorskip("matplotlib")
    from jaxalloc.plots import plot_system_time_histogram

    ell = optimal_integer(paper)
    result = ja.simulate(paper, ell, queries=2_000, replications=4, seed=2, store_limit=0)
    png = tmp_path / "h.png"
    plot_system_time_histogram(result, ja.simulation_report(paper, ell, result), png)
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5_000


def test_cli_simulate_plot_bad_path_one_line(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    bad = tmp_path / "missing" / "h.png"
    assert main(["simulate", "--queries", "1000", "--replications", "2", "--plot", str(bad)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--plot" in lines[0], captured.err
    assert captured.out == "" and not bad.exists()


def test_cli_simulate_plot_without_matplotlib(capsys, monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_mpl(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    assert main(["simulate", "--queries", "1000", "--replications", "2", "--plot", str(tmp_path / "h.png")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "matplotlib" in lines[0]
