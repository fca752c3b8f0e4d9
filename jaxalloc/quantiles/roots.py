"""Quantiles of W and of T = W + t as roots of a tail, with implicit derivatives.

Given the budgets, a type-k query's system time is T_k = W_k + t_k exactly
(its own service does not change its wait), so

    P(T_k > y) = G_k(y − t_k),        P(T > y) = Σ_k π_k G_k(y − t_k),

with G_k(x) = P(W_k > x): 1 for x < 0, P(W_k > 0) at x = 0 (right-continuous)
and continuous, decreasing on x > 0. The q-quantile is the smallest y with
P(T > y) ≤ 1 − q. The mixture jumps down at each t_j by π_j (1 − G_j(0)),
so the quantile is either one of the t_j (a jump crosses 1 − q) or the root
of log P(T > y) = log(1 − q) between two consecutive t_j, found by the
Illinois variant of regula falsi (Dowell and Jarratt, 1971) on the log tail,
which is nearly linear in y (tails decay exponentially): superlinear, and it
never leaves its bracket.

Derivatives (`jax.custom_jvp`): at a jump the quantile is t_j and moves with
it; at a root, by the implicit function theorem, dy = −∂_θ F / ∂_y F with
F = log P(T > y) − log(1 − q). The rule calls the solver again for the
primal, so higher derivatives (Hessians of quantiles) follow the same rule.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

TINY = 1e-300


def illinois(f, lo, hi, f_lo, f_hi, iters: int):
    """A root of f in [lo, hi] (f(lo) > 0 ≥ f(hi), f decreasing), `iters` Illinois steps."""

    def body(_, c):
        lo, hi, f_lo, f_hi, last = c
        x = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        x = jnp.where(jnp.isfinite(x) & (x > lo) & (x < hi), x, 0.5 * (lo + hi))
        fx = f(x)
        right = fx > 0  # the root lies right of x: x becomes lo
        # Illinois: when the same end moves twice, halve the other end's value
        f_hi = jnp.where(right & (last == 1), 0.5 * f_hi, f_hi)
        f_lo = jnp.where(~right & (last == -1), 0.5 * f_lo, f_lo)
        lo, f_lo = jnp.where(right, x, lo), jnp.where(right, fx, f_lo)
        hi, f_hi = jnp.where(right, hi, x), jnp.where(right, f_hi, fx)
        return lo, hi, f_lo, f_hi, jnp.where(right, 1, -1)

    lo, hi, f_lo, f_hi, _ = lax.fori_loop(0, iters, body, (lo, hi, f_lo, f_hi, jnp.asarray(0)))
    return jnp.where(jnp.abs(f_lo) < jnp.abs(f_hi), lo, hi)


def mixture_tail(tails, g0, t, weights, y):
    """Σ_k w_k G_k(y − t_k); `tails(x)` gives G_k(x_k) for x > 0 (N,), `g0` = G_k(0)."""
    x = y - t
    inside = tails(jnp.where(x > 0, x, 1.0))  # 1.0: a harmless stand-in where x ≤ 0 (no NaN in the gradient)
    g = jnp.where(x > 0, inside, jnp.where(x == 0, g0, 1.0))
    return jnp.sum(weights * g, -1)


@partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def mixture_quantile(tails_of, iters, params, g0, t, weights, level, hi_bound):
    """The `level` quantile of Σ_k w_k P(W_k + t_k > y) (module docstring).

    **Arguments:** `tails_of(params)` → the function x ↦ G_k(x_k), (N,) → (N,)
    (a static, hashable function); `iters`: Illinois steps; `params`: the
    arrays the tails depend on (differentiable); `g0` = G_k(0) (N,); `t`
    service times (N,); `weights` w (N,), summing to 1; `level` q in (0, 1);
    `hi_bound`: a y with tail ≤ 1 − q. **Returns:** y (scalar).
    """
    return _solve(tails_of, iters, params, g0, t, weights, level, hi_bound)


def _solve(tails_of, iters, params, g0, t, weights, level, hi_bound):
    tails = tails_of(params)
    target = jnp.log1p(-level)
    tail = lambda y: mixture_tail(tails, g0, t, weights, y)
    right = jax.vmap(tail)(t)  # P(T > t_j), right-continuous values at the jumps
    same = t[:, None] == t[None, :]
    left = right + jnp.sum(jnp.where(same, weights * (1.0 - g0), 0.0), -1)  # P(T ≥ t_j)
    cut = 1.0 - level
    crosses = (left > cut) & (right <= cut)
    jump_at = jnp.min(jnp.where(crosses, t, jnp.inf))
    # otherwise the root lies between lo (the largest t_j still above the cut) and the next jump
    lo = jnp.max(jnp.where(right > cut, t, -jnp.inf))
    lo = jnp.where(jnp.isfinite(lo), lo, jnp.min(t))  # a jump case: the root is not used
    later = t > lo
    nxt = jnp.min(jnp.where(later, t, jnp.inf))
    hi = jnp.minimum(nxt, hi_bound)
    left_at_hi = jnp.where(nxt <= hi_bound, jnp.min(jnp.where(later & (t == nxt), left, jnp.inf)), tail(hi_bound))
    f = lambda y: jnp.log(jnp.maximum(tail(y), TINY)) - target
    f_lo = jnp.log(jnp.maximum(jnp.max(jnp.where(t == lo, right, 0.0)), TINY)) - target
    f_hi = jnp.log(jnp.maximum(left_at_hi, TINY)) - target
    root = illinois(f, lo, hi, f_lo, f_hi, iters)
    return jnp.where(jnp.isfinite(jump_at), jump_at, root)


@mixture_quantile.defjvp
def _mixture_quantile_jvp(tails_of, iters, primals, tangents):
    params, g0, t, weights, level, _bound = primals
    dparams, dg0, dt, dweights, dlevel, _ = tangents
    y = mixture_quantile(tails_of, iters, *primals)  # itself: higher derivatives follow this rule too
    gap = jnp.abs(t - y)
    j = jnp.argmin(gap)
    is_jump = gap[j] == 0  # a jump's quantile is that t_j itself, bit for bit

    def f(y_, params_, g0_, t_, w_, q_):
        tail = mixture_tail(tails_of(params_), g0_, t_, w_, y_)
        return jnp.log(jnp.maximum(tail, TINY)) - jnp.log1p(-q_)

    _, df_theta = jax.jvp(lambda *a: f(y, *a), (params, g0, t, weights, level), (dparams, dg0, dt, dweights, dlevel))
    df_y = jax.grad(f)(y, params, g0, t, weights, level)
    dy = jnp.where(is_jump, dt[j], -df_theta / jnp.where(is_jump, 1.0, df_y))
    return y, dy
