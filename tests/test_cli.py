"""The `jaxalloc solve` command line: output for people and programs, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from jaxalloc.cli import main

CONTRACT_KEYS = {
    "tasks", "budgets", "integer_budgets", "objective", "integer_objective", "integer_lower_bound",
    "accuracy", "mean_wait", "mean_system_time", "utilization", "kkt_residual", "status", "method",
    "iterations",
}


def run(*args, cwd=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "jaxalloc.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_solve_json_contract():
    out = run("solve", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert CONTRACT_KEYS <= set(data)
    assert data["tasks"][1] == "GSM8K" and data["status"] == "converged" and data["method"] == "newton"
    assert data["budgets"][1] == pytest.approx(340.89, abs=0.01)
    assert data["integer_budgets"] == [0, 341, 0, 0, 346, 30]
    assert data["objective"] == pytest.approx(9.754203, abs=1e-6)
    assert data["integer_lower_bound"] <= data["integer_objective"] <= data["objective"]
    assert data["utilization"] == pytest.approx(0.1716, abs=1e-4)


def test_solve_table_overrides_and_methods(tmp_path):
    out = run("solve", "--arrival-rate", "0.2", "--alpha", "50", "--method", "fixed-point")
    assert out.returncode == 0, out.stderr
    assert "GSM8K" in out.stdout and "fixed-point" in out.stdout and "λ = 0.2/s" in out.stdout
    profile = tmp_path / "two.toml"
    profile.write_text(
        'name = "two"\narrival_rate = 0.5\nalpha = 20\nmax_tokens = 4096\n'
        '[[tasks]]\nname = "math"\nprob = 0.25\nA = 0.6\nb = 0.002\nD = 0.1\nt0 = 0.2\nc = 0.01\n'
        '[[tasks]]\nname = "chat"\nprob = 0.75\nA = 0.3\nb = 0.01\nD = 0.6\nt0 = 0.1\nc = 0.01\n'
    )
    data = json.loads(run("solve", str(profile), "--json", "--method", "projected-newton").stdout)
    assert data["tasks"] == ["math", "chat"] and data["status"] == "converged"


BAD_INPUTS = [
    (["missing.toml"], "missing.toml"),
    (["--arrival-rate", "-1"], "arrival_rate = -1"),
    (["--arrival-rate", "nan"], "arrival_rate = nan"),
    (["--arrival-rate", "fast"], "--arrival-rate"),
    (["--alpha", "0"], "alpha = 0"),
    (["--max-tokens", "-5"], "max_tokens = -5"),
    (["--arrival-rate", "9"], "queue unstable even at zero budgets"),
    (["--method", "magic"], "--method"),
    (["BAD:malformed"], "malformed TOML"),
    (["BAD:unknown"], "speed: unknown field"),
    (["BAD:prob"], "sum to 0.9"),
    (["BAD:AD"], "A + D = 1.2 > 1"),
    (["BAD:b"], "b = 0: must be > 0"),
    (["BAD:c"], "c = -0.1: must be > 0"),
    (["BAD:nan"], "t0 = nan"),
]

TASK = 'name = "q"\nA = 0.5\nb = 0.001\nD = 0.2\nt0 = 0.1\nc = 0.01\n'
BAD_FILES = {
    "malformed": "arrival_rate = = 0.1\n",
    "unknown": 'arrival_rate = 0.1\nalpha = 1\nmax_tokens = 10\n[[tasks]]\n' + TASK + "speed = 3\n",
    "prob": 'arrival_rate = 0.1\nalpha = 1\nmax_tokens = 10\n[[tasks]]\n' + TASK + "prob = 0.9\n",
    "AD": 'arrival_rate = 0.1\nalpha = 1\nmax_tokens = 10\n[[tasks]]\n' + TASK.replace("D = 0.2", "D = 0.7"),
    "b": 'arrival_rate = 0.1\nalpha = 1\nmax_tokens = 10\n[[tasks]]\n' + TASK.replace("b = 0.001", "b = 0.0"),
    "c": 'arrival_rate = 0.1\nalpha = 1\nmax_tokens = 10\n[[tasks]]\n' + TASK.replace("c = 0.01", "c = -0.1"),
    "nan": 'arrival_rate = 0.1\nalpha = 1\nmax_tokens = 10\n[[tasks]]\n' + TASK.replace("t0 = 0.1", "t0 = nan"),
}


@pytest.mark.parametrize("args, needle", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, args, needle):
    """In-process (the same `main` the console script calls), to keep the suite fast."""
    args = list(args)
    if args[0].startswith("BAD:"):
        path = tmp_path / "bad.toml"
        path.write_text(BAD_FILES[args[0][4:]])
        args[0] = str(path)
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    assert main(["solve", *args, "--json"]) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.err
    assert needle in lines[0]
    assert out.out == ""
    assert set(os.listdir(tmp_path)) == before  # nothing written


def test_bad_input_in_a_real_process(tmp_path):
    out = run("solve", "--arrival-rate", "-1", cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == "" and os.listdir(tmp_path) == []
    assert out.stderr.strip() == "error: arrival_rate = -1: must be > 0"


def test_enumeration_beyond_its_limit_is_a_one_line_error(tmp_path, capsys):
    tasks = "".join(
        f'[[tasks]]\nname = "t{k}"\nA = 0.5\nb = 0.002\nD = 0.2\nt0 = 0.01\nc = 0.001\n' for k in range(17)
    )
    path = tmp_path / "wide.toml"
    path.write_text("arrival_rate = 0.5\nalpha = 20\nmax_tokens = 4096\n" + tasks)
    assert main(["solve", str(path), "--integer", "enumerate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "enumeration is limited to N <= 16" in err[0]
    assert main(["solve", str(path), "--json"]) == 0  # auto: the coordinate search
    assert len(json.loads(capsys.readouterr().out)["integer_budgets"]) == 17


def test_verify_json(capsys):
    assert main(["verify", "--points", "30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pass"] and report["lemma1"]["largest_eigenvalue"] < 0
    assert "superlevel set" in report["lemma3"]["region"]


def test_sensitivity_writes_csv_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # the plots extra; installed by the test extra
    out = tmp_path / "fig4"
    assert main(["sensitivity", "--task", "GSM8K", "--range", "0:1000:101", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["best_budget_on_grid"] == 340.0  # grid step 10: the optimum is 340.89
    lines = (tmp_path / "fig4.csv").read_text().splitlines()
    assert lines[0] == "budget,objective,lower_bound" and len(lines) == 102
    png = (tmp_path / "fig4.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert main(["sensitivity", "--param", "alpha", "--range", "10:50:9", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a.csv").read_text().count("\n") == 10


@pytest.mark.parametrize("args, needle", [
    (["--task", "GSM8K", "--range", "5:1:3"], "START <= STOP"),
    (["--task", "GSM8K", "--range", "0:10:0"], "NUM >= 1"),
    (["--task", "GSM8K", "--range", "a:b:c"], "expected START:STOP:NUM"),
    (["--task", "MATH", "--range", "0:10:3"], "task = 'MATH': unknown task"),
    (["--range", "0:10:3"], "exactly one of --task"),
])
def test_sensitivity_bad_input(tmp_path, capsys, args, needle):
    assert main(["sensitivity", *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]
    assert list(tmp_path.iterdir()) == []


def test_command_uses_every_core_and_keeps_compiled_programs(tmp_path):
    """`jaxalloc` (python -m jaxalloc.cli) makes each core a device unless XLA_FLAGS sets
    the count, and keeps JAX's compiled programs in the user's cache folder."""
    axes = ["sweep", "--arrival-rate", "0.01:0.1:2", "--alpha", "1:10:3", "--json"]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR")}
    env.update(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "cache"))
    every = subprocess.run([sys.executable, "-m", "jaxalloc.cli", *axes, "--out", str(tmp_path / "a.parquet")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert every.returncode == 0, every.stderr
    from jaxalloc.cli import usable_cores

    assert json.loads(every.stdout)["devices"] == usable_cores()
    assert any((tmp_path / "cache" / "jaxalloc" / "jax").iterdir())  # compiled programs kept
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    one = subprocess.run([sys.executable, "-m", "jaxalloc.cli", *axes, "--out", str(tmp_path / "b.parquet")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["devices"] == 1
