"""`jaxalloc calibrate batching`: measure decode step time against concurrency, fit β and B.

`jaxalloc calibrate batching --base-url URL [--served-model NAME] [--concurrency 1,2,4,8,16,32]
[--tokens 256] [--prompt-tokens 100] [--skip 20] [--repeats 1] [--max-batch B] [--level 0.95]
[--churn 4,8 | none] [--churn-tokens 8,32,64] [--requests-per-query 2]
[--out server.toml] [--plot FILE.png] [--json]`

After the steady-state rounds, closed-loop churn rounds (``--churn``) measure the
per-request exclusive time h; the table's ``admission`` is ``--requests-per-query`` × h
(``--churn none``: no churn rounds, no ``admission``).

Everything is checked before the first request; an unreachable server, one that
returns no token ids or streams of another length, and a fit with fewer than three
levels m ≤ B are one `error:` line and exit status 2, with nothing written (the
measuring and fitting are :mod:`jaxalloc.calibrate.batching`).
"""

from __future__ import annotations

import io
import json
import math

from ..files import check_writable
from .cli import write_output
from .data import CalibrationError


def add_batching_parser(group) -> None:
    """Add `batching` to the `calibrate` subparsers `group`."""
    p = group.add_parser(
        "batching", help="measure decode step time against concurrency on a vLLM/SGLang server; fit the "
                         "batching server's batch_slowdown and max_batch",
        description="Run m concurrent streamed requests of a fixed length for each concurrency m, take the "
                    "decode step time from the steady-state inter-token times, fit tau(m) = tau1 (1 + beta(m - 1)) "
                    "and find max_batch where the server stops running more at once; write the profile's "
                    "[server] table (kind = \"batching\").",
    )
    p.add_argument("--base-url", required=True, metavar="URL", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--served-model", metavar="NAME", help="model name (default: the first the server lists)")
    p.add_argument("--concurrency", default="1,2,4,8,16,32", metavar="M,M,...",
                   help="concurrent requests per level (default 1,2,4,8,16,32)")
    p.add_argument("--tokens", type=int, default=256, metavar="N",
                   help="tokens generated per request, exactly (max_tokens = min_tokens; default 256)")
    p.add_argument("--prompt-tokens", type=int, default=100, metavar="N",
                   help="length of the fixed token-id prompt (default 100)")
    p.add_argument("--skip", type=int, default=20, metavar="K",
                   help="tokens left out at each end of a stream: the steady state is tokens K..N-K (default 20)")
    p.add_argument("--repeats", type=int, default=1, metavar="R", help="rounds per level (default 1)")
    p.add_argument("--max-batch", type=int, metavar="B",
                   help="max_batch to use (default: where the server is seen to stop running more at once)")
    p.add_argument("--level", type=float, default=0.95, metavar="P", help="confidence level of the intervals")
    p.add_argument("--churn", default="4,8", metavar="M,M,...|none",
                   help="concurrency of the closed-loop churn rounds that measure the per-request admission time h "
                        "(default 4,8; none: skip them and write no admission)")
    p.add_argument("--churn-tokens", default="8,32,64", metavar="L,L,...",
                   help="tokens per request of the churn rounds, at least two lengths (default 8,32,64)")
    p.add_argument("--requests-per-query", type=int, default=2, metavar="K",
                   help="requests a query makes (thinking + answer: 2); admission = K x h (default 2)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed of the requests")
    p.add_argument("--out", metavar="server.toml", help="write the [server] table here")
    p.add_argument("--plot", metavar="FILE.png", help="draw step time against concurrency with the fitted line")
    p.add_argument("--json", action="store_true", help="print JSON for programs")
    p.set_defaults(calibrate_run=cmd_batching)


def parse_concurrency(text: str, flag: str = "--concurrency", example: str = "1,2,4,8") -> tuple[int, ...]:
    """`--concurrency` (or another list `flag`): distinct whole numbers ≥ 1, returned in increasing order."""
    try:
        levels = [int(p) for p in text.split(",")]
    except ValueError:
        raise CalibrationError(f"{flag} = {text!r}: expected whole numbers >= 1, e.g. {example}") from None
    bad = next((m for m in levels if m < 1), None)
    if bad is not None:
        raise CalibrationError(f"{flag} = {text!r}: {bad} is not >= 1")
    if len(set(levels)) != len(levels):
        raise CalibrationError(f"{flag} = {text!r}: a value is given twice")
    return tuple(sorted(levels))


def parse_churn(text: str) -> tuple[int, ...]:
    """`--churn`: as `--concurrency`, or ``none`` (no churn rounds: the empty tuple)."""
    if text.strip().lower() == "none":
        return ()
    return parse_concurrency(text, "--churn", "4,8 (or none)")


def parse_churn_tokens(text: str) -> tuple[int, ...]:
    """`--churn-tokens`: at least two distinct lengths ≥ 1."""
    lengths = parse_concurrency(text, "--churn-tokens", "8,32,64")
    if len(lengths) < 2:
        raise CalibrationError(f"--churn-tokens = {text!r}: need at least two lengths (h is the intercept of the "
                               "time per request against the length)")
    return lengths


def _check(args) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    from .batching import MIN_LEVELS

    levels = parse_concurrency(args.concurrency)
    churn = parse_churn(args.churn)
    churn_tokens = parse_churn_tokens(args.churn_tokens)
    if args.requests_per_query < 1:
        raise CalibrationError(f"--requests-per-query = {args.requests_per_query}: must be >= 1")
    for flag, value, least in (("--tokens", args.tokens, 2), ("--prompt-tokens", args.prompt_tokens, 1),
                               ("--skip", args.skip, 0), ("--repeats", args.repeats, 1)):
        if value < least:
            raise CalibrationError(f"{flag} = {value}: must be >= {least}")
    if args.tokens - 2 * args.skip < 2:
        raise CalibrationError(f"--tokens = {args.tokens}: must exceed 2 × --skip ({2 * args.skip}) by at least 2 "
                               "(the steady state is tokens skip..tokens-skip)")
    if not (0 < args.level < 1) or math.isnan(args.level):
        raise CalibrationError(f"--level = {args.level:g}: must be in (0, 1)")
    if args.max_batch is not None and args.max_batch < 1:
        raise CalibrationError(f"--max-batch = {args.max_batch}: must be >= 1")
    usable = [m for m in levels if args.max_batch is None or m <= args.max_batch]
    if len(usable) < MIN_LEVELS:
        cap = "" if args.max_batch is None else f" <= --max-batch {args.max_batch}"
        raise CalibrationError(f"--concurrency = {args.concurrency!r}: {len(usable)} levels{cap}: need at least "
                               f"{MIN_LEVELS} to fit batch_slowdown with an interval")
    if args.plot is not None:
        from ..plots import _pyplot

        _pyplot()  # matplotlib missing: fail before measuring
        check_writable("--plot", args.plot)
    if args.out is not None:
        check_writable("--out", args.out)
    return levels, churn, churn_tokens


def cmd_batching(args) -> int:
    """Run `jaxalloc calibrate batching` (see the module docstring)."""
    from .batching import (
        fit_batching,
        format_batching,
        measure_batching,
        measure_churn,
        plot_batching,
        prompt_ids,
        server_text,
    )
    from .openai_backend import OpenAIBackend, ServerError

    levels, churn_levels, churn_tokens = _check(args)
    try:
        backend = OpenAIBackend(args.base_url, None, args.served_model, timeout=300.0)
    except ServerError as err:
        raise CalibrationError(str(err)) from None
    rounds = measure_batching(backend, levels, tokens=args.tokens, prompt_tokens=args.prompt_tokens, skip=args.skip,
                              repeats=args.repeats, seed=args.seed)
    churn = measure_churn(backend, churn_levels, churn_tokens, prompt=prompt_ids(args.prompt_tokens),
                          seed=args.seed) if churn_levels else None
    fit = fit_batching(rounds, max_batch=args.max_batch, level=args.level, churn=churn,
                       requests_per_query=args.requests_per_query)
    source = f"{backend.url} (model {backend.model})"
    title = f"jaxalloc calibrate batching: {source}"
    figure = None
    if args.plot is not None:
        figure = io.BytesIO()
        plot_batching(fit, figure, title=title)
    if args.out is not None:
        _write(args.out, server_text(fit, source))
    if figure is not None:
        write_output("--plot", args.plot, figure.getvalue())
    if args.json:
        report = fit.report()
        report.update(base_url=backend.url, model=backend.model, tokens=args.tokens, prompt_tokens=args.prompt_tokens,
                      skip=args.skip, repeats=args.repeats, out=args.out)
        if report["churn"] is not None:
            report["churn"].update(concurrency=list(churn_levels), tokens=list(churn_tokens))
        print(json.dumps(report, indent=2))
    else:
        print(title)
        print(f"{args.tokens} tokens per request (steady state: tokens {args.skip}–{args.tokens - args.skip}), "
              f"{args.prompt_tokens}-token prompt, {args.repeats} round{'s' * (args.repeats > 1)} per level\n")
        print(format_batching(fit))
        if args.out is not None:
            print(f"\n[server] table written to {args.out}; use it with: jaxalloc calibrate fit MEASUREMENTS "
                  f"--server {args.out}")
    return 0


def _write(path: str, text: str) -> None:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib

    from ..servers import server_from_dict

    server_from_dict(tomllib.loads(text)["server"], ())  # what a profile will read back
    write_output("--out", path, text)
