"""`jaxalloc reproduce`: Table I against the solver and the paper, figures, report, bad input."""

import contextlib
import csv
import importlib
import io
import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxalloc as ja
from jaxalloc.cli import main
from jaxalloc.reproduce import (
    FIGURES,
    FILES,
    PAPER_TABLE_I,
    best_uniform_budget,
    printed_half_unit,
)

reproduce_module = importlib.import_module("jaxalloc.reproduce")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "calibration" / "example_measurements.csv"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One reduced run (in this process, so compilations are shared with the other tests)."""
    out = tmp_path_factory.mktemp("reproduce") / "results"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["reproduce", "--out", str(out), "--quick", "--queries", "1000", "--replications", "4",
                     "--measurements", str(EXAMPLE)])
    assert code == 0, stderr.getvalue()
    summary = json.loads((out / "summary.json").read_text())
    return out, summary, stdout.getvalue(), stderr.getvalue()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name}: not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_table_one_matches_the_solver_and_the_paper(run, paper):
    out, summary, _, _ = run
    with open(out / "table1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    solution = ja.solve(paper)
    budgets = np.asarray(solution.budgets)
    integer = np.asarray(ja.integer_budgets(paper, solution.budgets))
    assert [r["task"] for r in rows] == list(paper.names) == list(PAPER_TABLE_I)
    for k, r in enumerate(rows):
        printed = PAPER_TABLE_I[r["task"]]
        assert float(r["budget"]) == pytest.approx(budgets[k], abs=1e-9)
        assert int(r["integer_budget"]) == integer[k]
        assert float(r["paper_budget"]) == float(printed["budget"])
        assert float(r["diff_budget"]) == pytest.approx(budgets[k] - float(printed["budget"]), abs=1e-9)
        assert abs(float(r["diff_budget"])) <= 1.5  # the tolerance
        for field in ("A", "b", "D", "t0", "c"):  # the bundled profile is Table I as printed
            assert float(r[field]) == float(getattr(paper, field)[k]) == float(printed[field])
            assert float(r[f"diff_{field}"]) == 0.0
    diffs = {r["task"]: float(r["diff_budget"]) for r in rows}
    assert diffs["GSM8K"] == pytest.approx(0.39, abs=0.01) and diffs["BBH"] == pytest.approx(1.24, abs=0.01)
    assert summary["objective"] == pytest.approx(float(solution.objective), abs=1e-12)


@pytest.mark.slow
def test_report_says_why_table_one_differs(run):
    out, summary, _, _ = run
    rounding = summary["rounding"]
    # every difference lies inside what half a unit of each printed digit can do to ℓ*
    for r, reach in zip(summary["table1"], rounding["linear_range"]):
        assert abs(r["diff_budget"]) <= reach + 1e-9
    # and parameters that print as Table I reproduce the paper's ℓ* to its printed 0.1
    assert rounding["explained"] and rounding["max_move"] <= 1.0
    paper_budgets = [float(PAPER_TABLE_I[t]["budget"]) for t in summary["tasks"]]
    np.testing.assert_allclose(rounding["moved_budgets"], paper_budgets, atol=0.05)
    report = (out / "report.md").read_text()
    assert "Where this reproduction differs from the paper, and why" in report
    assert "Table I prints rounded parameters" in report and "explained by the rounding of Table I" in report
    assert "BBH +1.24" in report and "GSM8K +0.39" in report
    assert "SYNTHETIC" not in report and "**synthetic**" in report  # the example file's markers are labelled
    assert summary["fig2_markers"]["synthetic"] and "SYNTHETIC" in summary["fig2_markers"]["label"]
    assert "## Beyond the paper" in report and "Gain over the best uniform budget" in report


@pytest.mark.slow
def test_fig3_and_fig4_numbers(run, paper):
    _, summary, _, _ = run
    fig3 = {p["label"]: p for p in summary["fig3"]}
    expected = {"uniform ℓ = 0": 5.831646, "uniform ℓ = 100": 8.239312, "uniform ℓ = 500": 1.793888,
                "optimal ℓ* (continuous)": 9.754203, "optimal integer (eq. 39)": 9.754199}
    for label, value in expected.items():
        assert fig3[label]["objective"] == pytest.approx(value, abs=2e-6)
        ell = jnp.asarray(fig3[label]["budgets"])
        assert fig3[label]["objective"] == pytest.approx(float(ja.objective(paper, ell)), abs=1e-12)
        # simulated within 4 half-widths (the intervals are 95%, 4 replications of 1000 queries)
        assert abs(fig3[label]["simulated"] - value) <= 4 * fig3[label]["halfwidth"]
    fig4 = summary["fig4"]
    assert fig4["peak_budget"] == 341.0 and len(fig4["simulated"]) == 6
    assert all(p["lower_bound"] <= p["theory"] for p in fig4["simulated"])


@pytest.mark.slow
def test_load_study(run, paper):
    out, summary, _, _ = run
    load = summary["load"]
    lam = np.asarray(load["arrival_rate"])
    assert lam.size == 16 and lam[-1] == pytest.approx(0.95 * load["saturation_rate"])
    at = int(np.argmin(np.abs(lam - 0.1)))
    assert lam[at] == 0.1  # the paper's operating point is a row
    np.testing.assert_allclose(load["budgets"][at], np.asarray(ja.solve(paper).budgets), atol=1e-8)
    assert load["uniform_budget"][at] == 121
    # the best uniform budget, by brute force over integers, at a few rates
    for i in (0, at, 10):
        q = paper.replace(arrival_rate=lam[i])
        u = jnp.arange(0.0, 1001.0)
        values = jax.vmap(lambda v, q=q: ja.objective(q, jnp.full((6,), v)))(u)
        assert load["uniform_budget"][i] == int(jnp.argmax(values))
        assert int(best_uniform_budget(q)[1]) == int(jnp.argmax(values))
    budgets = np.asarray(load["budgets"])
    gain = np.asarray(load["gain"], float)
    assert np.all(gain[np.any(budgets > 0, axis=1)] > 0)
    loss = np.asarray(load["integer_loss"], float)
    gap = np.array([np.nan if v is None else v for v in load["bound_gap"]])
    ok = np.isfinite(gap)
    assert np.all(loss >= 0) and np.all(loss[ok] <= gap[ok])
    with open(out / "load.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == lam.size


@pytest.mark.slow
def test_figures_files_and_progress(run):
    out, summary, stdout, stderr = run
    for name in summary["files"]:
        assert (out / name).is_file(), name
    for name in FIGURES.values():
        path = out / name
        width, height = png_size(path)
        assert path.stat().st_size > 10_000, name
        assert width >= 600 and height >= 400, (name, width, height)
    progress = [line for line in stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 6 and progress[0].startswith("[1/6") and progress[-1].startswith("[6/6")
    assert stdout.startswith("jaxalloc reproduce:") and "explained by Table I's rounding: yes" in stdout
    assert summary["settings"] == {"queries": 1000, "replications": 4, "fig4_points": 6, "load_points": 16,
                                   "seed": 0, "quick": True}


@pytest.mark.slow
def test_accuracy_p99_frontier(run, paper):
    """Fig. 8: along α the optimum buys accuracy with latency, so accuracy increases with p99 (weakly:
    at small α no budget moves); the paper's α is a point, its p99 the exact one at ℓ*."""
    from jaxalloc.quantiles import system_time_quantiles

    out, summary, stdout, _ = run
    frontier = summary["frontier"]
    alpha, acc, p99 = (np.asarray(frontier[k], float) for k in ("alpha", "accuracy", "p99"))
    assert alpha.size == 31 and np.all(np.diff(alpha) > 0) and frontier["quantile_method"] == "exact"
    assert np.all(np.diff(acc) >= 0) and np.all(np.diff(p99) >= 0) and acc[-1] > acc[0] and p99[-1] > 10 * p99[0]
    assert np.all(np.diff(acc[np.argsort(p99, kind="stable")]) >= 0)
    at = int(np.flatnonzero(alpha == 30.0)[0])
    star = ja.solve(paper).budgets
    exact = jax.jit(lambda ell: system_time_quantiles(paper, ell, (0.99,), "exact").overall[0])(star)
    assert p99[at] == pytest.approx(float(exact), rel=1e-9)
    assert acc[at] == pytest.approx(float(ja.mean_accuracy(paper, star)), rel=1e-12)
    with open(out / "frontier_p99.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 31 and list(rows[0])[:5] == ["alpha", "accuracy", "p99", "mean_system_time", "utilization"]
    assert float(rows[at]["p99"]) == p99[at]
    assert FIGURES["frontier"] in (out / "report.md").read_text() and "Fig. 8   at α = 30" in stdout


def test_printed_half_unit():
    assert printed_half_unit("3.20e-3") == pytest.approx(5e-6)
    assert printed_half_unit("0.1380") == pytest.approx(5e-5)
    assert printed_half_unit("340.5") == pytest.approx(0.05)
    assert printed_half_unit("1.66e-1") == pytest.approx(5e-4)
    assert printed_half_unit("0") == 0.0


@pytest.mark.parametrize("args, message", [
    (["--out", "{file}"], "exists and is not a directory"),
    (["--out", "{new}", "--queries", "5"], "queries = 5"),
    (["--out", "{new}", "--replications", "1"], "replications = 1"),
    (["--out", "{new}", "--measurements", "{new}/missing.csv"], "file not found"),
    (["--out", "{new}", "--queries", "many"], "--queries"),
    (["--out", "{new}", "--measurements", "{file}"], "unknown format"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, args, message):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    new = tmp_path / "new"
    args = [a.format(file=target, new=new) for a in args]
    assert main(["reproduce", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], captured.err
    assert captured.out == ""
    assert target.read_text() == "not a folder" and not new.exists()  # nothing written


@pytest.mark.slow
def test_summary_lists_every_file_written(run):
    out, summary, stdout, _ = run
    last = stdout.strip().splitlines()[-1]
    head, _, listed = last.partition(": ")
    names = listed.split(", ")
    assert head == f"wrote {len(FILES)} files into {out}" and names == summary["files"] == FILES
    assert sorted(p.name for p in out.iterdir()) == FILES  # and nothing else


@pytest.mark.parametrize("where, message", [
    ("/proc/jaxalloc-test", "cannot write into it: "),  # cannot be created
    ("/proc", "cannot write into it: "),  # exists, but nothing can be written into it
    ("{tmp}/taken", "cannot write summary.json: a directory of that name is there"),
])
def test_out_that_cannot_be_written(tmp_path, monkeypatch, capsys, where, message):
    if where.startswith("/proc") and not Path("/proc").is_dir():
        pytest.skip("no /proc")
    (tmp_path / "taken" / "summary.json").mkdir(parents=True)
    monkeypatch.setattr(reproduce_module, "_run", lambda *a, **k: pytest.fail("work started before the check"))
    out = where.format(tmp=tmp_path)
    assert main(["reproduce", "--out", out, "--quick"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: out = '{out}': {message}") and captured.err.count("\n") == 1, captured.err
    assert captured.out == "" and sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["summary.json"]


def test_ctrl_c_says_which_files_were_written(tmp_path, monkeypatch, capsys):
    """Ctrl-C after Fig. 2: one line naming the one file written in this run (not load.csv,
    left by an earlier run), status 130. Step 1's analysis and the simulation are replaced,
    to stop there quickly."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce_module, "rounding_analysis", lambda problem, budgets: {})
    monkeypatch.setattr(importlib.import_module("jaxalloc.sensitivity"), "simulated_objectives", interrupted)
    out = tmp_path / "results"
    out.mkdir()
    (out / "load.csv").write_text("an earlier run")
    assert main(["reproduce", "--out", str(out), "--quick"]) == 130
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.splitlines()[-1] == (
        f"interrupted: 1 of {len(FILES)} files written to {out} ({FIGURES['fig2']}); "
        "the same command writes them all again")
    assert sorted(p.name for p in out.iterdir()) == sorted([FIGURES["fig2"], "load.csv"])
