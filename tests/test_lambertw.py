import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from jaxalloc.lambertw import lambertw, lambertw_log

# Compilation dominates the run time: inputs are built in numpy, and most arrays
# share one length, so that each (function, shape, dtype) is compiled once.
N = 20001
EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps
HAS_LONGDOUBLE = np.finfo(np.longdouble).eps < 1e-18  # x87 extended precision


def _rel_err(w, ref):
    w = np.asarray(w, np.float64)
    return np.abs(w - ref) / np.abs(ref)


def _at(f, x, dtype=np.float64):
    """f at the points x (flattened), padded to length N to reuse compiled code."""
    x = np.asarray(x, dtype).ravel()
    return np.asarray(f(np.concatenate([x, np.ones(N - x.size, dtype)])))[: x.size]


def _newton(s, dtype, w=None, iters=50):
    """Newton on f(w) = w + log(w) - s in numpy, started from w = s by default."""
    s = np.asarray(s, dtype)
    w = s.copy() if w is None else np.asarray(w, dtype)
    for _ in range(iters):
        w = w - (w + np.log(w) - s) / (1 + 1 / w)
    return w


def test_vs_scipy_float64():
    s = np.linspace(-700.0, 700.0, N)
    ref = scipy.special.lambertw(np.exp(s)).real
    w = lambertw_log(s)
    assert w.dtype == jnp.float64
    # Measured: ours <= 1.8 eps, scipy's (incl. rounding of exp(s)) <= 1.5 eps.
    assert _rel_err(w, ref).max() <= 4 * EPS64


def test_vs_scipy_float32():
    s = np.linspace(-80.0, 80.0, N, dtype=np.float32)
    ref = scipy.special.lambertw(np.exp(s.astype(np.float64))).real
    w = lambertw_log(s)
    assert w.dtype == jnp.float32
    assert _rel_err(w, ref).max() <= 4 * EPS32  # measured 1.7 eps


def test_large_s_float64():
    s = np.geomspace(700.0, 1e7, N)
    w = np.asarray(lambertw_log(s))
    # Defining identity.
    assert _rel_err(w + np.log(w), s).max() <= 2 * EPS64
    # Independent float64 Newton iteration.
    assert _rel_err(w, _newton(s, np.float64)).max() <= 4 * EPS64
    # Higher-precision references, where available.
    if HAS_LONGDOUBLE:
        assert _rel_err(w, _newton(s, np.longdouble)).max() <= 2 * EPS64
    try:
        import mpmath
    except ImportError:
        return
    with mpmath.workdps(40):
        for si, wi in zip(s[::500], w[::500]):
            ref = float(mpmath.lambertw(mpmath.exp(mpmath.mpf(float(si)))).real)
            assert abs(wi - ref) <= 2 * EPS64 * ref


def test_float80_reference():
    """Against float80 Newton over the normal range, incl. the branch switches."""
    if not HAS_LONGDOUBLE:
        pytest.skip("numpy.longdouble is not x87 extended precision here")
    s = np.linspace(-708.0, 50.0, N)
    w0 = np.where(s > 1, s, np.exp(np.minimum(s, 1)) / 2)  # Newton converges
    ref = _newton(s, np.longdouble, w0, iters=100)
    assert _rel_err(np.asarray(lambertw_log(s), np.longdouble), ref).max() <= 2 * EPS64


def test_float80_reference_large_and_switches():
    """Against float80 Newton beyond s = 50 and right at the region switches (-10, 0, 10, 1e20)."""
    if not HAS_LONGDOUBLE:
        pytest.skip("numpy.longdouble is not x87 extended precision here")
    switches = np.array([-10.0, 0.0, 10.0, 1e20])
    near = switches[:, None] * (1 + np.linspace(-1e-6, 1e-6, 101)) + np.linspace(-1e-6, 1e-6, 101)
    s = np.concatenate([np.geomspace(50.0, 1e25, N - near.size), near.ravel()])
    ref = _newton(s, np.longdouble, np.where(s > 1, s, np.exp(np.minimum(s, 1)) / 2), iters=100)
    assert _rel_err(np.asarray(lambertw_log(s), np.longdouble), ref).max() <= 2 * EPS64


def test_very_negative():
    s = np.linspace(-1e4, -20.0, N)
    w = np.asarray(lambertw_log(s))
    e = np.exp(s)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    # XLA on CPU may flush subnormal results to zero.
    np.testing.assert_allclose(w, e * (1 - e), rtol=2 * EPS64, atol=np.finfo(np.float64).tiny)
    assert w[0] == 0.0


def test_float32():
    s = np.concatenate([np.linspace(-1e4, 100.0, N // 2), np.geomspace(100.0, 1e6, N - N // 2)])
    s = s.astype(np.float32)
    w = lambertw_log(s)
    assert w.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(w)) and jnp.all(w >= 0)
    g = jax.jit(jax.vmap(jax.grad(lambertw_log)))(s)
    assert g.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(g))
    big = s[N // 2 :]
    ref = _newton(big.astype(np.float64), np.float64)
    assert _rel_err(w[N // 2 :], ref).max() <= 4 * EPS32


def test_special_values():
    s = [-np.inf, np.inf, np.nan, 0.0, 1.0]
    for dtype in (np.float64, np.float32):
        w = _at(lambertw_log, s, dtype)
        assert w.dtype == dtype
        assert w[0] == 0.0
        assert w[1] == np.inf
        assert np.isnan(w[2])
        rtol = 2 * np.finfo(dtype).eps
        np.testing.assert_allclose(w[3], 0.5671432904097838, rtol=rtol)  # omega constant
        np.testing.assert_allclose(w[4], 1.0, rtol=rtol)


def test_grad():
    s = np.array([-50.0, -20.5, -19.5, -5.0, -1.0, 0.0, 0.5, 1.0, 10.0, 100.0, 1e4, 1e6])
    extremes = np.array([-np.inf, -1e4, -1000.0, 1e300, np.inf])
    g_all = np.asarray(jax.jit(jax.vmap(jax.grad(lambertw_log)))(np.concatenate([s, extremes])))
    gg_all = np.asarray(
        jax.jit(jax.vmap(jax.grad(jax.grad(lambertw_log))))(np.concatenate([s, extremes]))
    )
    # NaN-free, with the right limits, at the extremes.
    g, g_ext = g_all[: s.size], g_all[s.size :]
    assert np.all(np.isfinite(g_all)) and np.all(np.isfinite(gg_all))
    np.testing.assert_array_equal(g_ext, [0.0, 0.0, 0.0, 1.0, 1.0])
    # Exact formula and central finite differences.
    w = _at(lambertw_log, s)
    np.testing.assert_allclose(g, w / (1 + w), rtol=4 * EPS64)
    h = 1e-5 * np.maximum(1.0, s)
    fd = (_at(lambertw_log, s + h) - _at(lambertw_log, s - h)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-7)
    # Second derivative: d/ds w/(1+w) = w/(1+w)^3.
    np.testing.assert_allclose(gg_all[: s.size], w / (1 + w) ** 3, rtol=1e-14)


def test_jit_vmap():
    s = np.linspace(-30.0, 30.0, 12).reshape(3, 4)
    w = jax.jit(jax.vmap(jax.vmap(lambertw_log)))(s)
    assert w.shape == (3, 4) and w.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(w).ravel(), _at(lambertw_log, s))


def test_lambertw_z():
    z = np.concatenate([[0.0, np.inf, -0.1], np.geomspace(1e-300, 1e300, N - 3)])
    ref = scipy.special.lambertw(z[3:]).real
    w = np.asarray(lambertw(z))
    assert w[0] == 0.0 and w[1] == np.inf and np.isnan(w[2])
    assert _rel_err(w[3:], ref).max() <= 4 * EPS64
    grad = jax.jit(jax.vmap(jax.grad(lambertw)))(np.array([0.0, 1.0, 1e300, np.inf]))
    np.testing.assert_allclose(grad, [1.0, 0.3618962566348893, 0.0, 0.0], rtol=4 * EPS64, atol=1e-299)
