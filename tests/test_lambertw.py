import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from jaxalloc.lambertw import lambertw, lambertw_log


EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps


def _rel_err(w, ref):
    w = np.asarray(w, np.float64)
    ref = np.asarray(ref)
    return np.abs(w - ref) / np.abs(ref)


def _newton(s, dtype, iters=50):
    """Newton on f(w) = w + log(w) - s in numpy, started from w = s (s > 1)."""
    s = np.asarray(s, dtype)
    w = s.copy()
    for _ in range(iters):
        w = w - (w + np.log(w) - s) / (1 + 1 / w)
    return w


def test_vs_scipy_float64():
    s = np.linspace(-700.0, 700.0, 20001)
    ref = scipy.special.lambertw(np.exp(s)).real
    w = jax.jit(lambertw_log)(jnp.asarray(s))
    assert w.dtype == jnp.float64
    # Our error is <= 1.8 eps, scipy's (incl. rounding of exp(s)) <= 1.5 eps.
    assert _rel_err(w, ref).max() <= 4 * EPS64


def test_vs_scipy_float32():
    s = np.linspace(-80.0, 80.0, 20001).astype(np.float32)
    ref = scipy.special.lambertw(np.exp(s.astype(np.float64))).real
    w = jax.jit(lambertw_log)(jnp.asarray(s))
    assert w.dtype == jnp.float32
    assert _rel_err(w, ref).max() <= 4 * EPS32


def test_large_s_float64():
    s = np.geomspace(700.0, 1e7, 2001)
    w = np.asarray(jax.jit(lambertw_log)(jnp.asarray(s)))
    # Defining identity.
    assert (_rel_err(w + np.log(w), s)).max() <= 2 * EPS64
    # Independent float64 Newton iteration.
    assert _rel_err(w, _newton(s, np.float64)).max() <= 4 * EPS64
    # Higher-precision references, where available.
    if np.finfo(np.longdouble).eps < 1e-18:  # x87 extended precision
        ref = _newton(s, np.longdouble)
        assert _rel_err(w, ref).max() <= 2 * EPS64
    try:
        import mpmath
    except ImportError:
        return
    mpmath.mp.dps = 40
    for si, wi in zip(s[::100], w[::100]):
        ref = float(mpmath.lambertw(mpmath.exp(mpmath.mpf(float(si)))).real)
        assert abs(wi - ref) <= 2 * EPS64 * ref


def test_extended_precision_reference_all_ranges():
    """Against a float80 Newton reference over the whole range (if available)."""
    if np.finfo(np.longdouble).eps >= 1e-18:
        pytest.skip("no extended-precision long double on this platform")
    s = np.concatenate([np.linspace(-708.0, 30.0, 40001), np.geomspace(30.0, 1e7, 2001)])
    s_ld = s.astype(np.longdouble)
    ref = np.exp(s_ld) / 2  # below the root for s <= 1: Newton converges
    ref = np.where(s_ld > 1, s_ld, ref)
    for _ in range(100):
        ref = ref - (ref + np.log(ref) - s_ld) / (1 + 1 / ref)
    w = np.asarray(jax.jit(lambertw_log)(jnp.asarray(s)), np.longdouble)
    assert (np.abs(w - ref) / ref).max() <= 2 * EPS64


def test_very_negative():
    s = np.linspace(-1e4, -20.0, 2001)
    w = np.asarray(lambertw_log(jnp.asarray(s)))
    e = np.exp(s)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    np.testing.assert_allclose(w, e * (1 - e), rtol=2 * EPS64, atol=0)
    assert lambertw_log(-1e4) == 0.0


def test_special_values():
    s = jnp.array([-jnp.inf, jnp.inf, jnp.nan])
    for dtype in (jnp.float64, jnp.float32):
        w = lambertw_log(s.astype(dtype))
        assert w.dtype == dtype
        assert w[0] == 0.0
        assert w[1] == jnp.inf
        assert jnp.isnan(w[2])
    np.testing.assert_allclose(lambertw_log(0.0), scipy.special.lambertw(1.0).real, rtol=2 * EPS64)
    assert lambertw_log(1.0) == 1.0


@pytest.mark.parametrize("s", [-50.0, -20.5, -19.5, -5.0, -1.0, 0.0, 0.5, 1.0, 10.0, 100.0, 1e4, 1e6])
def test_grad(s):
    grad = jax.grad(lambertw_log)
    w = float(lambertw_log(s))
    g = float(grad(s))
    np.testing.assert_allclose(g, w / (1 + w), rtol=4 * EPS64)
    h = 1e-4 * max(1.0, abs(s))
    fd = (float(lambertw_log(s + h)) - float(lambertw_log(s - h))) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-7)
    # Second derivative d/ds w/(1+w) = w/(1+w)^3.
    np.testing.assert_allclose(float(jax.grad(grad)(s)), w / (1 + w) ** 3, rtol=1e-14)


def test_grad_finite_extremes():
    s = jnp.array([-jnp.inf, -1e4, -1000.0, 1e6, 1e300, jnp.inf])
    g = jax.jit(jax.vmap(jax.grad(lambertw_log)))(s)
    assert jnp.all(jnp.isfinite(g))
    np.testing.assert_array_equal(g[:3], 0.0)
    np.testing.assert_allclose(g[3:], 1.0, rtol=2e-6)
    gg = jax.vmap(jax.grad(jax.grad(lambertw_log)))(s)
    assert jnp.all(jnp.isfinite(gg))


def test_jit_vmap_shapes():
    s = jnp.linspace(-30.0, 30.0, 12).reshape(3, 4)
    direct = lambertw_log(s)
    assert direct.shape == (3, 4)
    np.testing.assert_array_equal(jax.jit(lambertw_log)(s), direct)
    np.testing.assert_array_equal(jax.vmap(lambertw_log)(s), direct)
    np.testing.assert_array_equal(jax.jit(jax.vmap(jax.vmap(lambertw_log)))(s), direct)
    # Integer input is promoted to the default float dtype.
    np.testing.assert_allclose(lambertw_log(1), 1.0)


def test_float32():
    s = jnp.concatenate([jnp.linspace(-1e4, 100.0, 5001), jnp.geomspace(100.0, 1e6, 5001)])
    s = s.astype(jnp.float32)
    w = jax.jit(lambertw_log)(s)
    assert w.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(w)) and jnp.all(w >= 0)
    g = jax.vmap(jax.grad(lambertw_log))(s)
    assert g.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(g))
    # Large float32 s against a float64 Newton reference.
    big = np.geomspace(100.0, 1e6, 1001).astype(np.float32)
    ref = _newton(big.astype(np.float64), np.float64)
    assert _rel_err(lambertw_log(jnp.asarray(big)), ref).max() <= 4 * EPS32


def test_lambertw_z():
    z = np.concatenate([[0.0], np.geomspace(1e-300, 1e300, 4001)])
    ref = scipy.special.lambertw(z).real
    w = jax.jit(lambertw)(jnp.asarray(z))
    assert w[0] == 0.0
    assert _rel_err(w[1:], ref[1:]).max() <= 4 * EPS64
    assert lambertw(jnp.inf) == jnp.inf
    assert jnp.isnan(lambertw(-0.1))
    grad = jax.vmap(jax.grad(lambertw))(jnp.array([0.0, 1.0, 1e300, jnp.inf]))
    np.testing.assert_allclose(grad, [1.0, 0.3618962566348893, 0.0, 0.0], rtol=4 * EPS64, atol=1e-299)
    assert lambertw(jnp.float32(1.0)).dtype == jnp.float32
