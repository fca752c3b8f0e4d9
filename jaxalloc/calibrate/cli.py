"""`jaxalloc calibrate ...`: the calibration subcommands, registered on the main parser.

`jaxalloc calibrate fit MEASUREMENTS [--out PROFILE.toml] [--prob SPEC] [--arrival-rate X]
[--alpha Y] [--max-tokens L] [--name NAME] [--level P] [--server FILE.toml] [--plot FIG.png] [--json]`

`jaxalloc calibrate measure ...` (:mod:`.measure_cli`) and `jaxalloc calibrate batching ...`
(:mod:`.batching_cli`) are registered here too.

:func:`add_calibrate_parser` adds the `calibrate` group to the main subparsers;
:func:`run_calibrate` runs the chosen subcommand. Errors are :class:`CalibrationError`
(a ValueError), which the main command line prints as one `error:` line, exit status 2,
before anything is written.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

from ..files import check_writable
from .data import CalibrationError


def add_calibrate_parser(subparsers) -> argparse.ArgumentParser:
    """Register `calibrate` (subcommands `fit`, `measure`, `batching`) on the main parser's subparsers.

    **Arguments:**

    - `subparsers`: the object returned by the main parser's ``add_subparsers``.

    **Returns:** the `calibrate` parser. A further subcommand is one more
    ``group.add_parser(...)`` below, with ``set_defaults(calibrate_run=handler)``.
    """
    cal = subparsers.add_parser("calibrate", help="fit a profile to measurements of your own model")
    group = cal.add_subparsers(dest="calibrate_command", parser_class=type(cal))
    cal.set_defaults(calibrate_parser=cal)

    fit = group.add_parser(
        "fit", help="fit accuracy (eq. 2) and service time (eq. 1) per task and write a profile",
        description="Fit p(l) = A(1 - exp(-b l)) + D by binomial maximum likelihood and t(l) = t0 + c l by "
                    "least squares to every task of a measurement file (CSV or Parquet; per-item rows "
                    "task,budget,repeat,correct,service_s or aggregated rows task,budget,accuracy,n[,service_s]).",
    )
    fit.add_argument("measurements", help="measurement file (.csv, .parquet)")
    fit.add_argument("--out", metavar="PROFILE.toml", help="write the fitted profile here")
    fit.add_argument("--prob", metavar="SPEC",
                     help="task mix: 'uniform', NAME=SHARE,... or SHARE,... in file order (default: from the "
                          "answers per budget in the file); shares must sum to 1")
    fit.add_argument("--arrival-rate", type=float, metavar="X", help="λ for the profile (default 0.1, the paper's)")
    fit.add_argument("--alpha", type=float, metavar="Y", help="α for the profile (default 30, the paper's)")
    fit.add_argument("--max-tokens", type=float, metavar="L", help="ℓ_max for the profile (default 32768, the paper's)")
    fit.add_argument("--name", help="profile name (default: the measurement file's name)")
    fit.add_argument("--level", type=float, default=0.95, metavar="P", help="confidence level of the intervals")
    fit.add_argument("--server", metavar="FILE.toml",
                     help="put this file's [server] table (e.g. from 'jaxalloc calibrate batching --out') into the "
                          "profile: the server model it is solved with (default: one FIFO server, the paper's)")
    fit.add_argument("--plot", metavar="FIG.png",
                     help="also draw measured and fitted accuracy (the paper's Fig. 2) and service time "
                          "(PNG)")
    fit.add_argument("--json", action="store_true", help="print JSON for programs")
    fit.set_defaults(calibrate_run=_cmd_fit)

    from .measure_cli import add_measure_parser

    add_measure_parser(group)
    from .batching_cli import add_batching_parser

    add_batching_parser(group)
    return cal


def run_calibrate(args) -> int:
    """Run the `calibrate` subcommand chosen in `args` (help if none)."""
    if getattr(args, "calibrate_run", None) is None:
        args.calibrate_parser.print_help()
        return 0
    return args.calibrate_run(args)


def write_output(flag: str, path: str, data: str | bytes) -> None:
    """Write a command's output file (text as UTF-8); an OS error is a :class:`CalibrationError` naming `flag`."""
    try:
        if isinstance(data, bytes):
            Path(path).write_bytes(data)
        else:
            Path(path).write_text(data, encoding="utf-8")
    except OSError as err:
        raise CalibrationError(f"{flag}: cannot write {path}: {err.strerror or err}") from None


def parse_prob(text: str | None):
    """`--prob`: None, ``"uniform"``, a dict from NAME=SHARE pairs, or a list of shares."""
    if text is None or text.strip() == "uniform":
        return None if text is None else "uniform"
    parts = [p.strip() for p in text.split(",")]
    try:
        if all("=" in p for p in parts):
            pairs = [p.split("=", 1) for p in parts]
            names = [k.strip() for k, _ in pairs]
            dup = next((n for n in names if names.count(n) > 1), None)
            if dup is not None:
                raise CalibrationError(f"--prob: task {dup!r} given twice")
            return {k: float(v) for k, v in zip(names, (v for _, v in pairs))}
        if any("=" in p for p in parts):
            raise ValueError
        return [float(p) for p in parts]
    except ValueError:
        raise CalibrationError(f"--prob = {text!r}: expected 'uniform', NAME=SHARE,... or SHARE,...") from None


def read_server_table(path: str) -> dict:
    """`--server FILE.toml`: the file's ``[server]`` table (a file from `calibrate batching --out`,
    or any profile). Raises :class:`CalibrationError` naming the file."""
    from ..model import tomllib

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise CalibrationError(f"--server: cannot read {path}: {err.strerror or err}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise CalibrationError(f"--server: malformed TOML in {path}: {err}") from None
    table = data.get("server")
    if not isinstance(table, dict):
        raise CalibrationError(f"--server: {path} has no [server] table")
    return table


def _cmd_fit(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    from ..model import ProblemError
    from ..servers import ServerError, server_from_dict
    from .data import read_measurements
    from .fit import calibrated_problem, fit_measurements
    from .report import calibration_report, format_calibration, profile_text

    prob = parse_prob(args.prob)
    if not (0 < args.level < 1) or math.isnan(args.level):
        raise CalibrationError(f"--level = {args.level:g}: must be in (0, 1)")
    if args.plot is not None:
        from ..plots import _pyplot

        _pyplot()  # matplotlib missing: fail before fitting
        check_writable("--plot", args.plot)
    if args.out is not None:
        check_writable("--out", args.out)
    server = None if args.server is None else read_server_table(args.server)
    measurements = read_measurements(args.measurements)
    if server is not None:  # a bad table fails before the fit
        try:
            server_from_dict(server, measurements.tasks)
        except ServerError as err:
            raise CalibrationError(f"--server {args.server}: {err}") from None
    cal = fit_measurements(measurements, level=args.level)
    point = {"arrival_rate": args.arrival_rate, "alpha": args.alpha, "max_tokens": args.max_tokens, "prob": prob}
    problem = None
    try:
        problem = calibrated_problem(cal, **point, server=server)
    except (CalibrationError, ProblemError):
        if args.out is not None:
            raise
    prob_source = "counts" if prob is None else "uniform" if prob == "uniform" else "given"
    report = calibration_report(cal, problem, args.out, prob_source)
    if problem is not None and server is not None:
        report["server"] = problem.server.describe(problem.names)
    figure = None
    if args.plot is not None:
        from ..plots import plot_calibration

        figure = io.BytesIO()
        plot_calibration(cal, figure, title=f"jaxalloc calibrate fit: {Path(args.measurements).name}")
    if args.out is not None:
        name = args.name or Path(args.measurements).stem
        text = profile_text(problem, report, name)
        write_output("--out", args.out, text)
    if figure is not None:
        write_output("--plot", args.plot, figure.getvalue())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_calibration(report, title=f"jaxalloc calibrate fit: {args.measurements}"))
        if "server" in report:
            params = ", ".join(f"{k} = {v}" for k, v in report["server"].items() if k != "kind")
            print(f"server: {report['server']['kind']}, {params} (from {args.server})")
    return 0
