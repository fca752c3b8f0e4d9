"""Projected Newton in budget space with the structured Hessian (beyond the paper).

−∇²J is a positive diagonal plus a rank-2 term (eqs. 11, 33–34): J depends on
the budgets through a separable accuracy term and the two moments
m = (E[S], E[S²]) (eq. 3), so

    −∇²J = diag(h) + U Q Uᵀ,   U = ∂m/∂ℓ (N×2),   Q = ∇²_m E[T] (2×2),
    h_k = −α π_k p_k''(ℓ_k) + (∂E[T]/∂m2) ∂²E[S²]/∂ℓ_k².

Every piece comes from autodiff of :mod:`jaxalloc.objective`; the Newton system
is solved in O(N) with the Woodbury identity (a 2×2 inner system). Bounds are
handled as in Bertsekas' projected Newton method (1982): coordinates in the
ε-active set (at a bound with the gradient pushing outward) take a scaled
gradient step, the free ones a Newton step on their block, and an Armijo
search along the projection arc makes every step an ascent step, so the method
converges from any stable start and quadratically near ℓ*.

**Servers.** For an aggregate server (:attr:`jaxalloc.servers.Server.aggregate`)
Q is the Hessian of that server's delay (:meth:`~jaxalloc.servers.Server.delay`)
in (m1, m2). A server that is not aggregate (priority: E[T] depends on every
t_k) has no such structure: the Newton system of the free block uses the dense
autodiff Hessian of J (N is small there), O(N³) per step. J need not be concave
then; the free block's Hessian is made negative definite by taking the
absolute values of its eigenvalues (floored at 1e-10 of the largest), so every
direction is an ascent direction, the Armijo search keeps J rising, and the
method stops at a KKT point (a local maximum in practice). The same safeguard
covers an aggregate server whose J is not concave: where the Woodbury
direction is not an ascent direction, the Jacobi-scaled gradient step is taken.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from ..model import Problem
from ..objective import gradient, hessian, mean_accuracy, moments, objective
from .base import resolve_tol, small_enough


def hessian_structure(problem: Problem, ell):
    """(U, Q, h) with −∇²J(ℓ) = diag(h) + U Q Uᵀ (see the module docstring); an aggregate server only."""
    lam = problem.arrival_rate
    ones = jnp.ones_like(ell)
    m1, m2 = moments(problem, ell)
    server = problem.server
    prices, Q = server.delay_curvature(lam, m1, m2)
    # separable curvature: accuracy (times α) and the moments' own second derivatives
    acc_curv = jax.jvp(jax.grad(lambda x: problem.alpha * mean_accuracy(problem, x)), (ell,), (ones,))[1]
    mom_curv = [jax.jvp(jax.grad(lambda x, i=i: moments(problem, x)[i]), (ell,), (ones,))[1] for i in (0, 1)]
    h = -acc_curv + prices[0] * mom_curv[0] + prices[1] * mom_curv[1]
    U = jnp.stack(jax.jacrev(lambda x: jnp.stack(moments(problem, x)))(ell), axis=-1)  # N×2
    return U, Q, h


def hessian_diagonal(problem: Problem, ell):
    """diag(−∇²J(ℓ)) = h + diag(U Q Uᵀ), in O(N), from the same autodiff pieces
    (for a server that is not aggregate: the diagonal of the dense Hessian)."""
    if not problem.server.aggregate:
        return -jnp.diagonal(hessian(problem, ell), axis1=-2, axis2=-1)
    U, Q, h = hessian_structure(problem, ell)
    u1, u2 = U[..., 0], U[..., 1]
    # diag(U Q Uᵀ) written out: as an einsum, XLA:CPU makes it a batched dot under
    # vmap (102,400 points at N = 6, 2 cores: 55 → 9 ms)
    return h + Q[0, 0] * u1 * u1 + (Q[0, 1] + Q[1, 0]) * u1 * u2 + Q[1, 1] * u2 * u2


def _woodbury_solve(U, Q, h, free, g):
    """Solve (diag(h) + U Q Uᵀ) d = g on the free coordinates (d = g/h elsewhere)."""
    Uf = jnp.where(free[:, None], U, 0.0)
    hinv_g = g / h
    hinv_U = Uf / h[:, None]
    det_q = Q[0, 0] * Q[1, 1] - Q[0, 1] * Q[1, 0]
    q_inv = jnp.array([[Q[1, 1], -Q[0, 1]], [-Q[1, 0], Q[0, 0]]]) / det_q
    cap = q_inv + Uf.T @ hinv_U
    rhs = Uf.T @ jnp.where(free, hinv_g, 0.0)
    det_c = cap[0, 0] * cap[1, 1] - cap[0, 1] * cap[1, 0]
    y = jnp.stack([cap[1, 1] * rhs[0] - cap[0, 1] * rhs[1], cap[0, 0] * rhs[1] - cap[1, 0] * rhs[0]]) / det_c
    d_free = hinv_g - hinv_U @ y
    return jnp.where(free, d_free, hinv_g)


def _dense_solve(H, free, g):
    """Solve M d = g on the free coordinates, M the free block of −∇²J = `H` with
    its eigenvalues replaced by their absolute values (floored at 1e-10 of the
    largest): the Newton step where the block is negative definite, an ascent
    direction always. Coordinates not free take d = g / |H_kk|."""
    tiny = jnp.finfo(H.dtype).tiny
    both = free[:, None] & free[None, :]
    M = jnp.where(both, H, 0.0) + jnp.diag(jnp.where(free, 0.0, 1.0))
    w, V = jnp.linalg.eigh(M)
    w = jnp.maximum(jnp.abs(w), 1e-10 * jnp.max(jnp.abs(w)) + tiny)
    d_free = V @ ((V.T @ jnp.where(free, g, 0.0)) / w)
    return jnp.where(free, d_free, g / jnp.maximum(jnp.abs(jnp.diagonal(H)), tiny))


def newton_direction(problem: Problem, ell, g, active=None):
    """(d, active): the projected Newton direction at ℓ for the free
    coordinates (`active` False), Jacobi-scaled gradient for the others;
    `active` None: the ε-active set of :class:`ProjectedNewton` is computed
    here and returned as a third element."""
    top = problem.max_tokens
    tiny = jnp.finfo(ell.dtype).tiny
    if problem.server.aggregate:
        U, Q, h = hessian_structure(problem, ell)
        diag = h
    else:
        H = -hessian(problem, ell)
        diag = jnp.diagonal(H)
    scale = jnp.maximum(jnp.abs(diag), tiny)
    if active is None:
        # ε-active set: at (or within ε of) a bound with the gradient pushing outward
        eps = jnp.minimum(1e-3 * (1.0 + jnp.abs(ell)), jnp.max(jnp.abs(jnp.clip(g / diag, -ell, top - ell))))
        active = ((ell <= eps) & (g < 0)) | ((ell >= top - eps) & (g > 0))
    if problem.server.aggregate:
        d = _woodbury_solve(U, Q, h, ~active, g)
        # J concave (one FIFO server, Lemma 1): d is an ascent direction. Otherwise it may not be:
        # fall back to the Jacobi-scaled gradient there
        gd = jnp.where(active, 0.0, g * d)
        ascent = jnp.sum(gd) >= -16 * jnp.finfo(ell.dtype).eps * jnp.sum(jnp.abs(gd))
        d = jnp.where(ascent & jnp.all(jnp.isfinite(d)), d, g / scale)
    else:
        d = _dense_solve(H, ~active, g)
    return d, active


class ProjectedNewton(eqx.Module):
    """Bertsekas' projected Newton method on ℓ with an O(N) structured Hessian
    solve (aggregate servers) or the dense Hessian of the free block (others):
    the solver for every server kind.

    **Arguments:**

    - `tol`: relative tolerance on the last step (tokens). Default by dtype.
    - `max_steps`: cap on iterations.
    - `max_backtracks`: cap on step halvings within one iteration.
    """

    tol: float | None = None
    max_steps: int = 200
    max_backtracks: int = 60

    def __call__(self, problem: Problem, start=None, active=True):
        tol = resolve_tol(self.tol, problem.A.dtype)
        top = problem.max_tokens
        ell0 = jnp.zeros_like(problem.A) if start is None else start

        def cond(state):
            _ell, value, steps, done = state
            return (~done) & (steps < self.max_steps) & jnp.isfinite(value)

        def body(state):
            ell, value, steps, _ = state
            g = gradient(problem, ell)
            d, active = newton_direction(problem, ell, g)

            def trial(t):
                new = jnp.clip(ell + t * d, 0.0, top)
                return new, objective(problem, new)

            def armijo(new, val, t):
                model = jnp.sum(jnp.where(active, g * (new - ell), t * g * d))
                return val >= value + 1e-4 * jnp.minimum(model, jnp.sum(g * (new - ell)))

            def bt_cond(c):
                t, new, val, k = c
                return (k < self.max_backtracks) & ~armijo(new, val, t)

            def bt_body(c):
                t, _, _, k = c
                return (0.5 * t, *trial(0.5 * t), k + 1)

            one = jnp.asarray(1.0, ell.dtype)
            _, new, val, _ = lax.while_loop(bt_cond, bt_body, (one, *trial(one), 0))
            better = val >= value
            new, val = jnp.where(better, new, ell), jnp.where(better, val, value)
            full = jnp.clip(ell + d, 0.0, top) - ell
            # converged: the Newton step is tiny, or the Newton decrement g_F·d_F of the
            # free block (> 0: the block is negative definite, Lemma 1) is at the rounding
            # level of J
            decrement = jnp.sum(jnp.where(active, 0.0, g * d))
            flat = decrement <= 16 * jnp.finfo(ell.dtype).eps * (1.0 + jnp.abs(value))
            # there J can no longer rank the points, but the gradient still can: take the
            # full Newton step without the line search, until the step itself is below
            # tol (in float32 "flat" is met up to ~1 token from ℓ*, the 1e-3 of the KKT
            # check: stopping at the first flat step left 0.07 tokens at ℓ* ≈ 9)
            new = jnp.where(flat, ell + full, new)
            val = jnp.where(flat, objective(problem, new), val)
            done = small_enough(full, ell, tol)
            return new, val, steps + 1, done

        state = (ell0, objective(problem, ell0), jnp.asarray(0), ~jnp.asarray(active))
        ell, _, steps, done = lax.while_loop(cond, body, state)
        return ell, steps, done
