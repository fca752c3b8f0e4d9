"""`jaxalloc calibrate measure`: measure a model under exact thinking budgets, append rows.

`jaxalloc calibrate measure --model PATH --task NAME=PATH [--task ...] --out FILE.csv
[--budgets 0,64,256,1024] [--samples 250] [--repeats 3] [--answer-tokens 512]
[--temperature 0.1] [--seed 0] [--backend flax|openai] [--base-url URL]
[--served-model NAME] [--dtype auto|bfloat16|float32] [--transcript FILE.jsonl]
[--force-new] [--no-progress] [--json]`

Everything is checked before the first query (task files read, budgets,
output folder, model files, and that FILE was measured with the same
settings): bad input is one `error:` line and exit status 2. A server failure
during the run is an `error:` line and status 1; Ctrl-C is
``interrupted: N of M answers kept in FILE; run the same command to resume``
and status 130. Rows already written stay, and the same command resumes.

The settings that change the rows (model, backend, served model, dtype,
seed, temperature, answer tokens) are recorded in ``FILE.settings.json``
(and, for Parquet, in the file's metadata); a run with other settings is
refused, naming each as old → new, and ``--force-new`` discards the file to
start afresh (see :mod:`jaxalloc.calibrate.settings`).
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

from ..files import check_writable
from .data import CalibrationError


def add_measure_parser(group) -> None:
    """Add `measure` to the `calibrate` subparsers `group`."""
    p = group.add_parser(
        "measure", help="measure accuracy and service time of a model at enforced thinking budgets",
        description="Run each benchmark item with exactly L thinking tokens (budget forcing), grade the answer, "
                    "time prefill and decode, and append one row per answer to a measurement file that "
                    "'jaxalloc calibrate fit' reads. Stopped runs resume where they stopped.",
    )
    p.add_argument("--model", required=True, metavar="PATH",
                   help="local Hugging Face checkpoint folder (config.json, tokenizer, *.safetensors); with "
                        "--backend openai only its tokenizer files are used")
    p.add_argument("--task", action="append", required=True, metavar="NAME=PATH",
                   help="benchmark and its local file, repeatable; NAME: gsm8k, aime, gpqa, cruxeval, bbh, arc")
    p.add_argument("--out", required=True, metavar="FILE.csv",
                   help="measurement file (.csv or .parquet), appended to: the same command resumes a stopped run; "
                        "its settings are kept in FILE.settings.json")
    p.add_argument("--budgets", default="0,64,256,1024", metavar="A,B,...",
                   help="thinking budgets in tokens (default 0,64,256,1024)")
    p.add_argument("--samples", type=int, default=250, metavar="N",
                   help="items per task, a seeded random choice (default 250, the paper's)")
    p.add_argument("--repeats", type=int, default=3, metavar="R", help="independent runs (default 3, the paper's)")
    p.add_argument("--answer-tokens", type=int, default=512, metavar="N",
                   help="cap on the answer after </think> (default 512)")
    p.add_argument("--temperature", type=float, default=0.1, metavar="T",
                   help="sampling temperature, 0 for greedy (default 0.1, the paper's)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="item choice, option order and sampling seed")
    p.add_argument("--backend", choices=["flax", "openai"], default="flax",
                   help="flax: run the checkpoint here in JAX (default); openai: a running vLLM/SGLang server")
    p.add_argument("--base-url", metavar="URL", help="with --backend openai: the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--served-model", metavar="NAME", help="with --backend openai: model name (default: the first served)")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="flax backend: parameter dtype (default: the checkpoint's)")
    p.add_argument("--transcript", metavar="FILE.jsonl", help="also log every answer, extracted answer and timing")
    p.add_argument("--force-new", action="store_true",
                   help="discard the --out file (and its FILE.settings.json) and start afresh instead of resuming; "
                        "needed when the file was measured with other settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(calibrate_run=cmd_measure)


def _check(args):
    from .benchmarks import load_task
    from .measure import parse_budgets, parse_task

    budgets = parse_budgets(args.budgets)
    for flag, value, least in (("--samples", args.samples, 1), ("--repeats", args.repeats, 1),
                               ("--answer-tokens", args.answer_tokens, 1)):
        if value < least:
            raise CalibrationError(f"{flag} = {value}: must be >= {least}")
    if not args.temperature >= 0:
        raise CalibrationError(f"--temperature = {args.temperature}: must be >= 0")
    if not args.out.lower().endswith((".csv", ".parquet", ".pq")):
        raise CalibrationError(f"--out = {args.out!r}: expected a .csv or .parquet file")
    for flag, path in (("--out", args.out), ("--transcript", args.transcript)):
        if path is not None:
            check_writable(flag, path)
    if args.backend == "openai" and not args.base_url:
        raise CalibrationError("--backend openai needs --base-url URL")
    if args.backend == "flax" and (args.base_url or args.served_model):
        raise CalibrationError("--base-url/--served-model: only with --backend openai")
    tasks = {}
    for spec in args.task:
        name, path = parse_task(spec)
        items = load_task(name, path, samples=args.samples, seed=args.seed)
        if items[0].task in tasks:
            raise CalibrationError(f"--task = {spec!r}: task {items[0].task} given twice")
        tasks[items[0].task] = items
    return budgets, tasks


def _settings(args) -> dict:
    """The settings of the fingerprint that only the command line knows (see :func:`~.measure.run_settings`)."""
    settings = {"model": os.path.realpath(args.model)}
    if args.backend == "flax":
        settings["dtype"] = args.dtype
    return settings


def _backend(args, fmt, tokenizer):
    if args.backend == "openai":
        from .openai_backend import OpenAIBackend

        backend = OpenAIBackend(args.base_url, fmt, args.served_model)
        backend.complete([int(t) for t in fmt.open_ids], max_tokens=2)  # warm-up, untimed
        return backend
    import jax.numpy as jnp

    from .generate import Engine, LocalBackend
    from .qwen3 import load_qwen3

    dtype = {"auto": None, "bfloat16": jnp.bfloat16, "float32": jnp.float32}[args.dtype]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return LocalBackend(Engine(load_qwen3(args.model, dtype), pad_id=pad), fmt)


def cmd_measure(args) -> int:
    """Run `jaxalloc calibrate measure` (see the module docstring)."""
    try:
        from .chat import load_tokenizer, thinking_format
        from .measure import measure
    except ImportError as err:
        raise CalibrationError(f"calibrate measure needs the 'calibrate' extra "
                               f"(pip install 'jaxalloc[calibrate]'): {err}") from None
    from ..errors import Interrupted
    from .measure import run_settings
    from .openai_backend import ServerError
    from .settings import check_settings

    budgets, tasks = _check(args)
    settings = _settings(args)
    if not args.force_new:  # before loading the model; measure() checks again, knowing the served model
        named = SimpleNamespace(name=args.backend, model=args.served_model)
        known = run_settings(named, answer_tokens=args.answer_tokens, temperature=args.temperature,
                             seed=args.seed, extra=settings)
        check_settings(args.out, known, partial=True)
    tokenizer = load_tokenizer(args.model)
    fmt = thinking_format(tokenizer, args.model)
    total = sum(len(v) for v in tasks.values()) * len(budgets) * args.repeats
    try:
        backend = _backend(args, fmt, tokenizer)
        print(f"jaxalloc calibrate measure: {len(tasks)} tasks × {len(budgets)} budgets × {args.repeats} repeats, "
              f"{total} answers ({backend.name} backend) → {args.out}", file=sys.stderr)
        report = measure(backend, tokenizer, fmt, tasks, budgets, args.out, repeats=args.repeats,
                         answer_tokens=args.answer_tokens, temperature=args.temperature, seed=args.seed,
                         progress=not args.no_progress, transcript=args.transcript, settings=settings,
                         force_new=args.force_new)
    except ServerError as err:
        print(f"error: {' '.join(str(err).split())} (rows so far are kept; rerun to resume)", file=sys.stderr)
        return 1
    except Interrupted:
        raise  # from measure(), counting the answers kept; the command line prints it
    except KeyboardInterrupt:
        raise Interrupted(f"stopped before measuring; nothing was added to {args.out}") from None
    if args.json:
        print(json.dumps({"out": args.out, "written": report.written, "skipped": report.skipped,
                          "groups": report.table()}, indent=2))
    else:
        print(f"{report.written} rows written to {args.out}, {report.skipped} already there")
        print(f"{'task':<15}{'budget':>8}{'n':>6}{'accuracy':>10}{'mean service (s)':>18}")
        for g in report.table():
            print(f"{g['task']:<15}{g['budget']:>8}{g['n']:>6}{g['accuracy']:>10.4f}{g['mean_service_s']:>18.4f}")
    return 0
