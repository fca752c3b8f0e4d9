"""Shared test setup: float64, a tree-closeness helper, problem factories."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (CI lands only green runs);
# HYPOTHESIS_PROFILE=random explores new ones.
settings.register_profile("derandomized", derandomize=True, deadline=None)
settings.register_profile("random", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))

import jaxalloc as ja


def assert_tree_close(a, b, rtol=1e-12, atol=0.0):
    """Leaves of two pytrees are equal within tolerance."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="session")
def paper():
    return ja.paper_profile()
