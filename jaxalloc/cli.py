"""The `jaxalloc` command line: parse, build the problem, call the public API, print.

Bad input exits with status 2 and one line on stderr starting with `error:`;
no traceback, nothing written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Sequence


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one `error:` line and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    pass


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
    solve.add_argument("--method", default="newton", choices=list(METHODS), help="solver (default: newton)")
    solve.add_argument(
        "--integer", default="auto", choices=["auto", "enumerate", "round", "coordinate"],
        help="integer budgets: eq. 39 enumeration, eq. 40 rounding, or coordinate search",
    )
    solve.add_argument("--json", action="store_true", help="print JSON for programs")

    sim = sub.add_parser("simulate", help="simulate the M/G/1 FIFO server at given budgets")
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
                     help="also write a histogram of the system times (PNG; needs matplotlib: jaxalloc[plots])")

    ver = sub.add_parser("verify", help="check Lemmas 1-3 of the paper on a profile with autodiff")
    ver.add_argument("profile", nargs="?", help="TOML profile (default: the bundled paper profile)")
    ver.add_argument("--points", type=int, default=200, help="sampled budget vectors per lemma (default 200)")
    ver.add_argument("--seed", type=int, default=0, help="sampling seed")
    ver.add_argument("--json", action="store_true", help="print JSON for programs")

    sens = sub.add_parser("sensitivity", help="J as one task's budget varies (Fig. 4), or l* along a parameter")
    sens.add_argument("profile", nargs="?", help="TOML profile (default: the bundled paper profile)")
    sens.add_argument("--task", help="task whose budget varies, others at their optimum (Fig. 4)")
    sens.add_argument("--param", choices=["arrival_rate", "alpha", "max_tokens"],
                      help="parameter to vary instead: plots l*(theta) and dl*/dtheta")
    sens.add_argument("--range", required=True, metavar="START:STOP:NUM", help="values, e.g. 0:1000:101")
    sens.add_argument("--out", default="sensitivity", metavar="PREFIX", help="writes PREFIX.csv and PREFIX.png")
    sens.add_argument("--simulate", type=int, default=0, metavar="K",
                      help="with --task: also simulate K budgets across the range (10,000 queries x 20 replications)")
    sens.add_argument("--json", action="store_true", help="print JSON for programs")

    from .calibrate.cli import add_calibrate_parser

    add_calibrate_parser(sub)
    return parser


def _load(profile: str | None, args, overrides: bool = True):
    import jax

    jax.config.update("jax_enable_x64", True)
    from .model import load_profile, paper_profile, validate

    problem = paper_profile() if profile is None else load_profile(profile)
    fields = ("arrival_rate", "alpha", "max_tokens") if overrides else ()
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    if overrides:
        problem = validate(problem.replace(**overrides))
    name = "paper" if profile is None else profile
    return problem, name


def _cmd_solve(args) -> int:
    from .report import format_report, solution_report
    from .solve import solve

    problem, name = _load(args.profile, args)
    solution = solve(problem, args.method, throw=False, check=False)
    report = solution_report(problem, solution, args.method, args.integer)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, title=f"jaxalloc solve: {name} ({problem.num_tasks} tasks)"))
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

    from .simulate import SimulationError, format_simulation_report, simulate, simulation_report

    if args.plot is not None:  # fail before simulating: no matplotlib, or nowhere to write
        import os

        from .plots import PlotError, _pyplot

        _pyplot()
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            raise PlotError(f"--plot: cannot write {args.plot}: no such directory {folder}")
    problem, name = _load(args.profile, args)
    if args.budgets is not None:
        budgets = np.asarray(_parse_budgets(args.budgets))
        if budgets.shape != (problem.num_tasks,):
            raise SimulationError(f"--budgets: {budgets.size} values for {problem.num_tasks} tasks")
    else:
        from .solve import solve
        from .solution import Status
        from .solvers.integer import integer_budgets

        solution = solve(problem, throw=False, check=False)
        if Status(int(solution.status)) != Status.CONVERGED:
            raise SimulationError(f"default budgets: solve: {Status(int(solution.status)).label}")
        budgets = np.asarray(integer_budgets(problem, solution.budgets))
    result = simulate(
        problem, budgets, queries=args.queries, replications=args.replications, seed=args.seed,
        warmup=args.warmup, service_cv=args.service_cv,
    )
    report = simulation_report(problem, budgets, result, service_cv=args.service_cv)
    if args.plot is not None:
        from .plots import plot_system_time_histogram

        plot_system_time_histogram(
            result, report, args.plot,
            title=f"jaxalloc simulate: {name}, λ = {float(problem.arrival_rate):g}/s, "
                  f"{report['replications']} × {report['queries']} queries",
        )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_simulation_report(report, title=f"jaxalloc simulate: {name} ({problem.num_tasks} tasks)"))
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


def _cmd_verify(args) -> int:
    from .verify import format_verify_report, verify

    problem, name = _load(args.profile, args, overrides=False)
    if args.points < 1:
        raise _UsageError(f"--points = {args.points}: must be >= 1")
    report = verify(problem, points=args.points, seed=args.seed)
    print(json.dumps(report, indent=2) if args.json else f"jaxalloc verify: {name}\n" + format_verify_report(report))
    return 0 if report["pass"] else 1


def _cmd_sensitivity(args) -> int:
    import numpy as np

    from .plots import plot_budget_curve, plot_parameter_curve
    from .sensitivity import budget_curve, parameter_curve, simulated_budget_points, task_index

    if (args.task is None) == (args.param is None):
        raise _UsageError("sensitivity: give exactly one of --task NAME or --param NAME")
    problem, name = _load(args.profile, args, overrides=False)
    start, stop, num = _parse_range(args.range)
    values = np.linspace(start, stop, num)
    if args.simulate < 0:
        raise _UsageError(f"--simulate = {args.simulate}: must be >= 0")
    csv_path, png_path = f"{args.out}.csv", f"{args.out}.png"
    if args.task is not None:
        task_index(problem, args.task)  # unknown task: error before any work
        curve = budget_curve(problem, args.task, values)
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
        curve = parameter_curve(problem, args.param, values)
        header = [args.param] + [f"budget_{t}" for t in problem.names] + [f"d_budget_{t}" for t in problem.names]
        rows = np.column_stack([curve["value"], curve["budgets"], curve["derivative"]])
        plot_parameter_curve(curve, args.param, problem.names, png_path, title=f"{name}: optimal budgets along {args.param}")
        summary = {"param": args.param}
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(repr(float(x)) for x in row) + "\n")
    summary.update(csv=csv_path, png=png_path, points=int(num))
    print(json.dumps(summary, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .model import ProblemError

    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            from . import __version__

            print(f"jaxalloc {__version__}")
            return 0
        if args.command is None:
            parser.print_help()
            return 0
        from .calibrate.cli import run_calibrate

        commands = {"solve": _cmd_solve, "simulate": _cmd_simulate, "verify": _cmd_verify,
                    "sensitivity": _cmd_sensitivity, "calibrate": run_calibrate}
        return commands[args.command](args)
    except (_UsageError, ProblemError, ValueError) as err:  # ValueError: e.g. eq. 39 beyond its N
        message = " ".join(str(err).split())  # exactly one line
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
