"""The `jaxalloc solve` command line: output for people and programs, one-line errors."""

import importlib
import json
import os
import subprocess
import sys
import time

import pytest

from jaxalloc.cli import main

CONTRACT_KEYS = {
    "tasks", "budgets", "integer_budgets", "objective", "integer_objective", "integer_lower_bound",
    "accuracy", "mean_wait", "mean_system_time", "utilization", "kkt_residual", "status", "method",
    "iterations",
}


def run(*args, cwd=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "jaxalloc.cli", *args], check=False, capture_output=True, text=True,
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
    (["--task", "GSM8K", "--range", "0:10:3", "--quantile", "p100"], "quantile level 'p100': must lie in (0, 1)"),
    (["--task", "GSM8K", "--range", "0:10:3", "--quantile", "median"], "quantile level 'median': expected pNN"),
    (["--task", "GSM8K", "--range", "0:10:3", "--quantile", "p99", "--server", "batching",
      "--max-batch", "8"],
     "server.kind = 'batching': quantiles are not supported"),
    (["--param", "servers", "--range", "1:2:2", "--quantile", "p99"], "(fifo with servers > 1)"),
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
                           check=False, capture_output=True, text=True, env=env, timeout=300)
    assert every.returncode == 0, every.stderr
    from jaxalloc.cli import usable_cores

    assert json.loads(every.stdout)["devices"] == usable_cores()
    assert any((tmp_path / "cache" / "jaxalloc" / "jax").iterdir())  # compiled programs kept
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    one = subprocess.run([sys.executable, "-m", "jaxalloc.cli", *axes, "--out", str(tmp_path / "b.parquet")],
                         check=False, capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["devices"] == 1


# ---------------------------------------------------------------- hardening: every failure is one line

PAPER_INTEGER = "0,341,0,0,346,30"  # the paper profile's optimal integer budgets: simulate skips the solve


def one_line(err: str, start: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), err
    assert "Traceback" not in err
    return lines[0]


def unwritable(tmp_path, kind: str) -> str:
    """A path that cannot be written: in /proc, an existing folder, or in a missing folder."""
    if kind == "proc":
        if not os.path.isdir("/proc"):
            pytest.skip("no /proc")
        return "/proc/jaxalloc-test"
    if kind == "folder":
        (tmp_path / "taken.png").mkdir()
        (tmp_path / "taken.csv").mkdir()
        return str(tmp_path / "taken")
    return str(tmp_path / "missing" / "x")


def refuse(*names):
    """Replace functions that do the work: the test fails if they are reached."""
    def reached(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")
    return [(name, reached) for name in names]


@pytest.mark.parametrize("kind, reason", [("proc", "No such file or directory"), ("folder", "it is a directory"),
                                          ("missing", f"no such directory {{tmp}}{os.sep}missing")])
def test_sensitivity_out_that_cannot_be_written(tmp_path, monkeypatch, capsys, kind, reason):
    for name, fn in refuse("budget_curve", "parameter_curve"):
        monkeypatch.setattr(importlib.import_module("jaxalloc.sensitivity"), name, fn)
    prefix = unwritable(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["sensitivity", "--task", "GSM8K", "--range", "0:10:3", "--out", prefix]) == 2
    line = one_line(capsys.readouterr().err, "error: --out: cannot write ")
    assert prefix in line and line.endswith(reason.format(tmp=tmp_path)), line
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_sensitivity_out_that_names_a_folder(tmp_path, capsys):
    assert main(["sensitivity", "--param", "alpha", "--range", "1:2:2", "--out", f"{tmp_path}{os.sep}"]) == 2
    assert "a folder; give a file prefix" in one_line(capsys.readouterr().err, "error: --out = ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind, reason", [("proc", "No such file or directory"), ("folder", "it is a directory"),
                                          ("missing", f"no such directory {{tmp}}{os.sep}missing")])
def test_simulate_plot_that_cannot_be_written(tmp_path, monkeypatch, capsys, kind, reason):
    monkeypatch.setattr(importlib.import_module("jaxalloc.simulate"), "simulate", refuse("simulate")[0][1])
    path = unwritable(tmp_path, kind) + ".png"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["simulate", "--budgets", PAPER_INTEGER, "--plot", path]) == 2
    line = one_line(capsys.readouterr().err, f"error: --plot: cannot write {path}: ")
    assert line.endswith(reason.format(tmp=tmp_path)), line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_simulate_plot_says_what_it_wrote(tmp_path, capsys):
    png = tmp_path / "hist.png"
    args = ["simulate", "--budgets", PAPER_INTEGER, "--queries", "1000", "--replications", "2", "--plot", str(png)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"wrote {png}" and out.count("wrote") == 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png.unlink()
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
    assert report["plot"] == str(png) and png.is_file()


def test_an_os_error_that_escapes_a_command_is_one_line(monkeypatch, capsys):
    import jaxalloc.cli

    def fails(args):
        raise IsADirectoryError(21, "Is a directory", "/somewhere/summary.json")

    monkeypatch.setattr(jaxalloc.cli, "_cmd_verify", fails)
    assert main(["verify"]) == 2
    assert one_line(capsys.readouterr().err, "error:") == "error: /somewhere/summary.json: Is a directory"


@pytest.mark.parametrize("command, args, patch, expected", [
    ("simulate", ["--budgets", PAPER_INTEGER], "jaxalloc.simulate:simulate", "interrupted: nothing written"),
    ("verify", ["--points", "5"], "jaxalloc.verify:verify", "interrupted: nothing written"),
    # a command that keeps work it finished says what it kept by raising Interrupted; without it, just this
    ("sweep", ["--arrival-rate", "0.1:0.2:2", "--out", "{tmp}/s.parquet"], "jaxalloc.cli:_cmd_sweep", "interrupted"),
])
def test_ctrl_c_is_one_line_and_status_130(tmp_path, monkeypatch, capsys, command, args, patch, expected):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    module, name = patch.split(":")  # the package's names shadow some modules: jaxalloc.simulate is a function
    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    assert main([command, *(a.format(tmp=tmp_path) for a in args)]) == 130
    captured = capsys.readouterr()
    assert one_line(captured.err, "interrupted") == expected and captured.out == ""


def test_ctrl_c_says_what_long_work_kept(monkeypatch, capsys):
    import jaxalloc.cli
    from jaxalloc.errors import Interrupted

    def interrupted(args):
        raise Interrupted("3 of 8 blocks kept; run the same command to resume")

    monkeypatch.setattr(jaxalloc.cli, "_cmd_solve", interrupted)
    assert main(["solve"]) == 130
    assert capsys.readouterr().err == "interrupted: 3 of 8 blocks kept; run the same command to resume\n"


def test_ctrl_c_in_a_real_process():
    """SIGINT to a running `jaxalloc simulate` (entry(), the console script's function; a
    simulation of about a minute): status 130, one line, no traceback, promptly."""
    import signal
    import time

    argv = ["simulate", "--queries", "1000000", "--replications", "200"]
    # Python's SIGINT handler installed in the child: a test run started as a background job (`cmd &`)
    # has SIGINT ignored, the child inherits that, and Python then installs no handler of its own
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from jaxalloc.cli import entry; print('ready', file=sys.stderr, flush=True); "
            f"sys.argv[1:] = {argv!r}; entry()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
        assert proc.stderr.readline() == "ready\n"  # imports done: the signal lands inside main()
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err == "interrupted: nothing written\n" and out == ""


def test_a_reader_that_leaves_early_is_no_error():
    """`jaxalloc solve --json | head -c 1`: the reader has gone before the command writes;
    the command ends quietly, with status 141 (128 + SIGPIPE), as `seq 1000000 | head -1` does."""
    proc = subprocess.Popen([sys.executable, "-m", "jaxalloc.cli", "solve", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    proc.stdout.close()  # no reader left: every write to stdout fails with EPIPE
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141, err
    assert err == ""  # no traceback, no "BrokenPipeError", no "Exception ignored"


@pytest.mark.parametrize("args, needle", [
    (["solve", "--arrival-rate", "-0.1"], "arrival_rate = -0.1: must be > 0"),
    (["solve", "--arrival-rate", "-1e-3"], "arrival_rate = -0.001: must be > 0"),
    (["solve", "--alpha", "-inf"], "alpha = -inf"),
    (["sweep", "--arrival-rate", "-0.1:0.2:10", "--out", "{tmp}/s.parquet", "--no-figures"], "-0.1"),
])
def test_a_value_with_a_minus_sign_reaches_validation(tmp_path, capsys, args, needle):
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    line = one_line(capsys.readouterr().err, "error:")
    assert needle in line and "expected one argument" not in line, line
    if args[0] == "sweep":
        assert "arrival_rate" in line
    assert list(tmp_path.iterdir()) == []


def test_version(capsys):
    import re
    from pathlib import Path

    import jaxalloc

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^version = "(.+)"$', pyproject, re.MULTILINE).group(1) == jaxalloc.__version__
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"jaxalloc {jaxalloc.__version__}\n"


def test_plot_help_does_not_ask_for_an_extra(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--plot FILE.png also write a histogram of the system times (PNG)" in help_text
    assert "jaxalloc[plots]" not in help_text


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler, as in a foreground run, restored after the test: a test run
    started as a background job (`cmd &`) has SIGINT ignored, and then no interrupt reaches the
    main thread at all."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_lost_in_a_finaliser_is_raised_again(monkeypatch, python_sigint):
    """A KeyboardInterrupt raised where Python cannot raise (a __del__, as in JAX's
    garbage-collection callbacks) reaches the main thread instead of being ignored."""
    import gc

    from jaxalloc.cli import deliver_lost_interrupts

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    deliver_lost_interrupts()

    class Finaliser:
        def __del__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Finaliser()
        gc.collect()
        for _ in range(1000):  # the interrupt arrives at the next check of pending signals
            time.sleep(0.001)
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    deliver_lost_interrupts()

    class Broken:
        def __del__(self):
            raise RuntimeError("not an interrupt")

    Broken()
    gc.collect()
    assert len(seen) == 1 and isinstance(seen[0].exc_value, RuntimeError)  # other errors: the default hook
