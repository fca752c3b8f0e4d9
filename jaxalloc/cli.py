"""The `jaxalloc` command line: parse, build the problem, call the public API, print.

Bad input exits with status 2 and one line on stderr starting with `error:`;
no traceback, nothing written.
"""

from __future__ import annotations

import argparse
import json
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
    return parser


def _load(profile: str | None, args):
    import jax

    jax.config.update("jax_enable_x64", True)
    from .model import load_profile, paper_profile, validate

    problem = paper_profile() if profile is None else load_profile(profile)
    overrides = {
        "arrival_rate": args.arrival_rate,
        "alpha": args.alpha,
        "max_tokens": args.max_tokens,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
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
        return {"solve": _cmd_solve, "simulate": _cmd_simulate}[args.command](args)
    except (_UsageError, ProblemError, ValueError) as err:  # ValueError: e.g. eq. 39 beyond its N
        message = " ".join(str(err).split())  # exactly one line
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
