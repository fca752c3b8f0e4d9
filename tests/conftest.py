"""Shared test setup: float64, a tree-closeness helper, problem factories, the hypothesis seed."""

import datetime
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np
import pytest
from hypothesis import is_hypothesis_test, settings

import jaxalloc as ja

SEED_ENV = "JAXALLOC_HYPOTHESIS_SEED"


def hypothesis_seed(environ=os.environ, today: datetime.date | None = None) -> tuple[int, str]:
    """(seed, where it came from) for the property tests: the integer in
    $JAXALLOC_HYPOTHESIS_SEED when set, else today's UTC date as YYYYMMDD. All
    runs of one day (CI's included) draw the same examples; each day draws new ones."""
    value = environ.get(SEED_ENV, "").strip()
    if value:
        return int(value), f"${SEED_ENV}"
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    return int(today.strftime("%Y%m%d")), f"the date {today.isoformat()} (UTC)"


# Profiles (HYPOTHESIS_PROFILE): "dated" (default) seeds every property test with
# hypothesis_seed(); "random" draws a fresh seed per test (hypothesis prints it on a
# failure); "derandomized" replays one fixed list of examples forever. A profile
# inherits the default in force when it is registered, and hypothesis makes that its
# derandomized "ci" profile when $CI is set: so each names derandomize itself.
settings.register_profile("dated", derandomize=False, deadline=None, database=None)
settings.register_profile("random", derandomize=False, deadline=None)
settings.register_profile("derandomized", derandomize=True, deadline=None)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dated")
settings.load_profile(PROFILE)
SEED, SEED_SOURCE = hypothesis_seed() if PROFILE == "dated" else (None, "")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Hand SEED to hypothesis's pytest plugin as if given as --hypothesis-seed
    (which, when given, wins); the plugin's own configure runs after this one."""
    if SEED is not None and config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(SEED)


def _seed_line(config) -> str:
    seed = config.getoption("hypothesis_seed", None)
    if seed is None:
        return f"hypothesis seed: none fixed (profile {PROFILE!r})"
    source = SEED_SOURCE if seed == str(SEED) else "--hypothesis-seed"
    return f"hypothesis seed: {seed} (from {source}); replay with {SEED_ENV}={seed}"


def pytest_report_header(config):
    return _seed_line(config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed and is_hypothesis_test(getattr(item, "obj", None)):
        report.sections.append(("hypothesis seed", _seed_line(item.config)))
    return report


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. The whole suite in one process
    otherwise holds thousands of XLA executables (5 GB resident near the end), and a
    clean-clone CI run died with a segmentation fault inside XLA's compiler late in the
    suite (test_simulate_servers, which passes on its own): plausibly the process's
    memory maps running out. Modules compile their own shapes anyway, so little is lost."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()


def assert_tree_close(a, b, rtol=1e-12, atol=0.0):
    """Leaves of two pytrees are equal within tolerance."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="session")
def paper():
    return ja.paper_profile()


# ---------------------------------------------------------------- the real vLLM server of the session

VLLM_GSM8K = [{"question": f"Tom has {n} apples and buys {n + 3} more. How many?", "answer": f"#### {2 * n + 3}"}
              for n in range(1, 9)]


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A real vLLM of the session (tests/test_vllm.py, tests/test_vllm_gateway.py, which run last
    and in turn): (the server, the checkpoint folder, a GSM8K-style data file). Started on first
    use, stopped by its process id when the session ends, failures included. Without a vLLM
    environment the tests that use it skip, unless $JAXALLOC_REQUIRE_VLLM is set (CI): then they fail."""
    import json

    from tiny_qwen3 import VLLM_CONFIG, make_checkpoint

    from jaxalloc.serving import VLLMServer, find_vllm_python

    if find_vllm_python() is None:
        reason = "no vLLM environment (.vllm-venv, or $JAXALLOC_VLLM_PYTHON): build it as .ci/run does"
        if os.environ.get("JAXALLOC_REQUIRE_VLLM"):
            pytest.fail(reason + "; $JAXALLOC_REQUIRE_VLLM is set, so this is a failure")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("vllm")
    folder = root / "model"
    make_checkpoint(str(folder), **VLLM_CONFIG)
    data = root / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in VLLM_GSM8K))
    # max_num_seqs: calibrate batching should find this knee; nice: the clients measuring it (load
    # generator, gateway) share the two cores with it and must run when their requests are due
    server = VLLMServer(folder, "tiny-qwen3", max_num_seqs=32, nice=10)
    try:
        server.start()
        yield server, str(folder), str(data)
    finally:
        server.stop()
        assert server.process is None
