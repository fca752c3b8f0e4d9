"""Autodiff checks of the paper's Lemmas 1–3 on a profile (`jaxalloc verify`).

- Lemma 1: at sampled budgets across the stability region (utilisation up to
  0.999), the autodiff Hessians of E[W] and of J equal the closed forms of
  eqs. 11 and 33–34 (written out here, independently of the autodiff path),
  and ∇²J is negative definite (largest eigenvalue < 0).
- Lemma 2: the contraction constant L∞ of eq. 26 beside the largest
  ∞-norm of the Jacobian of the unprojected map ℓ̂ (eq. 22) actually met.
- Lemma 3: |∂²J/∂ℓ_k∂ℓ_j| ≤ H_kj (eq. 31) and ‖∇²J‖∞ ≤ L_J (eq. 32), with how
  loose the bound is.

Lemmas 2–3 assume ρ_max = λE[S]_max < 1 over [0, ℓ_max]^N. Where that fails
(the paper's own profile: ρ_max ≈ 40) the report says so and checks them on
the stable superlevel set {J ≥ J(0)} of :mod:`jaxalloc.bounds` instead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .bounds import Region, contraction_constant, lemma3_matrix, paper_box, superlevel_region
from .kkt import best_response
from .model import Problem
from .objective import hessian, mean_wait, moments, objective, service_times
from .solve import solve

_wait_hessian = jax.jit(jax.hessian(lambda p, x: mean_wait(p.arrival_rate, *moments(p, x)), argnums=1))


def wait_hessian_closed_form(problem: Problem, budgets) -> np.ndarray:
    """∂²E[W]/∂ℓ_k∂ℓ_j of eq. 11, written out (for checking autodiff)."""
    lam = float(problem.arrival_rate)
    pi, c = np.asarray(problem.prob), np.asarray(problem.c)
    t = np.asarray(service_times(problem, budgets))
    m1, m2 = pi @ t, pi @ (t * t)
    D = 1 - lam * m1
    w = pi * c
    off = lam**2 * np.outer(w, w) / D**2 * (t[:, None] + t[None, :] + lam * m2 / D)
    diag = lam * pi * c**2 / D * (2 * lam * pi * t / D + lam**2 * pi * m2 / D**2 + 1)
    np.fill_diagonal(off, diag)
    return off


def objective_hessian_closed_form(problem: Problem, budgets) -> np.ndarray:
    """∇²J of eqs. 33–34: −α π_k A_k b_k² e^{−b_k ℓ_k} on the diagonal minus ∇²E[T] (= ∇²E[W])."""
    p = {f: np.asarray(getattr(problem, f)) for f in ("prob", "A", "b")}
    acc = float(problem.alpha) * p["prob"] * p["A"] * p["b"] ** 2 * np.exp(-p["b"] * np.asarray(budgets))
    return -np.diag(acc) - wait_hessian_closed_form(problem, budgets)


def _stable_samples(problem: Problem, count: int, rng, rho_max: float = 0.999) -> np.ndarray:
    """Random budgets spread over the stability region, utilisation up to `rho_max`."""
    lam = float(problem.arrival_rate)
    pi, t0, c = (np.asarray(getattr(problem, f)) for f in ("prob", "t0", "c"))
    top = float(problem.max_tokens)
    rho0 = lam * pi @ t0
    out = []
    while len(out) < count:
        direction = rng.exponential(size=pi.size) * (rng.uniform(size=pi.size) < 0.8)
        if not direction.any():
            continue
        rho = rng.uniform(rho0, rho_max)
        ell = np.minimum(direction * (rho / lam - pi @ t0) / (pi @ (c * direction)), top)
        out.append(ell)
    return np.array(out)


def _region_samples(problem: Problem, region: Region, count: int, rng) -> np.ndarray:
    """Random budgets in the box [0, upper] that lie in the region {J ≥ J(0)}."""
    j0 = float(objective(problem, jnp.zeros_like(problem.A)))
    upper = np.asarray(region.upper)
    out, tries = [], 0
    values = jax.jit(jax.vmap(objective, in_axes=(None, 0)))
    while len(out) < count and tries < 50:
        tries += 1
        cand = rng.uniform(size=(4 * count, upper.size)) ** 3 * upper
        keep = np.asarray(values(problem, jnp.asarray(cand))) >= j0
        out.extend(cand[keep][: count - len(out)])
    return np.array(out) if out else np.zeros((0, upper.size))


def _unprojected_map(problem: Problem, budgets):
    """ℓ̂(ℓ) of eq. 22 with ℓ_max out of reach (the clip at 0 stays: its Jacobian
    entries are 0 there, which only lowers the norm met)."""
    m1, m2 = moments(problem, budgets)
    return best_response(problem.replace(max_tokens=jnp.inf), m1, m2)


def _lemmas23(problem: Problem, region: Region, inside: np.ndarray, where: str):
    """The Lemma 2 and Lemma 3 entries of the report for one region and its samples."""
    jac = jax.vmap(jax.jacfwd(lambda x: _unprojected_map(problem, x)))(jnp.asarray(inside))
    observed = float(np.abs(np.asarray(jac)).sum(axis=-1).max())
    L_inf = float(contraction_constant(problem, region))
    lemma2 = {
        "checked": "contraction constant L_inf (eq. 26) vs the largest inf-norm of the Jacobian of the map (eq. 22)",
        "region": where,
        "points": len(inside),
        "L_inf": L_inf,
        "observed_max_jacobian_norm": observed,
        "bound_holds": bool(observed <= L_inf * (1 + 1e-9)),
        "certifies_contraction": bool(L_inf < 1),
        "note": ("L_inf >= 1: the sufficient condition of Lemma 2 fails here, although the damped "
                 "fixed point still converges") if L_inf >= 1 else "L_inf < 1: the map contracts",
        "pass": bool(observed <= L_inf * (1 + 1e-9)),
    }
    bound = np.asarray(lemma3_matrix(problem, region))
    Hin = np.abs(np.asarray(jax.vmap(hessian, in_axes=(None, 0))(problem, jnp.asarray(inside))))
    L_J = float(bound.sum(axis=1).max())
    observed_norm = float(Hin.sum(axis=-1).max())
    within = bool(np.all(Hin <= bound * (1 + 1e-9)))
    lemma3 = {
        "checked": "|d2J/dl_k dl_j| <= H_kj (eq. 31) and ||Hessian||_inf <= L_J (eq. 32)",
        "region": where,
        "points": len(inside),
        "entries_within_bound": within,
        "L_J": L_J,
        "observed_max_hessian_norm": observed_norm,
        "looseness": float(L_J / observed_norm),
        "worst_entry_ratio": float((Hin.max(axis=0) / np.maximum(bound, 1e-300)).max()),
        "pass": bool(within and observed_norm <= L_J * (1 + 1e-9)),
    }
    return lemma2, lemma3


BOX_RHO = 0.99
"""Utilisation at the corner of the largest box on which Lemmas 2–3 are also checked."""


def verify(problem: Problem, *, points: int = 200, seed: int = 0) -> dict[str, Any]:
    """Check Lemmas 1–3 on `problem`; returns a JSON-ready report (see module docstring)."""
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"points": points, "seed": seed}

    # Lemma 1
    samples = _stable_samples(problem, points, rng)
    H = np.asarray(jax.vmap(hessian, in_axes=(None, 0))(problem, jnp.asarray(samples)))
    HW = np.asarray(jax.vmap(_wait_hessian, in_axes=(None, 0))(problem, jnp.asarray(samples)))
    err_w = max(np.abs(a - wait_hessian_closed_form(problem, x)).max() / np.abs(wait_hessian_closed_form(problem, x)).max()
                for a, x in zip(HW, samples))
    err_j = max(np.abs(a - objective_hessian_closed_form(problem, x)).max() / np.abs(a).max() for a, x in zip(H, samples))
    top_eig = max(float(np.linalg.eigvalsh(a).max()) for a in H)
    rhos = float(problem.arrival_rate) * np.asarray(jax.vmap(lambda x: moments(problem, x)[0])(jnp.asarray(samples)))
    report["lemma1"] = {
        "checked": "autodiff Hessians of E[W] and J equal eqs. 11 and 33-34; J's Hessian is negative definite",
        "points": len(samples),
        "utilization_range": [float(rhos.min()), float(rhos.max())],
        "max_relative_error_wait_hessian": float(err_w),
        "max_relative_error_objective_hessian": float(err_j),
        "largest_eigenvalue": top_eig,
        "pass": bool(top_eig < 0 and err_w <= 1e-10 and err_j <= 1e-10),
    }

    # The region for Lemmas 2-3
    box = paper_box(problem)
    box_ok = float(box.rho_max) < 1
    region = box if box_ok else superlevel_region(problem, jnp.zeros_like(problem.A))
    where = (
        "the box [0, l_max]^N" if box_ok else
        f"the superlevel set {{J >= J(0)}} (the paper's box has rho_max = {float(box.rho_max):.3g} >= 1, "
        f"so the lemmas' assumption fails there; on the superlevel set rho_max = {float(region.rho_max):.3g})"
    )
    inside = _region_samples(problem, region, points, rng)
    star = np.asarray(solve(problem, throw=False, check=False).budgets)
    inside = np.vstack([inside, star[None, :]])

    report["lemma2"], report["lemma3"] = _lemmas23(problem, region, inside, where)
    if not box_ok:  # also on the largest stable box the lemmas' own definitions allow
        top = (BOX_RHO / float(problem.arrival_rate) - float(jnp.sum(problem.prob * problem.t0))) / float(
            jnp.sum(problem.prob * problem.c))
        small = problem.replace(max_tokens=top)
        in_box = rng.uniform(size=(points, problem.num_tasks)) * top
        where_box = f"the largest box with rho_max = {BOX_RHO}: [0, {top:.1f}]^N"
        l2b, l3b = _lemmas23(small, paper_box(small), in_box, where_box)
        report["lemma2"]["largest_box"], report["lemma3"]["largest_box"] = l2b, l3b
        report["lemma2"]["pass"] &= l2b["pass"]
        report["lemma3"]["pass"] &= l3b["pass"]
    report["pass"] = all(report[k]["pass"] for k in ("lemma1", "lemma2", "lemma3"))
    return report


def format_verify_report(report: dict[str, Any]) -> str:
    """Lemma-by-lemma text for people."""
    l1, l2, l3 = report["lemma1"], report["lemma2"], report["lemma3"]
    ok = lambda b: "PASS" if b else "FAIL"
    return "\n".join([
        f"Lemma 1 (strict concavity)  {ok(l1['pass'])}",
        f"  {l1['checked']}; {l1['points']} points, utilization {l1['utilization_range'][0]:.3f}..{l1['utilization_range'][1]:.3f}",
        f"  max relative error: E[W] Hessian {l1['max_relative_error_wait_hessian']:.1e}, "
        f"J Hessian {l1['max_relative_error_objective_hessian']:.1e}; largest eigenvalue of J's Hessian {l1['largest_eigenvalue']:.3e}",
        f"Lemma 2 (contraction bound)  {ok(l2['pass'])}",
        f"  on {l2['region']}; {l2['points']} points",
        f"  L_inf = {l2['L_inf']:.4g}, largest Jacobian inf-norm met {l2['observed_max_jacobian_norm']:.4g}; {l2['note']}",
        f"Lemma 3 (Lipschitz gradient)  {ok(l3['pass'])}",
        f"  on {l3['region']}; {l3['points']} points",
        f"  L_J = {l3['L_J']:.4g}, largest Hessian inf-norm met {l3['observed_max_hessian_norm']:.4g} "
        f"(bound {l3['looseness']:.3g}x loose); every entry within H_kj: {l3['entries_within_bound']}",
    ] + ([
        f"  also on {l3['largest_box']['region']}: L_inf = {l2['largest_box']['L_inf']:.4g} "
        f"(Jacobian norm met {l2['largest_box']['observed_max_jacobian_norm']:.4g}), "
        f"L_J = {l3['largest_box']['L_J']:.4g} ({l3['largest_box']['looseness']:.3g}x loose)",
    ] if "largest_box" in l3 else []) + [
        f"overall: {ok(report['pass'])}",
    ])
