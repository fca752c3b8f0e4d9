"""The solvers against each other, against scipy, and on the paper's numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from problems import problems, random_problem
from reference import J as reference_J
from reference import neg_hessian, params, scipy_solve
from test_verify import eq22_reference

import jaxalloc as ja
from jaxalloc.solvers.base import kkt_tolerance

PAPER_OPT = np.array([0.0, 340.89, 0.0, 0.0, 346.24, 30.14])
FAST = ["newton", "fixed-point", "scaled-gradient", "projected-newton"]
ALL = FAST + ["gradient"]


@pytest.mark.parametrize("method", ALL)
def test_paper_point(paper, method):
    sol = ja.solve(paper, method)
    ref, ref_val, _ = scipy_solve(paper)
    np.testing.assert_allclose(sol.budgets, ref, atol=0.01)  # issue: within 0.01 tokens
    np.testing.assert_allclose(sol.budgets, PAPER_OPT, atol=0.005)
    assert float(sol.objective) == pytest.approx(9.754203, abs=5e-7)
    assert float(sol.objective) >= ref_val - 1e-12
    assert float(sol.kkt_residual) <= 1e-8
    assert int(sol.status) == ja.Status.CONVERGED


def test_paper_uniform_budgets(paper):
    for ell, expected in [(0.0, 5.8316), (100.0, 8.2393), (500.0, 1.7939)]:
        value = float(ja.objective(paper, jnp.full(6, ell)))
        assert value == pytest.approx(expected, abs=5e-5)
        assert value == pytest.approx(reference_J(params(paper), np.full(6, ell))[0], rel=1e-13)


def test_newton_iterations_paper(paper):
    assert int(ja.solve(paper, "newton").iterations) <= 6


def _check_against_scipy(problem, sol):
    ref, ref_val, res = scipy_solve(problem)
    val = float(sol.objective)
    # ours is at least as good as scipy's point, and scipy's is nearly as good as ours
    assert val >= ref_val - 1e-10 * (1 + abs(val))
    # scipy is accurate to its projected-gradient tolerance divided by the curvature;
    # compare budgets in tokens with a tolerance relative to the budget scale
    scale = 1.0 + np.max(np.abs(ref))
    assert np.max(np.abs(np.asarray(sol.budgets) - ref)) <= 1e-4 * scale, res.message


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_random_problems_all_solvers_agree(problem):
    """All fast solvers converge and agree; scipy is the referee up to N = 6 (its
    trust-constr stage takes seconds at N = 64, which test_heavy_load_rho_095 covers)."""
    sols = {m: ja.solve(problem, m, throw=False) for m in FAST}
    for m, sol in sols.items():
        assert int(sol.status) == ja.Status.CONVERGED, m
        assert float(sol.kkt_residual) <= 1e-8, (m, float(sol.kkt_residual))
    base = sols["newton"]
    for m, sol in sols.items():
        scale = 1.0 + float(jnp.max(base.budgets))
        np.testing.assert_allclose(sol.budgets, base.budgets, atol=1e-7 * scale, err_msg=m)
        assert float(sol.objective) == pytest.approx(float(base.objective), rel=1e-12, abs=1e-12)
    if problem.num_tasks <= 6:
        _check_against_scipy(problem, base)


@pytest.mark.parametrize("n", [6, 64])
def test_heavy_load_rho_095(n):
    """λ chosen by bisection so that the optimum sits at utilisation 0.95."""
    base = random_problem(7 + n, n, 0.5, 1.5, b_range=(1e-4, 1e-1))
    lo, hi = 0.0, 1.0 / float(jnp.sum(base.prob * base.t0))
    for _ in range(60):
        lam = 0.5 * (lo + hi)
        sol = ja.solve(base.replace(arrival_rate=lam), "newton")
        rho = lam * float(ja.moments(base, sol.budgets)[0])
        lo, hi = (lam, hi) if rho < 0.95 else (lo, lam)
    problem = base.replace(arrival_rate=lo)
    for m in FAST:
        sol = ja.solve(problem, m)
        assert float(sol.kkt_residual) <= 1e-8
        rho = float(problem.arrival_rate * ja.moments(problem, sol.budgets)[0])
        assert rho == pytest.approx(0.95, abs=1e-6)
    _check_against_scipy(problem, ja.solve(problem, "newton"))


@settings(max_examples=10, deadline=None)
@given(problem=problems(task_counts=(6,), b_range=(1e-3, 1e-1)))
def test_plain_gradient_moderate_conditioning(problem):
    """Plain PGA with the Lemma 3 step converges where conditioning allows (10^6 steps)."""
    sol = ja.solve(problem, "gradient", throw=False)
    newton = ja.solve(problem, "newton")
    if int(sol.status) == ja.Status.CONVERGED:
        scale = 1.0 + float(jnp.max(newton.budgets))
        np.testing.assert_allclose(sol.budgets, newton.budgets, atol=1e-6 * scale)
    else:  # too ill-conditioned for 10^6 fixed steps: it must still be monotone and stable
        assert int(sol.status) == ja.Status.MAX_STEPS_REACHED
        best = float(newton.objective)
        assert float(sol.objective) <= best + 1e-12 * (1 + abs(best))  # J's rounding
        assert float(sol.objective) > float(ja.objective(problem, jnp.zeros_like(problem.A)))


@pytest.mark.parametrize("method", FAST)
def test_float32_finite_everywhere(method):
    """float32 gives finite budgets on random problems and near the paper point."""
    problems32 = [random_problem(s, 6, r, a).astype(jnp.float32)
                  for s, (r, a) in enumerate([(0.5, 1.5), (0.05, 3.0), (0.85, 0.0), (0.3, -1.0), (0.9, 2.5)])]
    problems32.append(ja.paper_profile(dtype=jnp.float32))
    for p in problems32:
        sol = ja.solve(p, method, throw=False)
        assert sol.budgets.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(sol.budgets))) and bool(jnp.isfinite(sol.objective))
        assert int(sol.status) in (ja.Status.CONVERGED, ja.Status.MAX_STEPS_REACHED)
    paper32 = ja.solve(ja.paper_profile(dtype=jnp.float32), method)
    np.testing.assert_allclose(paper32.budgets, PAPER_OPT, atol=0.02)


def test_undamped_fixed_point_cycles_where_damping_converges(paper):
    """The paper's undamped eq. 24 fails at high λ·α; fixed damping 0.7 helps up to a
    point, and the adaptive damping converges everywhere."""
    problem = paper.replace(arrival_rate=0.3, alpha=100.0)
    undamped = ja.solve(problem, ja.FixedPoint(damping=1.0, adaptive=False, max_steps=2000), throw=False)
    damped = ja.solve(problem, ja.FixedPoint(damping=0.7, adaptive=False))
    assert int(undamped.status) == ja.Status.MAX_STEPS_REACHED
    np.testing.assert_allclose(damped.budgets, ja.solve(problem).budgets, atol=1e-7)
    harder = paper.replace(arrival_rate=0.5, alpha=1000.0)
    fixed = ja.solve(harder, ja.FixedPoint(damping=0.7, adaptive=False, max_steps=2000), throw=False)
    assert int(fixed.status) == ja.Status.MAX_STEPS_REACHED
    adaptive = ja.solve(harder, ja.FixedPoint())
    np.testing.assert_allclose(adaptive.budgets, ja.solve(harder).budgets, atol=1e-6)


def test_vmap_matches_single_and_flags_unstable(paper):
    lam = jnp.array([0.05, 0.1, 0.2, 50.0])  # the last is unstable even at ℓ = 0
    batched = jax.jit(jax.vmap(lambda l: ja.solve_point(paper.replace(arrival_rate=l))))(lam)
    statuses = np.asarray(batched.status)
    assert list(statuses) == [0, 0, 0, ja.Status.UNSTABLE_QUEUE]
    assert not np.any(np.isnan(np.asarray(batched.budgets)))
    assert float(batched.objective[3]) == -np.inf
    for i in range(3):
        single = ja.solve(paper.replace(arrival_rate=float(lam[i])))
        np.testing.assert_allclose(batched.budgets[i], single.budgets, rtol=1e-12, atol=1e-12)


def test_nonfinite_parameters_flagged_inside_jit(paper):
    bad = paper.replace(A=paper.A.at[1].set(jnp.nan))
    sol = jax.jit(ja.solve_point)(bad)
    assert int(sol.status) == ja.Status.NONFINITE


def test_solve_raises_on_unstable_and_bad_method(paper):
    with pytest.raises(ja.ProblemError, match="arrival_rate"):
        ja.solve(paper.replace(arrival_rate=50.0))
    with pytest.raises(ValueError, match="method = 'nope'"):
        ja.solve(paper, "nope")
    with pytest.raises(ja.SolveError, match="maximum number of steps"):
        ja.solve(paper, ja.FixedPoint(max_steps=2))


def test_paper_grid_all_solvers_agree(paper):
    """A (λ, α) grid over the paper profile, with the spots where the undamped map
    oscillates (λ ≈ 0.149, α ≈ 210) and where a bad stopping rule once hid (λ = 0.4, α = 1000)."""
    lam, alpha = np.meshgrid(np.linspace(0.005, 0.5, 8), np.geomspace(1.0, 1000.0, 8))
    lam = np.append(lam.ravel(), [0.14897435897435896, 0.4])
    alpha = np.append(alpha.ravel(), [210.29016607881326, 1000.0])
    base = ja.solve_many(paper, "newton", arrival_rate=lam, alpha=alpha)
    for method in FAST:
        sol = ja.solve_many(paper, method, arrival_rate=lam, alpha=alpha)
        assert np.all(np.asarray(sol.status) == ja.Status.CONVERGED), method
        assert float(sol.kkt_residual.max()) <= 1e-8, method
        scale = 1.0 + np.max(np.asarray(base.budgets), axis=-1, keepdims=True)
        assert np.all(np.abs(np.asarray(sol.budgets - base.budgets)) <= 1e-6 * scale), method


def test_solve_many_sharded_equals_unsharded(tmp_path):
    """With 4 forced host devices, the sharded sweep equals the one-device sweep."""
    script = tmp_path / "shard.py"
    script.write_text(
        "import os\n"
        "os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'\n"
        "import jax, numpy as np\n"
        "jax.config.update('jax_enable_x64', True)\n"
        "import jaxalloc as ja\n"
        "assert jax.local_device_count() == 4\n"
        "p = ja.paper_profile()\n"
        "lam, al = np.meshgrid(np.linspace(0.01, 0.4, 23), np.geomspace(1, 1000, 11))\n"
        "a = ja.solve_many(p, arrival_rate=lam, alpha=al, chunk=16)\n"
        "b = ja.solve_many(p, arrival_rate=lam, alpha=al, chunk=16, devices=1)\n"
        "assert np.all(np.asarray(a.status) == 0)\n"
        "print(float(np.abs(np.asarray(a.budgets) - np.asarray(b.budgets)).max()))\n"
    )
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) <= 1e-12


EARLY = {  # stopping tolerances so loose that each solver stops after at most one step
    "newton": ja.AggregateNewton(tol=1e6),
    "fixed-point": ja.FixedPoint(tol=1e6),
    "scaled-gradient": ja.ScaledGradient(tol=1e6),
    "projected-newton": ja.ProjectedNewton(tol=1e6),
    "gradient": ja.ProjectedGradient(tol=1e6, check_every=1),
}


@pytest.mark.parametrize("method", list(EARLY))
def test_a_solver_stopped_early_is_not_converged(paper, method):
    """Each solver's own test says done, far from ℓ* (scipy's): the result fails the KKT
    check, whose tolerance does not follow the solver's, and is not reported converged."""
    solver = EARLY[method]
    budgets, steps, done = solver(paper)
    assert bool(done) and int(steps) <= 1
    ref, _, _ = scipy_solve(paper)
    distance = float(np.max(np.abs(np.asarray(budgets) - ref)))
    tolerance = kkt_tolerance(jnp.float64) * max(1.0, float(np.max(ref)))  # 3.5e-7 tokens here
    assert distance > 1e3 * tolerance
    sol = ja.solve(paper, solver, throw=False)
    assert int(sol.status) == ja.Status.KKT_NOT_MET
    with pytest.raises(ja.SolveError, match="fails the KKT check"):
        ja.solve(paper, solver)
    batch = ja.solve_many(paper, solver, arrival_rate=np.array([0.05, 0.1]))  # the vmapped path too
    assert list(np.asarray(batch.status)) == [ja.Status.KKT_NOT_MET] * 2


def test_kkt_check_measures_tokens_against_a_reference(paper):
    """The residual behind the check, ∇J / diag(−∇²J) projected, equals the hand-written
    reference (eqs. 10, 15, 33–34) and tracks the distance to ℓ* in tokens."""
    from jaxalloc.solve import scaled_kkt_residual, stationary

    ref_star, _, _ = scipy_solve(paper)
    p = params(paper)
    rng = np.random.default_rng(1)
    for ell in [PAPER_OPT, ref_star + rng.normal(0, 0.5, 6).clip(0), np.array([5.0, 300.0, 0.0, 2.0, 360.0, 20.0])]:
        _, grad = reference_J(p, ell)
        expected = np.abs(np.clip(grad / np.diag(neg_hessian(p, ell)), -ell, p["lmax"] - ell))
        np.testing.assert_allclose(scaled_kkt_residual(paper, jnp.asarray(ell)), expected, rtol=1e-9, atol=1e-13)
    star = ja.solve(paper).budgets
    assert bool(stationary(paper, star))
    for shift in (1e-6, 1e-3):  # on a free budget: the residual is the shift, to first order
        moved = star.at[1].add(shift)
        assert float(scaled_kkt_residual(paper, moved)[1]) == pytest.approx(shift, rel=1e-2)
    assert bool(stationary(paper, star.at[1].add(1e-8))) and not bool(stationary(paper, star.at[1].add(1e-5)))


def test_status_labels_and_messages():
    """Every status has a lowercase label (the sweep's dictionary, the JSON `status`) and a message."""
    assert [s.label for s in ja.Status] == ["converged", "max_steps_reached", "unstable_queue", "nonfinite",
                                            "kkt_not_met"]
    assert all(s.message for s in ja.Status)


def test_fixed_point_first_step_is_not_halved(paper):
    """The adaptive damping has no previous residual at its first step: θ stays 0.7
    (it used to halve to 0.35 and cap θ at 0.56 for good), so from ℓ = 0 the first
    iterate is 0.7 ℓ̂(0) of eq. 22 (NumPy/scipy reference), and on the paper point,
    where nothing oscillates, it takes the 21 steps of fixed θ = 0.7 (it took 32)."""
    one = ja.solve(paper, ja.FixedPoint(max_steps=1), throw=False)
    expected = 0.7 * np.clip(eq22_reference(paper, np.zeros(6)), 0, float(paper.max_tokens))
    np.testing.assert_allclose(one.budgets, expected, rtol=1e-12)
    assert float(one.budgets[1]) == pytest.approx(0.7 * 364.2042, abs=1e-3)
    adaptive = ja.solve(paper, ja.FixedPoint())
    fixed = ja.solve(paper, ja.FixedPoint(adaptive=False))
    assert int(adaptive.iterations) == int(fixed.iterations) == 21
