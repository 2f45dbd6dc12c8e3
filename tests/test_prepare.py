"""Tests for folio/data/prepare.py (and Dataset.open in batches.py): text -> token files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from folio.data import prepare as prepare_module
from folio.data.batches import Dataset
from folio.data.corpora import Corpus
from folio.data.prepare import DATASET_VERSION, prepare_dataset
from folio.errors import FolioError

# Non-ASCII on purpose, so that bytes and characters differ.
TEXT = "".join(f"Line {i}: sweet Ophélie sings ♪ to Œdipus, {i * i}.\n" for i in range(40))
OTHER = "".join(f"A different text, number {i}.\n" for i in range(30))


def corpus(text: str = TEXT) -> Corpus:
    return Corpus("test", [text], ["test.txt"])


def leftovers(parent: Path) -> list[str]:
    """Hidden temporaries (partial or set-aside datasets) next to a dataset directory."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_files_and_meta(tmp_path: Path) -> None:
    out = tmp_path / "data"
    s = prepare_dataset(corpus(), out)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    n = len(TEXT)
    n_train = int(n * 0.9)
    assert meta["format"] == "folio-dataset"
    assert meta["version"] == DATASET_VERSION
    assert meta["vocab_size"] == len(set(TEXT)) == s.vocab_size
    assert meta["tokenizer"] == {"kind": "char", "chars": sorted(set(TEXT))}
    assert meta["dtype"] == "uint16" == s.dtype
    assert meta["train_tokens"] == n_train == s.train_tokens
    assert meta["val_tokens"] == n - n_train == s.val_tokens
    assert meta["val_fraction"] == 0.1
    assert meta["train_bytes"] == len(TEXT[:n_train].encode("utf-8"))
    assert meta["val_bytes"] == len(TEXT[n_train:].encode("utf-8"))
    assert meta["train_bytes"] + meta["val_bytes"] == len(TEXT.encode("utf-8")) > n
    assert meta["source"]["sha256"] == hashlib.sha256(TEXT.encode("utf-8")).hexdigest()
    assert meta["source"]["characters"] == n == s.characters
    assert meta["source"]["files"] == ["test.txt"]
    assert (out / "train.bin").stat().st_size == 2 * n_train
    assert (out / "val.bin").stat().st_size == 2 * (n - n_train)
    assert leftovers(tmp_path) == []


def test_splits_decode_back_to_the_text(tmp_path: Path) -> None:
    prepare_dataset(corpus(), tmp_path / "data")
    ds = Dataset.open(tmp_path / "data")
    tok = ds.tokenizer
    train, val = tok.decode(ds.tokens("train")), tok.decode(ds.tokens("val"))
    assert len(train) == int(len(TEXT) * 0.9)
    assert train + val == TEXT


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_other_val_fractions(tmp_path: Path, fraction: float) -> None:
    prepare_dataset(corpus(), tmp_path / "data", val_fraction=fraction)
    ds = Dataset.open(tmp_path / "data")
    assert ds.meta["val_fraction"] == fraction
    assert ds.meta["train_tokens"] == int(len(TEXT) * (1 - fraction))
    assert ds.meta["train_tokens"] + ds.meta["val_tokens"] == len(TEXT)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_val_fraction_validation(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(FolioError, match="val-fraction"):
        prepare_dataset(corpus(), tmp_path / "data", val_fraction=fraction)
    assert not (tmp_path / "data").exists()


def test_too_short_to_split(tmp_path: Path) -> None:
    with pytest.raises(FolioError, match="too short"):
        prepare_dataset(corpus("ab\n"), tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(FolioError, match="not a directory"):
        prepare_dataset(corpus(), tmp_path / "data")


def test_reprepare_replaces_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "data"
    prepare_dataset(corpus(), out)
    prepare_dataset(corpus(OTHER), out)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    ds = Dataset.open(out)
    assert ds.meta["source"]["characters"] == len(OTHER)
    tok = ds.tokenizer
    assert tok.decode(ds.tokens("train")) + tok.decode(ds.tokens("val")) == OTHER
    assert leftovers(tmp_path) == []


def test_a_dataset_holding_a_users_file_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "data"
    prepare_dataset(corpus(), out)
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(FolioError, match="not a Folio dataset.*notes.txt"):
        prepare_dataset(corpus(OTHER), out)
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert Dataset.open(out).meta["source"]["characters"] == len(TEXT)


@pytest.mark.parametrize("what", ["sources", "run"])
def test_out_that_holds_user_files_is_refused_and_kept(tmp_path: Path, what: str) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    if what == "sources":  # `folio prepare notes/ --out notes`
        (out / "a.txt").write_text(TEXT)
        (out / "b.txt").write_text(OTHER)
    else:  # a trained run
        (out / "checkpoints" / "step-00000040").mkdir(parents=True)
        (out / "latest.json").write_text("{}")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(FolioError, match="refusing to replace a directory that is not a Folio"):
        prepare_dataset(corpus(), out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert leftovers(tmp_path) == []


def test_out_dot_is_refused_when_it_holds_files_and_works_when_empty(
    tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FolioError, match="mine.txt"):
        prepare_dataset(corpus(), Path("."))
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    prepare_dataset(corpus(), Path("."))  # was: ValueError ... has an empty name
    assert sorted(p.name for p in empty.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_interrupted_prepare_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(prepare_module, "atomic_write_json", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(corpus(), tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_token_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(prepare_module, "fsync_file", _interrupt)  # right after train.bin
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(corpus(), tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_reprepare_keeps_previous_dataset(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "data"
    prepare_dataset(corpus(), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(prepare_module, "atomic_write_json", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(corpus(OTHER), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []
    Dataset.open(out)


def test_write_error_is_a_folio_error(tmp_path: Path, monkeypatch) -> None:
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare_module, "fsync_file", disk_full)
    with pytest.raises(FolioError, match="No space left"):
        prepare_dataset(corpus(), tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ Dataset.open


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    prepare_dataset(corpus(), tmp_path / "data")
    return tmp_path / "data"


def edit_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    (path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def test_open_ok(dataset: Path) -> None:
    ds = Dataset.open(dataset)
    assert ds.vocab_size == len(set(TEXT))
    assert isinstance(ds.tokens("train"), np.memmap)


def test_open_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(FolioError, match="not found .*folio prepare"):
        Dataset.open(tmp_path / "nowhere")


def test_open_missing_meta(dataset: Path) -> None:
    (dataset / "meta.json").unlink()
    with pytest.raises(FolioError, match="meta.json: dataset metadata not found"):
        Dataset.open(dataset)


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00", b""])
def test_open_corrupt_meta(dataset: Path, garbage: bytes) -> None:
    (dataset / "meta.json").write_bytes(garbage)
    with pytest.raises(FolioError, match="corrupt"):
        Dataset.open(dataset)


@pytest.mark.parametrize("doc", ["[1, 2]", '{"format": "something-else"}'])
def test_open_not_a_dataset(dataset: Path, doc: str) -> None:
    (dataset / "meta.json").write_text(doc, encoding="utf-8")
    with pytest.raises(FolioError, match="not a Folio dataset"):
        Dataset.open(dataset)


@pytest.mark.parametrize(
    "changes",
    [
        {"train_tokens": None},
        {"dtype": "no-such-dtype"},
        {"dtype": None},
        {"val_tokens": "many"},
        {"version": "one"},
        {"tokenizer": None},
        {"tokenizer": {"kind": "char", "chars": 5}},
    ],
)
def test_open_malformed_meta(dataset: Path, changes: dict) -> None:
    edit_meta(dataset, **changes)
    with pytest.raises(FolioError, match="meta.json"):
        Dataset.open(dataset)


def test_open_truncated_tokens(dataset: Path) -> None:
    f = dataset / "train.bin"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size - 2)
    with pytest.raises(FolioError, match="train.bin: missing or truncated"):
        Dataset.open(dataset)


def test_open_missing_tokens(dataset: Path) -> None:
    os.remove(dataset / "val.bin")
    with pytest.raises(FolioError, match="val.bin: missing or truncated"):
        Dataset.open(dataset)


def test_open_newer_version(dataset: Path) -> None:
    edit_meta(dataset, version=DATASET_VERSION + 1)
    with pytest.raises(FolioError, match="newer than this Folio"):
        Dataset.open(dataset)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_meta_records_each_splits_largest_token_id(tmp_path: Path, kind: str) -> None:
    # issue 19 item 9: prepare records what Dataset.open checks, and only the format's fields.
    from folio.data.format import META_FIELDS

    prepare_dataset(corpus(TEXT + OTHER), tmp_path / "data", tokenizer=kind, vocab_size=300)
    meta = json.loads((tmp_path / "data" / "meta.json").read_text(encoding="utf-8"))
    assert set(meta) == set(META_FIELDS)
    for split in ("train", "val"):
        ids = np.fromfile(tmp_path / "data" / f"{split}.bin", dtype=meta["dtype"])
        assert meta[f"{split}_max_token_id"] == int(ids.max()) < meta["vocab_size"]


def test_open_refuses_a_vocab_size_that_differs_from_the_tokenizer(dataset: Path) -> None:
    # issue 19 item 9: meta.json's vocab_size lowered by hand gave IndexError in training.
    edit_meta(dataset, vocab_size=5)
    with pytest.raises(FolioError, match=r"meta.json: vocab_size is 5 but .* has \d+ tokens"):
        Dataset.open(dataset)


def _shrink_vocabulary(dataset: Path, keep: int, recorded: bool) -> None:
    """A consistent-looking meta.json whose tokenizer is smaller than the ids in the files."""
    meta = json.loads((dataset / "meta.json").read_text(encoding="utf-8"))
    chars = meta["tokenizer"]["chars"][:keep]
    edit_meta(
        dataset,
        vocab_size=keep,
        tokenizer={"kind": "char", "chars": chars},
        train_max_token_id=meta["train_max_token_id"] if recorded else None,
        val_max_token_id=meta["val_max_token_id"] if recorded else None,
    )


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "older-dataset-scanned"])
def test_open_refuses_token_ids_at_or_above_vocab_size(dataset: Path, recorded: bool) -> None:
    # issue 19 item 9: the recorded maximum is checked; an older dataset's files are scanned.
    _shrink_vocabulary(dataset, 5, recorded)
    with pytest.raises(FolioError, match=r"split holds token id \d+, but vocab_size is 5"):
        Dataset.open(dataset)


def test_an_older_dataset_without_the_field_still_opens(dataset: Path) -> None:
    edit_meta(dataset, train_max_token_id=None, val_max_token_id=None)
    assert Dataset.open(dataset).vocab_size == len(set(TEXT))


def test_training_on_an_inconsistent_dataset_is_one_line(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from folio.cli import main

    _shrink_vocabulary(dataset, 5, recorded=False)
    args = ["train", "--data", str(dataset), "--preset", "tiny", "--out", str(tmp_path / "run")]
    assert main([*args, "--quiet", "--max-iters", "1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "but vocab_size is 5" in err[0], err


def test_check_block_size(dataset: Path) -> None:
    ds = Dataset.open(dataset)
    n_val = ds.meta["val_tokens"]
    ds.check_block_size(n_val - 1)  # exactly one window of block_size + 1 fits
    with pytest.raises(FolioError, match=f"val split has {n_val} tokens"):
        ds.check_block_size(n_val)
    with pytest.raises(FolioError, match="train split"):
        ds.check_block_size(ds.meta["train_tokens"])


# ------------------------------------------------------------ streaming


def _corpus_dir(root: Path) -> Path:
    """A few files with CRLF endings, trailing spaces, non-ASCII and no final newline."""
    src = root / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(TEXT.replace("\n", "  \r\n").encode())
    (src / "b.txt").write_text(OTHER + "Œdipus   sings\t\n  \n\nno final newline", encoding="utf-8")
    (src / "c.txt").write_text("x" * 90 + " short ♪\n" * 3, encoding="utf-8")
    return src


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_streaming_in_tiny_pieces_writes_the_same_dataset(
    tmp_path: Path, monkeypatch, tokenizer: str
) -> None:
    from folio.data.corpora import load_corpus
    from folio.tokenizers.bpe import EOT

    src = _corpus_dir(tmp_path)
    kw = {"tokenizer": tokenizer, "vocab_size": 300}
    eager = load_corpus([str(src)])
    prepare_dataset(eager, tmp_path / "eager", **kw)
    prepare_dataset(load_corpus([str(src)], stream=True), tmp_path / "streamed", **kw)
    monkeypatch.setattr(prepare_module, "BLOCK_CHARS", 5)  # reads of 5 bytes, many pieces
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 7)
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 50)
    monkeypatch.setattr(prepare_module, "SPLIT_CHUNK", 13)
    prepare_dataset(load_corpus([str(src)], stream=True), tmp_path / "tiny", **kw)
    for name in ("train.bin", "val.bin", "meta.json"):
        expected = (tmp_path / "eager" / name).read_bytes()
        for other in ("streamed", "tiny"):
            assert (tmp_path / other / name).read_bytes() == expected, (other, name)
    # And the whole-text definition: tokens of the text (char) or of each whole document
    # then <|endoftext|> (bpe); the last val_fraction of them validate.
    ds = Dataset.open(tmp_path / "tiny")
    tok = ds.tokenizer
    if tokenizer == "char":
        ids = tok.encode(eager.text)
    else:
        ids = [i for d in eager.documents for i in tok.encode(d) + [tok.eot_id]]
        assert tok.decode(ids) == "".join(d + EOT for d in eager.documents)
    n_train = int(len(ids) * 0.9)
    assert ds.tokens("train").tolist() == ids[:n_train]
    assert ds.tokens("val").tolist() == ids[n_train:]
    meta = ds.meta
    assert meta["source"]["sha256"] == eager.sha256
    assert meta["source"]["characters"] == len(eager.text)
    behind = eager.text if tokenizer == "char" else "".join(eager.documents)  # bpe: no "\n"s
    assert meta["train_bytes"] + meta["val_bytes"] == len(behind.encode("utf-8"))


def test_a_run_with_no_safe_cut_is_cut_anyway_and_still_round_trips(
    tmp_path: Path, monkeypatch
) -> None:
    text = "start " + "é" * 300 + " end\n" + TEXT
    monkeypatch.setattr(prepare_module, "BLOCK_CHARS", 16)
    monkeypatch.setattr(prepare_module, "LONGEST_RUN", 64)
    prepare_dataset(corpus(text), tmp_path / "data", tokenizer="bpe", vocab_size=300)
    ds = Dataset.open(tmp_path / "data")
    ids = np.concatenate([ds.tokens("train"), ds.tokens("val")])
    assert ds.tokenizer.decode(ids[:-1]) == text


def _peak_bytes(source: Path, out: Path) -> int:
    """The most memory Python and numpy held at once while preparing `source` (tracemalloc)."""
    import tracemalloc

    from folio.data.corpora import load_corpus

    tracemalloc.start()
    try:
        prepare_dataset(load_corpus([str(source)], stream=True), out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path: Path, monkeypatch) -> None:
    """A 16 MB corpus needs no more memory than a 0.3 MB one; held in memory it would take 16+ MB.

    tracemalloc counts every allocation of Python objects and numpy arrays
    exactly, so unlike the process's RSS this does not depend on the allocator.
    """
    monkeypatch.setattr(prepare_module, "BLOCK_CHARS", 1 << 18)
    line = "Line: sweet Ophélie sings to Œdipus, over and over again.\n"
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text(line * 5_000, encoding="utf-8")
    with open(big, "w", encoding="utf-8") as f:
        for _ in range(50):
            f.write(line * 5_600)  # 16 MB in all
    size = big.stat().st_size
    growth = _peak_bytes(big, tmp_path / "big-ds") - _peak_bytes(small, tmp_path / "small-ds")
    assert Dataset.open(tmp_path / "big-ds").meta["train_bytes"] > 0.85 * size
    assert growth < size / 4, (
        f"peak memory grew by {growth / 2**20:.1f} MiB for {size / 2**20:.0f} MiB"
    )


def test_a_bad_byte_deep_in_a_streamed_file_is_one_line_and_no_dataset(
    tmp_path: Path, capsys
) -> None:
    from folio.cli import main

    bad = tmp_path / "big.txt"
    bad.write_bytes(TEXT.encode() * 100 + b"\xff tail\n")  # past the first block checked
    offset = len(TEXT.encode()) * 100
    for tokenizer in ("char", "bpe"):
        assert main(["prepare", str(bad), "--out", str(tmp_path / "data"), "--tokenizer",
                     tokenizer, "--vocab-size", "300"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and f"byte offset {offset}" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]
