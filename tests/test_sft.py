"""Tests for folio/stages/sft.py, `folio sft` and MixedObjective: fine-tuning on conversations.

The base is the tiny preset (2 layers, 32 wide, block 16) trained 20 steps on a
small word corpus; the conversations are a task it can learn in seconds: the
user says a three-letter word, the assistant answers with its last letter.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch

from folio.checkpoint import load_checkpoint
from folio.cli import main
from folio.config.run import build_run_config
from folio.data.corpora import load_corpus
from folio.data.prepare import prepare_dataset
from folio.errors import FolioError
from folio.eval.tasks import evaluate_tasks, read_test_set, task_items
from folio.stages.pretrain import train as pretrain
from folio.stages.sft import read_sft_data
from folio.stages.sft import train as sft
from folio.tokenizers.chat import CHAT_TOKENS, has_chat_template
from folio.tokenizers.extend import added_tokens
from folio.train import trainer as trainer_module
from folio.train.objectives import MixedObjective

WORDS = ["the", "king", "queen", "of", "and", "to", "my", "lord", "thou", "art", "good"]


def _convo(word: str) -> dict:
    return {
        "task": "last",
        "messages": [{"role": "user", "content": word}, {"role": "assistant", "content": word[-1]}],
    }


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _run(*overrides: tuple[str, object]):
    return build_run_config("tiny", [("train.threads", 1), ("train.eval_iters", 4), *overrides])


@pytest.fixture(autouse=True)
def no_plot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A word corpus, a base run trained on it, and a tasks-like directory of conversations."""
    root = tmp_path_factory.mktemp("sft")
    rng = random.Random(0)
    lines = (" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(300))
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare_dataset(load_corpus([str(root / "corpus.txt")]), root / "ds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)
        pretrain(_run(("train.max_iters", 20)), root / "ds", root / "base", progress=False,
                 log=lambda *_: None)  # fmt: skip
    words = ["".join(p) for p in itertools.product("abcdefgh", repeat=3)]
    random.Random(1).shuffle(words)
    tasks = root / "tasks"
    tasks.mkdir()
    _write(tasks / "train.jsonl", [_convo(w) for w in words[:400]])
    _write(tasks / "test.jsonl", [_convo(w) for w in words[400:464]])
    return {"ds": root / "ds", "base": root / "base", "tasks": tasks}


def _sft(world: dict[str, Path], out: Path, *overrides: tuple[str, object], **kw):
    run = _run(("train.learning_rate", 3e-3), *overrides)
    kw.setdefault("eval_prompts", 32)
    return sft(run, f"run:{world['base']}", world["tasks"], out, progress=False,
               log=lambda *_: None, **kw)  # fmt: skip


def test_sft_teaches_the_task_on_held_out_prompts(world: dict[str, Path], tmp_path: Path) -> None:
    result = _sft(world, tmp_path / "run", ("train.max_iters", 60), ("train.eval_interval", 30))
    first, last = result.history[0], result.history[-1]
    # The base does not know the format; after SFT the held-out prompts are answered and ended.
    assert first["pass_at_1"] < 0.2 and first["end_rate"] < 0.2
    assert last["pass_at_1"] >= 0.8 and last["end_rate"] >= 0.95
    assert last["val_loss"] < first["val_loss"] - 1.0
    # The run's checkpoint is a chat model the task evaluation reads as it is.
    ck = load_checkpoint(tmp_path / "run")
    assert has_chat_template(ck.tokenizer)
    base = load_checkpoint(world["base"])
    assert added_tokens(base.tokenizer, ck.tokenizer) == ["b", "c", *CHAT_TOKENS]
    items = task_items(read_test_set(world["tasks"] / "test.jsonl"), ck.tokenizer)
    report = evaluate_tasks(ck.model, ck.tokenizer, items, k=0)
    assert report["overall"]["pass_at_1"] >= 0.8
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["stage"] == "sft" and meta["val"] == str(world["tasks"] / "test.jsonl")
    assert meta["init"]["base_vocab_size"] == base.tokenizer.vocab_size
    assert ck.state["init"] == meta["init"]


def test_sft_resumes_exactly_with_mixed_in_text(world: dict[str, Path], tmp_path: Path) -> None:
    def fit(out: Path, iters: int, resume: bool = False):
        return _sft(world, out, ("train.max_iters", iters), ("train.eval_interval", 10),
                    mix_data=world["ds"], mix_fraction=0.25, eval_prompts=8, resume=resume)  # fmt: skip

    whole = fit(tmp_path / "whole", 20)
    fit(tmp_path / "split", 10)
    resumed = fit(tmp_path / "split", 20, resume=True)
    assert resumed.val_loss == whole.val_loss
    assert resumed.history[-1]["text_val_loss"] == whole.history[-1]["text_val_loss"]
    a = load_checkpoint(tmp_path / "whole").model.state_dict()
    b = load_checkpoint(tmp_path / "split").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mixed_objective_rows() -> None:
    T = 8
    x = torch.arange(10 * T).reshape(10, T) % 7
    mask = torch.zeros_like(x)
    mask[:, -2:] = 1
    rows = {"train": (x, x, mask), "val": (x, x, mask)}
    text = {s: torch.arange(500).numpy() % 5 + 100 for s in ("train", "val")}
    obj = MixedObjective(rows, batch_size=8, text=text, fraction=0.25)
    bx, by, bm = obj.batch("train", torch.Generator().manual_seed(0))
    assert bx.shape == by.shape == bm.shape == (8, T) and obj.n_text == 2
    assert (bx[:6] < 7).all() and (bx[6:] >= 100).all()  # 6 conversation rows, 2 text windows
    assert (bm[6:] == 1).all() and (bm[:6].sum(1) == 2).all()
    assert torch.equal(bx[6:, 1:], by[6:, :-1])  # text targets: the next token
    vx, _, vm = obj.batch("val", torch.Generator().manual_seed(0))
    assert vx.shape == (8, T) and (vx < 7).all() and (vm.sum(1) == 2).all()  # val: conversations
    again = obj.batch("train", torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((bx, by, bm), again, strict=True))
    assert MixedObjective(rows, 8, text, fraction=0.01).n_text == 1  # any share: at least a row
    assert MixedObjective(rows, 8).n_text == 0 and MixedObjective(rows, 8).metrics(None) == {}


def test_validation_comes_from_a_file_or_a_held_out_slice(tmp_path: Path) -> None:
    words = ["".join(p) for p in itertools.product("abc", repeat=3)]
    d = tmp_path / "d"
    d.mkdir()
    _write(d / "train.jsonl", [_convo(w) for w in words[:20]])
    held = read_sft_data(d, val_fraction=0.1, seed=3)
    assert (len(held.train), len(held.val)) == (18, 2) and "held out: 2 of 20" in held.val_from
    assert {c.where for c in held.val} == {c.where for c in read_sft_data(d, 0.1, 3).val}
    assert {c.where for c in held.val} & {c.where for c in held.train} == set()
    _write(d / "test.jsonl", [_convo(w) for w in words[20:23]])
    assert len(read_sft_data(d).val) == 3 and read_sft_data(d).val_from.endswith("test.jsonl")
    _write(d / "val.jsonl", [_convo(w) for w in words[23:24]])
    assert read_sft_data(d).val_from.endswith("val.jsonl")  # val.jsonl first
    one = _write(tmp_path / "one.jsonl", [_convo("abc")])
    with pytest.raises(FolioError, match="at least 2 are needed"):
        read_sft_data(one)
    with pytest.raises(FolioError, match="--val-fraction must be between 0 and 1"):
        read_sft_data(d, val_fraction=1.0)


BAD_LINES = {
    "malformed": ("{not json", "not valid JSON"),
    "empty": (json.dumps({"messages": []}), "the conversation is empty"),
    "order": (
        json.dumps({"messages": [{"role": "assistant", "content": "a"}]}),
        "message 1 is 'assistant' but 'user' was expected",
    ),
    "no reply": (
        json.dumps({"messages": [{"role": "user", "content": "abc"}]}),
        "has no assistant turn to learn from",
    ),
    "too long": (json.dumps(_convo("abcdefghabcdefgh")), "longer than the model's block_size 16"),
}


@pytest.mark.parametrize("case", BAD_LINES)
def test_a_bad_line_is_one_error_naming_file_and_line(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    line, words = BAD_LINES[case]
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(_convo("abc")) + "\n\n" + line + "\n", encoding="utf-8")
    argv = ["sft", "--init-from", f"run:{world['base']}", "--data", str(f),
            "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"folio: error: {f}:3: ") and words in err, err
    assert not (tmp_path / "run").exists()


def test_cli_flags_that_cannot_apply_are_one_line(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["sft", "--init-from", f"run:{world['base']}", "--data", str(world["tasks"]),
            "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
    cases = {
        "--mix-fraction needs --mix-data": ["--mix-fraction", "0.2"],
        "sft config: mix_fraction must be in [0, 1)": [
            "--mix-data",
            str(world["ds"]),
            "--mix-fraction",
            "1",
        ],
        "model.block_size: the model's shape comes from": ["--model.block_size", "32"],
        "sft config: eval_prompts must not be negative": ["--eval-prompts", "-1"],
        "rl.kl_coef: this command reads no [rl] settings; it takes settings of the sections "
        "model, train, sft": ["--set", "rl.kl_coef=1"],
        "prefs.beta: this command reads no [prefs] settings": ["--set", "prefs.beta=0.5"],
    }
    for words, extra in cases.items():
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "run").exists()


def test_cli_sft_from_a_hugging_face_export(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from folio.hf import export_checkpoint_hf

    hf = export_checkpoint_hf(world["base"], tmp_path / "hf")
    argv = ["sft", "--init-from", f"hf:{hf}", "--data", str(world["tasks"]), "--preset", "tiny",
            "--out", str(tmp_path / "run"), "--max-iters", "4", "--eval-interval", "4",
            "--threads", "1", "--eval-prompts", "4", "--quiet", "--json"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])  # after the log lines
    assert summary["step"] == 4 and 0 <= summary["pass_at_1"] <= 1
    ck = load_checkpoint(tmp_path / "run")
    base = load_checkpoint(world["base"])
    assert ck.state["init"]["from"] == f"hf:{hf}"
    assert added_tokens(base.tokenizer, ck.tokenizer)[-4:] == list(CHAT_TOKENS)
