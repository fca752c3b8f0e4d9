"""Benchmark loaders (made-up items in the published formats) and graders on hand-written replies."""

import csv
import json

import pytest

from jaxalloc.calibrate.benchmarks import (
    BenchmarkError,
    Item,
    extract_choice,
    grade,
    last_boxed,
    load_task,
    parse_number,
    safe_literal,
)

# ----------------------------------------------------------------------------- made-up benchmark files


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def files(tmp_path):
    out = {}
    out["gsm8k"] = _jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Tom has 1200 apples and buys 34 more. How many?", "answer": "1200 + 34 = 1234\n#### 1,234"},
        {"question": "A pen costs $3. What do 4 pens cost?", "answer": "4 * 3 = 12\n#### 12"},
    ])
    out["aime"] = _jsonl(tmp_path / "aime.jsonl", [
        {"ID": "2099-I-1", "Problem": "Find the remainder when 2^10 is divided by 1000.", "Answer": "24"},
        {"ID": "2099-I-2", "Problem": "Compute 3 + 30.", "Answer": 33},
    ])
    with open(tmp_path / "gpqa.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["Record ID", "Question", "Correct Answer", "Incorrect Answer 1",
                               "Incorrect Answer 2", "Incorrect Answer 3"])
        w.writeheader()
        w.writerow({"Record ID": "recA", "Question": "Which particle is a lepton?", "Correct Answer": "electron",
                    "Incorrect Answer 1": "proton", "Incorrect Answer 2": "neutron", "Incorrect Answer 3": "pion"})
        w.writerow({"Record ID": "recB", "Question": "Which gas is noble?", "Correct Answer": "argon",
                    "Incorrect Answer 1": "oxygen", "Incorrect Answer 2": "nitrogen",
                    "Incorrect Answer 3": "chlorine"})
    out["gpqa"] = str(tmp_path / "gpqa.csv")
    out["cruxeval"] = _jsonl(tmp_path / "crux.jsonl", [
        {"id": "sample_0", "code": "def f(x):\n    return x[::-1]", "input": "'abc'", "output": "'cba'"},
        {"id": "sample_1", "code": "def f(d):\n    return sorted(d.items())", "input": "{'b': 2, 'a': 1}",
         "output": "[('a', 1), ('b', 2)]"},
    ])
    bbh = tmp_path / "bbh"
    bbh.mkdir()
    (bbh / "boolean_expressions.json").write_text(json.dumps(
        {"examples": [{"input": "not ( True ) and ( True ) is", "target": "False"}]}))
    (bbh / "date_understanding.json").write_text(json.dumps({"examples": [
        {"input": "Today is 1/2/2000. What is tomorrow?\nOptions:\n(A) 01/03/2000\n(B) 01/01/2000", "target": "(A)"}]}))
    out["bbh"] = str(bbh)
    out["arc"] = _jsonl(tmp_path / "arc.jsonl", [
        {"id": "Mercury_1", "question": {"stem": "Which is a mammal?", "choices": [
            {"text": "shark", "label": "A"}, {"text": "whale", "label": "B"}, {"text": "trout", "label": "C"}]},
         "answerKey": "B"},
        {"id": "NYSED_2", "question": {"stem": "Pick the metal.", "choices": [
            {"text": "iron", "label": "1"}, {"text": "wood", "label": "2"}]}, "answerKey": "1"},
    ])
    out["arc_hf"] = _jsonl(tmp_path / "arc_hf.jsonl", [
        {"id": "x1", "question": "Which is a planet?", "choices": {"text": ["Mars", "Moon"], "label": ["A", "B"]},
         "answerKey": "A"}])
    return out


def test_loaders_read_published_formats(files):
    gsm = load_task("gsm8k", files["gsm8k"])
    assert {i.reference for i in gsm} == {"1234", "12"} and all("\\boxed{}" in i.question for i in gsm)
    aime = load_task("AIME", files["aime"])
    assert {i.id for i in aime} == {"2099-I-1", "2099-I-2"} and {i.reference for i in aime} == {"24", "33"}
    gpqa = load_task("gpqa", files["gpqa"], seed=0)
    for item in gpqa:  # the correct option sits under the reference label
        correct = {"recA": "electron", "recB": "argon"}[item.id]
        assert f"({item.reference}) {correct}" in item.question and item.labels == ("A", "B", "C", "D")
    assert load_task("gpqa", files["gpqa"], seed=0) == gpqa  # seeded: the same order every time
    crux = load_task("cruxeval-o", files["cruxeval"])
    assert any("assert f('abc') == ??" in i.question for i in crux)
    bbh = load_task("bbh", files["bbh"])
    assert {i.id for i in bbh} == {"boolean_expressions/0", "date_understanding/0"}
    assert [i.labels for i in bbh if i.reference == "(A)"] == [("A", "B")]
    arc = load_task("arc-challenge", files["arc"])
    assert {i.labels for i in arc} == {("A", "B", "C"), ("1", "2")}
    assert load_task("arc", files["arc_hf"])[0].labels == ("A", "B")
    assert len(load_task("gsm8k", files["gsm8k"], samples=1)) == 1
    assert all(i.task == "ARC-Challenge" for i in arc)


def test_loader_errors(files, tmp_path):
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        load_task("mmlu", files["gsm8k"])
    with pytest.raises(BenchmarkError, match="no such file"):
        load_task("gsm8k", str(tmp_path / "missing.jsonl"))
    with pytest.raises(BenchmarkError, match="no field question"):
        load_task("gsm8k", _jsonl(tmp_path / "bad.jsonl", [{"q": 1, "answer": "#### 1"}]))
    with pytest.raises(BenchmarkError, match="duplicate item id 'a'"):
        load_task("aime", _jsonl(tmp_path / "dup.jsonl", [{"id": "a", "problem": "x", "answer": 1}] * 2))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(BenchmarkError, match="unknown extension"):
        load_task("gsm8k", str(tmp_path / "x.txt"))
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(BenchmarkError, match="broken.jsonl"):
        load_task("gsm8k", str(tmp_path / "broken.jsonl"))


# ----------------------------------------------------------------------------- graders

MATH = Item("GSM8K", "0", "", "1234")


@pytest.mark.parametrize("reply, correct", [
    ("So she has \\boxed{1234} apples.", True),
    ("The total is \\boxed{1,234}.", True),                            # comma in the boxed number
    ("That makes 1,234 apples in all.", True),                          # no box: last number, comma
    ("First \\boxed{12}, no wait, it is \\boxed{1234}.", True),         # several boxes: the last counts
    ("It is \\boxed{1234} ... actually \\boxed{1243}", False),
    ("\\boxed{\\$1,234.00}", True),
    ("\\boxed{1234 \\text{ apples}}", True),
    ("#### 1234", True),
    ("I computed 1234 but the answer is 12", False),                    # last number wins
    ("I don't know.", False),                                           # no answer at all
    ("\\boxed{}", False),
    ("\\boxed{12", False),                                               # unclosed box: last number 12
])
def test_math_grader(reply, correct):
    assert grade(reply, MATH).correct is correct


def test_math_details():
    assert last_boxed("\\boxed{\\frac{1}{2}} and \\boxed{x^{2}}") == "x^{2}"
    assert parse_number("\\frac{3}{4}") == parse_number("0.75")
    assert parse_number("-\\frac{3}{4}") == parse_number("-0.75")
    assert parse_number("50\\%") == 50
    assert grade("\\boxed{033}", Item("AIME", "0", "", "33")).correct
    assert grade("nothing", MATH).extracted is None


CHOICE = Item("GPQA", "0", "", "C", ("A", "B", "C", "D"))


@pytest.mark.parametrize("reply, extracted", [
    ("The answer is (C).", "C"),
    ("Answer: C", "C"),
    ("**Answer: C**", "C"),
    ("Final answer: \\boxed{C}", "C"),
    ("\\boxed{(C)}", "C"),
    ("\\boxed{\\text{C}}", "C"),
    ("(A) looks wrong, (B) too, so the answer is C.", "C"),
    ("C", "C"),
    ("(C)", "C"),
    ("I think it's (B)... no wait, (C)", "C"),
    ("answer is c", "C"),
    ("Between A and B I pick \\boxed{B}", "B"),
    ("I cannot decide.", None),                                          # no answer at all
    ("A couple of ideas. Anyway.", None),                               # the word "A" is not a choice
])
def test_choice_extraction(reply, extracted):
    assert extract_choice(reply, CHOICE.labels) == extracted
    assert grade(reply, CHOICE).correct is (extracted == "C")


def test_choice_numeric_labels_and_parenthesised_reference():
    arc = Item("ARC-Challenge", "0", "", "2", ("1", "2", "3", "4"))
    assert grade("The answer is \\boxed{2}", arc).correct
    assert not grade("The answer is 3", arc).correct
    bbh = Item("BBH", "0", "", "(C)", ("A", "B", "C"))
    assert grade("So the answer is (C).", bbh).correct
    assert grade("So the answer is C.", bbh).correct                    # "(C)" vs "C"
    assert grade("So the answer is (C) 01/03/2000.", bbh).correct
    assert not grade("So the answer is (B).", bbh).correct


@pytest.mark.parametrize("reference, reply, correct", [
    ("False", "not True is False, so the answer is False.", True),
    ("False", "So the answer is **false**.", True),
    ("valid", "So the answer is valid.", True),
    ("valid", "So the answer is invalid.", False),
    ("24", "So the answer is 24.", True),
    ("24", "So the answer is 24.0", True),
    ("apple banana cherry", "So the answer is apple  banana cherry.", True),
    ("] )", "So the answer is ] ).", True),
    ("Yes", "I have no idea", False),
    ("No", "\\boxed{No}", True),
])
def test_bbh_grader(reference, reply, correct):
    assert grade(reply, Item("BBH", "0", "", reference)).correct is correct


@pytest.mark.parametrize("reference, reply, correct", [
    ("'cba'", "[ANSWER]'cba'[/ANSWER]", True),
    ("'cba'", '[ANSWER]"cba"[/ANSWER]', True),                           # same literal, other quotes
    ("'cba'", "[ANSWER]assert f('abc') == 'cba'[/ANSWER]", True),
    ("[('a', 1), ('b', 2)]", "[ANSWER][('a',1),('b',2)][/ANSWER]", True),
    ("{'a': 1, 'b': 2}", "[ANSWER]{'b': 2, 'a': 1}[/ANSWER]", True),
    ("'cba'", "[ANSWER]'abc'[/ANSWER] no wait [ANSWER]'cba'[/ANSWER]", True),
    ("'cba'", "[ANSWER]__import__('os').system('echo pwned')[/ANSWER]", False),  # never executed
    ("'cba'", "[ANSWER]f('abc')[/ANSWER]", False),
    ("3", "```python\n3\n```", True),
    ("'cba'", "The function reverses the string.", False),             # no answer at all
    ("(1, 2)", "\\boxed{(1, 2)}", True),
    ("True", "[ANSWER]1[/ANSWER]", True),                                # Python ==, as CRUXEval's assert
])
def test_cruxeval_grader(reference, reply, correct):
    assert grade(reply, Item("CRUXEval", "0", "", reference)).correct is correct


def test_safe_literal_never_runs_code():
    assert safe_literal("[1, 2]") == (True, [1, 2])
    assert safe_literal("__import__('os')") == (False, None)
    assert safe_literal("(" * 100_000) == (False, None)
    assert safe_literal("[" * 5000 + "]" * 5000) == (False, None)  # too deep for the parser: no crash
