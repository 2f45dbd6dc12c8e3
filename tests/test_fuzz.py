"""Property-based fuzzing: garbage in gives a clear FolioError (or a valid result), never a crash.

Hypothesis draws arbitrary text, bytes and config values; the CLI gets random
`--set KEY=VALUE` overrides (keys from the real fields, values from a list of
troublemakers) against a tiny dataset. Each test counts the inputs it tried;
`pytest -s tests/test_fuzz.py` prints the counts at the end.
"""

from __future__ import annotations

import contextlib
import io
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import folio.cli
import folio.train.trainer as trainer_module
from folio.cli import main
from folio.config.run import TrainConfig
from folio.data.corpora import load_corpus, read_text_file
from folio.data.prepare import prepare_dataset
from folio.errors import FolioError
from folio.models.config import GPTConfig, model_config_from_dict
from folio.sample.sampler import SamplingConfig
from folio.tokenizers import CharTokenizer

TRIED: Counter[str] = Counter()


def fuzz(n: int) -> settings:
    """n examples, no deadline (CI machines are slow), the same examples every run."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print("\nfuzz inputs tried: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())))


@pytest.fixture(scope="module", autouse=True)
def one_parser():
    # The CLI tests below call `main` hundreds of times; building the parser of every
    # subcommand took about 8 ms of each. Parsing leaves a parser as it was, so one serves all.
    parser = folio.cli.build_parser()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(folio.cli, "build_parser", lambda: parser)
        yield


# --- text and files ----------------------------------------------------------------------------


@fuzz(300)
@given(st.text())
def test_char_tokenizer_round_trips_any_text(text: str) -> None:
    TRIED["tokenizer text"] += 1
    if not text:
        with pytest.raises(FolioError):
            CharTokenizer.from_text(text)
        return
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


@fuzz(200)
@given(st.binary())
def test_char_tokenizer_round_trips_bytes_decoded_with_replacement(data: bytes) -> None:
    TRIED["tokenizer bytes"] += 1
    text = data.decode("utf-8", errors="replace") + "\n"
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text


@fuzz(200)
@given(st.binary(max_size=200), st.sampled_from(["strict", "replace"]))
def test_read_text_file_gives_text_or_a_folio_error(data: bytes, errors: str) -> None:
    TRIED["read_text_file"] += 1
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.txt"
        path.write_bytes(data)
        try:
            text = read_text_file(path, errors=errors)
        except FolioError as e:
            assert "\n" not in str(e)
            return
    assert isinstance(text, str) and text.endswith("\n") and "\r" not in text


# --- configs -----------------------------------------------------------------------------------

GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**30, -(10**30), -1, 0, 2**63, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _build(cls, kwargs: dict) -> None:
    try:
        cls(**kwargs)
    except FolioError as e:
        assert "\n" not in str(e)


@fuzz(300)
@given(st.dictionaries(st.sampled_from([f.name for f in fields(TrainConfig)]), GARBAGE))
def test_train_config_from_garbage(kwargs: dict) -> None:
    TRIED["TrainConfig"] += 1
    _build(TrainConfig, kwargs)


@fuzz(300)
@given(st.dictionaries(st.sampled_from([f.name for f in fields(GPTConfig)]), GARBAGE))
def test_gpt_config_from_garbage(kwargs: dict) -> None:
    TRIED["GPTConfig"] += 1
    _build(GPTConfig, {"vocab_size": 65, **kwargs})


@fuzz(300)
@given(st.dictionaries(st.sampled_from([f.name for f in fields(SamplingConfig)]), GARBAGE))
def test_sampling_config_from_garbage(kwargs: dict) -> None:
    TRIED["SamplingConfig"] += 1
    _build(SamplingConfig, kwargs)


@fuzz(100)
@given(GARBAGE, st.dictionaries(st.text(max_size=6), GARBAGE, max_size=3))
def test_model_config_from_dict_with_garbage_type_and_fields(model_type, d: dict) -> None:
    TRIED["model_config_from_dict"] += 1
    try:
        model_config_from_dict(model_type, d)
    except FolioError as e:
        assert "\n" not in str(e)


# --- the command line --------------------------------------------------------------------------

# Every real field, but not those that only cost time when huge (eval_iters, compile).
KEYS = (
    [f"train.{f.name}" for f in fields(TrainConfig) if f.name not in ("eval_iters", "compile")]
    + [f"model.{f.name}" for f in fields(GPTConfig)]
    + ["model.type", "train.no_such_field", "nosection.x", "n_layer", ""]
)
VALUES = st.one_of(
    st.sampled_from(
        ["nan", "inf", "-inf", "1e309", "-1", "0", "1", "3", "0.5", "1e-9", "[1,2]", '"x"', ""]
        + ["true", "false", "{a=1}", "10" * 15, "-" + "9" * 30, "'", '"', "=", "cosine", "gpt"]
        + ["bigram", "cuda", "bfloat16", "1_000", "0x10", "2025-01-01", "gelu", "heads"]
    ),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6),
)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fuzzdata")
    rng = random.Random(0)
    words = ["the", "king", "of", "my", "lord", "art", "good"]
    lines = (" ".join(rng.choice(words) for _ in range(10)) for _ in range(100))
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare_dataset(load_corpus([str(root / "corpus.txt")]), root / "ds")
    with pytest.MonkeyPatch.context() as mp:  # no loss plot, and FLOP/s measured once, here
        mp.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)
        mp.setenv("FOLIO_CACHE", str(root / "cache"))
        yield root / "ds"


@fuzz(150)
@given(
    sets=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3),
    max_iters=st.sampled_from(["0", "1"]),
)
def test_cli_train_with_garbage_overrides_exits_cleanly(
    tiny_dataset: Path, sets: list[tuple[str, str]], max_iters: str
) -> None:
    TRIED["cli train --set"] += 1
    out = Path(tempfile.mkdtemp(prefix="folio-fuzz-"))
    argv = ["train", "--data", str(tiny_dataset), "--preset", "tiny", "--out", str(out / "run")]
    for key, value in sets:
        argv += ["--set", f"{key}={value}"]
    argv += ["--set", "train.eval_iters=1", "--max-iters", max_iters, "--threads", "1", "--quiet"]
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's own usage error
                code = e.code
                assert code == 2 and "usage:" in stderr.getvalue(), stderr.getvalue()
                return
    finally:
        shutil.rmtree(out, ignore_errors=True)
    err = stderr.getvalue()
    assert code in (0, 2), (argv, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("folio: error:"), (argv, err)
        assert "Traceback" not in err
    else:
        assert "done: step" in stdout.getvalue()


# --- JSONL files a user hands to a command ------------------------------------------------------

HOSTILE_LINES = st.sampled_from([
    "[" * 1000 + "]" * 1000,
    '{"prompt": [{"role": "user", "content": "a"}], "chosen": 1' + "0" * 5000 + "}",
    '{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "b"}]}',
    '{"prompt": "\\udfff", "chosen": "a", "rejected": "b"}',
    '{"messages": NaN}',
    "\ufeff{}",
])  # fmt: skip


def _run_cli(argv: list[str]) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, stderr.getvalue()


@fuzz(150)
@given(
    st.lists(HOSTILE_LINES | st.text(max_size=80) | st.binary(max_size=80).map(repr), max_size=6),
    st.binary(max_size=64),
)
def test_prefs_check_and_sft_data_take_any_file_or_say_why_in_one_line(
    lines: list[str], raw: bytes
) -> None:
    """Random and hostile JSONL (and raw bytes) through `folio prefs check` and `folio sft
    --data`: a count, or one `folio: error:` line; never a traceback."""
    TRIED["prefs check / sft --data"] += 1
    root = Path(tempfile.mkdtemp(prefix="folio-fuzz-"))
    try:
        path = root / "data.jsonl"
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n" + raw)
        runs = [
            ["prefs", "check", str(path)],
            ["sft", "--init-from", f"run:{root / 'none'}", "--data", str(path), "--out",
             str(root / "out"), "--quiet"],
        ]  # fmt: skip
        for argv in runs:
            code, err = _run_cli(argv)
            assert code in (0, 2), (argv, err)
            assert "Traceback" not in err
            if code == 2:
                lines_out = [line for line in err.splitlines() if line.strip()]
                assert len(lines_out) == 1 and lines_out[0].startswith("folio: error:"), err
    finally:
        shutil.rmtree(root, ignore_errors=True)
