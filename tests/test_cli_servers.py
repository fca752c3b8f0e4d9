"""Every command takes the server: the --server flags, bad server input, and the
server in solve's report, sweeps, sensitivity, verify and reproduce (docs/servers.md)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jaxalloc as ja
from jaxalloc import cli
from jaxalloc.cli import main
from jaxalloc.objective import load, moments, system_time, task_system_time
from jaxalloc.servers import make_server
from jaxalloc.solution import Status

TWO_TASKS = (
    'name = "two"\narrival_rate = 0.5\nalpha = 20\nmax_tokens = 4096\n'
    '[[tasks]]\nname = "math"\nprob = 0.25\nA = 0.6\nb = 0.002\nD = 0.1\nt0 = 0.2\nc = 0.01\n'
    '[[tasks]]\nname = "chat"\nprob = 0.75\nA = 0.3\nb = 0.01\nD = 0.6\nt0 = 0.1\nc = 0.01\n'
)


def profile(tmp_path, server: str = "", name: str = "two.toml"):
    """The two-task profile, with `server` as its [server] table's body (none if empty)."""
    path = tmp_path / name
    path.write_text(TWO_TASKS + (f"\n[server]\n{server}\n" if server else ""))
    return str(path)


def loaded(*argv):
    """The problem the command line builds for `argv` (parse and load; nothing solved)."""
    args = cli._build_parser().parse_args(list(argv))
    return cli._load(args.profile, args)[0]


def two_problem(server=None):
    return ja.make_problem(arrival_rate=0.5, alpha=20.0, max_tokens=4096.0, A=[0.6, 0.3], b=[0.002, 0.01],
                           D=[0.1, 0.6], t0=[0.2, 0.1], c=[0.01, 0.01], prob=[0.25, 0.75], names=["math", "chat"],
                           server=server)


def assert_converged(solution, what: str):
    """The solve converged (a failure, not a skip: the solvers handle every kind)."""
    assert Status(int(solution.status)) == Status.CONVERGED, f"{what}: the solve ends {Status(int(solution.status)).label}"


# ---------------------------------------------------------------- flags


def test_flags_override_the_profile_table(tmp_path):
    table = 'kind = "batching"\nmax_batch = 4\nbatch_slowdown = 0.1'
    path = profile(tmp_path, table)
    assert loaded("solve", path).server.describe(("math", "chat")) == {
        "kind": "batching", "max_batch": 4, "batch_slowdown": 0.1}
    # a parameter flag keeps the profile's other parameters of the same kind
    assert loaded("solve", path, "--batch-slowdown", "0.2").server.describe(()) == {
        "kind": "batching", "max_batch": 4, "batch_slowdown": 0.2}
    assert loaded("solve", path, "--max-batch", "16").server.describe(()) == {
        "kind": "batching", "max_batch": 16, "batch_slowdown": 0.1}
    # --server changes the kind and starts from its defaults
    assert loaded("solve", path, "--server", "fifo", "--servers", "3").server.describe(()) == {
        "kind": "fifo", "servers": 3}
    assert loaded("solve", path, "--server", "fifo").server.describe(()) == {"kind": "fifo", "servers": 1}
    prio = loaded("solve", path, "--server", "priority", "--priority-order", "chat,math").server
    assert prio.describe(("math", "chat")) == {"kind": "priority", "order": ["chat", "math"], "auto": False}
    auto = loaded("solve", path, "--server", "priority", "--priority-order", "auto").server
    assert auto.describe(("math", "chat"))["auto"] is True
    # no flag: the profile's server; the default profile: one FIFO server
    assert loaded("solve").server.describe(()) == {"kind": "fifo", "servers": 1}
    assert loaded("solve", "--servers", "2").server.describe(()) == {"kind": "fifo", "servers": 2}


@pytest.mark.parametrize("command", [
    ["solve"], ["simulate"], ["verify"], ["sensitivity", "--param", "alpha", "--range", "1:2:2"],
    ["sweep", "--alpha", "1:2:2", "--out", "x.parquet"],
])
def test_every_command_takes_the_server_flags(command):
    args = cli._build_parser().parse_args(command + ["--server", "batching", "--max-batch", "8",
                                                     "--batch-slowdown", "0.05"])
    problem = cli._load(args.profile, args, overrides=False)[0]
    assert problem.server.describe(problem.names) == {"kind": "batching", "max_batch": 8, "batch_slowdown": 0.05}


def error_line(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


BAD_FLAGS = [
    (["--server", "lifo"], "--server = 'lifo'"),
    (["--servers", "0"], "server.servers = 0"),
    (["--servers", "-2"], "server.servers = -2"),
    (["--servers", "2.5"], "server.servers = 2.5"),
    (["--servers", "many"], "--servers"),
    (["--server", "batching", "--max-batch", "4", "--batch-slowdown", "-0.1"], "server.batch_slowdown = -0.1"),
    (["--server", "batching", "--max-batch", "0"], "server.max_batch = 0"),
    (["--server", "batching", "--max-batch", "1.5"], "server.max_batch = 1.5"),
    (["--server", "batching"], "server.max_batch: missing"),
    (["--server", "priority", "--priority-order", "GSM8K,Nope"], "unknown task 'Nope'"),
    (["--server", "priority", "--priority-order", "GSM8K,AIME"], "task 'GPQA' missing"),
    (["--max-batch", "4"], "--max-batch = 4: not a parameter of a 'fifo' server"),
    (["--server", "fifo", "--priority-order", "auto"], "--priority-order = auto: not a parameter of a 'fifo' server"),
    (["--server", "priority", "--servers", "2"], "--servers = 2: not a parameter of a 'priority' server"),
    # unstable at l = 0 for this server: capacity r(8) = 8 / (1 + 3*7) = 0.36 < 5 * E[S](0) = 0.61
    (["--server", "batching", "--max-batch", "8", "--batch-slowdown", "3", "--arrival-rate", "5"],
     ("arrival_rate = 5: queue unstable even at zero budgets (load λ·E[S](0) = 0.6119 >= this batching server's "
      "capacity 0.3636)")),
    (["--servers", "2", "--arrival-rate", "20"], "arrival_rate = 20: queue unstable even at zero budgets"),
]


@pytest.mark.parametrize("argv, message", BAD_FLAGS)
def test_bad_server_flags_are_one_line(capsys, argv, message):
    line = error_line(capsys, ["solve", *argv])
    assert message in line, line


BAD_TABLES = [
    ('kind = "lifo"', "server.kind = 'lifo': expected one of fifo, priority, batching"),
    ('kind = 3', "server.kind = 3"),
    ('kind = "fifo"\nservers = 0', "server.servers = 0: must be an integer >= 1"),
    ('kind = "fifo"\nservers = 1.5', "server.servers = 1.5: must be an integer >= 1"),
    ('kind = "fifo"\nservers = "two"', "server.servers = 'two'"),
    ('kind = "batching"\nmax_batch = 4\nbatch_slowdown = -1', "server.batch_slowdown = -1"),
    ('kind = "batching"\nmax_batch = 0\nbatch_slowdown = 0.1', "server.max_batch = 0"),
    ('kind = "priority"\norder = ["math", "poetry"]', "unknown task 'poetry'"),
    ('kind = "priority"\norder = ["math"]', "task 'chat' missing"),
    ('kind = "fifo"\nmax_batch = 4', "server.max_batch: unknown field for kind 'fifo'"),
    # capacity 8 / (1 + 3*7) = 0.364 against 0.5 * 0.125 = 0.0625 at l = 0: stable; 5 * 0.125 = 0.625 is not
    ('kind = "batching"\nmax_batch = 8\nbatch_slowdown = 3', None),
]


@pytest.mark.parametrize("table, message", BAD_TABLES)
def test_bad_server_tables_are_one_line(tmp_path, capsys, table, message):
    path = profile(tmp_path, table)
    if message is None:  # stable at the profile's rate; unstable when the rate is raised
        line = error_line(capsys, ["solve", path, "--arrival-rate", "5"])
        assert "arrival_rate = 5: queue unstable even at zero budgets" in line and "capacity 0.3636" in line, line
        return
    line = error_line(capsys, ["solve", path])
    assert message in line, line


def test_unstable_profile_table(tmp_path, capsys):
    path = tmp_path / "busy.toml"
    path.write_text(TWO_TASKS.replace("arrival_rate = 0.5", "arrival_rate = 5")
                    + '\n[server]\nkind = "batching"\nmax_batch = 8\nbatch_slowdown = 3\n')
    line = error_line(capsys, ["solve", str(path)])
    assert "arrival_rate = 5: queue unstable even at zero budgets" in line and "batching" in line, line
    # the check runs after the flags: a slowdown (or a rate) given on the command line can make it stable
    # (E[S](0) = 0.125: load 0.625 against capacity 8/(1 + 0.05·7) = 5.9)
    assert loaded("solve", str(path), "--batch-slowdown", "0.05").server.describe(()) == {
        "kind": "batching", "max_batch": 8, "batch_slowdown": 0.05}
    assert float(loaded("solve", str(path), "--arrival-rate", "1").arrival_rate) == 1.0


@pytest.mark.parametrize("command", [
    ["verify"], ["sensitivity", "--param", "alpha", "--range", "1:2:2"], ["simulate"],
    ["sweep", "--alpha", "1:2:2", "--out", "{tmp}/x.parquet"],
])
def test_bad_server_flags_on_every_command(tmp_path, capsys, command):
    argv = [a.format(tmp=tmp_path) for a in command]
    line = error_line(capsys, [*argv, "--server", "batching", "--max-batch", "0"])
    assert "server.max_batch = 0" in line
    assert not list(tmp_path.iterdir())  # nothing written


# ---------------------------------------------------------------- solve


def test_solve_json_default_server(capsys):
    assert main(["solve", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["server"] == {"kind": "fifo", "servers": 1}
    paper = ja.paper_profile()
    ell = jnp.asarray(data["budgets"])
    m1, m2 = moments(paper, ell)
    t = np.asarray(paper.t0 + paper.c * ell)
    wait = float(ja.mean_wait(paper.arrival_rate, m1, m2))
    np.testing.assert_allclose(data["task_system_time"], t + wait, rtol=1e-12)
    assert float(np.dot(paper.prob, data["task_system_time"])) == pytest.approx(data["mean_system_time"], rel=1e-12)
    assert data["mean_wait"] == wait  # eq. 5, bit for bit
    assert data["mean_system_time"] == float(ja.mean_system_time(paper.arrival_rate, m1, m2))  # eq. 6
    assert data["utilization"] == float(paper.arrival_rate * m1)


@pytest.mark.parametrize("flags, server", [
    (["--server", "fifo", "--servers", "2"], {"kind": "fifo", "servers": 2}),
    (["--server", "batching", "--max-batch", "8", "--batch-slowdown", "0.1"],
     {"kind": "batching", "max_batch": 8, "batch_slowdown": 0.1}),
    (["--server", "priority", "--priority-order", "chat,math"],
     {"kind": "priority", "order": ["chat", "math"], "auto": False}),
])
@pytest.mark.slow
def test_solve_json_reports_the_server(tmp_path, capsys, flags, server):
    code = main(["solve", profile(tmp_path), "--json", "--arrival-rate", "2", *flags])
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert code == (0 if data["status"] == "converged" else 1), captured.err
    assert data["server"] == server
    problem = ja.load_profile(profile(tmp_path)).replace(
        arrival_rate=2.0, server=make_server(server["kind"], ("math", "chat"),
                                             **{k: v for k, v in server.items() if k not in ("kind", "auto")}))
    ell = jnp.asarray(data["budgets"])
    np.testing.assert_allclose(data["task_system_time"], task_system_time(problem, ell), rtol=1e-12)
    assert data["mean_system_time"] == pytest.approx(float(system_time(problem, ell)), rel=1e-12)
    assert data["utilization"] == pytest.approx(float(load(problem, ell)), rel=1e-14)
    assert data["mean_wait"] == pytest.approx(float(system_time(problem, ell) - moments(problem, ell)[0]), rel=1e-9)
    if float(problem.server.capacity()) != 1:  # load over capacity, not λE[S]
        assert data["utilization"] != pytest.approx(float(2.0 * moments(problem, ell)[0]))  # load / capacity


def test_solve_text_shows_server_and_task_times(tmp_path, capsys):
    main(["solve", profile(tmp_path), "--server", "batching", "--max-batch", "8", "--batch-slowdown", "0.1"])
    out = capsys.readouterr().out
    assert "server: batching, max_batch = 8, batch_slowdown = 0.1" in out
    assert "E[T_k] s" in out and "(load λE[S] / capacity)" in out


def test_solve_priority_auto_reports_an_order(tmp_path, capsys):
    main(["solve", profile(tmp_path), "--json", "--server", "priority", "--priority-order", "auto"])
    data = json.loads(capsys.readouterr().out)
    assert data["server"]["kind"] == "priority" and sorted(data["server"]["order"]) == ["chat", "math"]


@pytest.mark.slow
def test_simulate_priority_auto_simulates_the_order_chosen(capsys):
    """simulate solves as solve does and simulates, and reports, the order chosen, not the
    profile's (on the paper's profile "auto" puts CRUXEval first; the profile lists AIME first)."""
    main(["solve", "--json", "--server", "priority", "--priority-order", "auto"])
    order = json.loads(capsys.readouterr().out)["server"]["order"]
    assert order[0] == "CRUXEval"
    main(["simulate", "--json", "--server", "priority", "--priority-order", "auto",
          "--queries", "2048", "--replications", "2"])
    sim = json.loads(capsys.readouterr().out)
    assert sim["server"]["order"] == order


# ---------------------------------------------------------------- sweep


def test_sweep_server_axes_are_checked():
    from jaxalloc.sweep import SweepError, plan_sweep

    fifo = two_problem()
    batching = two_problem(make_server("batching", ("math", "chat"), max_batch=4, batch_slowdown=0.1))
    with pytest.raises(SweepError, match=r"axis 'max_batch': not a parameter of this profile's 'fifo' server"):
        plan_sweep(fifo, {"max_batch": "1:4:4"})
    with pytest.raises(SweepError, match=r"axis 'servers': not a parameter of this profile's 'batching' server"):
        plan_sweep(batching, {"servers": "1:4:4"})
    with pytest.raises(SweepError, match=r"axis 'servers': value 1.5 is not an integer >= 1"):
        plan_sweep(fifo, {"servers": "1:4:7"})
    with pytest.raises(SweepError, match=r"axis 'max_batch': value 0 is not an integer >= 1"):
        plan_sweep(batching, {"max_batch": [0.0, 1.0]})
    with pytest.raises(SweepError, match=r"axis 'batch_slowdown': value -0.5 is invalid"):
        plan_sweep(batching, {"batch_slowdown": "-0.5:1:3"})
    priority = two_problem(make_server("priority", ("math", "chat"), order="auto"))
    with pytest.raises(SweepError, match=r"'priority' server \(it has no parameter that can be an axis"):
        plan_sweep(priority, {"batch_slowdown": "0:1:3"})
    # integer axes resize the server to their largest value
    plan = plan_sweep(fifo, {"servers": "1:8:8"})
    assert plan.problem.server.size == 8
    plan = plan_sweep(batching, {"max_batch": [1, 64], "batch_slowdown": "0:1:3"})
    assert plan.problem.server.size == 64


def test_sweep_fingerprint_includes_the_server():
    from jaxalloc.sweep import plan_sweep

    axes = {"arrival_rate": "0.1:1:4"}
    prints = {plan_sweep(two_problem(server), axes).fingerprint() for server in (
        None,
        make_server("fifo", (), servers=2),
        make_server("batching", (), max_batch=4, batch_slowdown=0.1),
        make_server("batching", (), max_batch=4, batch_slowdown=0.2),
        make_server("batching", (), max_batch=8, batch_slowdown=0.1),
        make_server("priority", ("math", "chat"), order=["math", "chat"]),
        make_server("priority", ("math", "chat"), order=["chat", "math"]),
        make_server("priority", ("math", "chat"), order="auto"),
    )}
    assert len(prints) == 8
    # the default server, spelled out or not, is the same sweep
    assert plan_sweep(two_problem(make_server("fifo", (), servers=1)), axes).fingerprint() == \
        plan_sweep(two_problem(), axes).fingerprint()


@pytest.mark.slow
def test_sweep_columns_come_from_the_server():
    from jaxalloc.sweep import sweep

    base = two_problem(make_server("fifo", (), servers=1))
    result = sweep(base, {"servers": [1.0, 2.0, 3.0], "arrival_rate": [0.5, 4.0]}, block=8)
    table = result.to_table().to_pydict()
    assert table["servers"] == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    for i in range(6):
        q = base.replace(server=make_server("fifo", (), servers=table["servers"][i]),
                         arrival_rate=table["arrival_rate"][i])
        ell = jnp.asarray([table["budget_math"][i], table["budget_chat"][i]])
        if table["status"][i] == "unstable_queue":
            continue
        assert table["mean_system_time"][i] == pytest.approx(float(system_time(q, ell)), rel=1e-12)
        assert table["utilization"][i] == pytest.approx(float(load(q, ell)), rel=1e-12)


@pytest.mark.slow
def test_default_sweep_columns_are_the_papers_bit_for_bit(paper):
    from jaxalloc.sweep import sweep

    result = sweep(paper, {"arrival_rate": [0.05, 0.1, 0.2]}, block=4)
    table = result.to_table().to_pydict()
    for i, lam in enumerate(table["arrival_rate"]):
        q = paper.replace(arrival_rate=lam)
        ell = jnp.asarray([table[f"budget_{t}"][i] for t in paper.names])
        m1, m2 = moments(q, ell)
        # eq. 6 and ρ = λE[S] (compiled in the sweep, eagerly here: equal to the last bits)
        assert table["mean_system_time"][i] == pytest.approx(float(ja.mean_system_time(q.arrival_rate, m1, m2)),
                                                             rel=1e-14)
        assert table["utilization"][i] == pytest.approx(float(q.arrival_rate * m1), rel=1e-14)


def test_priority_sweep_quantiles_are_the_exact_ones():
    """A priority sweep's p95 and p99 (auto: the exact inversion) at each row's budgets."""
    import equinox as eqx

    from jaxalloc.quantiles import QuantileError, system_time_quantiles
    from jaxalloc.sweep import QUANTILE_LEVELS, sweep

    base = two_problem(make_server("priority", ("math", "chat"), order=["chat", "math"]))
    result = sweep(base, {"arrival_rate": [0.5, 2.0, 20.0], "alpha": [5.0, 50.0]}, block=8)
    assert result.plan.quantiles == "exact"
    table = result.to_table().to_pydict()
    quantiles = eqx.filter_jit(lambda q, ell: system_time_quantiles(q, ell, QUANTILE_LEVELS, "exact").overall)
    for i in range(6):
        if table["status"][i] == "unstable_queue":
            assert table["p95"][i] == table["p99"][i] == float("inf")
            continue
        q = base.replace(arrival_rate=jnp.asarray(table["arrival_rate"][i]), alpha=jnp.asarray(table["alpha"][i]))
        ell = jnp.asarray([table["budget_math"][i], table["budget_chat"][i]])
        np.testing.assert_allclose([table["p95"][i], table["p99"][i]], np.asarray(quantiles(q, ell)), rtol=1e-9)
    assert table["status"].count("unstable_queue") == 2  # λ = 20: λ Σπ t0 = 2.5
    with pytest.raises(QuantileError, match="quantile method 'lundberg': for one FIFO server only"):
        sweep(base, {"arrival_rate": [0.5]}, quantiles="lundberg")


@pytest.mark.slow
def test_sweep_without_quantiles_for_servers_that_have_none(tmp_path, capsys):
    """c > 1 FIFO servers and batching: no p95/p99 columns, one note on stderr (not an error);
    asked for by name, a quantile method such a server lacks is an error."""
    import pyarrow.parquet as pq

    from jaxalloc.sweep import missing_quantiles, plan_sweep

    path = profile(tmp_path, "servers = 2")
    grid = ["--arrival-rate", "0.5:1:3", "--no-figures"]  # one compilation for both runs
    out = tmp_path / "b.parquet"
    assert main(["sweep", path, *grid, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "p95" in line]
    assert notes == [("note: no p95/p99 columns: server.kind = 'fifo': quantiles are not supported for this "
                      "server (fifo with servers > 1); they are for one FIFO server and for priority classes")], \
        captured.err
    assert json.loads(captured.out)["quantile_method"] is None
    columns = pq.read_schema(out).names
    assert "p95" not in columns and "p99" not in columns and "mean_system_time" in columns
    # none asked: no columns and no note
    assert main(["sweep", path, *grid, "--out", str(tmp_path / "n.parquet"), "--quantile-method", "none"]) == 0
    assert "note: no p95" not in capsys.readouterr().err
    assert main(["sweep", path, *grid, "--out", str(tmp_path / "e.parquet"), "--quantile-method", "exact"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: server.kind = 'fifo': quantiles are not supported") and err.count("\n") == 1
    assert not (tmp_path / "e.parquet").exists()
    # batching, and an axis over servers (the server resized to hold 2): none either
    batching = make_server("batching", (), max_batch=4, batch_slowdown=0.1)
    for problem, axes, why in ((two_problem(batching), {"arrival_rate": [0.5]}, "(batching)"),
                               (two_problem(), {"servers": [1.0, 2.0]}, "(fifo with servers > 1)")):
        plan = plan_sweep(problem, axes)
        assert plan.quantiles is None and "p99" not in plan.column_names()
        assert why in missing_quantiles(plan.problem)
    assert missing_quantiles(plan_sweep(two_problem(), {"servers": [1.0]}).problem) is None


# ---------------------------------------------------------------- sensitivity


def test_parameter_curve_server_parameters_are_checked():
    from jaxalloc.model import ProblemError
    from jaxalloc.sensitivity import parameter_curve

    fifo = two_problem()
    with pytest.raises(ProblemError, match=r"servers = 1.5: must be an integer >= 1"):
        parameter_curve(fifo, "servers", [1.0, 1.5])
    with pytest.raises(ProblemError, match=r"param = 'batch_slowdown': not a parameter of this profile's 'fifo'"):
        parameter_curve(fifo, "batch_slowdown", [0.0, 0.1])
    with pytest.raises(ProblemError, match=r"param = 'servers'"):
        parameter_curve(two_problem(make_server("batching", (), max_batch=4, batch_slowdown=0.1)), "servers", [1.0])


@pytest.mark.slow
def test_parameter_curve_servers_has_no_derivative():
    from jaxalloc.sensitivity import parameter_curve

    fifo = two_problem()
    curve = parameter_curve(fifo, "servers", [1.0, 2.0])
    assert np.all(np.isnan(curve["derivative"]))
    np.testing.assert_allclose(curve["budgets"][0], ja.solve(fifo).budgets, atol=1e-9)
    two = ja.solve(fifo.replace(server=make_server("fifo", (), servers=2)), throw=False)
    assert_converged(two, "two FIFO servers")
    np.testing.assert_allclose(curve["budgets"][1], two.budgets, atol=1e-8)


@pytest.mark.slow
def test_parameter_curve_batch_slowdown_derivative():
    from jaxalloc.sensitivity import parameter_curve

    base = two_problem(make_server("batching", (), max_batch=4, batch_slowdown=0.1)).replace(arrival_rate=4.0)
    assert_converged(ja.solve(base, throw=False), "batching")
    h = 1e-4
    curve = parameter_curve(base, "batch_slowdown", [0.1 - h, 0.1, 0.1 + h])
    fd = (curve["budgets"][2] - curve["budgets"][0]) / (2 * h)
    np.testing.assert_allclose(curve["derivative"][1], fd, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_cli_sensitivity_server_param(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sensitivity", profile(tmp_path), "--param", "servers", "--range", "1:2:2", "--out", str(out),
                 "--json"]) == 0
    header, *rows = (tmp_path / "s.csv").read_text().splitlines()
    assert header.startswith("servers,budget_math,budget_chat,d_budget_math") and len(rows) == 2
    assert rows[0].endswith("nan,nan")
    capsys.readouterr()
    line = error_line(capsys, ["sensitivity", profile(tmp_path), "--param", "max_batch", "--range", "1:2:2",
                               "--out", str(tmp_path / "t")])
    assert "param = 'max_batch': not a parameter of this profile's 'fifo' server" in line


# ---------------------------------------------------------------- verify


@pytest.mark.parametrize("server", [
    make_server("fifo", (), servers=2),
    make_server("batching", (), max_batch=4, batch_slowdown=0.1),
    make_server("priority", ("math", "chat"), order=["chat", "math"]),
])
def test_verify_says_which_lemmas_do_not_apply(server):
    from jaxalloc.verify import FAILS, HOLDS, NOT_APPLICABLE, format_verify_report, verify

    report = verify(two_problem(server).replace(arrival_rate=2.0), points=12)
    assert report["server"] == server.describe(("math", "chat"))
    for k in ("lemma2", "lemma3"):
        assert report[k]["outcome"] == NOT_APPLICABLE and "Pollaczek-Khinchine" in report[k]["reason"]
        assert server.kind in report[k]["reason"]
    assert report["lemma1"]["outcome"] in (HOLDS, NOT_APPLICABLE)
    assert report["lemma1"]["outcome"] != FAILS and report["pass"]
    assert report["lemma1"]["utilization_range"][1] < 1
    text = format_verify_report(report)
    assert f"server: {server.kind}" in text and text.count("not applicable") >= 2
    json.dumps(report, allow_nan=False)


@pytest.mark.slow
def test_verify_default_names_the_paper_server():
    from jaxalloc.verify import verify

    report = verify(two_problem(), points=8)
    assert report["server"] == {"kind": "fifo", "servers": 1}
    assert "max_relative_error_wait_hessian" in report["lemma1"]  # the paper's checks, unchanged


@pytest.mark.slow
def test_cli_verify_with_a_server(capsys):
    assert main(["verify", "--points", "6", "--server", "batching", "--max-batch", "64", "--batch-slowdown",
                 "0.05", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["server"]["kind"] == "batching" and data["lemma2"]["outcome"] == "not_applicable"


# ---------------------------------------------------------------- reproduce


@pytest.mark.slow
def test_server_study(paper, tmp_path):
    from jaxalloc.plots import plot_server_load
    from jaxalloc.reproduce import STUDY_SERVERS, server_study, server_table

    study = server_study(paper, points=6)
    lam = np.asarray(study["arrival_rate"])
    assert 0.1 in lam and np.all(np.diff(lam) > 0)
    assert study["fifo"]["server"] == {"kind": "fifo", "servers": 1}
    assert study["batching"]["server"] == STUDY_SERVERS["batching"] == {
        "kind": "batching", "max_batch": 64, "batch_slowdown": 0.05}
    sat = 1 / float(np.dot(paper.prob, paper.t0))
    assert study["fifo"]["saturation_rate"] == pytest.approx(sat)
    assert study["batching"]["saturation_rate"] == pytest.approx(sat * 64 / (1 + 0.05 * 63))
    assert lam[-1] == pytest.approx(0.95 * study["batching"]["saturation_rate"])
    at = int(np.nonzero(lam == 0.1)[0][0])
    np.testing.assert_allclose(study["fifo"]["budgets"][at], ja.solve(paper).budgets, atol=1e-8)
    assert study["fifo"]["objective"][at] == pytest.approx(9.754203, abs=1e-6)
    assert all(s == "unstable_queue" for s, r in zip(study["fifo"]["status"], lam) if r >= sat)
    assert all(b is None for b, r in zip(study["fifo"]["budgets"], lam) if r >= sat)
    header, rows = server_table(study, list(paper.names))
    assert len(rows) == lam.size and len(header) == len(rows[0]) == 1 + 2 * (6 + 4)
    plot_server_load(study, list(paper.names), tmp_path / "fig7.png", mark=0.1)
    assert (tmp_path / "fig7.png").stat().st_size > 10_000
    json.dumps(study, allow_nan=False)
