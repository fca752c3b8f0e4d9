"""Sweeps: rows equal single solves, statuses instead of NaN, Parquet output,
resume after SIGKILL, sharding over devices and processes, bad grids."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

import jaxalloc as ja
from jaxalloc.cli import main
from jaxalloc.errors import Interrupted
from jaxalloc.quantiles import system_time_quantiles
from jaxalloc.solve import solve_batch, solve_point
from jaxalloc.solvers.integer import integer_budgets
from jaxalloc.sweep import QUANTILE_LEVELS, SweepError, parse_range, plan_sweep, sweep

ENV = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")


def critical_rate(problem):
    """λ above which the queue is unstable even at ℓ = 0 (eq. 4)."""
    return 1.0 / float(np.sum(np.asarray(problem.prob) * np.asarray(problem.t0)))


@pytest.fixture(scope="module")
def grid(paper):
    """A small λ × α grid whose last λ is unstable at ℓ = 0."""
    lam = np.array([0.005, 0.05, 0.1, 0.3, 1.5 * critical_rate(paper)])
    alpha = np.geomspace(1.0, 1000.0, 7)
    return {"arrival_rate": lam, "alpha": alpha}


@pytest.fixture(scope="module")
def small(paper, grid):
    return sweep(paper, grid, block=16)


def test_parse_range():
    np.testing.assert_allclose(parse_range("0.01:0.2:3"), [0.01, 0.105, 0.2])
    np.testing.assert_allclose(parse_range("1:100:3:log"), [1.0, 10.0, 100.0])
    assert parse_range("5:5:1").tolist() == [5.0]
    for bad, words in [("0.2:0.01:10", "STOP"), ("0.01:0.2:0", "NUM = 0"), ("a:b:3", "expected START:STOP:NUM"),
                       ("0.1:0.2", "expected"), ("0:10:5:log", "log axis"), ("1:inf:3", "finite")]:
        with pytest.raises(SweepError, match=words):
            parse_range(bad, "--alpha")


def test_rows_equal_single_solves(paper, grid, small):
    t = small.to_table()
    assert t.num_rows == 35 and small.complete and small.plan.shape == (5, 7)
    assert t.column_names[:2] == ["arrival_rate", "alpha"]
    lam, alpha = t["arrival_rate"].to_numpy(), t["alpha"].to_numpy()
    np.testing.assert_array_equal(lam, np.repeat(grid["arrival_rate"], 7))  # C order: last axis fastest
    np.testing.assert_array_equal(alpha, np.tile(grid["alpha"], 5))
    status = np.asarray(t["status"].to_pylist())
    assert (status[:28] == "converged").all() and (status[28:] == "unstable_queue").all()
    assert small.status_counts == {"converged": 28, "unstable_queue": 7}
    names = paper.names
    budgets = np.stack([t[f"budget_{n}"].to_numpy() for n in names], axis=1)
    ints = np.stack([t[f"integer_budget_{n}"].to_numpy() for n in names], axis=1)
    for col in ("objective", "accuracy", "mean_system_time", "utilization", "kkt_residual"):
        assert not np.isnan(t[col].to_numpy()).any(), col
    assert not np.isnan(budgets).any()
    for i in range(0, 28, 3):  # sampled stable points against a single solve
        p = paper.replace(arrival_rate=lam[i], alpha=alpha[i])
        sol = ja.solve(p)
        np.testing.assert_allclose(budgets[i], np.asarray(sol.budgets), rtol=1e-9, atol=1e-8)
        assert t["objective"][i].as_py() == pytest.approx(float(sol.objective), rel=1e-12)
        np.testing.assert_array_equal(ints[i], np.asarray(integer_budgets(p, sol.budgets, "enumerate")))
        m1, m2 = ja.moments(p, sol.budgets)
        assert t["mean_system_time"][i].as_py() == pytest.approx(float(ja.mean_system_time(p.arrival_rate, m1, m2)), rel=1e-12)
        assert t["utilization"][i].as_py() == pytest.approx(float(lam[i] * m1), rel=1e-12)
        assert t["accuracy"][i].as_py() == pytest.approx(float(ja.mean_accuracy(p, sol.budgets)), rel=1e-12)
        assert t["kkt_residual"][i].as_py() <= 1e-8
    unstable = slice(28, 35)
    assert (budgets[unstable] == 0).all() and (ints[unstable] == 0).all()
    assert np.isneginf(t["objective"].to_numpy()[unstable]).all()
    assert np.isposinf(t["mean_system_time"].to_numpy()[unstable]).all()


def overall_quantiles(method):
    """The sweep's p95 and p99 at a point, from :func:`system_time_quantiles` (compiled once for all points)."""
    return eqx.filter_jit(lambda problem, ell: system_time_quantiles(problem, ell, QUANTILE_LEVELS, method).overall)


def test_quantile_columns_equal_system_time_quantiles(paper, grid, small):
    """p95 and p99 (default: the Lundberg asymptote for one FIFO server) are the overall system-time
    quantiles at each row's budgets; +inf where the queue is unstable, like mean_system_time."""
    t = small.to_table()
    assert small.plan.quantiles == "lundberg" and small.summary()["quantile_method"] == "lundberg"
    at = t.column_names.index("mean_system_time")
    assert t.column_names[at:at + 4] == ["mean_system_time", "p95", "p99", "utilization"]
    quantiles = overall_quantiles("lundberg")
    lam, alpha = t["arrival_rate"].to_numpy(), t["alpha"].to_numpy()
    budgets = np.stack([t[f"budget_{n}"].to_numpy() for n in paper.names], axis=1)
    p95, p99 = t["p95"].to_numpy(), t["p99"].to_numpy()
    for i in range(28):
        p = paper.replace(arrival_rate=jnp.asarray(lam[i]), alpha=jnp.asarray(alpha[i]))
        want = np.asarray(quantiles(p, jnp.asarray(budgets[i])))
        np.testing.assert_allclose([p95[i], p99[i]], want, rtol=1e-9, err_msg=f"row {i}")
        assert p95[i] <= p99[i] and np.isfinite(p99[i])
    assert np.isposinf(p95[28:]).all() and np.isposinf(p99[28:]).all()  # unstable_queue rows


def test_quantile_method_is_part_of_the_fingerprint(paper):
    axes = {"arrival_rate": [0.05, 0.1]}
    prints = {q: plan_sweep(paper, axes, quantiles=q).fingerprint() for q in ("auto", "lundberg", "exact", "none")}
    assert prints["auto"] == prints["lundberg"] and len(set(prints.values())) == 3
    assert plan_sweep(paper, axes, quantiles="none").column_names() == [
        c for c in plan_sweep(paper, axes).column_names() if c not in ("p95", "p99")]
    with pytest.raises(SweepError, match="quantiles = 'median': expected one of auto, lundberg, exact, none"):
        plan_sweep(paper, axes, quantiles="median")


def test_per_task_axes_match_solves(paper):
    b_values, p_values = np.array([1e-3, 1e-2]), np.array([0.05, 0.4, 0.8])
    res = sweep(paper, {"b:GSM8K": b_values, "prob:AIME": p_values, "alpha": [30.0, 300.0]}, block=8)
    t = res.to_table()
    assert t.num_rows == 12 and res.status_counts == {"converged": 12}
    k_gsm, k_aime = paper.names.index("GSM8K"), paper.names.index("AIME")
    for i in range(12):
        b = np.asarray(paper.b).copy()
        b[k_gsm] = t["b:GSM8K"][i].as_py()
        prob = np.asarray(paper.prob).copy()
        share = t["prob:AIME"][i].as_py()
        prob = prob * (1 - share) / (1 - prob[k_aime])
        prob[k_aime] = share
        p = paper.replace(b=b, prob=prob, alpha=t["alpha"][i].as_py())
        assert float(np.sum(prob)) == pytest.approx(1.0, abs=1e-12)
        sol = ja.solve(p)
        got = np.array([t[f"budget_{n}"][i].as_py() for n in paper.names])
        np.testing.assert_allclose(got, np.asarray(sol.budgets), rtol=1e-9, atol=1e-8)


def test_solve_batch_equals_vmapped_solve_point(paper):
    """The batch (slow points compacted, warm starts between every 16th point) gives
    vmap's answers, also for points in random order, where warm starts are poor."""
    rng = np.random.default_rng(1)
    fields = {"arrival_rate": jnp.asarray(rng.uniform(0.005, 0.45, 512)),
                  "alpha": jnp.asarray(np.exp(rng.uniform(0, np.log(1000), 512)))}
    got = jax.jit(lambda f: solve_batch(paper, f))(fields)
    ref = jax.jit(jax.vmap(lambda f: solve_point(paper.replace(**f))))(fields)
    np.testing.assert_array_equal(np.asarray(got.status), np.asarray(ref.status))
    np.testing.assert_allclose(np.asarray(got.budgets), np.asarray(ref.budgets), rtol=1e-9, atol=1e-8)
    assert np.asarray(got.iterations).max() > 6  # some points did need the compacted levels


def test_float32_accuracy(paper, grid, small):
    """float32 sweeps: finite everywhere, budgets within 0.5 token of float64
    (measured: 0.05 token at most on this grid), same statuses."""
    f32 = sweep(paper, grid, dtype=jnp.float32, block=16).to_table()
    t = small.to_table()
    assert f32["budget_GSM8K"].type == "float"
    for n in paper.names:
        np.testing.assert_allclose(f32[f"budget_{n}"].to_numpy(), t[f"budget_{n}"].to_numpy(), atol=0.5)
    assert f32["status"].to_pylist() == t["status"].to_pylist()


def test_parquet_output_equals_memory_and_resume_skips_done(tmp_path, paper, grid, small):
    out = tmp_path / "s.parquet"
    seen = []
    res = sweep(paper, grid, out=out, block=16, on_block=seen.append)
    assert res.complete and res.table is None and out.exists() and not (tmp_path / "s.parquet.parts").exists()
    assert seen == [0, 1, 2]  # 35 points in blocks of 16
    t = pq.read_table(out)
    assert t.equals(small.to_table().replace_schema_metadata(t.schema.metadata))
    assert json.loads(t.schema.metadata[b"jaxalloc.sweep"])["axes"] == ["arrival_rate", "alpha"]
    assert pq.ParquetFile(out).num_row_groups == 3
    np.testing.assert_array_equal(res.grid("budget_GSM8K"), t["budget_GSM8K"].to_numpy().reshape(5, 7))
    again = sweep(paper, grid, out=out, block=16, on_block=seen.append)  # already complete: nothing solved
    assert again.computed_points == 0 and again.status_counts == res.status_counts and seen == [0, 1, 2]
    fresh = sweep(paper, grid, out=out, block=16, resume=False)
    assert fresh.computed_points == 35 and pq.read_table(out).equals(t)


def test_plan_rejects_bad_axes(paper):
    with pytest.raises(SweepError, match="arrival_rate.*-0.1"):
        plan_sweep(paper, {"arrival_rate": [-0.1, 0.2]})
    with pytest.raises(SweepError, match="unknown task 'nope'"):
        plan_sweep(paper, {"b:nope": [0.1]})
    with pytest.raises(SweepError, match="'gamma'"):
        plan_sweep(paper, {"gamma": [0.1]})
    with pytest.raises(SweepError, match="A:GSM8K.*1.5"):
        plan_sweep(paper, {"A:GSM8K": [0.5, 1.5]})
    with pytest.raises(SweepError, match="prob = 1"):
        plan_sweep(paper, {"prob:AIME": [0.5, 1.0]})
    with pytest.raises(SweepError, match="not a finite number"):
        plan_sweep(paper, {"alpha": [1.0, np.nan]})


def test_default_blocks_are_equal_bounded_and_barely_padded(paper):
    from problems import random_problem

    from jaxalloc.sweep import BLOCK_ELEMENTS, DEFAULT_BLOCK

    wide = random_problem(0, 1024, 0.3, 1.0)
    for problem, axes in ((paper, {"arrival_rate": "0.01:0.2:1000", "alpha": "1:100:1000"}),
                          (paper, {"arrival_rate": "0.01:0.2:7", "alpha": "1:100:11"}),
                          (wide, {"arrival_rate": "0.001:0.01:100", "alpha": "1:100:100"})):
        plan = plan_sweep(problem, axes, devices=1)
        n = problem.num_tasks
        assert plan.block <= DEFAULT_BLOCK and plan.block * n <= BLOCK_ELEMENTS
        assert plan.block % plan.chunk == 0
        padding = plan.num_blocks * plan.block - plan.size
        assert 0 <= padding <= max(0.02 * plan.size, 128 * plan.num_blocks), (plan.block, plan.chunk, padding)
    assert plan_sweep(paper, {"alpha": "1:100:1000000"}, devices=1).num_blocks == 8  # 10^6 / 2^17 rounded up


@pytest.mark.parametrize("args, words", [
    (["--arrival-rate", "0.2:0.01:10"], "--arrival-rate = '0.2:0.01:10': STOP"),
    (["--arrival-rate", "0.01:0.2:0"], "NUM = 0"),
    (["--alpha", "x:y:z"], "--alpha = 'x:y:z': expected START:STOP:NUM"),
    (["--arrival-rate", "0:0.2:5"], "arrival_rate = 0: must be > 0"),
    (["--arrival-rate=-1:0.2:5"], "value -1 is invalid"),
    (["--arrival-rate", "-1:0.2:5"], "value -1 is invalid"),  # a value may start with a minus sign
    (["--axis", "b:nope=0.1:0.2:3"], "unknown task 'nope'"),
    (["--axis", "b:GSM8K"], "expected FIELD:TASK=START:STOP:NUM"),
    ([], "give at least one axis"),
])
def test_cli_bad_grids(tmp_path, capsys, args, words):
    out = tmp_path / "x.parquet"
    code = main(["sweep", *args, "--out", str(out), "--no-figures"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_sweep_json_and_figures(tmp_path):
    out = tmp_path / "grid.parquet"
    proc = subprocess.run([sys.executable, "-m", "jaxalloc.cli", "sweep", "--arrival-rate", "0.01:0.3:6",
                           "--alpha", "1:1000:5:log", "--out", str(out), "--json"],
                          check=False, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["points"] == 30 and data["status_counts"] == {"converged": 30} and data["complete"]
    assert pq.read_table(out).num_rows == 30
    assert data["figures"] == [str(tmp_path / "grid.budgets.png"), str(tmp_path / "grid.frontier.png")]
    for fig in data["figures"]:
        head = Path(fig).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(fig) > 10_000
    # three axes: the file, and a note instead of figures (no error after the work is done)
    three = subprocess.run([sys.executable, "-m", "jaxalloc.cli", "sweep", "--arrival-rate", "0.01:0.3:2",
                            "--alpha", "1:10:2", "--axis", "b:GSM8K=1e-3:1e-2:2", "--out", str(tmp_path / "t.parquet"),
                            "--json"], check=False, capture_output=True, text=True, env=ENV, timeout=300)
    assert three.returncode == 0, three.stderr
    assert json.loads(three.stdout)["figures"] == [] and "figures need 1 or 2 axes" in three.stderr
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 8


# ---------------------------------------------------------------- interrupts, damaged parts, several processes


def _parts(out):
    """Names of the block parts next to `out`."""
    return sorted(p.name for p in out.with_name(out.name + ".parts").glob("block-*.arrow"))


@pytest.fixture(scope="module")
def whole(tmp_path_factory, paper, grid):
    """The bytes of an uninterrupted one-process sweep of `grid` in 3 blocks (16, 16, 3 points)."""
    out = tmp_path_factory.mktemp("whole") / "whole.parquet"
    sweep(paper, grid, out=out, block=16)
    return out.read_bytes()


def _ctrl_c_at(monkeypatch, block):
    """Ctrl-C (a KeyboardInterrupt in the main thread) when block `block` (of 16 points) starts computing."""
    module = sys.modules["jaxalloc.sweep"]
    compute = module._compute_block_jit

    def interrupted(*args):
        if int(args[2]) == 16 * block:
            raise KeyboardInterrupt
        return compute(*args)

    monkeypatch.setattr(module, "_compute_block_jit", interrupted)


def test_ctrl_c_in_on_block_keeps_finished_blocks_and_resumes(tmp_path, paper, grid, whole):
    out = tmp_path / "s.parquet"

    def stop(i):
        if i == 0:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"^\d of 3 blocks kept; run the same command to resume$") as info:
        sweep(paper, grid, out=out, block=16, on_block=stop)
    kept = _parts(out)
    assert int(str(info.value).split()[0]) == len(kept) and "block-000000.arrow" in kept
    assert not out.exists() and not (tmp_path / "s.parquet.tmp").exists()
    assert not list((tmp_path / "s.parquet.parts").glob("*.tmp*"))
    seen = []
    res = sweep(paper, grid, out=out, block=16, on_block=seen.append)
    assert seen == [i for i in range(3) if f"block-{i:06d}.arrow" not in kept]  # only the rest
    assert res.computed_points == res.plan.rows(seen) and res.complete
    assert out.read_bytes() == whole


def test_ctrl_c_in_main_thread_writes_the_blocks_already_computed(tmp_path, paper, grid, whole, monkeypatch):
    out = tmp_path / "s.parquet"
    _ctrl_c_at(monkeypatch, 2)
    with pytest.raises(Interrupted, match=r"^2 of 3 blocks kept; run the same command to resume$"):
        sweep(paper, grid, out=out, block=16)
    assert _parts(out) == ["block-000000.arrow", "block-000001.arrow"]  # both queued for the writer: written
    assert not (tmp_path / "s.parquet.tmp").exists()
    monkeypatch.undo()
    seen = []
    assert sweep(paper, grid, out=out, block=16, on_block=seen.append).computed_points == 3 and seen == [2]
    assert out.read_bytes() == whole


@pytest.mark.parametrize("damage", ["truncated", "short", "other_sweep", "not_arrow"])
def test_damaged_part_is_computed_again(tmp_path, paper, grid, whole, monkeypatch, damage):
    """A part that does not read back whole, with this sweep's fingerprint and run and
    the block's row count, is not trusted: the block is computed again."""
    import pyarrow as pa

    out = tmp_path / "s.parquet"
    _ctrl_c_at(monkeypatch, 2)
    with pytest.raises(Interrupted):
        sweep(paper, grid, out=out, block=16)
    monkeypatch.undo()
    part = tmp_path / "s.parquet.parts" / "block-000001.arrow"
    table = pa.ipc.open_file(pa.BufferReader(part.read_bytes())).read_all()
    if damage == "truncated":
        part.write_bytes(part.read_bytes()[:-200])
    elif damage == "not_arrow":
        part.write_text("not an Arrow file")
    else:
        fingerprint = plan_sweep(paper, grid, block=16).fingerprint().encode()
        meta = {k: v.replace(fingerprint, b"0" * 64) if damage == "other_sweep" else v
                for k, v in table.schema.metadata.items()}
        table = table.slice(0, 5 if damage == "short" else 16).replace_schema_metadata(meta)
        with pa.OSFile(str(part), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    seen = []
    res = sweep(paper, grid, out=out, block=16, on_block=seen.append)
    assert seen == [1, 2] and res.computed_points == 19
    assert out.read_bytes() == whole


def test_two_processes_ignore_a_stale_sweep_in_the_parts_folder(tmp_path, paper, grid, small, whole, monkeypatch):
    """Leftovers of another sweep at the same path (its sweep.json and its block 1):
    process 1 waits for process 0 to replace them instead of trusting block 1; process
    0 discards them, keeps its own blocks, and names the block it waits for."""
    import pyarrow as pa

    monkeypatch.setenv("JAXALLOC_SWEEP_WAIT", "0.5")
    out, parts = tmp_path / "s.parquet", tmp_path / "s.parquet.parts"
    parts.mkdir()
    (parts / "sweep.json").write_text(json.dumps({"fingerprint": "0" * 64, "blocks": 3}))
    stale = small.to_table().slice(0, 16)  # rows of another block: wrong if trusted
    with pa.OSFile(str(parts / "block-000001.arrow"), "wb") as sink, pa.ipc.new_file(sink, stale.schema) as w:
        w.write_table(stale)
    seen = {0: [], 1: []}
    run = lambda p: sweep(paper, grid, out=out, block=16, process_index=p, process_count=2, on_block=seen[p].append)

    with pytest.raises(SweepError, match="waiting for process 0 to start this sweep.*of a different sweep"):
        run(1)
    assert seen[1] == [] and _parts(out) == ["block-000001.arrow"]
    with pytest.raises(SweepError, match=r"waiting for block 1 \(process 1\) in .*filesystem they all share"):
        run(0)
    assert seen[0] == [0, 2] and _parts(out) == ["block-000000.arrow", "block-000002.arrow"]
    one = run(1)
    assert seen[1] == [1] and one.computed_points == 16 and not one.complete
    zero = run(0)
    assert seen[0] == [0, 2] and zero.computed_points == 0 and zero.complete  # its parts were kept
    assert out.read_bytes() == whole and not parts.exists()


def test_two_processes_start_over_without_resume(tmp_path, paper, grid, whole, monkeypatch):
    """resume=False with every part of the same sweep left over: process 1, started
    first, sees the previous run's sweep.json. It must not write into that run (process
    0 discards it) but wait until process 0 has started the new run and admitted it;
    then both compute their blocks again and process 0 keeps process 1's."""
    monkeypatch.setenv("JAXALLOC_SWEEP_WAIT", "0.5")
    out, parts = tmp_path / "s.parquet", tmp_path / "s.parquet.parts"
    run = lambda p, resume, seen: sweep(paper, grid, out=out, block=16, process_index=p, process_count=2,
                                        resume=resume, on_block=seen.append)
    with pytest.raises(SweepError, match="block 1"):  # a run that did everything but write the file
        run(0, True, [])
    run(1, True, [])
    assert len(_parts(out)) == 3
    monkeypatch.setenv("JAXALLOC_SWEEP_WAIT", "120")
    seen0, seen1, errors = [], [], []

    def process_1():
        try:
            run(1, False, seen1)
        except BaseException as err:  # noqa: BLE001 - asserted in the main thread
            errors.append(err)

    thread = threading.Thread(target=process_1)
    thread.start()
    deadline = time.monotonic() + 60
    while not (parts / "join-1.json").exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (parts / "join-1.json").exists() and seen1 == []  # waiting for process 0 to admit it
    res = run(0, False, seen0)
    thread.join(120)
    assert not errors and seen1 == [1] and seen0 == [0, 2]
    assert res.complete and res.computed_points == 19 and res.discarded_blocks == 0
    assert out.read_bytes() == whole and not parts.exists()


def test_a_process_started_again_without_resume_is_admitted_again(tmp_path, paper, grid, monkeypatch):
    """Process 1, admitted to process 0's run (resume off), stopped and started again with
    the same arguments while process 0 still runs: its new request replaces the stopped
    call's join-1.json and process 0 admits it, instead of leaving it waiting."""
    from jaxalloc.sweep import _admitting, _PartStore

    monkeypatch.setenv("JAXALLOC_SWEEP_WAIT", "5")
    out = tmp_path / "s.parquet"
    plan = plan_sweep(paper, grid, block=16)
    store, _ = _PartStore.create(out, plan, resume=False)
    with _admitting(store):
        first = _PartStore.join(out, plan, False, 1)  # admitted; then the process stops
        again = _PartStore.join(out, plan, False, 1)  # the same process, started again
    assert again.spec["run"] == first.spec["run"] == store.spec["run"]
    assert again.spec["joined"]["1"] != first.spec["joined"]["1"]


# ---------------------------------------------------------------- output problems, reruns

CLI_GRID = ["sweep", "--arrival-rate", "0.005:0.3:5", "--alpha", "1:1000:7:log", "--block", "16", "--no-figures"]


def test_cli_rerun_says_already_complete(tmp_path, capsys):
    out = tmp_path / "g.parquet"
    assert main([*CLI_GRID, "--out", str(out)]) == 0
    assert "solved 35 points" in capsys.readouterr().out
    assert main([*CLI_GRID, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"  already complete: 35 points in {out}\n" in text and "solved" not in text and "wrote" not in text
    assert main([*CLI_GRID, "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["already_complete"] and data["complete"] and data["computed_points"] == 0
    assert sum(data["status_counts"].values()) == 35


def test_a_different_sweep_discards_old_parts_and_file_with_a_note(tmp_path, paper, grid, capsys, monkeypatch):
    out = tmp_path / "g.parquet"
    _ctrl_c_at(monkeypatch, 2)
    with pytest.raises(Interrupted):
        sweep(paper, grid, out=out, block=16)
    monkeypatch.undo()
    assert main([*CLI_GRID, "--out", str(out), "--json"]) == 0  # another grid: the 2 parts are of no use
    captured = capsys.readouterr()
    assert f"note: discarded 2 finished blocks of a different sweep at {out}.parts\n" in captured.err
    assert json.loads(captured.out)["discarded_blocks"] == 2 and "replaced" not in captured.err
    res = sweep(paper, grid, out=out, block=16)
    assert res.replaced_file and res.discarded_blocks == 0 and res.computed_points == 35
    assert main([*CLI_GRID, "--out", str(out)]) == 0
    assert f"note: replaced {out}, which held a different sweep\n" in capsys.readouterr().err
    assert main([*CLI_GRID, "--out", str(out), "--no-resume"]) == 0  # the same sweep again: no news
    assert "note" not in capsys.readouterr().err


def _no_compute(monkeypatch):
    def compute(*args):
        raise AssertionError("computed a block")

    monkeypatch.setattr(sys.modules["jaxalloc.sweep"], "_compute_block_jit", compute)


def test_unwritable_out_fails_before_any_work(tmp_path, paper, grid, capsys, monkeypatch):
    _no_compute(monkeypatch)
    folder = tmp_path / "d.parquet"
    folder.mkdir()
    for out, reason in [("/proc/x.parquet", "cannot write it: No such file or directory"),
                        (str(folder), "is a directory")]:
        with pytest.raises(SweepError, match=f"^out = '{out}': {reason}$"):
            sweep(paper, grid, out=out, block=16)
        assert main([*CLI_GRID, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err == f"error: out = '{out}': {reason}\n"
    assert list(tmp_path.iterdir()) == [folder] and list(folder.iterdir()) == []


def test_read_only_folder_fails_before_any_work(tmp_path, paper, grid, monkeypatch):
    """The folder refuses new files (as a read-only folder does for a user other than root)."""
    _no_compute(monkeypatch)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("jaxalloc.files.tempfile.mkstemp", refuse)
    with pytest.raises(SweepError, match="cannot write it: Permission denied"):
        sweep(paper, grid, out=tmp_path / "x.parquet", block=16)
    assert list(tmp_path.iterdir()) == []


def test_write_failure_is_a_sweep_error(tmp_path, paper, grid, monkeypatch):
    def full(self, i, table):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sys.modules["jaxalloc.sweep"]._PartStore, "write", full)
    out = tmp_path / "s.parquet"
    with pytest.raises(SweepError, match=f"^out = '{out}': writing failed: No space left on device$"):
        sweep(paper, grid, out=out, block=16)
    assert not out.exists() and not (tmp_path / "s.parquet.tmp").exists()


# ---------------------------------------------------------------- separate processes

SCRIPT = textwrap.dedent("""
    import os, sys, signal
    import jax
    jax.config.update("jax_enable_x64", True)
    import jaxalloc as ja
    from jaxalloc.sweep import sweep
    out, kill_at = sys.argv[1], int(sys.argv[2])
    def on_block(i):
        if i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    res = sweep(ja.paper_profile(), {"arrival_rate": "0.005:0.5:24", "alpha": "1:1000:25:log"},
                out=out, block=40, on_block=on_block)
    print(res.computed_points)
""")


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_file(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    run = lambda out, kill: subprocess.run([sys.executable, str(script), str(out), str(kill)],
                                           check=False, capture_output=True, text=True, env=ENV, timeout=300)
    whole = run(tmp_path / "whole.parquet", -1)
    assert whole.returncode == 0, whole.stderr
    assert int(whole.stdout) == 600
    killed = run(tmp_path / "cut.parquet", 6)
    assert killed.returncode == -signal.SIGKILL
    parts = tmp_path / "cut.parquet.parts"
    done = sorted(p.name for p in parts.glob("block-*.arrow"))
    assert len(done) >= 7 and not (tmp_path / "cut.parquet").exists()
    resumed = run(tmp_path / "cut.parquet", -1)
    assert resumed.returncode == 0, resumed.stderr
    assert int(resumed.stdout) == 600 - 40 * len(done)  # only the missing blocks
    assert (tmp_path / "cut.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert not parts.exists()


DEVICES = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import jaxalloc as ja
    from jaxalloc.sweep import sweep
    assert jax.local_device_count() == 4
    axes = {"arrival_rate": "0.005:0.6:13", "alpha": "1:1000:11:log"}
    # the same chunks of 32 points (warm starts between points 0 and 16 of each) either way
    four = sweep(ja.paper_profile(), axes, devices=4, block=128, chunk=32).to_table()
    one = sweep(ja.paper_profile(), axes, devices=1, block=128, chunk=32).to_table()
    worst = max(float(np.max(np.abs(four[c].to_numpy() - one[c].to_numpy())))
                for c in four.column_names if c.startswith("budget_"))
    assert four["status"].to_pylist() == one["status"].to_pylist()
    print(worst)
""")


@pytest.mark.slow
def test_four_devices_equal_one(tmp_path):
    script = tmp_path / "dev.py"
    script.write_text(DEVICES)
    proc = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True,
                          env={k: v for k, v in ENV.items() if k != "XLA_FLAGS"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) <= 1e-12


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["sweep", "--arrival-rate", "0.005:0.6:30", "--alpha", "1:1000:20:log", "--block", "100",
              "--no-figures", "--json"]
    cmd = lambda out, *extra: [sys.executable, "-m", "jaxalloc.cli", *common, "--out", str(out), *extra]
    procs = [subprocess.Popen(cmd(tmp_path / "two.parquet", "--coordinator", f"127.0.0.1:{port}",
                                  "--num-processes", "2", "--process-id", str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for i in (1, 0)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    shares = sorted(json.loads(o[0])["computed_points"] for o in outs)
    assert shares == [300, 300]  # 6 blocks of 100, round robin
    one = subprocess.run(cmd(tmp_path / "one.parquet"), check=False, capture_output=True, text=True, env=ENV, timeout=300)
    assert one.returncode == 0, one.stderr
    assert (tmp_path / "two.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()


def test_batched_response_jacobian_equals_autodiff(paper):
    """The hand-written Jacobian of the task-major Newton kernel against jacfwd
    of moments(best_response(m)) (the autodiff definition), with some budgets
    clipped at 0 and at ℓ_max."""
    from jaxalloc.kkt import best_response
    from jaxalloc.solvers.newton_batched import prepare, response

    rng = np.random.default_rng(3)
    n = 64
    fields = {"arrival_rate": jnp.asarray(rng.uniform(0.01, 0.4, n)),
                  "alpha": jnp.asarray(np.exp(rng.uniform(0, np.log(3000), n))),
                  "max_tokens": jnp.asarray(rng.choice([400.0, 32768.0], n))}
    m0 = np.stack(ja.moments(paper, jnp.zeros(6)))
    m = jnp.asarray(m0[:, None] * rng.uniform(1.0, 3.0, (2, n)))
    m = m.at[1].set(jnp.maximum(m[1], m[0] ** 2 * 1.01))
    ell, F, dF = response(prepare(paper, fields), tuple(m))
    F, dF = jnp.stack(F), jnp.stack([jnp.stack(row) for row in dF])

    def F_point(f, mm):
        p = paper.replace(**f)
        return jnp.stack(ja.moments(p, best_response(p, mm[0], mm[1])))

    ref_ell = jax.vmap(lambda f, mm: best_response(paper.replace(**f), mm[0], mm[1]))(fields, m.T)
    ref_F = jax.vmap(F_point)(fields, m.T)
    ref_dF = jax.vmap(jax.jacfwd(F_point, argnums=1))(fields, m.T)
    clipped = np.asarray((ref_ell == 0) | (ref_ell == fields["max_tokens"][:, None]))
    assert clipped.any() and (~clipped).any()
    np.testing.assert_allclose(np.asarray(ell.T), np.asarray(ref_ell), rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(np.asarray(F.T), np.asarray(ref_F), rtol=1e-12)
    np.testing.assert_allclose(np.moveaxis(np.asarray(dF), -1, 0), np.asarray(ref_dF), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("size", [64, 512])
def test_batched_newton_takes_the_same_steps_as_per_point(paper, size):
    """Same trial points, same acceptance, same stopping: the task-major batch
    (with and without compaction) converges everywhere on its own (no safeguard)
    in exactly the per-point solver's number of steps."""
    from jaxalloc.solvers.newton_batched import newton_batch

    rng = np.random.default_rng(size)
    fields = {"arrival_rate": jnp.asarray(rng.uniform(0.005, 0.45, size)),
                  "alpha": jnp.asarray(np.exp(rng.uniform(0, np.log(1000), size)))}
    ell, steps, done = jax.jit(lambda f: newton_batch(paper, f))(fields)
    solver = ja.AggregateNewton()

    def per_point(f):
        p = paper.replace(**f)
        state = solver.advance(p, solver.init(p))
        return state.steps, *solver.finalize(p, state)

    ref_steps, ref_ell, ref_done = jax.jit(jax.vmap(per_point))(fields)
    assert np.asarray(done).all() and np.asarray(ref_done).all()
    np.testing.assert_array_equal(np.asarray(steps), np.asarray(ref_steps))
    np.testing.assert_allclose(np.asarray(ell), np.asarray(ref_ell), rtol=1e-10, atol=1e-8)


def test_warm_starts_on_a_grid(paper):
    """Points in grid order started between every 16th point's solution: the same
    budgets as cold starts everywhere (both converged to 1e-11 in the moments),
    in fewer steps (measured: mean 2.11 against 3.63 per point)."""
    from jaxalloc.solvers.newton_batched import newton_batch

    lam, alpha = np.meshgrid(np.linspace(0.005, 0.4, 8), np.geomspace(1, 1000, 256), indexing="ij")
    fields = {"arrival_rate": jnp.asarray(lam.ravel()), "alpha": jnp.asarray(alpha.ravel())}
    run = jax.jit(lambda f, stride: newton_batch(paper, f, stride=stride), static_argnums=1)
    cold, warm = run(fields, 1), run(fields, 16)
    assert np.asarray(cold[2]).all() and np.asarray(warm[2]).all()
    np.testing.assert_allclose(np.asarray(warm[0]), np.asarray(cold[0]), rtol=1e-9, atol=1e-8)
    assert np.asarray(warm[1]).mean() < 0.75 * np.asarray(cold[1]).mean()
