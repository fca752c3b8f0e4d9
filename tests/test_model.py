"""Problem construction, validation and the TOML profile format."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxalloc as ja

PAPER_TABLE = {  # Table I of the paper
    "A": [0.6808, 0.7230, 0.3552, 0.4379, 0.7146, 0.3933],
    "b": [1.59e-4, 3.20e-3, 4.41e-4, 5.63e-4, 1.75e-3, 1.66e-1],
    "D": [0.0, 0.277, 0.276, 0.0, 0.148, 0.490],
    "t0": [0.1380, 0.1459, 0.1674, 0.0176, 0.2073, 0.0581],
    "c": [0.0120, 0.0141, 0.0126, 0.0124, 0.0127, 0.0119],
}


def test_paper_profile_matches_table_one(paper):
    assert paper.names == ("AIME", "GSM8K", "GPQA", "CRUXEval", "BBH", "ARC-Challenge")
    for field, values in PAPER_TABLE.items():
        np.testing.assert_array_equal(np.asarray(getattr(paper, field)), values)
    np.testing.assert_allclose(paper.prob, np.full(6, 1 / 6))
    assert (float(paper.arrival_rate), float(paper.alpha), float(paper.max_tokens)) == (0.1, 30.0, 32768.0)
    assert "paper" in ja.bundled_profiles()


def test_problem_is_a_pytree_that_vmaps(paper):
    leaves = jax.tree_util.tree_leaves(paper)
    assert len(leaves) == 10  # names are static; the default server has one leaf (servers = 1)
    values = jax.vmap(lambda a: ja.objective(paper.replace(alpha=a), jnp.zeros(6)))(jnp.array([1.0, 30.0]))
    assert values.shape == (2,)


def test_toml_round_trip(tmp_path, paper):
    path = tmp_path / "p.toml"
    path.write_text(ja.problem_to_toml(paper, "paper"))
    again = ja.load_profile(path)
    assert again.names == paper.names
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(paper)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _profile(**top):
    task = {"name": "x", "A": 0.5, "b": 1e-3, "D": 0.2, "t0": 0.1, "c": 0.01}
    data = {"name": "t", "arrival_rate": 0.1, "alpha": 10.0, "max_tokens": 1000, "tasks": [dict(task), dict(task, name="y")]}
    for key, value in top.items():
        if key.startswith("task_"):
            data["tasks"][0][key[5:]] = value
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    "change, message",
    [
        ({"arrival_rate": -1.0}, "arrival_rate = -1: must be > 0"),
        ({"alpha": 0.0}, "alpha = 0: must be > 0"),
        ({"max_tokens": float("nan")}, "max_tokens = nan: must be a finite number"),
        ({"arrival_rate": "fast"}, "arrival_rate = 'fast': must be a number"),
        ({"color": "red"}, "color: unknown field"),
        ({"task_speed": 1.0}, r"tasks\[0\] \(x\).speed: unknown field"),
        ({"task_b": 0.0}, r"tasks\[0\] \(x\).b = 0: must be > 0"),
        ({"task_c": -0.01}, r"tasks\[0\] \(x\).c = -0.01: must be > 0"),
        ({"task_A": 0.9}, r"tasks\[0\] \(x\): A \+ D = 1.1 > 1"),
        ({"task_D": -0.1}, r"tasks\[0\] \(x\).D = -0.1: must be in \[0, 1\]"),
        ({"task_t0": -1.0}, r"tasks\[0\] \(x\).t0 = -1: must be >= 0"),
        ({"task_prob": 0.5}, r"tasks\[1\] \(y\).prob: missing"),
        ({"arrival_rate": 20.0}, "queue unstable even at zero budgets"),
        ({"tasks": []}, "at least one"),
    ],
)
def test_bad_profiles_name_field_and_value(change, message):
    with pytest.raises(ja.ProblemError, match=message):
        ja.problem_from_dict(_profile(**change))


def test_probabilities_must_sum_to_one():
    data = _profile()
    data["tasks"][0]["prob"], data["tasks"][1]["prob"] = 0.5, 0.6
    with pytest.raises(ja.ProblemError, match="prob: task shares sum to 1.1"):
        ja.problem_from_dict(data)
    data["tasks"][1]["prob"] = 0.5 + 5e-7  # within the 1e-6 tolerance
    assert ja.problem_from_dict(data).num_tasks == 2


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ja.ProblemError, match="file not found"):
        ja.load_profile(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("arrival_rate = = 1\n")
    with pytest.raises(ja.ProblemError, match="malformed TOML"):
        ja.load_profile(bad)


def test_make_problem_checks_lengths_and_duplicates():
    with pytest.raises(ja.ProblemError, match="field b has 1 values, A has 2"):
        ja.make_problem(arrival_rate=0.1, alpha=1, max_tokens=10, A=[0.5, 0.5], b=[1e-3], D=[0, 0], t0=[0, 0], c=[1, 1])
    with pytest.raises(ja.ProblemError, match="duplicate task name 'a'"):
        ja.make_problem(arrival_rate=0.1, alpha=1, max_tokens=10, A=[0.5, 0.5], b=[1, 1], D=[0, 0], t0=[0, 0],
                        c=[1, 1], names=["a", "a"])


def test_profile_tasks_need_a_name(tmp_path):
    """A profile task without `name` is an error naming its index (it used to be called task0)."""
    data = _profile()
    data["tasks"].append({"A": 0.5, "b": 1e-3, "D": 0.2, "t0": 0.1, "c": 0.01})
    with pytest.raises(ja.ProblemError, match=r"^tasks\[2\]\.name: missing$"):
        ja.problem_from_dict(data)
    for bad in ("", "  ", 3, True):
        data["tasks"][2]["name"] = bad
        with pytest.raises(ja.ProblemError, match=r"^tasks\[2\]\.name = .*: must be a non-empty string$"):
            ja.problem_from_dict(data)
    data["tasks"][2]["name"] = "z"
    assert ja.problem_from_dict(data).names == ("x", "y", "z")
    path = tmp_path / "unnamed.toml"
    path.write_text("arrival_rate = 0.1\nalpha = 1\nmax_tokens = 10\n[[tasks]]\nA = 0.5\nb = 0.001\nD = 0.2\n"
                    "t0 = 0.1\nc = 0.01\n")
    with pytest.raises(ja.ProblemError, match=r"^tasks\[0\]\.name: missing$"):
        ja.load_profile(path)


def test_make_problem_still_names_tasks_itself():
    """The Python API keeps its default names; problem_to_toml writes them, so the file loads."""
    from jaxalloc.model import tomllib  # tomli before Python 3.11

    problem = ja.make_problem(arrival_rate=0.1, alpha=1, max_tokens=10, A=[0.5, 0.5], b=[1e-3, 1e-3], D=[0, 0],
                              t0=[0.1, 0.1], c=[0.01, 0.01])
    assert problem.names == ("task0", "task1")
    assert ja.problem_from_dict(tomllib.loads(ja.problem_to_toml(problem))).names == ("task0", "task1")


def test_bundled_profiles_load():
    from pathlib import Path

    for name in ja.bundled_profiles():
        path = Path(ja.__file__).parent / "profiles" / f"{name}.toml"
        problem = ja.load_profile(path)
        assert all(problem.names) and len(set(problem.names)) == problem.num_tasks


def test_hypothesis_seed_comes_from_the_date_or_the_environment():
    """The property tests' seed (tests/conftest.py): new each day, fixed by the variable."""
    import datetime

    import hypothesis.core
    from conftest import PROFILE, SEED, SEED_ENV, hypothesis_seed

    day1, day2 = datetime.date(2025, 3, 1), datetime.date(2025, 3, 2)
    assert hypothesis_seed({}, day1) == (20250301, "the date 2025-03-01 (UTC)")
    assert hypothesis_seed({}, day2)[0] == 20250302
    assert hypothesis_seed({SEED_ENV: "42"}, day1) == hypothesis_seed({SEED_ENV: " 42 "}, day2) == (42, f"${SEED_ENV}")
    if PROFILE == "dated":  # this run is seeded with it, through hypothesis's plugin, not derandomized
        from hypothesis import settings

        assert not settings.default.derandomize
        assert hypothesis.core.global_force_seed == SEED
