"""`jaxalloc loadtest`: the subcommand, registered on the main parser.

`jaxalloc loadtest [PROFILE] --base-url URL [--served-model NAME] --model TOKENIZER_DIR
(--rate R1,R2,... --requests N | --trace FILE.csv [--requests N]) [--budgets a,b,...]
[--seed S] [--answer-tokens N] [--temperature T] [--timeout S] [--time-limit S]
[--out FILE.csv] [--plot FILE.png] [--json]` and the server flags.

Everything is checked before the first request (rates, trace, budgets, output paths,
tokenizer, that the server answers and streams token ids): bad input is one `error:`
line and exit status 2. Failed requests are counted in the table, never an error; a
rate at which no request succeeded ends with an `error:` line and status 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..files import check_writable
from .arrivals import LoadtestError, check_rate
from .run import DEFAULT_ANSWER_TOKENS


def add_loadtest_parser(subparsers) -> argparse.ArgumentParser:
    """Register `loadtest` on the main parser's subparsers; returns its parser."""
    from ..cli import _add_server_flags

    p = subparsers.add_parser(
        "loadtest", help="load a running vLLM/SGLang server and compare with the models' predictions",
        description="Send queries to an OpenAI-compatible server at Poisson rates (or replaying a trace), each with "
                    "its task's exact thinking budget, record their times, and print the measured mean, p50 and p95 "
                    "system time per task beside the predictions of the profile's server model and of the paper's "
                    "one FIFO server (docs/loadtest.md).",
    )
    p.add_argument("profile", nargs="?", help="TOML profile (default: the bundled paper profile)")
    p.add_argument("--base-url", required=True, metavar="URL", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--served-model", metavar="NAME", help="model name on the server (default: the first served)")
    p.add_argument("--model", required=True, metavar="TOKENIZER_DIR",
                   help="folder with the served model's tokenizer files (chat template, </think>)")
    p.add_argument("--rate", metavar="R1,R2,...", help="arrival rates λ in requests/s, one Poisson run each")
    p.add_argument("--requests", type=int, metavar="N", help="requests per rate (with --trace: its first N rows)")
    p.add_argument("--trace", metavar="FILE.csv", help="replay arrivals from a CSV with columns arrival_s,task "
                                                        "instead of Poisson arrivals")
    p.add_argument("--budgets", metavar="A,B,...",
                   help="thinking tokens per task (default: the profile's optimal integer budgets at its own λ)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="arrivals, task draws and sampling (default 0)")
    p.add_argument("--answer-tokens", type=int, default=DEFAULT_ANSWER_TOKENS, metavar="N",
                   help=f"cap on the answer after </think> (default {DEFAULT_ANSWER_TOKENS}, as calibrate measure)")
    p.add_argument("--temperature", type=float, default=0.1, metavar="T",
                   help="sampling temperature (default 0.1, as calibrate measure)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds a request may take from its arrival before it counts as failed (default 600)")
    p.add_argument("--time-limit", type=float, metavar="S",
                   help="seconds a rate may run; requests still running count as failed (default: its last arrival "
                        "+ --timeout)")
    p.add_argument("--baseline", type=int, default=0, metavar="N",
                   help="before each rate, N queries of every task one at a time: the host's speed now against the "
                        "profile's service times scales the predictions (a machine whose speed drifts; default 0: off)")
    p.add_argument("--out", metavar="FILE.csv", help="write one row per request (rewritten after each rate)")
    p.add_argument("--plot", metavar="FILE.png", help="measured and predicted mean system time against λ")
    p.add_argument("--json", action="store_true", help="print JSON for programs")
    _add_server_flags(p)
    p.set_defaults(command_run=cmd_loadtest)
    return p


def parse_rates(text: str) -> list[float]:
    """``R1,R2,...`` → positive rates; :class:`LoadtestError` naming the first bad one."""
    return [check_rate(part.strip()) for part in text.split(",")]


def cmd_loadtest(args) -> int:
    """Run `jaxalloc loadtest` (see the module docstring)."""
    from ..cli import _load
    from ..errors import Interrupted
    from .run import loadtest
    from .summary import format_summary, jsonable, write_records

    rates = parse_rates(args.rate) if args.rate is not None else None
    if args.plot is not None:
        from ..plots import _pyplot

        _pyplot()
        check_writable("--plot", args.plot)
    if args.out is not None:
        check_writable("--out", args.out)
    problem, name = _load(args.profile, args, overrides=False)
    written = []

    def keep(records):
        if args.out is not None:
            write_records(records, args.out)
            written.append(len(records))

    progress = (lambda line: print(f"jaxalloc loadtest: {line}", file=sys.stderr, flush=True))
    try:
        result = loadtest(problem, base_url=args.base_url, served_model=args.served_model, tokenizer_dir=args.model,
                          rates=rates, requests=args.requests, budgets=args.budgets, trace=args.trace, seed=args.seed,
                          answer_tokens=args.answer_tokens, temperature=args.temperature, timeout=args.timeout,
                          time_limit=args.time_limit, baseline=args.baseline, progress=progress, on_rate=keep)
    except KeyboardInterrupt:
        kept = (f"{written[-1]} records of the finished rates kept in {args.out}" if written else "nothing written")
        raise Interrupted(kept) from None
    if args.plot is not None:
        from .plot import plot_loadtest

        plot_loadtest(result, result.problem, args.plot,
                      title=f"jaxalloc loadtest: {name}, {result.served_model}")
    if args.json:
        doc = result.to_json()
        doc.update(profile=name, out=args.out, plot=args.plot)
        print(json.dumps(jsonable(doc), indent=1))
    else:
        print(format_summary(result, title=f"jaxalloc loadtest: {name} ({problem.num_tasks} tasks)"))
        for flag, path in (("--out", args.out), ("--plot", args.plot)):
            if path is not None:
                print(f"wrote {path}")
    failed = sum(s["failed"] for s in result.summary)
    if failed:
        print(f"note: {failed} request{'s' if failed > 1 else ''} failed (see the failures per rate"
              f"{' and the status column of ' + args.out if args.out else ''})", file=sys.stderr)
    dead = [s for s in result.summary if s["ok"] == 0]
    if dead:
        print(f"error: loadtest: no request succeeded at rate {dead[0]['rate']:g}/s "
              f"({', '.join(f'{k} {v}' for k, v in dead[0]['failures'].items()) or 'none sent'})", file=sys.stderr)
        return 1
    return 0


__all__ = ["LoadtestError", "add_loadtest_parser", "cmd_loadtest", "parse_rates"]
