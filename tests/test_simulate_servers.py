"""The simulator of each server kind against an independent peer (ciw), the exact formulas
(Cobham, processor sharing, Pollaczek–Khinchine for B = 1) and the approximations' error targets."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxalloc as ja
from jaxalloc.servers import FIFO, Batching, make_server
from jaxalloc.servers.batching import batch_rate
from jaxalloc.servers.fifo import pollaczek_khinchine_system_time
from jaxalloc.simulate import point, t975

NAMES = ("short", "medium", "long")


def three_types(server=None, lam=0.5, t0=(0.2, 0.6, 1.8), prob=(0.5, 0.3, 0.2)):
    """Three task types, service t_k = t0_k at ℓ = 0 (mean 0.64 s, cv ≈ 0.81)."""
    return ja.make_problem(arrival_rate=lam, alpha=1.0, max_tokens=100.0, A=[0.5] * 3, b=[0.1] * 3, D=[0.1] * 3,
                           t0=list(t0), c=[0.001] * 3, prob=list(prob), names=NAMES, server=server)


def one_type(server, lam):
    return ja.make_problem(arrival_rate=lam, alpha=1.0, max_tokens=10.0, A=[0.5], b=[0.1], D=[0.1], t0=[1.0],
                           c=[0.01], server=server)


def inside(value, ci):
    return ci[0] <= value <= ci[1]


def ciw_means(problem, servers, priority, reps, horizon_queries, warm_queries):
    """Mean system time overall and per type from `reps` ciw runs, with 95% half-widths."""
    import ciw  # a test dependency (the test extra): missing, it fails rather than skips
    t = np.asarray(ja.service_times(problem, jnp.zeros(problem.num_tasks)))
    prob = np.asarray(problem.prob)
    lam = float(problem.arrival_rate)
    K = len(t)
    classes = [f"Class {k}" for k in range(K)]
    overall, per = [], []
    for rep in range(reps):
        ciw.seed(100 + rep)
        network = ciw.create_network(
            arrival_distributions={c: [ciw.dists.Exponential(rate=lam * float(prob[k]))] for k, c in enumerate(classes)},
            service_distributions={c: [ciw.dists.Deterministic(value=float(t[k]))] for k, c in enumerate(classes)},
            number_of_servers=[servers],
            priority_classes={c: int(priority[k]) for k, c in enumerate(classes)},
        )
        sim = ciw.Simulation(network)
        sim.simulate_until_max_time(horizon_queries / lam)
        recs = [r for r in sim.get_all_records() if r.arrival_date > warm_queries / lam]
        T = np.array([r.exit_date - r.arrival_date for r in recs])
        kind = np.array([int(str(r.customer_class).split()[-1]) for r in recs])
        overall.append(T.mean())
        per.append([T[kind == k].mean() for k in range(K)])
    overall, per = np.asarray(overall), np.asarray(per)
    half = lambda x: t975(len(x) - 1) * x.std(ddof=1, axis=0) / math.sqrt(len(x))
    return overall.mean(), half(overall), per.mean(0), half(per)


def half_width(ci):
    return (ci[1] - ci[0]) / 2


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fifo", "priority"])
def test_agrees_with_ciw(kind):
    """M/G/3 and non-preemptive priority M/G/1: means overall and per type within combined 95% intervals."""
    if kind == "fifo":
        server, servers, priority, lam = make_server("fifo", NAMES, servers=3), 3, (0, 0, 0), 3.6  # ρ = 0.77
    else:
        server, servers, priority, lam = make_server("priority", NAMES, order=["long", "short", "medium"]), 1, \
            (1, 2, 0), 1.2  # ρ = 0.77
    problem = three_types(server, lam)
    ell = np.zeros(3)
    mean_c, half_c, per_c, per_half_c = ciw_means(problem, servers, priority, reps=10, horizon_queries=6_000,
                                                  warm_queries=500)
    result = ja.simulate(problem, ell, queries=20_000, replications=32, seed=3, warmup=1_000)
    rep = ja.simulation_report(problem, ell, result, theory_quantiles=True)
    assert abs(rep["mean_system_time"] - mean_c) <= math.hypot(half_c, half_width(rep["mean_system_time_ci95"]))
    if kind == "fifo":  # M/G/3: no quantiles in the model
        assert rep["theory_p99"] is None and "with servers > 1" in rep["theory_quantiles_note"]
    else:  # priority: the exact inversion against 6.1e5 simulated queries at ρ = 0.77 (measured: within 2%)
        assert rep["theory_p99"] == pytest.approx(rep["p99"], rel=0.05)
        for task in rep["per_task"]:
            for key in ("p95", "p99"):
                assert task[f"theory_{key}"] == pytest.approx(task[key], rel=0.05), (key, task)
    for k, task in enumerate(rep["per_task"]):
        assert abs(task["mean_system_time"] - per_c[k]) <= math.hypot(
            per_half_c[k], half_width(task["mean_system_time_ci95"])), (k, task, per_c[k])


@pytest.mark.slow
def test_cobham_is_exact():
    """Priority M/G/1 (lognormal jitter cv 0.5): Cobham's E[T] and E[T_k] inside the 95% intervals of 10^6 queries."""
    server = make_server("priority", NAMES, order=["medium", "long", "short"])
    problem = three_types(server, lam=1.25)  # ρ = 0.8
    ell = np.zeros(3)
    cv = 0.5
    result = ja.simulate(problem, ell, queries=50_000, replications=24, seed=6, warmup=2_000, service_cv=cv)
    rep = ja.simulation_report(problem, ell, result, service_cv=cv, theory_quantiles=True)
    assert rep["theory_p99"] is None and rep["theory_quantiles_note"].startswith("service_cv = 0.5: the theory's")
    t = ja.service_times(problem, jnp.zeros(3))
    cobham = server.task_system_time(problem.arrival_rate, problem.prob, t, t * t * (1 + cv**2))
    assert rep["theory"] == "Cobham" and sum(x["queries"] for x in rep["per_task"]) >= 10**6
    assert rep["theory_mean_system_time"] == pytest.approx(float(jnp.sum(problem.prob * cobham)), rel=1e-12)
    assert inside(rep["theory_mean_system_time"], rep["mean_system_time_ci95"]), rep
    for k, task in enumerate(rep["per_task"]):
        assert task["theory_mean_system_time"] == pytest.approx(float(cobham[k]), rel=1e-12)
        assert inside(task["theory_mean_system_time"], task["mean_system_time_ci95"]), task
    # the order matters: the highest class waits least although it is not the shortest
    waits = [task["mean_system_time"] - task["service_time"] for task in rep["per_task"]]
    assert waits[1] < waits[2] < waits[0]


def test_priority_replications_in_groups_are_the_same_replications(monkeypatch):
    """More replications than the priority core's group run a group at a time (the rest after):
    every replication's statistics and stored system times equal those of one vmapped call."""
    from jaxalloc.simulation.priority import priority_core

    problem = three_types(make_server("priority", NAMES, order=["long", "short", "medium"]), lam=1.0)
    ell = np.array([3.0, 0.0, 7.0])
    runs = {}
    for group in (4, 0):  # 11 = 2 groups of 4 and 3 more; 0: all at once
        monkeypatch.setattr(priority_core, "replication_group", group, raising=False)
        jax.clear_caches()
        runs[group] = ja.simulate(problem, ell, queries=768, replications=11, seed=3, store_limit=10**6)
    for field in ("counts", "sum_system_time", "sum_wait", "correct", "system_times", "types", "histogram"):
        assert np.array_equal(np.asarray(getattr(runs[4], field)), np.asarray(getattr(runs[0], field))), field
    for field in ("busy_time", "elapsed"):  # plain sums, whose order XLA picks by the batch's shape
        np.testing.assert_allclose(getattr(runs[4], field), getattr(runs[0], field), rtol=1e-13, err_msg=field)
    assert np.asarray(runs[4].system_times).shape[0] == 11


@pytest.mark.slow
def test_processor_sharing_is_exact():
    """β = 1, B never binding: M/G/1-PS, E[T | t] = t/(1 − ρ), overall and per type, 10^6 queries."""
    server = make_server("batching", NAMES, max_batch=32, batch_slowdown=1.0)
    problem = three_types(server, lam=0.78125)  # ρ = 0.5: P(N > 32) = 0.5^33
    ell = np.zeros(3)
    result = ja.simulate(problem, ell, queries=50_000, replications=22, seed=7, warmup=2_000, service_cv=1.0)
    rep = ja.simulation_report(problem, ell, result, service_cv=1.0, theory_quantiles=True)
    assert rep["theory_p99"] is None and rep["per_task"][0]["theory_p99"] is None  # jittered, and batching
    rho = 0.5
    assert rep["theory_utilization"] == pytest.approx(rho, rel=1e-12)
    assert rep["theory_mean_system_time"] == pytest.approx(0.64 / (1 - rho), rel=1e-9)
    assert sum(x["queries"] for x in rep["per_task"]) >= 10**6
    assert inside(rep["theory_mean_system_time"], rep["mean_system_time_ci95"]), rep
    for task in rep["per_task"]:
        assert task["theory_mean_system_time"] == pytest.approx(task["service_time"] / (1 - rho), rel=1e-8)
        assert inside(task["theory_mean_system_time"], task["mean_system_time_ci95"]), task


@pytest.mark.slow  # compiling the batching core takes about 25 s on 2 cores
@pytest.mark.parametrize("cv", [0.0, 0.7])
def test_batch_of_one_is_the_fifo_server(cv):
    """B = 1: the batching simulation is the M/G/1 one on the same streams, its theory Pollaczek–Khinchine."""
    fifo = three_types(None, lam=1.2)
    batch = three_types(make_server("batching", NAMES, max_batch=1, batch_slowdown=0.3), lam=1.2)
    ell = np.zeros(3)
    kw = {"queries": 5_000, "replications": 4, "seed": 11, "warmup": 100, "service_cv": cv}
    a, b = ja.simulate(fifo, ell, **kw), ja.simulate(batch, ell, **kw)
    np.testing.assert_array_equal(np.asarray(a.counts), np.asarray(b.counts))
    np.testing.assert_array_equal(np.asarray(a.correct), np.asarray(b.correct))
    for field in ("sum_system_time", "sum_wait", "busy_time", "elapsed"):
        np.testing.assert_allclose(np.asarray(getattr(b, field)), np.asarray(getattr(a, field)), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(b.system_times), np.asarray(a.system_times), rtol=1e-9, atol=1e-9)
    m1, m2 = ja.moments(fifo, jnp.zeros(3))
    pk = float(pollaczek_khinchine_system_time(fifo.arrival_rate, m1, m2 * (1 + cv**2)))
    assert float(b.theory_mean_system_time) == pytest.approx(pk, rel=1e-12, abs=0)
    assert float(a.theory_mean_system_time) == pk
    t = np.asarray(ja.service_times(fifo, jnp.zeros(3)))
    np.testing.assert_allclose(np.asarray(b.theory_task_system_time), pk - float(m1) + t, rtol=1e-12)


def test_kiefer_wolfowitz_with_one_server_is_lindley():
    """A FIFO server able to hold 4 servers, set to 1, simulates the M/G/1 queue (up to rounding)."""
    one = three_types(None, lam=1.2)
    wide = three_types(FIFO(servers=jnp.asarray(1.0), size=4), lam=1.2)
    kw = {"queries": 5_000, "replications": 3, "seed": 2, "service_cv": 0.5}
    a, b = ja.simulate(one, np.zeros(3), **kw), ja.simulate(wide, np.zeros(3), **kw)
    np.testing.assert_allclose(np.asarray(b.sum_system_time), np.asarray(a.sum_system_time), rtol=1e-10)
    assert float(b.theory_mean_system_time) == pytest.approx(float(a.theory_mean_system_time), rel=1e-12)


def test_mmc_is_exact():
    """Exponential service: Lee–Longton is the exact M/M/c (Erlang C); c = 4, ρ = 0.8."""
    problem = one_type(make_server("fifo", ("task",), servers=4), lam=3.2)
    result = ja.simulate(problem, [0.0], queries=40_000, replications=16, seed=4, warmup=2_000,
                         exponential_service=True)
    rep = ja.simulation_report(problem, [0.0], result, service_cv=1.0)
    a, c = 3.2, 4
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    erlang_c = c * b / (c - a * (1 - b))
    exact = 1.0 + erlang_c / (c - a)
    assert rep["theory_mean_system_time"] == pytest.approx(exact, rel=1e-12)
    assert inside(exact, rep["mean_system_time_ci95"]), rep
    assert rep["utilization"] == pytest.approx(0.8, rel=0.01) and rep["theory_utilization"] == pytest.approx(0.8)


def test_report_names_the_server_and_flags_instability():
    server = make_server("batching", NAMES, max_batch=4, batch_slowdown=0.3)
    cap = float(batch_rate(4.0, 0.3))
    problem = three_types(server, lam=0.5).replace(arrival_rate=1.1 * cap / 0.64)  # make_problem refuses it
    result = ja.simulate(problem, np.zeros(3), queries=3_000, replications=2, seed=0)
    rep = ja.simulation_report(problem, np.zeros(3), result)
    assert rep["server"] == {"kind": "batching", "max_batch": 4, "batch_slowdown": 0.3}
    assert not rep["stable"] and rep["mean_system_time"] is None and "capacity" in rep["message"]
    assert rep["theory_utilization"] == pytest.approx(1.1)


def _grid_errors(points, cv, queries=40_000, replications=12):
    problems = [one_type(server, lam) for server, lam in points]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *problems)
    budgets = np.zeros((len(points), 1))
    res = ja.simulate_points(stacked, budgets, queries=queries, replications=replications, seed=1,
                             warmup=queries // 10, service_cv=cv, store_limit=0)
    out = []
    for i in range(len(points)):
        rep = ja.simulation_report(problems[i], budgets[i], point(res, i), service_cv=cv)
        out.append((rep["theory_mean_system_time"] / rep["mean_system_time"] - 1,
                    half_width(rep["mean_system_time_ci95"]) / rep["mean_system_time"]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("cv", [0.0, 1.0])
def test_lee_longton_within_five_percent(cv):
    """M/G/c, c ∈ {2, 8}, ρ ∈ {0.6, 0.9}: |Lee–Longton / simulation − 1| ≤ 5% (bench/bench_server_accuracy.py
    runs the full grid)."""
    points = [(FIFO(servers=jnp.asarray(float(c)), size=8), rho * c) for c in (2, 8) for rho in (0.6, 0.9)]
    for err, half in _grid_errors(points, cv):
        assert abs(err) <= 0.05 + half, (err, half)


@pytest.mark.slow
@pytest.mark.parametrize("cv", [0.0, 1.0])
def test_batching_chain_within_three_percent(cv):
    """Batching, B ∈ {4, 64}, β ∈ {0.05, 0.3}, load 0.9 of capacity: |theory / simulation − 1| ≤ 3%."""
    points = []
    for B in (4, 64):
        for beta in (0.05, 0.3):
            server = Batching(max_batch=jnp.asarray(float(B)), batch_slowdown=jnp.asarray(beta), size=64)
            points.append((server, 0.9 * float(batch_rate(B, beta))))
    for err, half in _grid_errors(points, cv, queries=20_000, replications=8):
        assert abs(err) <= 0.03 + half, (err, half)
