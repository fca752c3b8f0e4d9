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
        return {"solve": _cmd_solve}[args.command](args)
    except (_UsageError, ProblemError, ValueError) as err:  # ValueError: e.g. eq. 39 beyond its N
        message = " ".join(str(err).split())  # exactly one line
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
