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

# Each grader gets a table of realistic replies, ids naming the case. Replies that give no
# answer must extract None and grade wrong: a grader never guesses.

MATH_CASES = [  # (reference, reply, extracted answer, correct)  GSM8K and AIME
    ("1234", "So she has \\boxed{1234} apples.", "1234", True),
    ("1234", "The total is \\boxed{1,234}.", "1,234", True),                       # comma in the box
    ("1234", "That makes 1,234 apples in all.", "1234", True),                      # no box: last number
    ("1234", "First \\boxed{12}, no wait, it is \\boxed{1234}.", "1234", True),     # the last box counts
    ("1234", "It is \\boxed{1234} ... actually \\boxed{1243}", "1243", False),
    ("1234", "\\boxed{\\$1,234.00}", "\\$1,234.00", True),
    ("1234", "\\boxed{1234 \\text{ apples}}", "1234 \\text{ apples}", True),
    ("1234", "#### 1234", "1234", True),
    ("12", "I computed 1234 but the answer is 12", "12", True),
    ("1234", "1200 + 34 = 1,234. The answer is 1,234.", "1,234", True),
    ("18", "Janet sells 16 - 3 - 4 = 9 eggs at $2 each: 9 * 2 = 18.\nThe answer is 18.", "18", True),
    ("18", "The answer is 18.\n\nI hope this helps! Ask if you have 2 more questions.", "18", True),
    ("18", "Answer: $18", "18", True),
    ("18", "**Final Answer:** $18.00", "18.00", True),
    ("18", "So she makes \\boxed{\\$18} every day.", "\\$18", True),
    ("18", "She earns 9 × 2 = 18 dollars a day.", "18", True),
    ("18", "The answer is 18 ... wait, that's wrong. The answer is 20.", "20", False),
    ("8", "The answer is 5 + 3 = 8.", "8", True),                                  # a sum: its result
    ("-3", "The temperature falls to -3 degrees. The answer is -3.", "-3", True),
    ("0.5", "\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", True),
    ("0.5", "The probability is $\\boxed{\\dfrac{1}{2}}$.", "\\dfrac{1}{2}", True),
    ("33", "\\boxed{033}", "033", True),                                            # AIME: 000-999
    ("204", "Therefore m + n = 204.\n\n**Answer:** \\boxed{204}", "204", True),
    ("204", "The remainder when divided by 1000 is $\\boxed{240}$.", "240", False),
    ("1234", "I don't know.", None, False),                                         # no answer at all
    ("1234", "", None, False),
    ("1234", "\\boxed{}", "", False),
    ("1234", "The answer is unclear without more information.", None, False),
    ("12", "\\boxed{12", "12", True),                                               # unclosed box: last number
]


@pytest.mark.parametrize("reference, reply, extracted, correct", MATH_CASES,
                         ids=[f"math{k}" for k in range(len(MATH_CASES))])
def test_math_grader(reference, reply, extracted, correct):
    result = grade(reply, Item("GSM8K", "0", "", reference))
    assert (result.extracted, result.correct) == (extracted, correct)


def test_math_details():
    assert last_boxed("\\boxed{\\frac{1}{2}} and \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{1} and \\fbox{2}") == "2" and last_boxed("\\boxed{1} \\boxed{2") is None
    assert parse_number("\\frac{3}{4}") == parse_number("0.75")
    assert parse_number("-\\frac{3}{4}") == parse_number("-0.75")
    assert parse_number("50\\%") == 50
    assert grade("\\boxed{033}", Item("AIME", "0", "", "33")).correct


GPQA_LABELS = ("A", "B", "C", "D")

CHOICE_CASES = [  # (reply, extracted option)  GPQA and ARC-Challenge, options A-D, reference C
    ("Let me answer a few questions first. ... (C) fits best.", "C"),             # "answer a": an article
    ("I will answer b. ... (C) is right.", "C"),                                   # "answer b": a word
    ("The question asks which answer is a noble gas. Argon is one, so the answer is C.", "C"),
    ("The answer is a bit subtle: electrons are leptons, so the correct option is (B).", "B"),
    ("I will answer a question with a question: why not (D)?", "D"),
    ("The answer is (C).", "C"),
    ("Answer: C", "C"),
    ("**Answer: C**", "C"),
    ("ANSWER: A", "A"),
    ("Final answer: \\boxed{C}", "C"),
    ("\\boxed{(C)}", "C"),
    ("\\boxed{\\text{C}}", "C"),
    ("The final answer is $\\boxed{\\text{(A)}}$.", "A"),
    ("Answer: \\boxed{B}", "B"),
    ("The answer is \\boxed{D}.\n\nThis is because argon has a full outer shell.", "D"),
    ("(A) looks wrong, (B) too, so the answer is C.", "C"),
    (("Let me check each option.\n\n(A) proton: a baryon.\n(B) electron: a lepton.\n(C) neutron: a baryon.\n"
      "(D) pion: a meson.\n\nTherefore, the correct answer is B."), "B"),
    ("The correct answer is **(D) argon**.", "D"),
    ("The answer is A because electrons are leptons.", "A"),
    ("The answer is: A. Electrons are leptons.", "A"),
    ("The answer is (C).\n\nNote that (A) and (B) are baryons.", "C"),             # explicit beats a later (X)
    ("Hmm, maybe (A)? Actually the answer is B.", "B"),
    ("Final answer: the answer is (c)", "C"),
    ("answer is c", "C"),                                                          # lower case ending the line
    ("Option B is correct: the electron is a lepton.", "B"),
    ("I'll go with C.", "C"),
    ("Answer: I am not sure, but I'd guess (B)", "B"),
    ("**Final Answer**\n\nB", "B"),                                                # a last line that is a label
    ("C", "C"),
    ("(C)", "C"),
    ("I think it's (B)... no wait, (C)", "C"),                                     # the last (X)
    ("Between A and B I pick \\boxed{B}", "B"),
    ("I cannot decide.", None),                                                    # no answer at all
    ("A couple of ideas. Anyway.", None),                                          # the word "A" is no choice
    ("Without more information I cannot determine which option is correct.", None),
    ("Both A and B seem plausible, and I am not sure which.", None),
    ("The answer is E.", None),                                                    # not one of the options
    ("", None),
]


@pytest.mark.parametrize("reply, extracted", CHOICE_CASES, ids=[f"choice{k}" for k in range(len(CHOICE_CASES))])
def test_choice_extraction(reply, extracted):
    assert extract_choice(reply, GPQA_LABELS) == extracted
    result = grade(reply, Item("GPQA", "0", "", "C", GPQA_LABELS))
    assert (result.extracted, result.correct) == (extracted, extracted == "C")


@pytest.mark.parametrize("reply, extracted", [
    ("The answer is \\boxed{2}", "2"),
    ("The answer is 3", "3"),
    ("There are 4 options; the answer is (1).", "1"),
    ("Answer: 10", None),                                                          # 10 is not an option
    ("Step 1: recall what a metal is. Step 2: iron conducts. So the answer is 1.", "1"),
])
def test_choice_numeric_labels(reply, extracted):
    assert extract_choice(reply, ("1", "2", "3", "4")) == extracted


def test_choice_parenthesised_reference():
    bbh = Item("BBH", "0", "", "(C)", ("A", "B", "C"))
    assert grade("So the answer is (C).", bbh).correct
    assert grade("So the answer is C.", bbh).correct                    # "(C)" vs "C"
    assert grade("So the answer is (C) 01/03/2000.", bbh).correct
    assert not grade("So the answer is (B).", bbh).correct


BBH_LABELS = ("A", "B", "C", "D", "E", "F", "G")

BBH_CHOICE_CASES = [  # (reply, extracted option)  BBH multiple choice, options (A)-(G), reference (C)
    ("So the answer is (C).", "C"),
    ("Let's think step by step.\nToday is 1/2/2000, so tomorrow is 01/03/2000.\nSo the answer is (C).", "C"),
    ("So the answer is F.", "F"),
    ("So the answer is (A) 01/03/2000.", "A"),
    ("So the answer is E", "E"),
    ("The answer is (g).", "G"),
    ("Therefore, the correct option is (D) 12/31/1999.", "D"),
    ("So the answer is \\boxed{(C)}", "C"),
    ("Options (A) and (B) are before today, so the answer is (C).", "C"),
    ("I need to answer a few sub-questions first. The red book is leftmost. So the answer is (D).", "D"),
    ("The answer is a date in March, which is option (F).", "F"),
    ("Let me answer b) first: the owl is third. So (C) is correct.", "C"),
    ("The yellow book is the second from the left.\nSo the answer is (B).", "B"),
    ("It is (B). So the answer is (B).", "B"),
    ("**So the answer is (C).**", "C"),
    ("A is not possible since Anna finished first. B is also wrong. So the answer is (C).", "C"),
    ("(D)", "D"),
    ("the answer is: (b)", "B"),
    ("Eve finished third.\n(E)", "E"),
    ("So the answer is (C) and not (A).", "C"),
    ("So the answer is (H).", None),                                               # not one of the options
    ("None of the options fits, so I cannot answer.", None),                       # no answer at all
    ("So the answer is", None),                                                    # cut off by the answer cap
    ("", None),
]


@pytest.mark.parametrize("reply, extracted", BBH_CHOICE_CASES,
                         ids=[f"bbh_choice{k}" for k in range(len(BBH_CHOICE_CASES))])
def test_bbh_choice_grader(reply, extracted):
    result = grade(reply, Item("BBH", "date_understanding/0", "", "(C)", BBH_LABELS))
    assert (result.extracted, result.correct) == (extracted, extracted == "C")


BBH_TEXT_CASES = [  # (reference, reply, correct)  BBH free-form targets
    ("False", "not True is False, so the answer is False.", True),
    ("False", "So the answer is **false**.", True),
    ("False", "So the answer is True.", False),
    ("True", "not ( False ) is True; True and True is True. So the answer is True", True),
    ("valid", "So the answer is valid.", True),
    ("valid", "So the answer is invalid.", False),
    ("valid", "The argument is deductively valid. So the answer is valid.", True),
    ("24", "So the answer is 24.", True),
    ("24", "So the answer is 24.0", True),
    ("7", "There are 7 objects. So the answer is 7.", True),
    ("7", "So the answer is seven.", False),
    ("12", "So the answer is 12 apples.", True),
    ("apple banana cherry", "So the answer is apple  banana cherry.", True),
    ("] )", "So the answer is ] ).", True),
    ("swim", "So the answer is \"swim\".", True),
    ("Yes", "So the answer is Yes.", True),
    ("No", "So the answer is: no", True),
    ("No", "The answer is no. Wait, let me recheck. So the answer is yes.", False),   # the last one counts
    ("No", "\\boxed{No}", True),
    ("Yes", "I have no idea", False),                                                 # no answer at all
    ("Yes", "So the answer is", False),
    ("Yes", "", False),
]


@pytest.mark.parametrize("reference, reply, correct", BBH_TEXT_CASES,
                         ids=[f"bbh_text{k}" for k in range(len(BBH_TEXT_CASES))])
def test_bbh_grader(reference, reply, correct):
    assert grade(reply, Item("BBH", "0", "", reference)).correct is correct


CRUX_CASES = [  # (reference, reply, correct)  CRUXEval-O
    ("'cba'", "[ANSWER]'cba'[/ANSWER]", True),
    ("'cba'", '[ANSWER]"cba"[/ANSWER]', True),                           # same literal, other quotes
    ("'cba'", "[ANSWER]assert f('abc') == 'cba'[/ANSWER]", True),
    ("'cba'", "The function reverses the string.\n[ANSWER]\n'cba'\n[/ANSWER]", True),
    ("[('a', 1), ('b', 2)]", "[ANSWER][('a',1),('b',2)][/ANSWER]", True),
    ("{'a': 1, 'b': 2}", "[ANSWER]{'b': 2, 'a': 1}[/ANSWER]", True),
    ("'cba'", "[ANSWER]'abc'[/ANSWER] no wait [ANSWER]'cba'[/ANSWER]", True),
    ("'cba'", "[ANSWER]__import__('os').system('echo pwned')[/ANSWER]", False),  # never executed
    ("'cba'", "[ANSWER]f('abc')[/ANSWER]", False),
    ("3", "```python\n3\n```", True),
    ("{'a': 1}", "```python\nassert f({'a': 1}) == {'a': 1}\n```", True),
    ("3", "[ANSWER]3[/ANSWER]", True),
    ("3", "[ANSWER]3.0[/ANSWER]", True),                                 # Python ==, as CRUXEval's assert
    ("True", "[ANSWER]1[/ANSWER]", True),
    ("[1, 2, 3]", "[ANSWER][1, 2, 3][/ANSWER]", True),
    ("[1, 2, 3]", "[ANSWER][3, 2, 1][/ANSWER]", False),
    ("'hello'", "[ANSWER]hello[/ANSWER]", False),                        # not a literal
    ("''", "[ANSWER]''[/ANSWER]", True),
    ("None", "[ANSWER]None[/ANSWER]", True),
    ("(1, 2)", "\\boxed{(1, 2)}", True),
    ("'cba'", "The function reverses the string.", False),             # no answer at all
    ("'cba'", "[ANSWER]'cba'", False),                                   # unclosed: no answer
    ("'cba'", "", False),
]


@pytest.mark.parametrize("reference, reply, correct", CRUX_CASES, ids=[f"crux{k}" for k in range(len(CRUX_CASES))])
def test_cruxeval_grader(reference, reply, correct):
    assert grade(reply, Item("CRUXEval", "0", "", reference)).correct is correct


@pytest.mark.parametrize("item", [
    Item("GSM8K", "0", "", "18"), Item("AIME", "0", "", "33"), Item("GPQA", "0", "", "C", GPQA_LABELS),
    Item("ARC-Challenge", "0", "", "2", ("1", "2", "3", "4")), Item("BBH", "0", "", "(A)", BBH_LABELS),
    Item("BBH", "0", "", "Yes"), Item("CRUXEval", "0", "", "'cba'"),
], ids=lambda item: f"{item.task}{'-choice' if item.labels else ''}")
@pytest.mark.parametrize("reply", ["", "I am not sure how to solve this.", "Let me answer a few questions first."])
def test_no_answer_is_never_guessed(item, reply):
    assert grade(reply, item) == (False, None)


def test_safe_literal_never_runs_code():
    assert safe_literal("[1, 2]") == (True, [1, 2])
    assert safe_literal("__import__('os')") == (False, None)
    assert safe_literal("(" * 100_000) == (False, None)
    assert safe_literal("[" * 5000 + "]" * 5000) == (False, None)  # too deep for the parser: no crash
