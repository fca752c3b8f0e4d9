"""Autodiff checks of the paper's Lemmas 1–3 on a profile (`jaxalloc verify`).

- Lemma 1: at sampled budgets across the stability region (utilisation up to
  0.999), the autodiff Hessians of E[W] and of J equal the closed forms of
  eqs. 11 and 33–34 (written out here, independently of the autodiff path),
  and ∇²J is negative definite (largest eigenvalue < 0).
- Lemma 2: the contraction constant L∞ of eq. 26 beside the largest
  ∞-norm of the Jacobian of the unprojected map ℓ̂ of eq. 22 actually met
  (no clip, at 0 or ℓ_max: the lemma bounds ℓ̂ itself). L∞ < 1, its sufficient
  condition for contraction, holds for no profile: the k of the smallest c_k
  alone gives L∞ ≥ Σ_j π_j c_j / min_k c_k ≥ 1. The report says so.
- Lemma 3: |∂²J/∂ℓ_k∂ℓ_j| ≤ H_kj (eq. 31) and ‖∇²J‖∞ ≤ L_J (eq. 32), with how
  loose the bound is.

The lemmas are about the paper's server, one FIFO M/G/1 queue with the
Pollaczek–Khinchine delay: eqs. 11 and 33–34 are its Hessians, eq. 22 its
fixed point, eqs. 26 and 31–32 its bounds. For another server
(:mod:`jaxalloc.servers`) Lemmas 2 and 3 are `not_applicable` (their formulas
are written for that delay), with that reason; Lemma 1 becomes what still
makes sense: whether J is concave on the sampled stable budgets, from the
autodiff Hessian's eigenvalues (its outcome is `holds` when none is ≥ 0, and
`not_applicable` otherwise: the paper proves concavity for M/G/1 only, and a
non-concave J under another server contradicts no lemma; the solvers then
return a KKT point, see docs/servers.md).

Each lemma ends in one of three outcomes: `holds` (its conclusion checked and
true), `fails` (an autodiff check contradicts it; the reason says where), or
`not_applicable` (its assumption does not hold on this profile). Lemmas 2–3
assume ρ_max = λE[S]_max < 1 over [0, ℓ_max]^N. Where that fails (the paper's
own profile: ρ_max ≈ 41) they are not applicable as stated, and their bounds
are checked instead on the stable superlevel set {J ≥ J(0)} of
:mod:`jaxalloc.bounds` and on the largest stable box; a bound violated there
still makes the lemma fail.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .bounds import Region, contraction_constant, lemma3_matrix, paper_box, superlevel_region
from .kkt import unprojected_response
from .model import Problem
from .objective import hessian, mean_wait, moments, objective, service_times
from .solve import solve

HOLDS, FAILS, NOT_APPLICABLE = "holds", "fails", "not_applicable"
"""The outcomes of a lemma: its conclusion checked and true; checked and false
(with the reason); its assumption does not hold on this profile."""

BOX_RHO = 0.99
"""Utilisation at the corner of the largest box on which Lemmas 2–3 are also checked."""

LEMMA1_RTOL = 1e-10
"""Largest relative difference allowed between the autodiff and closed-form Hessians."""


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
    """Random budgets spread over the stability region, utilisation (load over
    the server's capacity) up to `rho_max`."""
    lam = float(problem.arrival_rate) / float(problem.server.capacity(problem.arrival_rate))
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
    """ℓ ↦ ℓ̂(ℓ) of eq. 22, with no projection: Lemma 2 bounds the Jacobian of
    this map (a clip at 0 would zero the rows of budgets below 0 and hide them)."""
    m1, m2 = moments(problem, budgets)
    return unprojected_response(problem, m1, m2)


def _lemma2_region(problem: Problem, region: Region, inside: np.ndarray, where: str) -> dict[str, Any]:
    """Bound (26) against the Jacobian of eq. 22 (autodiff) at the sample points."""
    jac = jax.vmap(jax.jacfwd(lambda x: _unprojected_map(problem, x)))(jnp.asarray(inside))
    norms = np.abs(np.asarray(jac)).sum(axis=-1).max(axis=-1)  # ‖J_ℓ̂(ℓ)‖∞ per point
    worst = int(np.argmax(norms))
    L_inf = float(contraction_constant(problem, region))
    return {
        "region": where,
        "points": len(inside),
        "rho_max": float(region.rho_max),
        "L_inf": L_inf,
        "observed_max_jacobian_norm": float(norms[worst]),
        "worst_point": [float(x) for x in inside[worst]],
        "bound_holds": bool(norms[worst] <= L_inf * (1 + 1e-9)),
        "certifies_contraction": bool(L_inf < 1),
    }


def _lemma3_region(problem: Problem, region: Region, inside: np.ndarray, where: str) -> dict[str, Any]:
    """Bounds (31)–(32) against the autodiff Hessian of J at the sample points."""
    bound = np.asarray(lemma3_matrix(problem, region))
    Hin = np.abs(np.asarray(jax.vmap(hessian, in_axes=(None, 0))(problem, jnp.asarray(inside))))
    L_J = float(bound.sum(axis=1).max())
    observed_norm = float(Hin.sum(axis=-1).max())
    within = bool(np.all(Hin <= bound * (1 + 1e-9)))
    return {
        "region": where,
        "points": len(inside),
        "rho_max": float(region.rho_max),
        "entries_within_bound": within,
        "L_J": L_J,
        "observed_max_hessian_norm": observed_norm,
        "looseness": float(L_J / observed_norm),
        "worst_entry_ratio": float((Hin.max(axis=0) / np.maximum(bound, 1e-300)).max()),
        "bound_holds": bool(within and observed_norm <= L_J * (1 + 1e-9)),
    }


def _lemma2_failure(r: dict[str, Any]) -> str:
    return (f"on {r['region']} the Jacobian of eq. 22 has inf-norm {r['observed_max_jacobian_norm']:.4g} "
            f"> L_inf = {r['L_inf']:.4g} (eq. 26)")


def _lemma3_failure(r: dict[str, Any]) -> str:
    return (f"on {r['region']} a Hessian entry exceeds H_kj (eq. 31) by a factor {r['worst_entry_ratio']:.4g}, "
            f"or the Hessian inf-norm {r['observed_max_hessian_norm']:.4g} exceeds L_J = {r['L_J']:.4g} (eq. 32)")


def _lemma_outcome(entry: dict[str, Any], regions: list[dict[str, Any]], failure, holds: str, rho_box: float):
    """Set `outcome` and `reason` of a Lemma 2 or 3 entry: fails if its bound is
    violated on any region checked, not applicable if its assumption ρ_max < 1
    fails on the profile's box [0, ℓ_max]^N, else holds."""
    broken = [r for r in regions if not r["bound_holds"]]
    if broken:
        entry["outcome"], entry["reason"] = FAILS, "; ".join(failure(r) for r in broken)
    elif rho_box >= 1:
        entry["outcome"] = NOT_APPLICABLE
        entry["reason"] = (f"its assumption rho_max = lambda E[S]_max < 1 over [0, l_max]^N fails (rho_max = "
                           f"{rho_box:.3g}); the bound holds on the stable regions checked instead")
    else:
        entry["outcome"], entry["reason"] = HOLDS, holds


def paper_server(problem: Problem) -> bool:
    """Whether the problem's server is the paper's: one FIFO server (M/G/1, Pollaczek–Khinchine)."""
    server = problem.server
    return server.kind == "fifo" and float(server.capacity()) == 1.0


def verify(problem: Problem, *, points: int = 200, seed: int = 0) -> dict[str, Any]:
    """Check Lemmas 1–3 on `problem`; returns a JSON-ready report (see module docstring).

    Each lemma gets an `outcome` (:data:`HOLDS`, :data:`FAILS` or
    :data:`NOT_APPLICABLE`) and a `reason`; `failed` lists the lemmas that
    fail, and `pass` is true when none does. `server` describes the server;
    for one other than the paper's, see :func:`verify_other_server`.
    """
    if not paper_server(problem):
        return verify_other_server(problem, points=points, seed=seed)
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"points": points, "seed": seed, "server": problem.server.describe(problem.names)}

    # Lemma 1: on the stability region, which validation guarantees is not empty
    samples = _stable_samples(problem, points, rng)
    H = np.asarray(jax.vmap(hessian, in_axes=(None, 0))(problem, jnp.asarray(samples)))
    HW = np.asarray(jax.vmap(_wait_hessian, in_axes=(None, 0))(problem, jnp.asarray(samples)))
    err_w = max(np.abs(a - wait_hessian_closed_form(problem, x)).max() / np.abs(wait_hessian_closed_form(problem, x)).max()
                for a, x in zip(HW, samples))
    err_j = max(np.abs(a - objective_hessian_closed_form(problem, x)).max() / np.abs(a).max() for a, x in zip(H, samples))
    top_eig = max(float(np.linalg.eigvalsh(a).max()) for a in H)
    rhos = float(problem.arrival_rate) * np.asarray(jax.vmap(lambda x: moments(problem, x)[0])(jnp.asarray(samples)))
    problems = []
    if err_w > LEMMA1_RTOL:
        problems.append(f"the autodiff Hessian of E[W] differs from eq. 11 by {err_w:.1e} (relative)")
    if err_j > LEMMA1_RTOL:
        problems.append(f"the autodiff Hessian of J differs from eqs. 33-34 by {err_j:.1e} (relative)")
    if top_eig >= 0:
        problems.append(f"J's Hessian has an eigenvalue {top_eig:.3e} >= 0 at a stable point")
    report["lemma1"] = {
        "outcome": FAILS if problems else HOLDS,
        "reason": "; ".join(problems) or (
            f"J's Hessian is negative definite at every point (largest eigenvalue {top_eig:.3e}), "
            f"and the autodiff Hessians equal eqs. 11 and 33-34"),
        "checked": "autodiff Hessians of E[W] and J equal eqs. 11 and 33-34; J's Hessian is negative definite",
        "points": len(samples),
        "utilization_range": [float(rhos.min()), float(rhos.max())],
        "max_relative_error_wait_hessian": float(err_w),
        "max_relative_error_objective_hessian": float(err_j),
        "largest_eigenvalue": top_eig,
    }

    # The region for Lemmas 2-3
    box = paper_box(problem)
    rho_box = float(box.rho_max)
    box_ok = rho_box < 1
    region = box if box_ok else superlevel_region(problem, jnp.zeros_like(problem.A))
    where = "the box [0, l_max]^N" if box_ok else "the superlevel set {J >= J(0)}"
    inside = _region_samples(problem, region, points, rng)
    star = np.asarray(solve(problem, throw=False, check=False).budgets)
    inside = np.vstack([inside, star[None, :]])
    l2, l3 = [_lemma2_region(problem, region, inside, where)], [_lemma3_region(problem, region, inside, where)]
    if not box_ok:  # also on the largest stable box the lemmas' own definitions allow
        top = (BOX_RHO / float(problem.arrival_rate) - float(jnp.sum(problem.prob * problem.t0))) / float(
            jnp.sum(problem.prob * problem.c))
        small = problem.replace(max_tokens=top)
        in_box = rng.uniform(size=(points, problem.num_tasks)) * top
        where_box = f"the largest stable box [0, {top:.1f}]^N"
        l2.append(_lemma2_region(small, paper_box(small), in_box, where_box))
        l3.append(_lemma3_region(small, paper_box(small), in_box, where_box))

    common = {"assumption": "rho_max = lambda E[S]_max < 1 over [0, l_max]^N", "rho_max_box": rho_box,
              "assumption_holds": box_ok}
    report["lemma2"] = {
        "outcome": None, "reason": None,  # set by _lemma_outcome, first for people reading the JSON
        "checked": "the inf-norm of the Jacobian of the map l -> l_hat(l) of eq. 22 (unprojected) "
                   "against L_inf (eq. 26)",
        **common, **l2[0],
        "contraction_note": (
            "L_inf < 1: the map contracts in the inf-norm" if l2[0]["certifies_contraction"] else
            f"L_inf = {l2[0]['L_inf']:.4g} >= 1: Lemma 2 certifies no contraction (it cannot for any profile: "
            "L_inf >= sum_j pi_j c_j / min_k c_k >= 1); the damped fixed point converges nonetheless"),
    }
    report["lemma3"] = {"outcome": None, "reason": None,
                        "checked": "|d2J/dl_k dl_j| <= H_kj (eq. 31) and ||Hessian||_inf <= L_J (eq. 32)",
                        **common, **l3[0]}
    if not box_ok:
        report["lemma2"]["largest_box"], report["lemma3"]["largest_box"] = l2[1], l3[1]
    _lemma_outcome(report["lemma2"], l2, _lemma2_failure,
                   f"bound (26) holds on [0, l_max]^N: Jacobian inf-norm met {l2[0]['observed_max_jacobian_norm']:.4g} "
                   f"<= L_inf = {l2[0]['L_inf']:.4g}", rho_box)
    _lemma_outcome(report["lemma3"], l3, _lemma3_failure,
                   f"bounds (31)-(32) hold on [0, l_max]^N: L_J = {l3[0]['L_J']:.4g}, "
                   f"{l3[0]['looseness']:.3g}x the largest Hessian inf-norm met", rho_box)
    report["failed"] = [k for k in ("lemma1", "lemma2", "lemma3") if report[k]["outcome"] == FAILS]
    report["pass"] = not report["failed"]  # no lemma fails (one not applicable to the profile is no failure)
    return report


_PK_ONLY = {
    "lemma2": ("eq. 22's fixed point and the bound L_inf of eq. 26 are written for one FIFO server's "
               "Pollaczek-Khinchine delay, not for a {kind} server"),
    "lemma3": ("the Hessian bounds H_kj and L_J of eqs. 31-32 are written for one FIFO server's "
               "Pollaczek-Khinchine delay, not for a {kind} server"),
}


def verify_other_server(problem: Problem, *, points: int = 200, seed: int = 0) -> dict[str, Any]:
    """The report of :func:`verify` for a server other than the paper's one FIFO server.

    Lemma 1: J's autodiff Hessian at `points` random stable budgets (load up
    to 0.999 of the server's capacity) and at ℓ*: `holds` if every eigenvalue
    is < 0 (J is strictly concave at every point checked), else
    `not_applicable` with the largest eigenvalue and where (the lemma is
    proved for M/G/1; another server may make J non-concave). No closed-form
    Hessian is compared (eqs. 11 and 33-34 are M/G/1's). Lemmas 2 and 3:
    `not_applicable`, with the reason.
    """
    rng = np.random.default_rng(seed)
    desc = problem.server.describe(problem.names)
    kind = desc["kind"]
    report: dict[str, Any] = {"points": points, "seed": seed, "server": desc}
    samples = _stable_samples(problem, points, rng)
    star = solve(problem, throw=False, check=False)
    star_budgets = np.asarray(star.budgets)
    if np.all(np.isfinite(star_budgets)):
        samples = np.vstack([samples, star_budgets[None, :]])
    H = np.asarray(jax.vmap(hessian, in_axes=(None, 0))(problem, jnp.asarray(samples)))
    finite = np.all(np.isfinite(H), axis=(1, 2))
    eig = np.array([float(np.linalg.eigvalsh(a).max()) if ok else np.nan for a, ok in zip(H, finite)])
    loads = (float(problem.arrival_rate) * np.asarray(jax.vmap(lambda x: moments(problem, x)[0])(jnp.asarray(samples)))
             / float(problem.server.capacity(problem.arrival_rate)))
    checked = ("J's autodiff Hessian is negative definite at random stable budgets and at l* (the concavity of "
               "Lemma 1; eqs. 11 and 33-34 are M/G/1's Hessians and are not compared)")
    if not finite.any():
        outcome, reason = FAILS, "J's Hessian is not finite at any sampled stable point"
    elif np.nanmax(eig) < 0:
        outcome, reason = HOLDS, (f"J's Hessian is negative definite at every point checked under this {kind} server "
                                  f"(largest eigenvalue {np.nanmax(eig):.3e}); the lemma's proof is for M/G/1, this "
                                  "is a numerical check")
    else:
        worst = int(np.nanargmax(eig))
        outcome = NOT_APPLICABLE
        reason = (f"Lemma 1 is proved for one FIFO server; under this {kind} server J is not concave everywhere: "
                  f"its Hessian has an eigenvalue {eig[worst]:.3e} >= 0 at load {loads[worst]:.3f} of capacity "
                  f"({int(np.sum(eig >= 0))} of {int(finite.sum())} points); the solvers return a KKT point")
    report["lemma1"] = {
        "outcome": outcome,
        "reason": reason,
        "checked": checked,
        "points": int(finite.sum()),
        "utilization_range": [float(loads.min()), float(loads.max())],
        "largest_eigenvalue": float(np.nanmax(eig)) if finite.any() else None,
        "concave_at_points": int(np.sum(eig < 0)),
    }
    for k in ("lemma2", "lemma3"):
        report[k] = {"outcome": NOT_APPLICABLE, "reason": _PK_ONLY[k].format(kind=kind), "checked": "nothing"}
    report["failed"] = [k for k in ("lemma1", "lemma2", "lemma3") if report[k]["outcome"] == FAILS]
    report["pass"] = not report["failed"]
    return report


def _format_other_server(report: dict[str, Any]) -> str:
    l1 = report["lemma1"]
    outcome = lambda entry: entry["outcome"].replace("_", " ")
    lines = [f"server: {report['server']['kind']} (the lemmas are the paper's, for one FIFO server)",
             f"Lemma 1 (strict concavity): {outcome(l1)}", f"  {l1['reason']}",
             (f"  {l1['points']} points, load {l1['utilization_range'][0]:.3f}..{l1['utilization_range'][1]:.3f} "
              "of capacity")]
    for k, title in (("lemma2", "Lemma 2 (Jacobian bound of the fixed-point map, eq. 26)"),
                     ("lemma3", "Lemma 3 (Lipschitz gradient, eqs. 31-32)")):
        lines += [f"{title}: {outcome(report[k])}", f"  {report[k]['reason']}"]
    failed = report["failed"]
    lines.append("overall: " + (f"FAIL ({', '.join(failed)})" if failed else "no lemma fails"))
    return "\n".join(lines)


def format_verify_report(report: dict[str, Any]) -> str:
    """Lemma-by-lemma text for people: each lemma's outcome and reason, then what was measured."""
    if report.get("server", {"kind": "fifo", "servers": 1}) != {"kind": "fifo", "servers": 1}:
        return _format_other_server(report)
    l1, l2, l3 = report["lemma1"], report["lemma2"], report["lemma3"]
    outcome = lambda entry: entry["outcome"].replace("_", " ")
    lines = [
        f"Lemma 1 (strict concavity): {outcome(l1)}",
        f"  {l1['reason']}",
        (f"  {l1['points']} points, utilization {l1['utilization_range'][0]:.3f}..{l1['utilization_range'][1]:.3f}; "
         f"max relative error: E[W] Hessian {l1['max_relative_error_wait_hessian']:.1e}, "
         f"J Hessian {l1['max_relative_error_objective_hessian']:.1e}"),
        f"Lemma 2 (Jacobian bound of the fixed-point map, eq. 26): {outcome(l2)}",
        f"  {l2['reason']}",
    ]
    for r in [l2] + ([l2["largest_box"]] if "largest_box" in l2 else []):
        lines.append(f"  on {r['region']} (rho_max = {r['rho_max']:.3g}), {r['points']} points: "
                     f"L_inf = {r['L_inf']:.4g}, largest Jacobian inf-norm met {r['observed_max_jacobian_norm']:.4g} "
                     f"({'within' if r['bound_holds'] else 'ABOVE'} the bound)")
    lines += [
        f"  {l2['contraction_note']}",
        f"Lemma 3 (Lipschitz gradient, eqs. 31-32): {outcome(l3)}",
        f"  {l3['reason']}",
    ]
    for r in [l3] + ([l3["largest_box"]] if "largest_box" in l3 else []):
        lines.append(f"  on {r['region']} (rho_max = {r['rho_max']:.3g}), {r['points']} points: "
                     f"L_J = {r['L_J']:.4g}, largest Hessian inf-norm met {r['observed_max_hessian_norm']:.4g} "
                     f"({r['looseness']:.3g}x loose); every entry within H_kj: {r['entries_within_bound']}")
    failed = report["failed"]
    lines.append("overall: " + (f"FAIL ({', '.join(failed)})" if failed else "no lemma fails"))
    return "\n".join(lines)
