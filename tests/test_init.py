"""Tests for folio/train/init.py: `--init-from run:DIR`, vocabulary extension and its record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import word_dataset

from folio.checkpoint import load_checkpoint
from folio.cli import main
from folio.config.run import build_run_config
from folio.data.batches import Dataset, RemappedTokens, get_batch, remapped
from folio.errors import FolioError
from folio.eval.loss import evaluate_checkpoint
from folio.models import build_model
from folio.stages.pretrain import initial_weights, train
from folio.tokenizers import BPETokenizer, CharTokenizer
from folio.tokenizers.chat import CHAT_TOKENS, has_chat_template
from folio.tokenizers.extend import added_tokens, token_id_map
from folio.train import trainer as trainer_module
from folio.train.init import (
    check_model_overrides,
    covering_tokenizer,
    load_base,
    require_extension,
)

WORDS = ["the", "king", "queen", "of", "and", "to", "my", "lord", "thou", "art", "good"]
# New text: characters the base never saw ('Z', 'é', '0'), and a vocabulary sorted otherwise.
NEW_WORDS = ["Zounds", "café", "the", "king", "0", "lord"]


def _dataset(root: Path, words: list[str]) -> Path:
    return word_dataset(root, words, lines=200)


def _run(*overrides: tuple[str, object]):
    return build_run_config("tiny", [("train.threads", 1), ("train.eval_iters", 2), *overrides])


@pytest.fixture(autouse=True)
def no_plot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("init")
    return {"old": _dataset(root / "old", WORDS), "new": _dataset(root / "new", NEW_WORDS)}


@pytest.fixture(scope="module")
def base(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)
        train(_run(("train.max_iters", 10)), data["old"], out, progress=False, log=lambda *_: None)
    return out


def test_the_start_extends_the_vocabulary_and_keeps_old_logits_exactly(
    data: dict[str, Path], base: Path
) -> None:
    old = load_checkpoint(base)
    ds = Dataset.open(data["new"])
    start, lut = initial_weights(_run(), f"run:{base}", ds)
    tok = start.tokenizer
    # Old ids unchanged; the new characters appended, sorted.
    assert added_tokens(old.tokenizer, tok) == ["0", "Z", "c", "s", "é"]
    assert start.run.model == dataclasses.replace(old.model_config, vocab_size=tok.vocab_size)
    model = build_model(start.run.model)
    model.load_state_dict(start.weights)
    idx = torch.randint(
        0, old.tokenizer.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0)
    )
    before, _ = old.model.eval()(idx)
    after, _ = model.eval()(idx)
    assert torch.equal(after[..., : old.tokenizer.vocab_size], before)
    # The dataset's own ids are read through the map: the same text comes out.
    text = ds.tokens("train")
    assert isinstance(remapped(text, lut), RemappedTokens)
    assert tok.decode(remapped(text, lut)[:200]) == ds.tokenizer.decode(text[:200])
    x, y = get_batch(remapped(text, lut), 4, 16, torch.Generator().manual_seed(1))
    assert int(x.max()) < tok.vocab_size and torch.equal(x[:, 1:], y[:, :-1])


def test_fine_tuning_from_a_run_end_to_end_records_the_extension(
    data: dict[str, Path], base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "ft"
    # One step at a vanishing learning rate: the checkpoint holds the start, as trained.
    argv = ["train", "--data", str(data["new"]), "--preset", "tiny", "--init-from", f"run:{base}",
            "--max-iters", "1", "--learning-rate", "1e-12", "--threads", "1", "--out", str(out),
            "--quiet", "--set", "train.eval_iters=2"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    old, new = load_checkpoint(base), load_checkpoint(out)
    v = old.tokenizer.vocab_size
    idx = torch.randint(0, v, (2, 16), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(new.model.eval()(idx)[0][..., :v], old.model.eval()(idx)[0], atol=1e-5)
    record = {
        "from": f"run:{base}",
        "checkpoint": str(old.path.resolve()),
        "step": 10,
        "base_vocab_size": v,
        "added_tokens": ["0", "Z", "c", "s", "é"],
    }
    assert json.loads((out / "run.json").read_text())["init"] == record
    assert new.state["init"] == record
    # A fine-tune of the fine-tune records its base's record too.
    again = tmp_path / "ft2"
    argv[argv.index(str(out))] = str(again)
    argv[argv.index(f"run:{base}")] = f"run:{out}"
    assert main(argv) == 0
    second = load_checkpoint(again).state["init"]
    assert second["added_tokens"] == [] and second["init"] == record
    # `folio eval` reads the base's dataset through the id map.
    figures = evaluate_checkpoint(out, data["old"], max_batches=2)
    assert 0 < figures["val_loss"] < 10


def test_model_flags_are_refused_and_dropout_applies(
    data: dict[str, Path], base: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["train", "--data", str(data["old"]), "--preset", "tiny", "--init-from",
            f"run:{base}", "--out", str(tmp_path / "x"), "--quiet"]  # fmt: skip
    assert main([*argv, "--model.n_layer", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.n_layer: the model's shape comes from" in err
    assert main([*argv, "--set", "n_embd=8"]) == 2  # a bare name of the model section
    assert "model.n_embd" in capsys.readouterr().err
    check_model_overrides([("model.dropout", 0.1), ("train.seed", 1)], f"run:{base}")
    check_model_overrides([("model.n_layer", 4)], None)  # a fresh model: anything goes
    start, _ = initial_weights(
        _run(("model.dropout", 0.25)), f"run:{base}", Dataset.open(data["old"])
    )
    assert start.run.model.dropout == 0.25 and start.record["added_tokens"] == []


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("run:", "expected hf:DIR"),
        ("ckpt/", "expected hf:DIR (a local Hugging Face GPT-2 directory) or run:DIR"),
        ("run:{missing}", "checkpoint or run directory not found"),
    ],
)
def test_a_bad_init_from_is_one_line(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, spec: str, words: str
) -> None:
    spec = spec.format(missing=tmp_path / "nowhere")
    argv = ["train", "--data", str(data["old"]), "--preset", "tiny", "--init-from", spec,
            "--out", str(tmp_path / "x"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_mismatched_tokenizers_are_one_line(base: Path, tmp_path: Path) -> None:
    char = load_base(f"run:{base}").tokenizer
    bpe = BPETokenizer.train(["the king of my lord and thou art good"] * 20, vocab_size=300)
    with pytest.raises(
        FolioError, match="a bpe tokenizer's ids cannot be read by a model trained with a char"
    ):
        covering_tokenizer(char, tokenizers=[bpe])
    with pytest.raises(FolioError) as e:
        require_extension(char, CharTokenizer.from_text("zyx"), "run:ref", "run:policy")
    assert str(e.value).startswith("the tokenizer of run:policy does not extend that of run:ref: ")
    assert "\n" not in str(e.value)
    other = BPETokenizer.train(["quite other text, with other merges"] * 20, vocab_size=290)
    with pytest.raises(FolioError, match="not the base model's"):
        covering_tokenizer(bpe, tokenizers=[other])
    with pytest.raises(FolioError, match="a char tokenizer cannot read bpe token ids"):
        token_id_map(bpe, char)


def test_covering_tokenizers_of_both_kinds() -> None:
    char = CharTokenizer.from_text("abc")
    grown = covering_tokenizer(
        char, ["a+b"], [CharTokenizer(["c", "d", "<|x|>"], ["<|x|>"])], chat=True
    )
    assert added_tokens(char, grown) == ["+", "d", "<|x|>", *CHAT_TOKENS]
    assert has_chat_template(grown)
    lut = token_id_map(CharTokenizer.from_text("dca"), grown)
    assert lut is not None and lut.tolist() == [0, 2, grown.encode("d")[0]]
    assert token_id_map(char, grown) is None  # the same ids: no map
    bpe = BPETokenizer.train(["the king of my lord and thou art good"] * 20, vocab_size=300)
    chat = covering_tokenizer(bpe, ["any text at all: é+ü"], [bpe], chat=True)
    assert added_tokens(bpe, chat) == list(CHAT_TOKENS)
    assert token_id_map(bpe, chat) is None  # an extension reads the old ids as they are
    # A BPE dataset whose tokenizer extends the base's gives its extra specials to the run.
    more = bpe.with_tokens(specials=["<|x|>"])
    assert added_tokens(bpe, covering_tokenizer(bpe, tokenizers=[more])) == ["<|x|>"]
    assert np.array_equal(RemappedTokens(np.array([2, 0, 1]), np.array([5, 6, 7]))[:], [7, 5, 6])
