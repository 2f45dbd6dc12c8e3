"""Tests for folio/tokenizers/bpe.py and the BPE paths of prepare, train, eval and sample."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import default_sigint
from tokenizers import pre_tokenizers

from folio.cli import main
from folio.data import prepare as prepare_module
from folio.data.batches import Dataset
from folio.data.corpora import Corpus, load_corpus, read_text_file
from folio.data.prepare import prepare_dataset
from folio.errors import FolioError
from folio.sample.sampler import default_start_id
from folio.tokenizers import BPETokenizer, tokenizer_from_dict
from folio.tokenizers.bpe import EOT, MAX_PIECE_CHARS, iter_pieces

DOCS = [
    "".join(f"Line {i}: sweet Ophélie sings ♪ to Œdipus, {i * i}.\n" for i in range(40)),
    "".join(f"A different text, number {i}.\n\n  indented {i}\n" for i in range(30)),
    "Ends without much.\n",
]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer.train(DOCS, vocab_size=300)


def corpus(docs: list[str] = DOCS) -> Corpus:
    return Corpus("test", docs, [f"doc{i}.txt" for i in range(len(docs))])


# ------------------------------------------------------------------ tokenizer


@FUZZ
@given(st.text())
def test_any_text_round_trips(tok: BPETokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


@FUZZ
@given(st.text() | st.text(alphabet="Line 1: sweet Ophélie ♪", min_size=50, max_size=2000))
def test_min_tokens_never_exceeds_the_tokens_encode_gives(tok: BPETokenizer, text: str) -> None:
    chat = tok.with_tokens(specials=["<|end|>"])  # a special token covers no text
    for t in (tok, chat):
        assert t.min_tokens(text) <= len(t.encode(text))
    assert (tok.min_tokens(text) > 0) == (text != "")


def test_min_tokens_is_trivial_where_no_bound_is_sound(tok: BPETokenizer) -> None:
    from tokenizers import Tokenizer, normalizers

    text = "Line 1: sweet Ophélie " * 100
    longest = int(tok.token_byte_lengths().max())
    assert tok.min_tokens(text) == -(-len(text.encode()) // longest)
    rewritten = Tokenizer.from_str(tok.tokenizer.to_str())
    rewritten.normalizer = normalizers.Replace("Line 1: sweet Ophélie ", "")  # text shrinks
    assert (
        BPETokenizer(rewritten).min_tokens(text) == 0 == len(BPETokenizer(rewritten).encode(text))
    )


def test_vocabulary_and_merges(tok: BPETokenizer) -> None:
    assert tok.kind == "bpe"
    assert tok.vocab_size == 300
    assert tok.eot_id == 0 and tok.special_ids == [0]
    assert tok.token_dtype == np.uint16
    ids = tok.encode("Line 1: sweet")
    assert len(ids) < len("Line 1: sweet")  # merges were learned


def test_end_of_text_in_the_text_is_plain_bytes(tok: BPETokenizer) -> None:
    ids = tok.encode(f"a{EOT}b")
    assert tok.eot_id not in ids
    assert tok.decode(ids) == f"a{EOT}b"
    assert tok.decode([tok.eot_id]) == EOT


def test_json_round_trip_is_exact(tok: BPETokenizer) -> None:
    d = json.loads(json.dumps(tok.to_dict()))
    again = tokenizer_from_dict(d)
    assert isinstance(again, BPETokenizer)
    assert again.to_dict() == d
    assert again.encode(DOCS[0]) == tok.encode(DOCS[0])


@pytest.mark.parametrize("bad", [{"kind": "bpe"}, {"kind": "bpe", "tokenizer": {"model": 3}}])
def test_malformed_bpe_dict(bad) -> None:
    with pytest.raises(FolioError, match="malformed"):
        tokenizer_from_dict(bad)


def test_vocabulary_below_bytes_plus_specials_is_refused() -> None:
    with pytest.raises(FolioError, match="at least 257"):
        BPETokenizer.train(DOCS, vocab_size=256)
    assert BPETokenizer.train(DOCS, vocab_size=257).vocab_size == 257


def test_decode_refuses_out_of_range_ids(tok: BPETokenizer) -> None:
    for bad in (-1, tok.vocab_size):
        with pytest.raises(FolioError, match="out of range"):
            tok.decode([bad])


def test_token_byte_lengths_count_utf8_bytes(tok: BPETokenizer) -> None:
    lengths = tok.token_byte_lengths()
    for text in DOCS:
        assert lengths[tok.encode(text)].sum() == len(text.encode("utf-8"))
    assert lengths[tok.eot_id] == 0


@FUZZ
@given(st.text(alphabet="ab é'1\n\t ", max_size=80), st.integers(1, 10))
def test_pieces_encode_exactly_as_the_whole(tok: BPETokenizer, text: str, size: int) -> None:
    pieces = list(iter_pieces(text, size))
    assert "".join(pieces) == text
    assert [i for p in pieces for i in tok.encode(p)] == tok.encode(text)


# A run without spaces (DNA, Chinese) is one piece for GPT-2's regex; the cap cuts it.
DNA = "".join(np.random.default_rng(0).choice(list("ACGT"), 3000))


def test_long_runs_are_cut_to_the_piece_cap_in_training_and_encoding() -> None:
    tok = BPETokenizer.train([DNA, *DOCS], vocab_size=300)
    pieces = tok.tokenizer.pre_tokenizer.pre_tokenize_str(DNA + " é" + "中" * 600)
    assert max(b - a for _, (a, b) in pieces) == MAX_PIECE_CHARS  # characters, not bytes
    assert pieces[0][0] == DNA[:MAX_PIECE_CHARS]  # cut from the start of the piece
    assert pieces[-1][1][1] - pieces[-1][1][0] == len(" é" + "中" * 600) % MAX_PIECE_CHARS
    # Within the cap, pieces are exactly GPT-2's.
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    assert tok.tokenizer.pre_tokenizer.pre_tokenize_str(DOCS[0]) == gpt2.pre_tokenize_str(DOCS[0])
    for text in (DNA, "中" * 1000 + "\n", DOCS[0]):
        assert tok.decode(tok.encode(text)) == text
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))  # the cap is stored
    assert again.encode(DNA) == tok.encode(DNA)
    assert all(len(tok.decode([i])) <= MAX_PIECE_CHARS for i in tok.encode(DNA))


def test_training_on_a_long_run_takes_time_linear_in_it() -> None:
    """200k characters of DNA took 22 s uncapped (quadratic); capped, well under a second."""
    dna = "".join(np.random.default_rng(1).choice(list("ACGT"), 200_000))
    t0 = time.perf_counter()
    tok = BPETokenizer.train([dna], vocab_size=512)
    assert time.perf_counter() - t0 < 10
    assert tok.vocab_size == 512 and tok.decode(tok.encode(dna)) == dna


@pytest.fixture(scope="module")
def capped() -> BPETokenizer:
    """A tokenizer whose pieces are cut at 3 characters, so that cuts are everywhere."""
    texts = [DNA[:500], *DOCS, "it's 'tis we're they'll\t\n  \n"]
    return BPETokenizer.train(texts, 300, max_piece_chars=3)


@FUZZ
@given(st.text(alphabet="ACGT ab'sre.1\n\t中", max_size=120), st.integers(1, 12))
def test_long_runs_are_cut_between_pieces_exactly(
    capped: BPETokenizer, text: str, size: int
) -> None:
    """Given the tokenizer's pre-tokenizer, a run with no space is cut too, still exactly."""
    pieces = list(iter_pieces(text, size, capped.pre_tokenizer))
    assert "".join(pieces) == text
    assert [i for p in pieces for i in capped.encode(p)] == capped.encode(text)


def test_a_run_without_spaces_is_cut_into_bounded_pieces(capped: BPETokenizer) -> None:
    pieces = list(iter_pieces(DNA, 100, capped.pre_tokenizer))
    assert len(pieces) > 10 and max(len(p) for p in pieces) <= 200
    assert [i for p in pieces for i in capped.encode(p)] == capped.encode(DNA)
    assert list(iter_pieces(DNA, 100)) == [DNA]  # without it, no safe place: one piece


def test_ctrl_c_stops_training_at_once(tmp_path: Path) -> None:
    """The Rust trainer never returns to Python while it merges; Ctrl-C must not wait for it.

    Uncapped, 300k characters of DNA take tens of seconds to merge; SIGINT
    arrives a second in, while the merges run, and the process must be gone
    within two seconds, by KeyboardInterrupt, with no crash from the worker.
    """
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from folio.tokenizers import BPETokenizer\n"
        "dna = ''.join(np.random.default_rng(0).choice(list('ACGT'), 300_000))\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    BPETokenizer.train([dna], 512, max_piece_chars=None)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n"
        "print('finished', flush=True)\n",
        encoding="utf-8",
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env,
                             preexec_fn=default_sigint)  # fmt: skip
    try:
        assert child.stdout.readline() == b"ready\n"
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        t0 = time.perf_counter()
        out, err = child.communicate(timeout=10)
        waited = time.perf_counter() - t0
    finally:
        child.kill()
        child.wait()
    assert out == b"interrupted\n" and child.returncode == 130, (out, err[-500:])
    assert waited < 2.0 and not err, (waited, err[-500:])


def test_sampling_starts_from_end_of_text(tok: BPETokenizer) -> None:
    assert default_start_id(tok) == tok.eot_id


# -------------------------------------------------------------------- prepare


def test_prepare_bpe_files_and_meta(tmp_path: Path) -> None:
    s = prepare_dataset(corpus(), tmp_path / "data", tokenizer="bpe", vocab_size=300)
    ds = Dataset.open(tmp_path / "data")
    tok = ds.tokenizer
    assert isinstance(tok, BPETokenizer) and s.tokenizer == "bpe"
    meta = ds.meta
    assert meta["vocab_size"] == 300 == s.vocab_size and meta["dtype"] == "uint16"
    ids = np.concatenate([ds.tokens("train"), ds.tokens("val")])
    assert meta["train_tokens"] + meta["val_tokens"] == len(ids)
    # Each document, then <|endoftext|>.
    assert tok.decode(ids) == "".join(d + EOT for d in DOCS)
    assert list(ids[-1:]) == [tok.eot_id] and (ids == tok.eot_id).sum() == len(DOCS)
    # The bytes behind each split, special tokens excluded, add up to the corpus's.
    total = sum(len(d.encode("utf-8")) for d in DOCS)
    assert meta["train_bytes"] + meta["val_bytes"] == total
    train_text = tok.decode(ds.tokens("train")).replace(EOT, "")
    assert meta["train_bytes"] == len(train_text.encode("utf-8"))
    assert meta["source"]["sha256"] == corpus().sha256
    assert meta["source"]["characters"] == len(corpus().text)


def test_streaming_in_tiny_pieces_and_batches_writes_the_same_tokens(
    tmp_path: Path, monkeypatch
) -> None:
    prepare_dataset(corpus(), tmp_path / "a", tokenizer="bpe", vocab_size=300)
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 7)
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 50)
    monkeypatch.setattr(prepare_module, "SPLIT_CHUNK", 13)
    prepare_dataset(corpus(), tmp_path / "b", tokenizer="bpe", vocab_size=300)
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["atomic_write_json", "fsync_file"])
def test_interrupted_bpe_prepare_leaves_nothing(tmp_path: Path, monkeypatch, where: str) -> None:
    monkeypatch.setattr(prepare_module, where, _interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(corpus(), tmp_path / "data", tokenizer="bpe", vocab_size=300)
    assert list(tmp_path.iterdir()) == []


def test_prepare_bpe_too_short_to_split(tmp_path: Path) -> None:
    with pytest.raises(FolioError, match="too short"):
        prepare_dataset(corpus(["a\n"]), tmp_path / "data", tokenizer="bpe", vocab_size=300)
    assert list(tmp_path.iterdir()) == []


def test_unknown_tokenizer_and_gpt2_without_dir(tmp_path: Path) -> None:
    with pytest.raises(FolioError, match="unknown tokenizer"):
        prepare_dataset(corpus(), tmp_path / "data", tokenizer="words")
    with pytest.raises(FolioError, match="--tokenizer-dir"):
        prepare_dataset(corpus(), tmp_path / "data", tokenizer="gpt2")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ binary refused


def test_a_binary_file_is_refused_unless_allowed(tmp_path: Path) -> None:
    f = tmp_path / "blob.txt"
    f.write_bytes(bytes(range(256)) * 40 + b"\x00" * 5000)
    with pytest.raises(FolioError, match=r"blob\.txt: looks like a binary file.*--allow-binary"):
        load_corpus([str(f)], errors="replace")
    text = load_corpus([str(f)], errors="replace", allow_binary=True).documents[0]
    assert "\x00" in text
    f.write_bytes(b"tabs\tand\fform feeds\r\n" * 100)  # text controls do not count
    assert read_text_file(f) == "tabs\tand\fform feeds\n" * 100


# ------------------------------------------------------------ GPT-2's tokenizer


def _synthetic_gpt2_files(directory: Path) -> None:
    """A byte-level vocab.json + merges.txt in GPT-2's format, with a few merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet(), key=lambda c: ord(c))
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ã", "©"), ("o", "u")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab[EOT] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


STRINGS = ["the theory in the house", "  the\n\nthe", "café é it's 12 ♪", "hé<|endoftext|>"]


def test_gpt2_files_load_like_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="parity needs transformers")
    _synthetic_gpt2_files(tmp_path)
    tok = BPETokenizer.from_gpt2_files(tmp_path)
    ref = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert tok.vocab_size == len(ref) == 263 and tok.eot_id == 262
    for s in STRINGS[:3]:
        assert tok.encode(s) == ref.encode(s)
        assert tok.decode(tok.encode(s)) == s
    assert tok.encode(" the") == [258]  # the merges were applied: Ġt + he -> Ġthe
    assert tok.encode("the")[1:] == [257]  # without the space: t, he
    assert tokenizer_from_dict(tok.to_dict()).encode(STRINGS[0]) == tok.encode(STRINGS[0])


def test_gpt2_missing_files_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FolioError, match="vocab.json: not found"):
        BPETokenizer.from_gpt2_files(tmp_path)


def test_real_gpt2_vocabulary() -> None:
    import os

    directory = os.environ.get("FOLIO_GPT2_DIR")
    if not directory or not (Path(directory) / "merges.txt").is_file():
        pytest.skip(
            "GPT-2's vocab.json and merges.txt are not available offline: set $FOLIO_GPT2_DIR"
        )
    tok = BPETokenizer.from_gpt2_files(directory)
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's published ids


# ------------------------------------------------------------ end to end


def test_cli_prepare_train_eval_sample_with_bpe(tmp_path: Path, capsys, monkeypatch) -> None:
    import folio.train.trainer as trainer_module

    # Nothing here looks at loss.png, and drawing it (matplotlib) costs about a second.
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)
    src = tmp_path / "corpus"
    src.mkdir()
    for i, doc in enumerate(DOCS):
        (src / f"doc{i}.txt").write_text(doc, encoding="utf-8")
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", str(src), "--out", str(data), "--tokenizer", "bpe",
                 "--vocab-size", "300"]) == 0  # fmt: skip
    assert "300 bpe tokens" in capsys.readouterr().out
    train = ["--preset", "tiny", "--max-iters", "5", "--quiet", "--threads", "1"]
    assert main(["train", "--data", str(data), "--out", str(run), *train]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--splits", "train", "val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for split in ("train", "val"):
        assert result[f"{split}_bits_per_byte"] > 0
        assert result[f"{split}_bits_per_token"] > result[f"{split}_bits_per_byte"]
        assert f"{split}_bits_per_char" not in result
    assert main(["sample", "--checkpoint", str(run), "--max-new-tokens", "20", "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["sample", "--checkpoint", str(run), "--prompt", "Line", "--max-new-tokens",
                 "10", "--seed", "1"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("Line")


def test_cli_refuses_a_binary_file_in_one_line(tmp_path: Path, capsys) -> None:
    f = tmp_path / "blob.bin"
    f.write_bytes(b"\x00\x01\x02" * 1000)
    assert main(["prepare", str(f), "--out", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--allow-binary" in err
    assert not (tmp_path / "data").exists()
