"""The `jaxalloc` command line: parse, build the problem, call the public API, print.

Every failure is one line on stderr, never a traceback. Bad input, or an output
path that cannot be written, exits with status 2 and one line starting with
`error:`, before any work and with nothing written. Ctrl-C exits with status 130
and one line starting with `interrupted:` that says what was kept. A reader of
stdout that leaves early (`jaxalloc solve --json | head -1`) ends the command
quietly with status 141, as SIGPIPE ends other Unix tools.
"""

from __future__ import annotations

import _thread
import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one `error:` line and exit status 2, and a
    value that starts with a minus sign and a number (``--arrival-rate -0.1``,
    ``--alpha -1e-3:5:10``, ``-inf``) is a value, not an unknown option: no option
    of jaxalloc looks like a negative number, so validation can say what is wrong."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse's own pattern takes only plain numbers (-1, -0.5) as values
        self._negative_number_matcher = re.compile(r"^-(\.?\d|inf|nan)", re.IGNORECASE)

    def error(self, message: str):
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


SERVER_FLAGS = {"servers": "--servers", "priority_order": "--priority-order", "max_batch": "--max-batch",
                "batch_slowdown": "--batch-slowdown", "admission": "--admission"}
"""The server flags (argparse dest → flag) besides --server; see :func:`_apply_server`."""


def _flag_number(text: str):
    """A number from the command line, an int when it is one (so errors print `2`, not `2.0`)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    return int(v) if v.is_integer() else v


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    """The flags that override the profile's [server] table (docs/servers.md)."""
    from .servers import KINDS

    g = p.add_argument_group("server (override the profile's [server] table; see docs/servers.md)")
    g.add_argument("--server", metavar="KIND", help=f"server model: {'|'.join(KINDS)} (default: the profile's, "
                   "else one FIFO server, the paper's)")
    g.add_argument("--servers", type=_flag_number, metavar="C", help="fifo: C identical servers, one queue (M/G/C)")
    g.add_argument("--priority-order", metavar="A,B,...|auto",
                   help="priority: task names, highest priority first, or auto (the order that maximises J)")
    g.add_argument("--max-batch", type=_flag_number, metavar="B", help="batching: at most B requests run together")
    g.add_argument("--batch-slowdown", type=_flag_number, metavar="BETA",
                   help="batching: a step with m requests takes 1 + BETA(m - 1) times a batch-1 step")
    g.add_argument("--admission", type=_flag_number, metavar="SECONDS",
                   help="batching: seconds of each query's service that stall the whole batch (request "
                        "handling, prefill; measured by calibrate batching's churn rounds; default 0)")


def _build_parser() -> argparse.ArgumentParser:
    from .solvers import METHODS

    parser = _Parser(prog="jaxalloc", description="Queueing-aware reasoning-token budgets for LLM servers.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    solve = sub.add_parser("solve", help="optimal token budgets for a profile")
    solve.add_argument("profile", nargs="?", help="TOML profile (default: the bundled paper profile)")
    solve.add_argument("--arrival-rate", type=float, metavar="X", help="override λ (queries/s)")
    solve.add_argument("--alpha", type=float, metavar="Y", help="override α (accuracy weight)")
    solve.add_argument("--max-tokens", type=float, metavar="L", help="override ℓ_max")
    solve.add_argument("--method", default="auto", choices=["auto", *METHODS],
                    help="solver (default auto: newton for a fifo or batching server, projected-newton for priority)")
    solve.add_argument(
        "--integer", default="auto", choices=["auto", "enumerate", "round", "coordinate"],
        help="integer budgets: eq. 39 enumeration, eq. 40 rounding, or coordinate search",
    )
    solve.add_argument("--slo", action="append", default=[], metavar="[TASK:]pNN=SECONDS",
                       help="latency SLO, repeatable: e.g. p99=8 (overall) or GSM8K:p95=5 (one task); maximises J "
                            "subject to them (one FIFO server or priority)")
    solve.add_argument("--quantiles", action="store_true",
                       help="add the p50/p90/p95/p99 of the system time, overall and per task (always with --slo)")
    solve.add_argument("--quantile-method", default="auto", choices=["auto", "lundberg", "exact"],
                       help="quantiles: exact (Euler inversion), lundberg (Cramér-Lundberg asymptote, one FIFO server), "
                            "auto: exact")
    solve.add_argument("--json", action="store_true", help="print JSON for programs")
    _add_server_flags(solve)

    sim = sub.add_parser("simulate", help="simulate the server at given budgets")
    sim.add_argument("profile", nargs="?", help="TOML profile (default: the bundled paper profile)")
    sim.add_argument("--budgets", metavar="A,B,...", help="token budgets, one per task (default: optimal integer)")
    sim.add_argument("--queries", type=int, default=10_000, metavar="N", help="queries per replication")
    sim.add_argument("--replications", type=int, default=100, metavar="R", help="independent replications")
    sim.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    sim.add_argument("--warmup", type=int, default=0, metavar="W", help="first queries left out of statistics")
    sim.add_argument("--service-cv", type=float, default=0.0, metavar="CV",
                     help="lognormal service-time jitter, coefficient of variation (default 0: deterministic)")
    sim.add_argument("--arrival-rate", type=float, metavar="X", help="override λ (queries/s)")
    sim.add_argument("--alpha", type=float, metavar="Y", help="override α (accuracy weight)")
    sim.add_argument("--max-tokens", type=float, metavar="L", help="override ℓ_max")
    sim.add_argument("--json", action="store_true", help="print JSON for programs")
    sim.add_argument("--plot", metavar="FILE.png",
                     help="also write a histogram of the system times (PNG)")
    _add_server_flags(sim)

    ver = sub.add_parser("verify", help="check Lemmas 1-3 of the paper on a profile with autodiff (where they apply to its server)")
    ver.add_argument("profile", nargs="?", help="TOML profile (default: the bundled paper profile)")
    ver.add_argument("--points", type=int, default=200, help="sampled budget vectors per lemma (default 200)")
    ver.add_argument("--seed", type=int, default=0, help="sampling seed")
    ver.add_argument("--json", action="store_true", help="print JSON for programs")
    _add_server_flags(ver)

    sens = sub.add_parser("sensitivity", help="J as one task's budget varies (Fig. 4), or l* along a parameter")
    sens.add_argument("profile", nargs="?", help="TOML profile (default: the bundled paper profile)")
    sens.add_argument("--task", help="task whose budget varies, others at their optimum (Fig. 4)")
    sens.add_argument("--param", choices=["arrival_rate", "alpha", "max_tokens", "batch_slowdown", "admission", "servers",
                                          "max_batch"],
                      help="parameter to vary instead: plots l*(theta) and dl*/dtheta (a server parameter of the "
                           "profile's server kind; servers and max_batch take whole numbers, without derivatives)")
    sens.add_argument("--range", required=True, metavar="START:STOP:NUM", help="values, e.g. 0:1000:101")
    sens.add_argument("--out", default="sensitivity", metavar="PREFIX", help="writes PREFIX.csv and PREFIX.png")
    sens.add_argument("--simulate", type=int, default=0, metavar="K",
                      help="with --task: also simulate K budgets across the range (10,000 queries x 20 replications)")
    sens.add_argument("--quantile", action="append", default=[], metavar="pNN",
                      help="also a quantile of the system time at each point's budgets, e.g. p99 (a CSV column and "
                           "a panel of the PNG; exact inversion; one FIFO server or priority; repeatable)")
    sens.add_argument("--json", action="store_true", help="print JSON for programs")
    _add_server_flags(sens)

    sw = sub.add_parser("sweep", help="solve a grid of operating points into a Parquet file, with heat maps")
    sw.add_argument("profile", nargs="?", help="TOML profile (default: the bundled paper profile)")
    sw.add_argument("--arrival-rate", metavar="START:STOP:NUM", help="λ axis (append :log for geometric spacing)")
    sw.add_argument("--alpha", metavar="START:STOP:NUM", help="α axis (append :log for geometric spacing)")
    sw.add_argument("--max-tokens", metavar="START:STOP:NUM", help="ℓ_max axis")
    sw.add_argument("--axis", action="append", default=[], metavar="FIELD:TASK=START:STOP:NUM",
                    help="another axis, e.g. b:GSM8K=1e-4:1e-2:50:log or prob:AIME=0.05:0.5:10; TASK is a task name "
                         "as the profile spells it (case-sensitive) or its index; or a parameter of the server: "
                         "servers=1:8:8, max_batch=1:64:64, batch_slowdown=0:1:21 (repeatable)")
    sw.add_argument("--out", required=True, metavar="FILE.parquet", help="output Parquet file (one row per point); "
                    "after Ctrl-C or a kill, the same command resumes")
    sw.add_argument("--method", default="auto", choices=["auto", *METHODS],
                    help="solver (default auto: newton for a fifo or batching server, projected-newton for priority)")
    sw.add_argument("--integer", default="auto", choices=["auto", "enumerate", "round", "coordinate"],
                    help="integer budgets (auto: eq. 39 enumeration up to 8 tasks, coordinate search up to 64, rounding beyond)")
    sw.add_argument("--quantile-method", default="auto", choices=["auto", "lundberg", "exact", "none"],
                    help="method of the p95 and p99 columns (system-time quantiles at each point's optimum): auto "
                         "(default: lundberg, the fast asymptote, for one FIFO server; exact for priority), lundberg, "
                         "exact, or none (no columns, fastest); a server without quantiles gets none, with a note")
    sw.add_argument("--float32", action="store_true", help="solve in float32 (faster; ~0.05 token from float64)")
    sw.add_argument("--block", type=int, metavar="N", help="points per compiled call and per row group")
    sw.add_argument("--no-resume", action="store_true", help="start over even if finished blocks of this sweep exist")
    sw.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar (default: when stderr is a terminal)")
    sw.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                    help="write FILE.budgets.png (heat maps) and, with an α axis, FILE.frontier.png (default: on)")
    sw.add_argument("--coordinator", metavar="HOST:PORT",
                    help="jax.distributed coordinator: run as one of --num-processes processes, each given the "
                         "same arguments, with --out on a filesystem every host sees")
    sw.add_argument("--num-processes", type=int, metavar="P", help="processes in a jax.distributed run")
    sw.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..P-1")
    sw.add_argument("--json", action="store_true", help="print JSON for programs")
    _add_server_flags(sw)

    rep = sub.add_parser("reproduce", help="regenerate the paper's Table I and Figs. 2-4, and more, into a folder")
    rep.add_argument("--out", default="results", metavar="DIR", help="output folder, created if missing (default: results)")
    rep.add_argument("--queries", type=int, metavar="N", help="queries per simulated replication (default 10000; --quick 2000)")
    rep.add_argument("--replications", type=int, metavar="R", help="replications per simulated point (default 20; --quick 5)")
    rep.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of the simulations")
    rep.add_argument("--quick", action="store_true", help="reduced settings: fewer queries, simulated points and rates")
    rep.add_argument("--measurements", metavar="FILE", help="draw the accuracies measured in FILE on Fig. 2 (calibrate format)")
    rep.add_argument("--json", action="store_true", help="print the summary as JSON for programs")

    from .calibrate.cli import add_calibrate_parser

    add_calibrate_parser(sub)
    from .loadtest.cli import add_loadtest_parser

    add_loadtest_parser(sub)
    from .gateway.cli import add_gateway_parser

    add_gateway_parser(sub)
    return parser


def _load(profile: str | None, args, overrides: bool = True):
    import jax

    jax.config.update("jax_enable_x64", True)
    from .model import load_profile, paper_profile, validate

    # stability is checked after the flags: --arrival-rate or a server flag may make the queue stable
    problem = paper_profile() if profile is None else load_profile(profile, stability=False)
    fields = ("arrival_rate", "alpha", "max_tokens") if overrides else ()
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    server = _apply_server(problem, args)
    if server is not None:
        overrides["server"] = server
    problem = validate(problem.replace(**overrides) if overrides else problem)
    name = "paper" if profile is None else profile
    return problem, name


def _apply_server(problem, args):
    """The server the flags ask for, or None when no server flag is given.

    --server picks the kind (default: the profile's); the other flags set its
    parameters, over the profile's own when the kind stays the same. A flag
    that does not belong to the kind is an error naming both."""
    from .servers import KINDS, PARAMETERS, make_server

    kind_flag = getattr(args, "server", None)
    given = {dest: getattr(args, dest, None) for dest in SERVER_FLAGS}
    given = {k: v for k, v in given.items() if v is not None}
    if kind_flag is None and not given:
        return None
    base = problem.server
    kind = base.kind if kind_flag is None else kind_flag.strip()
    if kind not in KINDS:
        raise _UsageError(f"--server = {kind_flag!r}: expected one of {', '.join(KINDS)}")
    params = {"order" if k == "priority_order" else k: v for k, v in given.items()}
    flag_of = lambda name: SERVER_FLAGS["priority_order" if name == "order" else name]
    for name, value in params.items():
        if name not in PARAMETERS[kind]:
            flag = flag_of(name)
            how = "" if kind_flag is not None else " (give --server to change the kind)"
            raise _UsageError(f"{flag} = {value}: not a parameter of a {kind!r} server{how}; "
                              f"it takes: {', '.join(flag_of(p) for p in PARAMETERS[kind])}")
    if kind == base.kind:  # keep the profile's other parameters of this kind
        desc = base.describe(problem.names)
        if kind == "priority":
            desc = {"order": "auto" if desc["auto"] else desc["order"]}
        params = {**{k: v for k, v in desc.items() if k in PARAMETERS[kind]}, **params}
    return make_server(kind, problem.names, dtype=problem.A.dtype, **params)


def resolve_method(problem, method: str) -> str:
    """The solver's name for `method` ("auto": the default solver for the
    problem's server, "newton" for the paper's); a method that cannot solve
    the server is an error naming both (from :func:`jaxalloc.solve.solver_for`)."""
    import importlib

    solve_module = importlib.import_module("jaxalloc.solve")  # the module (the package's `solve` is the function)

    solver_for = getattr(solve_module, "solver_for", None)
    if solver_for is None:  # solvers that do not pick by server: the old default
        return "newton" if method == "auto" else method
    return solve_module.method_name(solver_for(problem, None if method == "auto" else method))


def _cmd_solve(args) -> int:
    from .report import format_report, solution_report
    from .solve import solve

    problem, name = _load(args.profile, args)
    if args.slo:
        return _cmd_solve_slo(args, problem, name)
    method = resolve_method(problem, args.method)
    solution = solve(problem, method, throw=False, check=False)
    report = solution_report(problem, solution, method, args.integer)
    if args.quantiles:
        report["quantiles"] = _quantiles_or_error(problem, solution.budgets, args.quantile_method)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, title=f"jaxalloc solve: {name} ({problem.num_tasks} tasks)"))
    if report["status"] != "converged":
        print(f"error: solve: {report['status']}", file=sys.stderr)
        return 1
    return 0


def _quantiles_or_error(problem, budgets, method: str) -> dict:
    from .quantiles import check_supported
    from .slo import quantile_report

    check_supported(problem, method)  # QuantileError (a ProblemError): one error line, status 2
    return quantile_report(problem, budgets, method)


def _cmd_solve_slo(args, problem, name) -> int:
    """`solve --slo`: maximise J subject to the SLOs; status 1 (and the least achievable values) when infeasible."""
    from .quantiles import check_supported
    from .report import format_report, solution_report
    from .slo import feasible_integer_budgets, format_slo, parse_slo, slo_report, solve_slo

    slos = [parse_slo(text, problem.names) for text in args.slo]
    check_supported(problem, args.quantile_method)
    if args.method not in ("auto", "projected-newton"):
        raise ValueError(f"--method {args.method}: an SLO-constrained solve has its own solver "
                         "(augmented Lagrangian with projected Newton); leave --method out")
    result = solve_slo(problem, slos, args.quantile_method, check=False)
    report = solution_report(problem, result.solution, "augmented-lagrangian", args.integer)
    if result.feasible:
        ints, value = feasible_integer_budgets(problem, result.solution.budgets, result.slos, args.quantile_method)
        report["integer_budgets"], report["integer_objective"] = ints.tolist(), value  # they meet the SLOs too
    report["status"] = result.status
    report["quantiles"] = _quantiles_or_error(problem, result.solution.budgets, args.quantile_method)
    report["slo"] = slo_report(problem, result)
    if not result.feasible:
        worst = [e for e in report["slo"] if e["smallest"] > e["limit"]]
        report["message"] = "; ".join(f"SLO {e['slo']} <= {e['limit']:g} s cannot be met: the smallest achievable "
                                      f"{e['slo']} is {e['smallest']:.6g} s (at zero budgets)" for e in worst)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, title=f"jaxalloc solve: {name} ({problem.num_tasks} tasks)"))
        print(format_slo(report))
    if not result.feasible:
        print(f"error: solve: infeasible: {report['message']}", file=sys.stderr)
        return 1
    if report["status"] != "converged":
        print(f"error: solve: {report['status']}", file=sys.stderr)
        return 1
    return 0


def _parse_budgets(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise _UsageError(f"--budgets = {text!r}: expected comma-separated numbers") from None
    return values


def _cmd_simulate(args) -> int:
    import numpy as np

    from .files import check_writable
    from .simulate import SimulationError, format_simulation_report, simulate, simulation_report

    if args.plot is not None:  # fail before simulating: no matplotlib, or nowhere to write
        from .plots import _pyplot

        _pyplot()
        check_writable("--plot", args.plot)
    problem, name = _load(args.profile, args)
    if args.budgets is not None:
        budgets = np.asarray(_parse_budgets(args.budgets))
        if budgets.shape != (problem.num_tasks,):
            raise SimulationError(f"--budgets: {budgets.size} values for {problem.num_tasks} tasks")
    else:
        from .solution import Status
        from .solve import solve
        from .solvers.integer import integer_budgets

        solution = solve(problem, throw=False, check=False)
        if Status(int(solution.status)) != Status.CONVERGED:
            raise SimulationError(f"default budgets: solve: {Status(int(solution.status)).label}")
        problem = problem.replace(server=solution.server)  # for order = "auto": simulate the order chosen
        budgets = np.asarray(integer_budgets(problem, solution.budgets))
    result = simulate(
        problem, budgets, queries=args.queries, replications=args.replications, seed=args.seed,
        warmup=args.warmup, service_cv=args.service_cv,
    )
    report = simulation_report(problem, budgets, result, service_cv=args.service_cv, theory_quantiles=True)
    if args.plot is not None:
        from .plots import plot_system_time_histogram

        plot_system_time_histogram(
            result, report, args.plot,
            title=f"jaxalloc simulate: {name}, λ = {float(problem.arrival_rate):g}/s, "
                  f"{report['replications']} × {report['queries']} queries",
        )
        report["plot"] = args.plot
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_simulation_report(report, title=f"jaxalloc simulate: {name} ({problem.num_tasks} tasks)"))
        if args.plot is not None:
            print(f"wrote {args.plot}")
    if not report["stable"]:
        print(f"error: simulate: {report['message']}", file=sys.stderr)
        return 1
    return 0


def _parse_range(text: str) -> tuple[float, float, int]:
    """START:STOP:NUM with STOP >= START and NUM >= 1, or a one-line error."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise _UsageError(f"--range = {text!r}: expected START:STOP:NUM, e.g. 0:1000:101") from None
    if not (math.isfinite(start) and math.isfinite(stop)) or stop < start or num < 1:
        raise _UsageError(f"--range = {text!r}: need finite START <= STOP and NUM >= 1")
    return start, stop, num


def _cmd_sweep(args) -> int:
    from .sweep import missing_quantiles, parse_range, sweep

    axes = {}
    for flag, name in (("arrival_rate", "arrival_rate"), ("alpha", "alpha"), ("max_tokens", "max_tokens")):
        text = getattr(args, flag)
        if text is not None:
            axes[name] = parse_range(text, "--" + flag.replace("_", "-"))
    for spec in args.axis:
        name, eq, text = spec.partition("=")
        if not eq:
            raise _UsageError(f"--axis = {spec!r}: expected FIELD:TASK=START:STOP:NUM")
        axes[name.strip()] = parse_range(text, f"--axis {name.strip()}")
    if not axes:
        raise _UsageError("sweep: give at least one axis (--arrival-rate, --alpha, --max-tokens or --axis)")
    distributed = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in distributed) and not all(v is not None for v in distributed):
        raise _UsageError("sweep: --coordinator, --num-processes and --process-id go together")
    if args.num_processes is not None and not 0 <= args.process_id < args.num_processes:
        raise _UsageError(f"--process-id = {args.process_id}: must be in 0..{args.num_processes - 1}")
    figures = args.figures and (args.num_processes is None or args.process_id == 0)
    if figures:
        from .plots import _pyplot

        _pyplot()  # no matplotlib: fail before sweeping
    if args.coordinator is not None:  # before anything touches a JAX backend
        import jax

        try:
            jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        except (RuntimeError, ValueError) as err:
            raise _UsageError(f"--coordinator = {args.coordinator!r}: jax.distributed failed: {err}") from None
    problem, name = _load(args.profile, args, overrides=False)
    result = sweep(problem, axes, method=resolve_method(problem, args.method), integer=args.integer,
                   quantiles=args.quantile_method, dtype="float32" if args.float32 else None, out=args.out,
                   resume=not args.no_resume, progress=args.progress, block=args.block)
    summary = result.summary()
    summary["figures"] = []
    no_quantiles = missing_quantiles(result.plan.problem) if args.quantile_method == "auto" else None
    if no_quantiles is not None:
        print(f"note: no p95/p99 columns: {no_quantiles}", file=sys.stderr)
    if result.discarded_blocks:
        n = result.discarded_blocks
        print(f"note: discarded {n:,} finished block{'s' if n > 1 else ''} of a different sweep at {args.out}.parts",
              file=sys.stderr)
    if result.replaced_file:
        print(f"note: replaced {args.out}, which held a different sweep", file=sys.stderr)
    if figures and result.complete and len(axes) > 2:
        print(f"note: figures need 1 or 2 axes, this sweep has {len(axes)}: none written", file=sys.stderr)
    elif figures and result.complete:
        from .plots import plot_sweep_frontier, plot_sweep_heatmaps

        stem = args.out[: -len(".parquet")]
        summary["figures"].append(plot_sweep_heatmaps(result, f"{stem}.budgets.png", title=name))
        frontier = plot_sweep_frontier(result, f"{stem}.frontier.png", title=name)
        if frontier is not None:
            summary["figures"].append(frontier)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        counts = ", ".join(f"{v:,} {k}" for k, v in summary["status_counts"].items())
        print(f"jaxalloc sweep: {name}, {summary['points']:,} points "
              f"({' × '.join(str(n) for n in summary['shape'])}: {', '.join(summary['axes'])})")
        if result.already_complete:
            print(f"  already complete: {summary['points']:,} points in {summary['path']}")
        else:
            quantiles = f", p95/p99 {summary['quantile_method']}" if summary["quantile_method"] else ""
            print(f"  solved {summary['computed_points']:,} points in {summary['seconds']:.2f} s "
                  f"({summary['points_per_second']:,.0f} points/s including compilation, {summary['dtype']}, "
                  f"{summary['method']}{quantiles}, {summary['devices']} device{'s' if summary['devices'] > 1 else ''})")
        print(f"  status: {counts}")
        if not result.already_complete:
            print(f"  wrote {summary['path']}" if result.complete else
                  f"  process {args.process_id}: wrote its blocks; process 0 writes {summary['path']}")
        for fig in summary["figures"]:
            print(f"  wrote {fig}")
    return 0


def _cmd_verify(args) -> int:
    from .verify import format_verify_report, verify

    problem, name = _load(args.profile, args, overrides=False)
    if args.points < 1:
        raise _UsageError(f"--points = {args.points}: must be >= 1")
    report = verify(problem, points=args.points, seed=args.seed)
    print(json.dumps(report, indent=2) if args.json else f"jaxalloc verify: {name}\n" + format_verify_report(report))
    return 0 if report["pass"] else 1  # a lemma not applicable to this profile is no failure


def _cmd_sensitivity(args) -> int:
    import numpy as np

    from .files import check_writable
    from .plots import plot_budget_curve, plot_parameter_curve
    from .quantiles import level_name, parse_level
    from .sensitivity import budget_curve, parameter_curve, simulated_budget_points, task_index

    if (args.task is None) == (args.param is None):
        raise _UsageError("sensitivity: give exactly one of --task NAME or --param NAME")
    levels = tuple(dict.fromkeys(parse_level(text) for text in args.quantile))  # in order, once each
    problem, name = _load(args.profile, args, overrides=False)
    start, stop, num = _parse_range(args.range)
    values = np.linspace(start, stop, num)
    if args.simulate < 0:
        raise _UsageError(f"--simulate = {args.simulate}: must be >= 0")
    if not os.path.basename(args.out):
        raise _UsageError(f"--out = '{args.out}': a folder; give a file prefix, e.g. {args.out}sensitivity")
    csv_path, png_path = f"{args.out}.csv", f"{args.out}.png"
    check_writable("--out", csv_path)
    check_writable("--out", png_path)
    if args.task is not None:
        task_index(problem, args.task)  # unknown task: error before any work
        curve = budget_curve(problem, args.task, values, quantiles=levels)
        header = ["budget", "objective", "lower_bound"]
        rows = np.column_stack([curve["budget"], curve["objective"], curve["lower_bound"]])
        sim = None
        if args.simulate:
            sim = simulated_budget_points(problem, args.task, np.linspace(start, stop, args.simulate))
            header += ["simulated_objective", "simulated_halfwidth95"]
            extra = np.full((len(rows), 2), np.nan)
            near = [int(np.argmin(np.abs(values - b))) for b in sim["budget"]]
            extra[near, 0], extra[near, 1] = sim["objective"], sim["halfwidth"]
            rows = np.column_stack([rows, extra])
        plot_budget_curve(curve, args.task, png_path, title=f"{name}: J as the {args.task} budget varies", simulated=sim)
        best = float(curve["budget"][int(np.argmax(curve["objective"]))])
        summary = {"task": args.task, "best_budget_on_grid": best,
                   "optimal_budget": float(curve["optimum"][problem.names.index(args.task)])}
    else:
        curve = parameter_curve(problem, args.param, values, quantiles=levels)
        header = [args.param] + [f"budget_{t}" for t in problem.names] + [f"d_budget_{t}" for t in problem.names]
        rows = np.column_stack([curve["value"], curve["budgets"], curve["derivative"]])
        plot_parameter_curve(curve, args.param, problem.names, png_path, title=f"{name}: optimal budgets along {args.param}")
        summary = {"param": args.param}
    if levels:
        header += [level_name(q) for q in levels]
        rows = np.column_stack([rows, curve["quantiles"]])
        summary["quantiles"] = [level_name(q) for q in levels]
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write(",".join(header) + "\n")
        f.writelines(",".join(repr(float(x)) for x in row) + "\n" for row in rows)
    summary.update(csv=csv_path, png=png_path, points=int(num))
    print(json.dumps(summary, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


def _cmd_reproduce(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    from .reproduce import format_summary, reproduce

    summary = reproduce(args.out, quick=args.quick, queries=args.queries, replications=args.replications,
                        seed=args.seed, measurements=args.measurements,
                        progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary, args.out))
    return 0


# Commands that write only once their work is done: Ctrl-C during the work leaves nothing.
# Long commands that keep finished work raise jaxalloc.errors.Interrupted, which says what.
_NOTHING_KEPT = ("solve", "simulate", "verify", "sensitivity", "calibrate")  # calibrate measure raises Interrupted


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr, never a traceback:
    `error: ...` with status 2 (bad input, a file that cannot be written) and
    `interrupted: ...` with status 130 (Ctrl-C)."""
    args = None
    try:
        parser = _build_parser()
        args = parser.parse_args(argv)
        if args.version:
            from . import __version__

            print(f"jaxalloc {__version__}")
            return 0
        if args.command is None:
            parser.print_help()
            return 0
        from .calibrate.cli import run_calibrate
        from .loadtest.cli import cmd_loadtest

        if args.command == "gateway":
            from .gateway.cli import cmd_gateway

            return cmd_gateway(args)
        commands = {"solve": _cmd_solve, "simulate": _cmd_simulate, "verify": _cmd_verify,
                    "sensitivity": _cmd_sensitivity, "sweep": _cmd_sweep, "calibrate": run_calibrate,
                    "reproduce": _cmd_reproduce, "loadtest": cmd_loadtest}
        return commands[args.command](args)
    except (_UsageError, ValueError) as err:  # ValueError: ProblemError, eq. 39 beyond its N, ...
        message = str(err)
    except BrokenPipeError:
        raise  # the reader of stdout has gone: entry() exits quietly
    except OSError as err:  # the net under the specific checks: a file that could not be read or written
        message = f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err)
    except KeyboardInterrupt as err:
        from .errors import Interrupted

        if isinstance(err, Interrupted):
            kept = str(err)
        else:
            kept = "nothing written" if getattr(args, "command", None) in _NOTHING_KEPT else ""
        print(" ".join(f"interrupted: {kept}".split()) if kept else "interrupted", file=sys.stderr)
        return 130
    print("error: " + " ".join(message.split()), file=sys.stderr)  # exactly one line
    return 2


def use_every_core() -> None:
    """On a CPU, one JAX device per core (a sweep splits its points over the
    devices), unless XLA_FLAGS already sets the count. It must run before JAX
    starts a backend: the command line and the benchmarks call it first thing;
    :func:`main` does not."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={usable_cores()}".strip()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _keep_compiled_programs() -> None:
    """JAX's persistent compilation cache in the user's cache folder, unless
    JAX_COMPILATION_CACHE_DIR names another: a sweep's block program takes
    ~11 s to compile on 2 cores, and a second run of the command loads it
    (10^4 points: 13.9 → 2.9 s)."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "jaxalloc", "jax")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # no writable cache folder: compile every time, quietly
        return
    if os.access(folder, os.W_OK):
        jax.config.update("jax_compilation_cache_dir", folder)


def deliver_lost_interrupts() -> None:
    """Ctrl-C that lands in a callback Python cannot raise from (a finaliser JAX
    runs during garbage collection) is printed as 'Exception ignored ...' with a
    traceback, and the command runs on. This hook raises it again in the main
    thread, where :func:`main` turns it into its one `interrupted:` line: a
    moment later, from a timer thread (raised at once, it would land in the hook
    itself; should it land in a finaliser again, this hook sends it again)."""
    import threading

    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            timer = threading.Timer(0.01, _thread.interrupt_main)
            timer.daemon = True
            timer.start()
        else:
            default(unraisable)

    sys.unraisablehook = hook


def entry() -> None:
    """The `jaxalloc` command."""
    use_every_core()
    _keep_compiled_programs()
    deliver_lost_interrupts()
    try:
        code = main()
        sys.stdout.flush()  # here, so that a reader that left (`jaxalloc solve --json | head -1`) is seen here
    except BrokenPipeError:
        # Exit quietly, as a Unix tool killed by SIGPIPE does, with its status 128 + 13; stdout
        # goes to devnull so that the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
