"""Measuring runs: local Flax engine and OpenAI-compatible server end to end, resume after a kill."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("flax")
pytest.importorskip("transformers")

from openai_server import CompletionServer
from tiny_qwen3 import make_checkpoint

from jaxalloc.calibrate.benchmarks import load_task
from jaxalloc.calibrate.chat import load_tokenizer, prompt_ids, thinking_format
from jaxalloc.calibrate.data import parquet_metadata
from jaxalloc.calibrate.generate import Engine, Generation, LocalBackend, generate
from jaxalloc.calibrate.measure import measure, parse_budgets, parse_task, run_settings
from jaxalloc.calibrate.openai_backend import OpenAIBackend, ServerError
from jaxalloc.calibrate.qwen3 import load_qwen3
from jaxalloc.calibrate.settings import METADATA_KEY, ResumeError
from jaxalloc.errors import Interrupted

GSM8K = [
    {"question": "Tom has 1200 apples and buys 34 more. How many?", "answer": "#### 1,234"},
    {"question": "A pen costs $3. What do 4 pens cost?", "answer": "4 * 3 = 12\n#### 12"},
    {"question": "What is 5 + 6?", "answer": "#### 11"},
]
ARC = [
    {"id": "q1", "question": {"stem": "Which is a mammal?", "choices": [
        {"text": "shark", "label": "A"}, {"text": "whale", "label": "B"}]}, "answerKey": "B"},
    {"id": "q2", "question": {"stem": "Pick the metal.", "choices": [
        {"text": "iron", "label": "A"}, {"text": "wood", "label": "B"}]}, "answerKey": "A"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("measure")
    folder = str(root / "model")
    make_checkpoint(folder)
    data = {}
    for name, records in (("gsm8k", GSM8K), ("arc", ARC)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        data[name] = str(path)
    tokenizer = load_tokenizer(folder)
    fmt = thinking_format(tokenizer, folder)
    engine = Engine(load_qwen3(folder), min_bucket=128)
    tasks = {name: load_task(name, path, samples=2) for name, path in data.items()}
    return {"folder": folder, "data": data, "tokenizer": tokenizer, "fmt": fmt, "engine": engine, "tasks": tasks}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _keys(rows):
    return [(r["task"], int(r["budget"]), int(r["repeat"]), r["item"]) for r in rows]


def test_local_measuring_run(setup, tmp_path):
    out = str(tmp_path / "m.csv")
    backend = LocalBackend(setup["engine"], setup["fmt"])
    report = measure(backend, setup["tokenizer"], setup["fmt"], setup["tasks"], [0, 3, 8], out, repeats=2,
                     answer_tokens=6, temperature=0.7, seed=1, progress=False, transcript=str(tmp_path / "t.jsonl"))
    rows = _rows(out)
    assert report.written == len(rows) == 2 * 2 * 3 * 2 and report.skipped == 0
    assert len(set(_keys(rows))) == len(rows)
    for r in rows:
        assert int(r["thinking_tokens"]) == int(r["budget"])
        assert 1 <= int(r["answer_tokens"]) <= 6 and r["correct"] in ("0", "1")
        assert float(r["service_s"]) == pytest.approx(float(r["prefill_s"]) + float(r["decode_s"]))
    assert {r["task"] for r in rows} == {"GSM8K", "ARC-Challenge"}
    log = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(log) == len(rows) and {"answer", "extracted", "reference"} <= set(log[0])
    # the same run again: everything is there, nothing is added
    again = measure(backend, setup["tokenizer"], setup["fmt"], setup["tasks"], [0, 3, 8], out, repeats=2,
                    answer_tokens=6, temperature=0.7, seed=1, progress=False)
    assert again.written == 0 and again.skipped == 24 and len(_rows(out)) == 24


class ScriptedBackend:
    """Answers each question with a fixed text; raises KeyboardInterrupt after `stop_after` queries."""

    name = "scripted"

    def __init__(self, tokenizer, answers, stop_after=None):
        self.tokenizer, self.answers, self.stop_after, self.calls = tokenizer, answers, stop_after, []

    def generate(self, prompt, budget, answer_tokens, *, temperature=0.0, seed=0):
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt
        self.calls.append((budget, seed))
        question = self.tokenizer.decode(prompt)
        text = next(a for q, a in self.answers.items() if q in question)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return Generation([7] * budget, ids, budget, len(ids) + 1, True, len(prompt), 0.01, 0.02 + budget * 1e-3,
                          0.03 + budget * 1e-3)


def test_grading_and_resume_after_interrupt_and_torn_line(setup, tmp_path):
    tok, fmt = setup["tokenizer"], setup["fmt"]
    answers = {"1200 apples": "So \\boxed{1,234}.", "pens": "\\boxed{13}", "5 + 6": "It is 11",
               "mammal": "The answer is (B).", "metal": "\\boxed{B}"}
    out = str(tmp_path / "m.csv")
    budgets = [0, 4, 16]
    with pytest.raises(KeyboardInterrupt):
        measure(ScriptedBackend(tok, answers, stop_after=5), tok, fmt, setup["tasks"], budgets, out, repeats=2,
                progress=False)
    assert len(_rows(out)) == 5
    with open(out, "a") as f:  # a kill in the middle of writing a row
        f.write("GSM8K,16,1,1,0.5")
    backend = ScriptedBackend(tok, answers)
    report = measure(backend, tok, fmt, setup["tasks"], budgets, out, repeats=2, progress=False)
    rows = _rows(out)
    assert report.skipped == 5 and report.written == 19 and len(rows) == 24
    assert sorted(set(_keys(rows))) == sorted(_keys(rows))
    correct = {r["item"]: r["correct"] for r in rows}
    expected = {i.id: str(int(i.reference in ("1234", "11", "B"))) for t in setup["tasks"].values() for i in t}
    assert correct == expected
    # a resumed run draws the same seeds as an uninterrupted one
    fresh = ScriptedBackend(tok, answers)
    measure(fresh, tok, fmt, setup["tasks"], budgets, str(tmp_path / "fresh.csv"), repeats=2, progress=False)
    assert set(backend.calls) < set(fresh.calls)


ANSWERS = {"1200 apples": "So \\boxed{1,234}.", "pens": "\\boxed{13}", "5 + 6": "It is 11",
           "mammal": "The answer is (B).", "metal": "\\boxed{B}"}


class ServedBackend(ScriptedBackend):
    """A scripted backend that names its served model, as OpenAIBackend does."""

    name = "openai"

    def __init__(self, tokenizer, answers, model, stop_after=None):
        super().__init__(tokenizer, answers, stop_after)
        self.model = model


def _run(setup, out, backend=None, budgets=(0, 4, 16), **options):
    tok = setup["tokenizer"]
    backend = backend if backend is not None else ScriptedBackend(tok, ANSWERS)
    options = {"repeats": 1, "progress": False, **options}
    return measure(backend, tok, setup["fmt"], setup["tasks"], list(budgets), out, **options)


def test_resume_with_other_settings_is_refused_and_force_new_starts_afresh(setup, tmp_path, capsys):
    out = str(tmp_path / "m.csv")
    first = _run(setup, out, seed=0, temperature=0.0, answer_tokens=8, settings={"model": "/models/a"})
    assert first.written == 12
    stored = json.loads((tmp_path / "m.csv.settings.json").read_text())
    assert stored == {"format": 1, "settings": {"answer_tokens": 8, "backend": "scripted", "model": "/models/a",
                                                "seed": 0, "temperature": 0.0}}
    before = Path(out).read_text()
    for change, named in [
        ({"seed": 1}, ["seed: 0 → 1"]),
        ({"temperature": 0.7, "answer_tokens": 16}, ["answer_tokens: 8 → 16", "temperature: 0.0 → 0.7"]),
        ({"settings": {"model": "/models/b"}}, ['model: "/models/a" → "/models/b"']),
        ({"settings": {}}, ['model: "/models/a" → (not set)']),
    ]:
        options = {"seed": 0, "temperature": 0.0, "answer_tokens": 8, "settings": {"model": "/models/a"}, **change}
        backend = ScriptedBackend(setup["tokenizer"], ANSWERS)
        with pytest.raises(ResumeError) as err:
            _run(setup, out, backend, **options)
        message = str(err.value)
        assert all(n in message for n in named) and "--force-new" in message and "12 answers" in message, message
        assert len(message.splitlines()) == 1 and isinstance(err.value, ValueError)
        assert backend.calls == [] and Path(out).read_text() == before  # refused before any query, nothing written
    # the same settings with one more budget: resumed, only the new budget is measured
    again = _run(setup, out, budgets=(0, 4, 16, 32), seed=0, temperature=0.0, answer_tokens=8,
                 settings={"model": "/models/a"})
    assert (again.skipped, again.written, len(_rows(out))) == (12, 4, 16)
    # --force-new: the old rows and settings are discarded, and stderr says so
    capsys.readouterr()
    fresh = _run(setup, out, seed=1, temperature=0.0, answer_tokens=8, settings={"model": "/models/a"}, force_new=True)
    err = capsys.readouterr().err
    assert "--force-new: discarded" in err and out in err and "16 answers" in err
    assert (fresh.skipped, fresh.written, len(_rows(out))) == (0, 12, 12)
    assert json.loads((tmp_path / "m.csv.settings.json").read_text())["settings"]["seed"] == 1


def test_served_model_is_part_of_the_fingerprint(setup, tmp_path):
    out = str(tmp_path / "served.csv")
    tok = setup["tokenizer"]
    _run(setup, out, ServedBackend(tok, ANSWERS, "qwen3-8b"))
    assert run_settings(ServedBackend(tok, ANSWERS, "qwen3-8b"), answer_tokens=512, temperature=0.0,
                        seed=0)["served_model"] == "qwen3-8b"
    with pytest.raises(ResumeError, match='served_model: "qwen3-8b" → "qwen3-32b"'):
        _run(setup, out, ServedBackend(tok, ANSWERS, "qwen3-32b"))
    with pytest.raises(ResumeError, match='backend: "openai" → "scripted"'):
        _run(setup, out)


def test_file_without_settings_is_refused_and_stale_settings_are_replaced(setup, tmp_path, capsys):
    out = tmp_path / "old.csv"
    _run(setup, str(out))
    (tmp_path / "old.csv.settings.json").unlink()  # as written by a jaxalloc without fingerprints
    backend = ScriptedBackend(setup["tokenizer"], ANSWERS)
    with pytest.raises(ResumeError, match="12 answers but no record of their settings") as err:
        _run(setup, str(out), backend)
    assert "old.csv.settings.json" in str(err.value) and "--force-new" in str(err.value) and backend.calls == []
    assert _run(setup, str(out), force_new=True).written == 12
    assert "--force-new: discarded" in capsys.readouterr().err
    # settings with no rows behind them (a run stopped before its first answer) describe nothing: replaced
    out.unlink()
    assert _run(setup, str(out), seed=5).written == 12
    assert json.loads((tmp_path / "old.csv.settings.json").read_text())["settings"]["seed"] == 5


def test_parquet_keeps_its_settings_inside(setup, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "m.parquet"
    _run(setup, str(out), budgets=(0, 4), seed=3)
    inside = json.loads(parquet_metadata(out)[METADATA_KEY])
    assert inside == json.loads((tmp_path / "m.parquet.settings.json").read_text())
    assert inside["settings"]["seed"] == 3
    (tmp_path / "m.parquet.settings.json").unlink()  # the file alone still knows its settings
    with pytest.raises(ResumeError, match="seed: 3 → 4"):
        _run(setup, str(out), budgets=(0, 4), seed=4)
    report = _run(setup, str(out), budgets=(0, 4, 16), seed=3)  # appending keeps the metadata
    assert (report.skipped, report.written) == (8, 4)
    assert json.loads(parquet_metadata(out)[METADATA_KEY]) == inside


def test_ctrl_c_says_how_many_answers_are_kept(setup, tmp_path):
    out = str(tmp_path / "m.csv")
    tok = setup["tokenizer"]
    with pytest.raises(Interrupted) as err:
        _run(setup, out, ScriptedBackend(tok, ANSWERS, stop_after=5), repeats=2)
    assert str(err.value) == f"5 of 24 answers kept in {out}; run the same command to resume"
    assert len(_rows(out)) == 5
    with pytest.raises(Interrupted) as err:  # a second stop counts what the first one kept
        _run(setup, out, ScriptedBackend(tok, ANSWERS, stop_after=3), repeats=2)
    assert str(err.value).startswith("8 of 24 answers kept") and len(_rows(out)) == 8


def _cli_argv(setup, out, *extra):
    return ["calibrate", "measure", "--model", setup["folder"], "--task", f"gsm8k={setup['data']['gsm8k']}",
            "--task", f"arc={setup['data']['arc']}", "--samples", "2", "--budgets", "0,4,16", "--repeats", "1",
            "--out", out, "--no-progress", *extra]


class ScriptedModels:
    """Stands in for measure_cli._backend: makes a ScriptedBackend (stopping after `stop_after`) per run."""

    def __init__(self):
        self.made, self.stop_after = [], None

    def __call__(self, args, fmt, tokenizer):
        backend = ScriptedBackend(tokenizer, ANSWERS, stop_after=self.stop_after)
        backend.name = args.backend  # as the real backends are named
        self.made.append(backend)
        return backend


@pytest.fixture
def scripted_cli(monkeypatch):
    """`jaxalloc calibrate measure` with the model replaced by scripted answers."""
    from jaxalloc.calibrate import measure_cli

    models = ScriptedModels()
    monkeypatch.setattr(measure_cli, "_backend", models)
    return models


def test_cli_refuses_other_settings_before_loading_the_model(setup, tmp_path, capsys, scripted_cli):
    from jaxalloc.cli import main

    made = scripted_cli.made
    out = str(tmp_path / "cli.csv")
    assert main(_cli_argv(setup, out, "--seed", "0", "--temperature", "0")) == 0
    stored = json.loads((tmp_path / "cli.csv.settings.json").read_text())["settings"]
    assert stored["model"] == os.path.realpath(setup["folder"]) and stored["dtype"] == "auto"
    assert len(made) == 1 and len(_rows(out)) == 12
    before = Path(out).read_text()
    capsys.readouterr()
    assert main(_cli_argv(setup, out, "--seed", "1", "--temperature", "0.5", "--dtype", "float32")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--force-new" in err[0], err
    for named in ('dtype: "auto" → "float32"', "seed: 0 → 1", "temperature: 0.0 → 0.5"):
        assert named in err[0], err
    assert len(made) == 1 and Path(out).read_text() == before  # no model loaded, nothing written
    assert main(_cli_argv(setup, out, "--seed", "1", "--force-new")) == 0
    captured = capsys.readouterr()
    assert "--force-new: discarded" in captured.err and "12 rows written" in captured.out
    assert len(_rows(out)) == 12 and len(made) == 2
    os.remove(tmp_path / "cli.csv.settings.json")
    assert main(_cli_argv(setup, out, "--seed", "1")) == 2
    assert "no record of their settings" in capsys.readouterr().err


def test_cli_ctrl_c_keeps_the_answers_and_exits_130(setup, tmp_path, capsys, scripted_cli):
    from jaxalloc.cli import main

    out = str(tmp_path / "cli.csv")
    scripted_cli.stop_after = 3
    assert main(_cli_argv(setup, out)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"interrupted: 3 of 12 answers kept in {out}; run the same command to resume"
    assert len(_rows(out)) == 3
    scripted_cli.stop_after = None
    assert main(_cli_argv(setup, out)) == 0  # the same command resumes
    assert "9 rows written to" in capsys.readouterr().out and len(_rows(out)) == 12


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from jaxalloc.calibrate.benchmarks import load_task
    from jaxalloc.calibrate.chat import load_tokenizer, thinking_format
    from jaxalloc.calibrate.generate import Generation
    from jaxalloc.calibrate.measure import measure

    class Slow:
        name = "slow"
        def generate(self, prompt, budget, answer_tokens, *, temperature=0.0, seed=0):
            time.sleep(0.02)
            return Generation([5] * budget, [9], budget, 1, False, len(prompt), 0.01, 0.01, 0.02)

    tok = load_tokenizer({folder!r})
    fmt = thinking_format(tok, {folder!r})
    tasks = {{"gsm8k": load_task("gsm8k", {data!r})}}
    print("ready", flush=True)
    measure(Slow(), tok, fmt, tasks, list(range(20)), {out!r}, repeats=2, progress=False)
""")


@pytest.mark.slow
def test_restart_after_sigkill_has_no_duplicate_rows(setup, tmp_path):
    out = str(tmp_path / "killed.csv")
    script = KILL_SCRIPT.format(tests=os.path.dirname(__file__), folder=setup["folder"],
                                data=setup["data"]["gsm8k"], out=out)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 60
        while time.time() < deadline and (not os.path.exists(out) or len(_rows(out)) < 10):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    first = len(_rows(out))
    assert 10 <= first < 120
    subprocess.run([sys.executable, "-c", script], check=True, stdout=subprocess.DEVNULL)
    rows = _rows(out)
    assert len(rows) == 3 * 20 * 2 == len(set(_keys(rows)))


@pytest.mark.parametrize("token_ids_field", [True, False])
def test_openai_backend_against_a_local_server(setup, tmp_path, token_ids_field):
    tok, fmt, engine = setup["tokenizer"], setup["fmt"], setup["engine"]
    with CompletionServer(engine, tok, fmt.stop_ids, token_ids_field=token_ids_field) as server:
        backend = OpenAIBackend(server.url, fmt)
        assert backend.model == "tiny-qwen3"
        prompt = prompt_ids(tok, fmt, "What is 5 + 6?")
        for budget in (0, 1, 9):
            remote = backend.generate(prompt, budget, 5)
            local = generate(engine, fmt, prompt, budget, 5)  # greedy: the same tokens
            assert remote.thinking_tokens == budget == len(remote.thinking_ids)
            assert (remote.thinking_ids, remote.answer_ids) == (local.thinking_ids, local.answer_ids)
            assert len(remote.requests) == (2 if budget else 1)
            assert remote.service_s == pytest.approx(sum(r["e2e_s"] for r in remote.requests))
            assert 0 < remote.prefill_s <= remote.service_s
        think, answer = server.requests[-2:]
        assert think["min_tokens"] == think["max_tokens"] == 9 and think["stop_token_ids"] == [fmt.think_end_id]
        assert think["stream"] and think["prompt"] == prompt
        assert answer["prompt"][-len(fmt.close_ids):] == list(fmt.close_ids) and answer["max_tokens"] == 5
        out = str(tmp_path / "served.csv")
        report = measure(backend, tok, fmt, setup["tasks"], [0, 2, 5], out, answer_tokens=4, progress=False)
    rows = _rows(out)
    assert report.written == len(rows) == 12
    assert all(int(r["thinking_tokens"]) == int(r["budget"]) for r in rows)


def test_openai_backend_errors(setup):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerError, match="cannot connect"):
        OpenAIBackend(f"http://127.0.0.1:{port}", setup["fmt"])
    with pytest.raises(ValueError, match="--base-url"):
        OpenAIBackend("localhost:8000", setup["fmt"], model="m")


def test_option_parsing():
    assert parse_task("gsm8k=data/x.jsonl") == ("gsm8k", "data/x.jsonl")
    assert parse_budgets("0,64, 256") == [0, 64, 256]
    for bad in ("gsm8k", "=x", "gsm8k="):
        with pytest.raises(ValueError, match="--task"):
            parse_task(bad)
    for bad in ("a,b", "-1,2", "1,1", ""):
        with pytest.raises(ValueError, match="--budgets"):
            parse_budgets(bad)


def _fit_accepts(path, tmp_path, capsys):
    from jaxalloc.cli import main

    profile = str(tmp_path / "fitted.toml")
    assert main(["calibrate", "fit", path, "--out", profile, "--json"]) == 0
    capsys.readouterr()
    import jaxalloc as ja

    return ja.load_profile(profile)


@pytest.mark.slow
def test_cli_measure_flax_then_fit(setup, tmp_path, capsys):
    from jaxalloc.cli import main

    out = str(tmp_path / "cli.csv")
    argv = ["calibrate", "measure", "--model", setup["folder"], "--task", f"gsm8k={setup['data']['gsm8k']}",
            "--task", f"ARC-Challenge={setup['data']['arc']}", "--budgets", "0,200,600", "--samples", "2",
            "--repeats", "2", "--answer-tokens", "4", "--dtype", "float32", "--out", out, "--no-progress", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 24 and summary["skipped"] == 0 and len(summary["groups"]) == 6
    assert main(argv) == 0  # a second run finds everything measured
    assert json.loads(capsys.readouterr().out)["skipped"] == 24 and len(_rows(out)) == 24
    problem = _fit_accepts(out, tmp_path, capsys)
    assert set(problem.names) == {"GSM8K", "ARC-Challenge"}


@pytest.mark.slow
def test_cli_measure_openai_then_fit(setup, tmp_path, capsys):
    from jaxalloc.cli import main

    out = str(tmp_path / "served.csv")
    tok, fmt = setup["tokenizer"], setup["fmt"]
    with CompletionServer(setup["engine"], tok, fmt.stop_ids) as server:
        argv = ["calibrate", "measure", "--backend", "openai", "--base-url", server.url, "--model", setup["folder"],
                "--task", f"gsm8k={setup['data']['gsm8k']}", "--budgets", "0,200,600", "--samples", "3",
                "--repeats", "2", "--answer-tokens", "4", "--temperature", "0", "--out", out, "--no-progress"]
        assert main(argv) == 0
    assert "18 rows written" in capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 18 and all(int(r["thinking_tokens"]) == int(r["budget"]) for r in rows)
    _fit_accepts(out, tmp_path, capsys)


@pytest.mark.parametrize("change, message", [
    ({"--task": "mmlu=x.jsonl"}, "unknown benchmark"),
    ({"--task": "gsm8k=/nonexistent/x.jsonl"}, "no such file"),
    ({"--budgets": "0,-5"}, "--budgets"),
    ({"--samples": "0"}, "--samples = 0"),
    ({"--out": "/nonexistent/dir/m.csv"}, "no such directory"),
    ({"--out": "m.txt"}, "expected a .csv"),
    ({"--backend": "openai"}, "needs --base-url"),
    ({"--base-url": "http://127.0.0.1:9"}, "only with --backend openai"),
    ({"--model": "/nonexistent/model"}, "no such directory"),
])
def test_cli_measure_bad_input(setup, tmp_path, capsys, change, message):
    from jaxalloc.cli import main

    args = {"--model": setup["folder"], "--task": f"gsm8k={setup['data']['gsm8k']}",
            "--out": str(tmp_path / "m.csv")}
    args.update(change)
    argv = ["calibrate", "measure"] + [x for kv in args.items() for x in kv] + ["--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not os.path.exists(tmp_path / "m.csv")
