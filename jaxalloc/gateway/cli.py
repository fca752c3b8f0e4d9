"""`jaxalloc gateway`: the subcommand, registered on the main parser.

`jaxalloc gateway [PROFILE] --upstream URL [--listen 127.0.0.1:8100] [--resolve-every 5]
[--window 60] [--task-header X-Task] [--task-field metadata.task] [--default-task NAME]
[--enforce cap|exact] [--model TOKENIZER_DIR] [--answer-tokens N] [--min-gain G] [--max-body BYTES] [--timeout S]
[--pin TASK=N,...] [--json-logs]` and the server flags.

Bad flags are one `error:` line and exit status 2 before anything listens; the re-solve is
compiled before the gateway starts listening (a few seconds), so the first request already
meets the budgets. Ctrl-C stops it (status 130).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

from .enforce import DEFAULT_ANSWER_TOKENS, ENFORCE


def add_gateway_parser(subparsers) -> argparse.ArgumentParser:
    """Register `gateway` on the main parser's subparsers; returns its parser."""
    from ..cli import _add_server_flags

    p = subparsers.add_parser(
        "gateway", help="an OpenAI-compatible proxy in front of vLLM/SGLang that applies the budgets and follows the load",
        description="Proxy /v1/chat/completions and /v1/completions to an upstream server, apply each task's thinking "
                    "budget, estimate the arrival rate and task mix on a sliding window and re-solve the profile's "
                    "problem every few seconds (docs/gateway.md).",
    )
    p.add_argument("profile", nargs="?", help="TOML profile (default: the bundled paper profile)")
    p.add_argument("--upstream", required=True, metavar="URL", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--listen", default="127.0.0.1:8100", metavar="HOST:PORT", help="where to listen (default %(default)s)")
    p.add_argument("--resolve-every", type=float, default=5.0, metavar="S", help="seconds between re-solves (default 5)")
    p.add_argument("--window", type=float, default=60.0, metavar="S", help="seconds of arrivals that λ and π are "
                   "estimated on (default 60)")
    p.add_argument("--task-header", default="X-Task", metavar="NAME", help="header naming the task (default X-Task)")
    p.add_argument("--task-field", default="metadata.task", metavar="PATH",
                   help="body field naming the task, dotted (default metadata.task)")
    p.add_argument("--default-task", metavar="NAME", help="task of a request that names none (default: a 400)")
    p.add_argument("--enforce", choices=ENFORCE, default="cap", help="cap: vLLM's thinking_token_budget; exact: "
                   "the two-phase exact budget of calibrate measure (default cap)")
    p.add_argument("--model", metavar="TOKENIZER_DIR", help="the served model's tokenizer folder (--enforce exact "
                   "renders the chat template itself)")
    p.add_argument("--answer-tokens", type=int, default=DEFAULT_ANSWER_TOKENS, metavar="N",
                   help="room for the answer after the thinking, in max_tokens (default %(default)s)")
    p.add_argument("--min-gain", type=float, default=1e-3, metavar="G",
                   help="J gain that moves the budgets (default 0.001: a tenth of an accuracy point)")
    p.add_argument("--max-body", type=int, default=4 * 2**20, metavar="BYTES", help="largest request body (default 4 MiB)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="seconds an upstream answer may take "
                   "(default 600)")
    p.add_argument("--pin", metavar="TASK=N,...", help="apply these budgets whatever the load (every task named; "
                   "the re-solves still run for the metrics and the alarm): fixed budgets, or an A/B baseline")
    p.add_argument("--json-logs", action="store_true", help="log one JSON object per line on stderr")
    _add_server_flags(p)
    p.set_defaults(command_run=cmd_gateway)
    return p


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``event`` and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower(), "event": record.getMessage()}
        doc.update(getattr(record, "fields", {}) or {})
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """``jaxalloc gateway: EVENT key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in (getattr(record, "fields", {}) or {}).items())
        return f"jaxalloc gateway: {time.strftime('%H:%M:%S')} {record.getMessage()} {fields}".rstrip()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); a ValueError naming ``--listen``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen = {text!r}: expected HOST:PORT, such as 127.0.0.1:8100")
    return host, int(port)


def parse_pin(text: str | None, names) -> tuple[int, ...] | None:
    """``GSM8K=40,AIME=200`` → the budgets in the profile's task order; a ValueError naming ``--pin``."""
    if text is None:
        return None
    given: dict[str, int] = {}
    for part in text.split(","):
        task, sep, value = part.strip().partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"--pin = {text!r}: expected TASK=N pairs, N a whole number >= 0 (got {part!r})")
        if task not in names:
            raise ValueError(f"--pin: unknown task {task!r} (the profile's tasks: {', '.join(names)})")
        given[task] = int(value)
    missing = [n for n in names if n not in given]
    if missing:
        raise ValueError(f"--pin: no budget for {', '.join(missing)} (every task needs one)")
    return tuple(given[n] for n in names)


def cmd_gateway(args) -> int:
    """Run `jaxalloc gateway` until Ctrl-C."""
    from ..cli import _load

    try:
        from .app import LOG, Gateway, event
    except ImportError as err:
        raise ValueError(f"gateway needs the 'gateway' extra (pip install 'jaxalloc[gateway]'): {err}") from None

    host, port = parse_listen(args.listen)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if args.json_logs else TextFormatter())
    LOG.handlers[:] = [handler]
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    problem, name = _load(args.profile, args, overrides=False)
    names = tuple(str(n) for n in problem.names) or tuple(f"task{k}" for k in range(problem.num_tasks))
    pin = parse_pin(args.pin, names)
    gateway = Gateway(problem, args.upstream, enforce=args.enforce, window=args.window,
                      resolve_every=args.resolve_every, task_header=args.task_header, task_field=args.task_field,
                      default_task=args.default_task, answer_tokens=args.answer_tokens, min_gain=args.min_gain,
                      max_body=args.max_body, timeout=args.timeout, tokenizer_dir=args.model, pin=pin)

    async def main() -> None:
        runner = await gateway.serve(host, port)
        event("listening", url=f"http://{host}:{gateway.port}", upstream=gateway.upstream, profile=name,
              budgets=dict(zip(gateway.names, gateway.decision.budgets)), enforce=gateway.enforce,
              resolve_ms=round(1e3 * gateway.decision.seconds, 3))
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return 0


__all__ = ["add_gateway_parser", "cmd_gateway", "parse_listen", "parse_pin"]
