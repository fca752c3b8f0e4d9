"""The measuring run: every (repeat, budget, task, item), graded and timed, appended as rows.

Rows are written in the measurement format (``task, budget, repeat, correct,
service_s`` plus ``item, prefill_s, decode_s, thinking_tokens,
answer_tokens``), one per answered item, each appended and synced as soon as
it is graded. A run that is stopped (Ctrl-C, a kill, a crash) and started
again with the same options skips every (task, budget, repeat, item) already
in the file, so nothing is measured twice and no row is duplicated; a last
line torn by a kill is dropped before appending. The settings that change the
rows are recorded with the file (:mod:`~jaxalloc.calibrate.settings`) and a
run with other settings is refused instead of mixed in; ``force_new`` starts
the file afresh. Ctrl-C raises :class:`~jaxalloc.errors.Interrupted`, which
says how many answers are kept.

Order: repeats outermost, then budgets, then tasks, then items, so that a
partial file already holds every budget of the first repeat.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from ..errors import Interrupted
from .benchmarks import Item, grade
from .chat import ThinkingFormat, decode, prompt_ids
from .data import append_rows, resume_keys
from .generate import Generation
from .settings import METADATA_KEY, check_settings, discard, settings_document, write_settings


class Backend(Protocol):
    """What a measuring run needs from a model: budget-forced generation."""

    name: str

    def generate(self, prompt: Sequence[int], budget: int, answer_tokens: int, *, temperature: float = 0.0,
                 seed: int = 0) -> Generation: ...


class MeasureReport(NamedTuple):
    """What a measuring run did.

    **Fields:** `written` (rows appended now); `skipped` (already in the
    file); `groups`: ``{(task, budget): {"n", "correct", "service_s"}}`` over
    the rows written now (``service_s`` summed).
    """

    written: int
    skipped: int
    groups: dict

    def table(self) -> list[dict]:
        """One dict per (task, budget): `task`, `budget`, `n`, `accuracy`, `mean_service_s`; by budget,
        then the tasks in the order measured."""
        order = {t: i for i, t in enumerate(dict.fromkeys(t for t, _ in self.groups))}
        return [{"task": t, "budget": b, "n": g["n"], "accuracy": g["correct"] / g["n"],
                 "mean_service_s": g["service_s"] / g["n"]}
                for (t, b), g in sorted(self.groups.items(), key=lambda kv: (kv[0][1], order[kv[0][0]]))]


def query_seed(seed: int, task: str, item: str, budget: int, repeat: int) -> int:
    """A sampling seed that depends only on the run's `seed` and the query's key."""
    return zlib.crc32(f"{seed}/{task}/{item}/{budget}/{repeat}".encode()) & 0x7FFFFFFF


def _progress(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return None
    return tqdm(total=total, unit="query", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def measure(backend: Backend, tokenizer, fmt: ThinkingFormat, tasks: Mapping[str, Sequence[Item]],
            budgets: Sequence[int], out: str, *, repeats: int = 1, answer_tokens: int = 512,
            temperature: float = 0.0, seed: int = 0, progress: bool = True,
            transcript: str | None = None, settings: Mapping[str, object] | None = None,
            force_new: bool = False) -> MeasureReport:
    """Measure accuracy and service time of every task at every budget; append rows to `out`.

    **Arguments:**

    - `backend`: a :class:`~jaxalloc.calibrate.generate.LocalBackend` or
      :class:`~jaxalloc.calibrate.openai_backend.OpenAIBackend`.
    - `tokenizer`, `fmt`: the model's tokenizer and :class:`ThinkingFormat`.
    - `tasks`: task name → items (:func:`~jaxalloc.calibrate.benchmarks.load_task`).
    - `budgets`: thinking budgets ℓ (tokens, ≥ 0).
    - `out`: measurement file (``.csv``; appended to, created if missing).
    - `repeats`: independent runs per (task, budget, item), numbered from 0.
    - `answer_tokens`: cap on the answer after ``</think>``.
    - `temperature`, `seed`: sampling (0: greedy); each query's seed is
      :func:`query_seed` of its key, so a resumed run samples as an
      uninterrupted one would.
    - `progress`: show a progress bar on stderr.
    - `transcript`: optional JSON Lines file that gets each answer's text,
      extracted answer, reference and request timings.
    - `settings`: more settings that change the rows, for the file's
      fingerprint (:func:`run_settings`), e.g. ``{"model": path}``.
    - `force_new`: delete `out` and its settings file first (a note on
      stderr) instead of resuming.

    **Returns:** a :class:`MeasureReport`. Raises
    :class:`~jaxalloc.calibrate.settings.ResumeError` (before any query) when
    `out` holds rows measured with other settings, or rows without a record
    of their settings; :class:`~jaxalloc.errors.Interrupted` on Ctrl-C, saying
    how many of the run's answers are in `out`.
    """
    budgets = [int(b) for b in budgets]
    if any(b < 0 for b in budgets):
        raise ValueError(f"budgets = {budgets}: must be >= 0")
    if repeats < 1:
        raise ValueError(f"repeats = {repeats}: must be >= 1")
    if answer_tokens < 1:
        raise ValueError(f"answer_tokens = {answer_tokens}: must be >= 1")
    fingerprint = run_settings(backend, answer_tokens=answer_tokens, temperature=temperature, seed=seed,
                               extra=settings)
    if force_new:
        note = discard(out)
        if note:
            print(note, file=sys.stderr)
    else:
        check_settings(out, fingerprint)
    write_settings(out, fingerprint)
    metadata = {METADATA_KEY: settings_document(fingerprint)}  # Parquet: also inside the file
    done = resume_keys(out)
    # item by item, each item's budgets in turn, the turn rotated from one item to the next: a host whose
    # speed drifts during the run slows every budget alike (budget by budget, it would bend t(ℓ) = t0 + cℓ),
    # and the first visit of a prompt (no prefix cached yet) falls on every budget as often
    items = [item for its in tasks.values() for item in its]
    todo = [(r, budgets[(i + j) % len(budgets)], item) for r in range(repeats) for i, item in enumerate(items)
            for j in range(len(budgets)) if (item.task, budgets[(i + j) % len(budgets)], r, item.id) not in done]
    total = sum(len(items) for items in tasks.values()) * len(budgets) * repeats
    skipped = total - len(todo)
    prompts: dict[tuple[str, str], list[int]] = {}
    groups: dict = {}
    written = 0
    bar = _progress(len(todo), progress)
    with contextlib.ExitStack() as cleanup:
        if bar is not None:
            cleanup.callback(bar.close)
        # the objects alive now (JAX's, transformers') out of the collector's way: a full collection over
        # them stalls this process for about half a second, which a query in flight would count as service
        # time (with the OpenAI backend, one such stall in 8 queries moved a mean by 0.12 s in a CI run)
        gc.collect()
        gc.freeze()
        cleanup.callback(gc.unfreeze)
        log = cleanup.enter_context(open(transcript, "a", encoding="utf-8")) if transcript else None
        try:
            for repeat, budget, item in todo:
                key = (item.task, item.id)
                if key not in prompts:
                    prompts[key] = prompt_ids(tokenizer, fmt, item.question)
                gen = backend.generate(prompts[key], budget, answer_tokens, temperature=temperature,
                                       seed=query_seed(seed, item.task, item.id, budget, repeat))
                text = decode(tokenizer, gen.answer_ids, fmt.stop_ids)
                result = grade(text, item)
                row = {"task": item.task, "budget": budget, "repeat": repeat, "item": item.id,
                       "correct": bool(result.correct), "service_s": gen.service_s, "prefill_s": gen.prefill_s,
                       "decode_s": gen.decode_s, "thinking_tokens": gen.thinking_tokens,
                       "answer_tokens": gen.answer_tokens}
                append_rows(out, [row], metadata)
                written += 1
                if log is not None:
                    log.write(json.dumps(dict(row, prompt_tokens=gen.prompt_tokens, answer=text,
                                              extracted=result.extracted, reference=item.reference,
                                              requests=list(gen.requests))) + "\n")
                    log.flush()
                g = groups.setdefault((item.task, budget), {"n": 0, "correct": 0, "service_s": 0.0})
                g["n"] += 1
                g["correct"] += int(result.correct)
                g["service_s"] += gen.service_s
                if bar is not None:
                    bar.set_postfix_str(f"{item.task} ℓ={budget} r={repeat}", refresh=False)
                    bar.update(1)
        except KeyboardInterrupt:
            raise Interrupted(f"{skipped + written} of {total} answers kept in {out}; "
                              "run the same command to resume") from None
    return MeasureReport(written, skipped, groups)


def run_settings(backend: Backend, *, answer_tokens: int, temperature: float, seed: int,
                 extra: Mapping[str, object] | None = None) -> dict:
    """The fingerprint of a measuring run: the settings that change its rows.

    `backend` (its name) and `served_model` (the backend's `model` attribute,
    where it has one: the served model of an OpenAI-compatible server),
    `answer_tokens`, `temperature`, `seed`, and the `extra` settings the
    caller knows (the command line: `model`, and `dtype` for ``flax``; values
    other than JSON numbers, strings, booleans and None are kept as text). See
    :mod:`~jaxalloc.calibrate.settings` for what is left out and why.
    """
    fingerprint: dict = {"backend": backend.name, "answer_tokens": int(answer_tokens),
                         "temperature": float(temperature), "seed": int(seed)}
    if getattr(backend, "model", None) is not None:
        fingerprint["served_model"] = str(backend.model)
    for key, value in (extra or {}).items():
        fingerprint[str(key)] = value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
    return fingerprint


def parse_task(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` of ``--task`` → (name, path); ValueError naming the spec otherwise."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(f"--task = {spec!r}: expected NAME=PATH, e.g. gsm8k=data/gsm8k_test.jsonl")
    return name.strip(), os.path.expanduser(path.strip())


def parse_budgets(text: str) -> list[int]:
    """``--budgets 0,64,256``: distinct integers ≥ 0, in the given order."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--budgets = {text!r}: expected comma-separated integers, e.g. 0,64,256,1024") from None
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"--budgets = {text!r}: need distinct integers >= 0")
    return values
