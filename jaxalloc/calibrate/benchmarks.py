"""Loaders and graders for the paper's six benchmarks, in their published file formats.

Files are read from local paths only (JSON Lines, JSON, CSV, or Parquet with
`pyarrow` installed):

======================  =====================================================
task (``--task NAME=``)  file format
======================  =====================================================
GSM8K (``gsm8k``)        ``question``, ``answer`` (solution ending ``#### 72``)
AIME (``aime``)          ``problem``/``Problem``/``question``, ``answer``/``Answer``
GPQA (``gpqa``)          CSV with ``Question``, ``Correct Answer``,
                         ``Incorrect Answer 1..3`` (options shuffled per item, seeded)
CRUXEval (``cruxeval``)  ``code``, ``input``, ``output`` (CRUXEval-O: predict the output)
BBH (``bbh``)            ``{"examples": [{"input", "target"}]}`` per subtask, one
                         file or a folder of them
ARC-Challenge (``arc``)  AI2 format (``question.stem``, ``question.choices``,
                         ``answerKey``) or the flattened one (``question``,
                         ``choices.text``/``choices.label``)
======================  =====================================================

Answers are extracted as the standard harnesses do: for maths the last
``\\boxed{}``, else ``#### x``, else the number after the last "the answer
is"/"Answer:", else the last number; for multiple choice the last explicit
answer (``\\boxed{C}``, ``Answer: C``, ``the answer is (C)``), then ``(C) is
correct``, a last line that is only the letter, or the last ``(C)`` (a bare
letter counts only in capitals: "answer a few questions" names no option);
a reply without an answer is wrong; the text after the last "the answer is" for BBH; the literal in the
last ``[ANSWER]…[/ANSWER]`` for CRUXEval, compared with the reference by
``ast.literal_eval`` (model output is never run: no ``eval``/``exec``).
"""

from __future__ import annotations

import ast
import csv
import functools
import glob
import json
import os
import re
import zlib
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np


class BenchmarkError(ValueError):
    """A benchmark file that cannot be read, or an unknown task name."""


class Item(NamedTuple):
    """One benchmark question.

    **Fields:** `task` (canonical task name); `id` (unique within the task);
    `question` (the user message sent to the model); `reference` (the
    reference answer: a number as text, an option label, a BBH target or a
    Python literal); `labels` (option labels for multiple choice, else ()).
    """

    task: str
    id: str
    question: str
    reference: str
    labels: tuple[str, ...] = ()


class Grade(NamedTuple):
    """A graded reply: `correct`, and the `extracted` answer (None: no answer found)."""

    correct: bool
    extracted: str | None


# ----------------------------------------------------------------------------- reading files


def read_records(path: str) -> list[dict]:
    """Records of a JSON Lines, JSON, CSV or Parquet file (a JSON object's list under
    ``examples``/``data``/``rows`` counts as its records).

    **Arguments:** `path`. **Returns:** a list of dicts. Raises :class:`BenchmarkError`.
    """
    if not os.path.isfile(path):
        raise BenchmarkError(f"benchmark file {path!r}: no such file")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".jsonl":
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if ext == ".json":
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict):
                for key in ("examples", "data", "rows"):
                    if isinstance(data.get(key), list):
                        return data[key]
                raise BenchmarkError(f"benchmark file {path!r}: a JSON object without an 'examples' list")
            return list(data)
        if ext == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if ext == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise BenchmarkError(f"benchmark file {path!r}: reading Parquet needs pyarrow") from None
            return pq.read_table(path).to_pylist()
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as err:
        raise BenchmarkError(f"benchmark file {path!r}: {' '.join(str(err).split())}") from None
    raise BenchmarkError(f"benchmark file {path!r}: unknown extension {ext!r} (jsonl, json, csv, parquet)")


def _field(record: dict, names: tuple[str, ...], path: str, index: int):
    for name in names:
        if name in record and record[name] not in (None, ""):
            return record[name]
    raise BenchmarkError(f"benchmark file {path!r}: record {index} has no field {' / '.join(names)}")


def _ident(record: dict, index: int, names=("id", "ID", "Record ID", "task_id", "idx")) -> str:
    for name in names:
        if record.get(name) not in (None, ""):
            return str(record[name])
    return str(index)


# ----------------------------------------------------------------------------- prompts

MATH_PROMPT = "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CHOICE_PROMPT = "{question}\n\n{options}\n\nGive the letter of the correct option as your final answer, in \\boxed{{}}."
BBH_PROMPT = '{question}\n\nEnd your reply with "So the answer is X." where X is your final answer.'
CRUX_PROMPT = (
    "Here is a Python function and an assertion with an input to it. What is the output?\n\n"
    "```python\n{code}\nassert f({input}) == ??\n```\n\n"
    "Give the output as a Python literal between [ANSWER] and [/ANSWER], for example [ANSWER]'abc'[/ANSWER]."
)


def _options(labels, texts) -> str:
    return "\n".join(f"({label}) {str(text).strip()}" for label, text in zip(labels, texts))


# ----------------------------------------------------------------------------- loaders


def load_gsm8k(path: str, seed: int = 0) -> list[Item]:
    """GSM8K items (the reference is the number after ``####``)."""
    items = []
    for i, r in enumerate(read_records(path)):
        answer = str(_field(r, ("answer",), path, i))
        final = answer.rsplit("####", 1)[-1].strip().replace(",", "")
        items.append(Item("GSM8K", _ident(r, i), MATH_PROMPT.format(question=_field(r, ("question",), path, i)), final))
    return items


def load_aime(path: str, seed: int = 0) -> list[Item]:
    """AIME items (integer answers 0-999)."""
    items = []
    for i, r in enumerate(read_records(path)):
        problem = _field(r, ("problem", "Problem", "question", "Question"), path, i)
        answer = str(_field(r, ("answer", "Answer"), path, i)).strip()
        items.append(Item("AIME", _ident(r, i), MATH_PROMPT.format(question=problem), answer))
    return items


def _permutation(key: str, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, zlib.crc32(key.encode())]).permutation(n)


def load_gpqa(path: str, seed: int = 0) -> list[Item]:
    """GPQA items; the four options are shuffled per item (seeded by `seed` and the item id)."""
    items = []
    for i, r in enumerate(read_records(path)):
        question = str(_field(r, ("Question",), path, i)).strip()
        options = [_field(r, ("Correct Answer",), path, i)] + [
            _field(r, (f"Incorrect Answer {k}",), path, i) for k in (1, 2, 3)]
        ident = _ident(r, i)
        order = _permutation(ident, 4, seed)
        labels = ("A", "B", "C", "D")
        texts = [options[j] for j in order]
        reference = labels[int(np.flatnonzero(order == 0)[0])]
        prompt = CHOICE_PROMPT.format(question=question, options=_options(labels, texts))
        items.append(Item("GPQA", ident, prompt, reference, labels))
    return items


def load_arc(path: str, seed: int = 0) -> list[Item]:
    """ARC-Challenge items (AI2 JSON Lines or the flattened Hugging Face layout)."""
    items = []
    for i, r in enumerate(read_records(path)):
        q = _field(r, ("question",), path, i)
        if isinstance(q, dict):  # AI2: {"stem", "choices": [{"text", "label"}]}
            stem, choices = q.get("stem", ""), q.get("choices", [])
            labels, texts = [str(c["label"]) for c in choices], [c["text"] for c in choices]
        else:  # flattened: "choices": {"text": [...], "label": [...]}
            choices = _field(r, ("choices",), path, i)
            if isinstance(choices, str):
                choices = json.loads(choices)
            stem, labels, texts = q, [str(x) for x in choices["label"]], list(choices["text"])
        if not labels:
            raise BenchmarkError(f"benchmark file {path!r}: record {i} has no choices")
        reference = str(_field(r, ("answerKey",), path, i)).strip()
        prompt = CHOICE_PROMPT.format(question=str(stem).strip(), options=_options(labels, texts))
        items.append(Item("ARC-Challenge", _ident(r, i), prompt, reference, tuple(labels)))
    return items


def load_bbh(path: str, seed: int = 0) -> list[Item]:
    """BIG-Bench Hard items from one subtask file or a folder of them (ids ``subtask/index``)."""
    files = sorted(glob.glob(os.path.join(path, "*.json")) + glob.glob(os.path.join(path, "*.jsonl"))) \
        if os.path.isdir(path) else [path]
    if not files:
        raise BenchmarkError(f"benchmark folder {path!r}: no .json files")
    items = []
    for file in files:
        sub = os.path.splitext(os.path.basename(file))[0]
        for i, r in enumerate(read_records(file)):
            question = str(_field(r, ("input",), file, i))
            target = str(_field(r, ("target",), file, i)).strip()
            labels = tuple(re.findall(r"^\(([A-Z])\)", question, re.MULTILINE)) if re.fullmatch(r"\([A-Z]\)", target) else ()
            items.append(Item("BBH", f"{sub}/{i}", BBH_PROMPT.format(question=question), target, labels))
    return items


def load_cruxeval(path: str, seed: int = 0) -> list[Item]:
    """CRUXEval-O items: predict ``f(input)`` from the code."""
    items = []
    for i, r in enumerate(read_records(path)):
        code = str(_field(r, ("code",), path, i)).strip()
        prompt = CRUX_PROMPT.format(code=code, input=_field(r, ("input",), path, i))
        items.append(Item("CRUXEval", _ident(r, i), prompt, str(_field(r, ("output",), path, i))))
    return items


# ----------------------------------------------------------------------------- answer extraction


_BOX = re.compile(r"\\(?:boxed|fbox)\{")


def _box_content(text: str, start: int) -> str | None:
    """Content of the box whose ``\\boxed{`` starts at `start`, braces balanced; None if unclosed."""
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1: j].strip()
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``), braces balanced; None if none (or unclosed)."""
    starts = [m.start() for m in _BOX.finditer(text)]
    return _box_content(text, starts[-1]) if starts else None


_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")


def parse_number(text: str) -> Fraction | None:
    """The number in a short answer: ``1,234``, ``$18.00``, ``\\frac{3}{4}``, ``-5``, ``50\\%``."""
    s = re.sub(r"\\text\{[^}]*\}|\\mathrm\{[^}]*\}|\\[,;!]|\\ |\$|\\%|%", " ", text)
    frac = re.search(r"(-?)\\d?frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if frac and int(frac.group(3)) != 0:
        value = Fraction(int(frac.group(2)), int(frac.group(3)))
        return -value if frac.group(1) else value
    numbers = _NUMBER.findall(s)
    if not numbers:
        return None
    return Fraction(numbers[-1].replace(",", ""))


# "The answer is 18", "Answer: $18", "the final answer is: **-3.5**"; not "the answer is 5 + 3 = 8"
_SAID_NUMBER = re.compile(rf"(?i:\banswer\b)(?:\s+is\b\s*:?|\s*[:=])[\s*$\\(]*({_NUMBER.pattern})"
                          r"(?!\s*[-+*/×÷=^\d]|[.,]\d)")  # the whole number, not an operand


def extract_number(text: str) -> str | None:
    """The final numeric answer: the last ``\\boxed{}``, else ``#### x``, else the number after
    the last "the answer is"/"Answer:", else the last number (None when there is none)."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = re.findall(r"####\s*([^\n]+)", text)
    if hashes:
        return hashes[-1].strip()
    said = _SAID_NUMBER.findall(text)
    if said:
        return said[-1]
    numbers = _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", text))
    return numbers[-1] if numbers else None


def grade_number(text: str, item: Item) -> Grade:
    """Correct when the extracted number equals the reference (exactly, as a fraction)."""
    extracted = extract_number(text)
    if extracted is None:
        return Grade(False, None)
    value, reference = parse_number(extracted), parse_number(item.reference)
    return Grade(value is not None and reference is not None and value == reference, extracted)


_DECOR = r"[\s*_`'\"$]*"  # markdown emphasis, quotes, dollars between a marker and its label
_COPULA = r"(?:is|was|would\s+be|should\s+be|must\s+be|will\s+be)"


@functools.lru_cache(maxsize=256)
def _choice_patterns(labels: tuple[str, ...]) -> tuple[re.Pattern, re.Pattern, re.Pattern, re.Pattern]:
    """The regular expressions of :func:`extract_choice` for one set of option labels.

    A label is written in brackets, ``(C)``/``[C]`` (any case), or bare as the label is
    written, ``C`` (not followed by a letter or digit), or bare in another case only
    when it ends its line, ``c.``: so the article "a" and the word "b" never count.
    Returns (said, marked, alone, boxed): an explicit answer phrase; a weaker phrase
    ("C is correct", "I'll go with C"); a whole line that is just a label; a box's content.
    """
    alt = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    form = (rf"(?:[(\[]\s*((?i:{alt}))\s*[)\]]"
            rf"|({alt})(?![A-Za-z0-9])"
            rf"|((?i:{alt}))(?=[.!*)]*[ \t]*(?:\n|$)))")
    said = re.compile(rf"(?i:\b(?:answer|option|choice)\s*(?:{_COPULA}\s*:?|[:=])){_DECOR}"
                      rf"(?i:(?:option|choice|letter)\s+)?{_DECOR}{form}")
    marked = re.compile(rf"(?i:\b(?:go(?:ing)?\s+with|choose|pick|select)\s+(?:option\s+|choice\s+)?){form}"
                        rf"|(?<![A-Za-z0-9]){form}"
                        rf"\s+(?i:is\s+(?:the\s+)?(?:correct|right|best)\b)")
    alone = re.compile(rf"{form}[.)]?")
    boxed = re.compile(rf"{form}(?:\s*[.:)\-]\s*.*)?", re.DOTALL)
    return said, marked, alone, boxed


def _label(m: re.Match) -> str:
    """The label a match of :func:`_choice_patterns` found (the one group of its label forms that matched)."""
    return next(g for g in m.groups() if g is not None)


def _unwrap(s: str) -> str:
    """`s` without LaTeX text wrappers and surrounding markdown/dollars."""
    return re.sub(r"\\(?:text|textbf|mathrm|mathbf)\{([^}]*)\}", r"\1", s).strip().strip("*$ ").strip()


def extract_choice(text: str, labels: tuple[str, ...]) -> str | None:
    """The chosen option label, or None when the reply names none (graded wrong, never guessed).

    In this order, each time the last one in the reply:

    1. an explicit answer: ``\\boxed{C}`` (also ``\\boxed{(C)}``, ``\\boxed{\\text{C}}``,
       ``\\boxed{C. text}``) or "answer/option/choice" with "is" or a colon before the label:
       ``The answer is (C)``, ``Answer: C``, ``**Final answer:** C``, ``the correct option
       is C``, ``the answer is c.``;
    2. a weaker phrase: ``(C) is correct``, ``option C is the right one``, ``I'll go with C``;
    3. a last line that is just a label: ``C``, ``(C)``, ``**C.**``;
    4. the last label in parentheses, ``(C)``.

    A bare label counts only as the label is written (capital letters) unless it ends its line,
    so "Let me answer a few questions" and "I will answer b first" name no option.
    """
    if not labels:
        return None
    said, marked, alone, boxed = _choice_patterns(tuple(labels))
    canonical = {label.upper(): label for label in labels}
    explicit = [(m.start(), _label(m)) for m in said.finditer(text)]
    for start in (m.start() for m in _BOX.finditer(text)):
        content = _box_content(text, start)
        m = boxed.fullmatch(_unwrap(content)) if content is not None else None
        if m:
            explicit.append((start, _label(m)))
    weaker = [(m.start(), _label(m)) for m in marked.finditer(text)]
    for found in (explicit, weaker):
        if found:
            return canonical[max(found)[1].upper()]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    m = alone.fullmatch(_unwrap(lines[-1])) if lines else None
    if m:
        return canonical[_label(m).upper()]
    brackets = re.findall(rf"\(({'|'.join(re.escape(label) for label in labels)})\)", text)
    return canonical[brackets[-1].upper()] if brackets else None


def grade_choice(text: str, item: Item) -> Grade:
    """Correct when the extracted option label is the reference's (``(C)`` and ``C`` alike)."""
    choice = extract_choice(text, item.labels)
    return Grade(choice is not None and choice == item.reference.strip("() "), choice)


def _normalise(s: str) -> str:
    previous = None
    while s != previous:  # markdown bold, quotes, dollars, a final period, in any nesting
        previous = s
        s = s.strip().strip("*\"'`$").rstrip(".")
    return " ".join(s.split()).lower()


def extract_bbh(text: str) -> str | None:
    """The text after the last "the answer is" (to the end of its line), else the last ``\\boxed{}``."""
    said = re.findall(r"answer is\s*:?\s*([^\n]*)", text, re.IGNORECASE)
    if said and said[-1].strip():
        return said[-1].strip()
    return last_boxed(text)


def grade_bbh(text: str, item: Item) -> Grade:
    """Exact match after normalisation (case, spacing, final period); option targets
    ``(C)`` match ``C`` or ``(C) text``; numeric targets compare as numbers."""
    if item.labels:
        choice = extract_choice(text, item.labels)
        return Grade(choice is not None and choice == item.reference.strip("() "), choice)
    extracted = extract_bbh(text)
    if extracted is None:
        return Grade(False, None)
    got, want = _normalise(extracted), _normalise(item.reference)
    if got == want:
        return Grade(True, extracted)
    if re.fullmatch(r"-?\d+(\.\d+)?", want):
        value = parse_number(got)
        return Grade(value is not None and value == Fraction(want), extracted)
    return Grade(False, extracted)


LITERAL_MAX_CHARS = 10_000


def safe_literal(text: str) -> tuple[bool, Any]:
    """``(True, value)`` when `text` is a Python literal (``ast.literal_eval``, at most
    ``LITERAL_MAX_CHARS`` characters), else ``(False, None)``. Nothing is executed."""
    text = text.strip()
    if not text or len(text) > LITERAL_MAX_CHARS:
        return False, None
    try:
        return True, ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def extract_cruxeval(text: str) -> str | None:
    """The predicted output: the last ``[ANSWER]…[/ANSWER]`` (else ``\\boxed{}``, else the last
    fenced code block); from an ``assert f(…) == x`` only the ``x``."""
    blocks = re.findall(r"\[ANSWER\](.*?)\[/ANSWER\]", text, re.DOTALL)
    found = blocks[-1] if blocks else last_boxed(text)
    if found is None:
        fences = re.findall(r"```(?:python)?\n?(.*?)```", text, re.DOTALL)
        found = fences[-1] if fences else None
    if found is None:
        return None
    found = found.strip()
    m = re.match(r"assert\s+f\(.*\)\s*==\s*(.+)$", found, re.DOTALL)
    return (m.group(1) if m else found).strip()


def grade_cruxeval(text: str, item: Item) -> Grade:
    """Correct when the predicted literal equals the reference output (``==`` on literals;
    plain text comparison when the reference is not a literal)."""
    extracted = extract_cruxeval(text)
    if extracted is None:
        return Grade(False, None)
    ok_ref, reference = safe_literal(item.reference)
    ok_got, got = safe_literal(extracted)
    if ok_ref:
        try:
            return Grade(ok_got and bool(got == reference), extracted)
        except Exception:  # noqa: BLE001 - comparing exotic literals (e.g. nan in sets) must not crash
            return Grade(False, extracted)
    return Grade(extracted.strip() == item.reference.strip(), extracted)


# ----------------------------------------------------------------------------- registry


class Benchmark(NamedTuple):
    """A task: its canonical `name`, a `load(path, seed)` and a `grade(text, item)`."""

    name: str
    load: Callable[[str, int], list[Item]]
    grade: Callable[[str, Item], Grade]


BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k": Benchmark("GSM8K", load_gsm8k, grade_number),
    "aime": Benchmark("AIME", load_aime, grade_number),
    "gpqa": Benchmark("GPQA", load_gpqa, grade_choice),
    "cruxeval": Benchmark("CRUXEval", load_cruxeval, grade_cruxeval),
    "bbh": Benchmark("BBH", load_bbh, grade_bbh),
    "arc": Benchmark("ARC-Challenge", load_arc, grade_choice),
}
_ALIASES = {"arc-challenge": "arc", "arc_challenge": "arc", "cruxeval-o": "cruxeval", "cruxeval_o": "cruxeval",
            "gpqa-diamond": "gpqa", "gpqa_diamond": "gpqa"}


def benchmark(name: str) -> Benchmark:
    """The :class:`Benchmark` called `name` (case-insensitive: gsm8k, aime, gpqa, cruxeval, bbh, arc)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in BENCHMARKS:
        raise BenchmarkError(f"task {name!r}: unknown benchmark (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[key]


def load_task(name: str, path: str, samples: int | None = None, seed: int = 0) -> list[Item]:
    """Load benchmark `name` from `path` and choose `samples` items (a seeded shuffle; all if None).

    **Arguments:** `name` (see :func:`benchmark`); `path`; `samples`; `seed`
    (the shuffle, and GPQA's option order).

    **Returns:** the items, in the order they will be measured. Raises
    :class:`BenchmarkError` for an unknown task, an unreadable file, a
    record without a needed field, duplicate ids or an empty file.
    """
    items = benchmark(name).load(path, seed)
    if not items:
        raise BenchmarkError(f"benchmark file {path!r}: no items")
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise BenchmarkError(f"benchmark file {path!r}: duplicate item id {dup!r}")
    order = np.random.default_rng([seed, zlib.crc32(benchmark(name).name.encode())]).permutation(len(items))
    if samples is not None:
        if samples < 1:
            raise BenchmarkError(f"samples = {samples}: must be >= 1")
        order = order[:samples]
    return [items[i] for i in order]


def grade(text: str, item: Item) -> Grade:
    """Grade a reply to `item` with its task's grader."""
    return benchmark(item.task).grade(text, item)
