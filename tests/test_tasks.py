"""Tests for folio/data/tasks.py and `folio tasks`: prompts, answers, splits, seeds, files."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pytest

from folio.cli import main
from folio.data.conversations import read_conversations
from folio.data.corpora import Corpus
from folio.data.material import build_material, length_bucket, speeches
from folio.data.prefs import is_gold_prompt
from folio.data.tasks import (
    SPLITS,
    TASKS,
    check_reply,
    checkable_task_names,
    example_seed,
    final_answer,
    get_task,
    make_examples,
    make_task_files,
    prompt_split,
    worked_count,
    worked_sum,
)
from folio.errors import FolioError

PLAY = (
    "HAMLET:\nTo be, or not to be, that is the question:\nWhether tis nobler in the mind\n\n"
    "OPHELIA:\nGood my lord, how does your honour?\nMy lord.\n\n"
    "HAMLET:\nI humbly thank you; well, well, well.\nMy lord.\n\n"
    "POLONIUS:\nThough this be madness, yet there is method in it.\n\n"
)
WORDS = " ".join("".join(p) for p in itertools.product("abcdef", repeat=3))  # 216 words
MORE_LINES = "".join(
    f"{who}:\nThis is line number {i} of the speeches of {who.lower()}.\n\n"
    for who in ("HAMLET", "OPHELIA", "POLONIUS")
    for i in range(30)
)


@pytest.fixture(scope="module")
def material():
    text = PLAY + MORE_LINES + "\n" + WORDS + " fig " + WORDS + " fig\n"
    return build_material(Corpus("tiny", [text], ["tiny.txt"]), n_speakers=2)


def test_material_words_lines_and_speakers(material) -> None:
    assert list(speeches(PLAY))[1] == (
        "OPHELIA",
        ["Good my lord, how does your honour?", "My lord."],
    )
    assert material.speakers == ["HAMLET", "OPHELIA"]  # the two with most lines (then the name)
    lines = dict(material.lines)
    assert lines["To be, or not to be, that is the question:"] == "HAMLET"
    assert "My lord." not in lines  # too short, and said by two speakers
    assert not any(s == "POLONIUS" for s in lines.values())  # not among the top 2
    assert "abc" in material.words and "fig" in material.words  # 3 to 8 letters, seen twice
    assert all(re.fullmatch(r"[a-z]{3,8}", w) for w in material.words)
    assert "madness" not in material.words  # seen once only


def test_prompts_and_answers_have_the_exact_forms(material) -> None:
    examples = make_examples(["reverse", "add", "count", "speaker"], "train", 30, 7, material)
    assert [e.task for e in examples[:4]] == ["reverse", "add", "count", "speaker"]
    for e in examples:
        if e.task == "reverse":
            word = re.fullmatch(r"Reverse: ([a-z]+)", e.prompt)[1]
            assert e.answer == word[::-1] and word in material.words
        elif e.task == "add":
            a, b = re.fullmatch(r"(\d{1,3})\+(\d{1,3})=", e.prompt).groups()
            assert e.answer == worked_sum(int(a), int(b))
            assert e.answer.split()[-1] == str(int(a) + int(b))
        elif e.task == "count":
            letter, word = re.fullmatch(r"How many ([a-z]) in ([a-z]+)\?", e.prompt).groups()
            assert e.answer == worked_count(letter, word)
            assert e.answer.split()[-1] == str(word.count(letter))
        else:
            line = e.prompt.removeprefix("Who says: ")
            assert e.answer == dict(material.lines)[line]
        assert e.messages[-1] == {"role": "assistant", "content": e.answer}
        assert prompt_split(e.prompt) == "train"
    assert len({(e.task, e.prompt) for e in examples}) == len(examples)  # no repeats


def test_worked_answers_by_hand() -> None:
    # 47 + 85: 7+5 = 12 (carry 1), 4+8+1 = 13 (carry 1), so 132
    assert worked_sum(47, 85) == "7+5=12 4+8+1=13 so 132"
    # 7 + 385: the shorter number's missing digits are 0; the carry rides on
    assert worked_sum(7, 385) == "7+5=12 0+8+1=9 0+3=3 so 392"
    assert worked_sum(999, 1) == "9+1=10 9+0+1=10 9+0+1=10 so 1000"
    assert worked_sum(0, 0) == "0+0=0 so 0"
    assert worked_count("r", "berry") == "b e r1 r2 y so 2"
    assert worked_count("z", "cat") == "c a t so 0"
    assert worked_count("s", "sass") == "s1 a s2 s3 so 3"


def test_worked_tasks_are_checked_by_their_final_answer() -> None:
    assert final_answer("b e r1 r2 y so 2") == "2" and final_answer("  ") == ""
    assert check_reply("count", "b e r1 r2 y so 2", "b e r1 r2 y so 2")
    assert check_reply("count", "b e r1 y so 2", "b e r1 r2 y so 2")  # the working may differ
    assert check_reply("count", "2", "b e r1 r2 y so 2")  # a one-shot reply answers too
    assert not check_reply("count", "b e r1 r2 y so 1", "b e r1 r2 y so 2")
    assert not check_reply("add", "", "0+0=0 so 0")  # an empty reply answers nothing
    assert check_reply("add", "7+5=12 4+8+1=13 so 132 ", "7+5=12 4+8+1=13 so 132")
    # the one-shot forms stay exact
    assert check_reply("add-oneshot", " 132\n", "132")
    assert not check_reply("add-oneshot", "so 132", "132")


def test_line_demonstrations_are_real_passages_of_every_length(material) -> None:
    examples = make_examples(["line"], "train", 16, 1, material)
    passages = {text for text, _ in material.passages}
    buckets, with_word = set(), 0
    for e in examples:
        m = re.fullmatch(r"Write a line for (\w+) about ([a-z]+)", e.prompt)
        assert m and m[1] in material.speakers and m[2] in material.topics
        assert is_gold_prompt(e.prompt)  # the same form the preference stages rank
        if e.answer.startswith(m[2]):  # a passage holding the word, from the word on
            assert any(p.lower().endswith(e.answer.lower()) for p in passages)
            with_word += 1
        else:  # a real line (or two lines of one speech) that does not hold it
            assert e.answer in passages and m[2] not in e.answer.lower()
        buckets.add(length_bucket(e.answer))
    assert buckets == {"short", "fit", "long"}
    assert 0 < with_word < len(examples)  # sometimes the word, often not: imperfect on purpose


def test_demonstrations_are_train_only_and_never_rewarded(tmp_path: Path) -> None:
    manifest = make_task_files(["reverse", "line"], tmp_path / "t", n=6, n_test=3)
    assert manifest["demonstrations"] == ["line"]
    tasks = [json.loads(x)["task"] for x in (tmp_path / "t" / "test.jsonl").open()]
    assert tasks == ["reverse"] * 3
    train = [json.loads(x)["task"] for x in (tmp_path / "t" / "train.jsonl").open()]
    assert train.count("line") == 6
    with pytest.raises(FolioError, match="demonstrations"):
        checkable_task_names("reverse,line")


def test_example_seeds_never_collide_and_are_never_negative() -> None:
    seen = {}
    for seed in (0, 1, 2, 2**40):
        for split in SPLITS:
            for t in range(len(TASKS)):
                for i in (0, 1, 2, 2**32 - 1):
                    s = example_seed(seed, split, t, i)
                    assert s >= 0 and s not in seen, (seed, split, t, i, seen.get(s))
                    seen[s] = (seed, split, t, i)
    # Random(-n) == Random(n): negative seeds would alias, so they are refused.
    assert random.Random(-5).random() == random.Random(5).random()
    with pytest.raises(FolioError, match="non-negative"):
        example_seed(-1, "train", 0, 0)


def test_train_and_test_are_disjoint(material, tmp_path: Path) -> None:
    # Tasks on a small word pool, so collisions would surely appear without the split.
    names = ["reverse", "add", "count"]
    train = make_examples(names, "train", 20, 3, material)
    test = make_examples(names, "test", 2, 3, material)
    assert not {e.seed for e in train} & {e.seed for e in test}
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    # Different n and seeds still never share a prompt: the split is a function of it.
    other_test = make_examples(names, "test", 3, 99, material)
    assert not {e.prompt for e in train} & {e.prompt for e in other_test}
    # Reproducible: the same arguments give the same examples.
    assert make_examples(names, "train", 20, 3, material) == train


def test_a_split_too_small_for_n_is_one_error(material) -> None:
    with pytest.raises(FolioError, match="task reverse: found only .* distinct test prompts"):
        make_examples(["reverse"], "test", 100, 0, material)


def test_checkers_strip_whitespace_only() -> None:
    assert check_reply("add", " 42\n", "42")
    assert not check_reply("add", "042", "42") and not check_reply("reverse", "Olleh", "olleh")
    assert check_reply("my-own-task", "yes ", "yes")  # a user's own task: exact match
    with pytest.raises(
        FolioError,
        match=r"unknown task 'nope' \(known: reverse, add, count, speaker, add-oneshot, "
        r"count-oneshot, line\)",
    ):
        get_task("nope")


def test_make_task_files_on_the_shakespeare_corpus(tmp_path: Path) -> None:
    out = tmp_path / "tasks"
    manifest = make_task_files(["reverse", "speaker"], out, n=40, seed=5, n_test=20)
    assert manifest["speakers"][:2] == ["GLOUCESTER", "FALSTAFF"]
    assert sorted(p.name for p in out.iterdir()) == ["tasks.json", "test.jsonl", "train.jsonl"]
    train = read_conversations(out / "train.jsonl")
    test = read_conversations(out / "test.jsonl")
    assert len(train) == 80 and len(test) == 40
    assert {c.task for c in test} == {"reverse", "speaker"}
    assert not {c.messages[0]["content"] for c in train} & {c.messages[0]["content"] for c in test}
    lines = [json.loads(s) for s in (out / "test.jsonl").read_text().splitlines()]
    assert not {d["seed"] for d in lines} & {
        json.loads(s)["seed"] for s in (out / "train.jsonl").read_text().splitlines()
    }
    for c in test:  # every speaker is one of the corpus's tags, every word a short lowercase one
        if c.task == "speaker":
            assert c.messages[1]["content"] in manifest["speakers"]
        else:
            assert re.fullmatch(r"Reverse: [a-z]{3,8}", c.messages[0]["content"])


def test_cli_make_list_and_refusals(tmp_path: Path, capsys) -> None:
    out = tmp_path / "t"
    assert (
        main(["tasks", "make", "--tasks", "add", "--n", "5", "--n-test", "3", "--out", str(out)])
        == 0
    )
    first = (out / "train.jsonl").read_text()
    assert len(first.splitlines()) == 5
    # A tasks directory is replaced; the same seed writes the same file.
    assert (
        main(["tasks", "make", "--tasks", "add", "--n", "5", "--n-test", "3", "--out", str(out)])
        == 0
    )
    assert (out / "train.jsonl").read_text() == first
    capsys.readouterr()
    # A directory holding anything else is refused and left alone.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    assert main(["tasks", "make", "--tasks", "add", "--n", "1", "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a Folio tasks directory" in err
    assert (mine / "notes.txt").read_text() == "precious" and len(list(mine.iterdir())) == 1
    assert (
        main(["tasks", "make", "--tasks", "add,divide", "--n", "1", "--out", str(tmp_path / "x")])
        == 2
    )
    err = capsys.readouterr().err
    assert err == (
        "folio: error: unknown task 'divide' "
        "(known: reverse, add, count, speaker, add-oneshot, count-oneshot, line)\n"
    )
    assert not (tmp_path / "x").exists()
    assert (
        main(
            [
                "tasks",
                "make",
                "--n",
                "1",
                "--seed",
                "-3",
                "--tasks",
                "add",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "non-negative" in capsys.readouterr().err
    assert main(["tasks", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in listed] == [
        "reverse", "add", "count", "speaker", "add-oneshot", "count-oneshot", "line"
    ]  # fmt: skip


def test_tinyshakespeare_speakers_are_its_name_lines(tinyshakespeare_path: Path) -> None:
    from folio.data.corpora import load_tinyshakespeare

    m = build_material(load_tinyshakespeare(tinyshakespeare_path), n_speakers=3)
    text = tinyshakespeare_path.read_text(encoding="utf-8")
    for line, speaker in m.lines[:50]:
        assert f"\n{speaker}:\n" in f"\n{text}" and line in text
    assert len(m.speakers) == 3 and len(m.words) > 1000


def test_a_tasks_directory_edited_by_hand_is_not_replaced_without_force(tmp_path: Path) -> None:
    """A rerun may replace its own files as written; a hand-edited file needs --force."""
    out = tmp_path / "t"
    args = ["tasks", "make", "--tasks", "reverse", "--n", "3", "--n-test", "2", "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 0  # untouched: regenerated
    edited = (out / "test.jsonl").read_text() + '{"messages": []}\n'
    (out / "test.jsonl").write_text(edited)
    assert main(args) == 2
    assert (out / "test.jsonl").read_text() == edited
    assert main([*args, "--force"]) == 0
    assert (out / "test.jsonl").read_text() != edited
