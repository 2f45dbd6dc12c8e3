"""What users give the commands (JSONL files, seeds, counts, settings) is refused in one line.

Every command here is run in-process through `folio.cli.main`, as the shell
would run it: a bad input must exit with status 2 and one line on stderr that
starts with "folio: error:", and never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factories import cli
from serving import TEXT, random_gpt, save_run

from folio.checkpoint import clean_state_dict, save_checkpoint
from folio.errors import FolioError
from folio.models import build_model
from folio.models.config import RewardModelConfig
from folio.tokenizers import BPETokenizer, CharTokenizer
from folio.tokenizers.chat import with_chat_tokens

CONVERSATION = {
    "task": "t",
    "messages": [{"role": "user", "content": "Speak"}, {"role": "assistant", "content": "First"}],
}
PAIR = {"prompt": [{"role": "user", "content": "Speak"}], "chosen": "First", "rejected": "All"}
HOSTILE = {
    "deep": ("[" * 1000 + "]" * 1000, "nested more than 64 levels deep"),
    "huge integer": ('{"messages": [], "n": ' + "9" * 4301 + "}", "an integer of 4301 digits"),
    "lone surrogate": (None, "lone UTF-16 surrogate (U+D800)"),  # the line is the command's own
}


def assert_one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("folio: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A char chat model, a BPE chat model and a reward model, with random weights."""
    root = tmp_path_factory.mktemp("boundaries")
    chat = with_chat_tokens(CharTokenizer.from_text(TEXT))
    bpe = with_chat_tokens(BPETokenizer.train([TEXT * 20], 300))
    torch.manual_seed(0)
    cfg = RewardModelConfig(vocab_size=chat.vocab_size, block_size=64, n_layer=1, n_head=2,
                            n_embd=16)  # fmt: skip
    save_checkpoint(root / "rm", clean_state_dict(build_model(cfg)), cfg, chat, {"step": 1})
    return {
        "chat": save_run(root / "chat", random_gpt(chat.vocab_size, 64), chat),
        "bpe": save_run(root / "bpe", random_gpt(bpe.vocab_size, 64), bpe),
        "rm": root / "rm",
    }


def _hostile_file(tmp_path: Path, good: dict, case: str) -> Path:
    line, _ = HOSTILE[case]
    if line is None:  # JSON's "\ud800" escape in a string the command reads
        line = json.dumps(good).replace("Speak", "Spe\\ud800ak")
    f = tmp_path / "data.jsonl"
    f.write_text(json.dumps(good) + "\n" + line + "\n", encoding="utf-8")
    return f


@pytest.mark.parametrize("case", HOSTILE)
@pytest.mark.parametrize("model", ["chat", "bpe"])
def test_sft_refuses_a_hostile_line_in_one_line(
    runs: dict[str, Path], tmp_path: Path, case: str, model: str
) -> None:
    f = _hostile_file(tmp_path, CONVERSATION, case)
    code, _, err = cli("sft", "--init-from", f"run:{runs[model]}", "--data", f,
                       "--out", tmp_path / "run", "--preset", "tiny", "--quiet")  # fmt: skip
    assert_one_line(code, err, f"{f}:2: ", HOSTILE[case][1])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", HOSTILE)
@pytest.mark.parametrize("model", ["chat", "bpe"])
def test_eval_tasks_refuses_a_hostile_line_in_one_line(
    runs: dict[str, Path], tmp_path: Path, case: str, model: str
) -> None:
    f = _hostile_file(tmp_path, CONVERSATION, case)
    code, _, err = cli("eval", "tasks", "--checkpoint", runs[model], "--data", f, "--k", 0,
                       "--device", "cpu")  # fmt: skip
    assert_one_line(code, err, f"{f}:2: ", HOSTILE[case][1])


@pytest.mark.parametrize("case", HOSTILE)
def test_prefs_check_and_eval_prefs_refuse_a_hostile_line_in_one_line(
    runs: dict[str, Path], tmp_path: Path, case: str
) -> None:
    f = _hostile_file(tmp_path, PAIR, case)
    assert_one_line(*cli("prefs", "check", f)[::2], f"{f}:2: ", HOSTILE[case][1])
    code, _, err = cli("eval", "prefs", "--checkpoint", runs["rm"], "--data", f, "--device", "cpu")
    assert_one_line(code, err, f"{f}:2: ", HOSTILE[case][1])


def test_a_byte_order_mark_starts_a_pairs_file_and_a_test_set(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b"\xef\xbb\xbf" + (json.dumps(PAIR) + "\n").encode() * 2)
    code, out, err = cli("prefs", "check", pairs, "--json")
    assert code == 0 and json.loads(out) == {"pairs": 2}, err
    tests = tmp_path / "test.jsonl"
    tests.write_bytes(b"\xef\xbb\xbf" + (json.dumps(CONVERSATION) + "\n").encode())
    code, out, err = cli("eval", "tasks", "--checkpoint", runs["chat"], "--data", tests,
                         "--k", 0, "--max-new-tokens", 2, "--device", "cpu", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["overall"]["n"] == 1, err


def test_pairs_whose_prompt_is_given_as_text_parts_read_as_text(tmp_path: Path) -> None:
    parts = {**PAIR, "prompt": [{"role": "user", "content": [{"type": "text", "text": "Speak"}]}]}
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps(parts) + "\n", encoding="utf-8")
    code, out, err = cli("prefs", "check", f, "--json")
    assert code == 0 and json.loads(out) == {"pairs": 1}, err


SEED = 2**64


def test_every_command_with_a_seed_refuses_one_out_of_range(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    chat = f"run:{runs['chat']}"
    commands = {
        "chat": ["chat", "--checkpoint", runs["chat"]],
        "eval tasks": ["eval", "tasks", "--checkpoint", runs["chat"], "--data", tmp_path / "none"],
        "eval gold": ["eval", "gold", "--checkpoint", chat, "--n", 2],
        "prefs make": ["prefs", "make", "--checkpoint", chat, "--out", tmp_path / "prefs"],
        "tasks make": ["tasks", "make", "--n", 2, "--out", tmp_path / "tasks"],
        "sample": ["sample", "--checkpoint", runs["chat"], "--max-new-tokens", 2],
    }
    for name, argv in commands.items():
        for seed in (SEED, 2**63, -1):
            code, _, err = cli(*argv, "--seed", seed)
            assert_one_line(
                code, err, f"--seed: must be a non-negative integer below 2**63, got {seed}"
            )
            assert code == 2, name
    assert not (tmp_path / "prefs").exists() and not (tmp_path / "tasks").exists()


def test_tasks_make_refuses_an_empty_split(tmp_path: Path) -> None:
    for flags, words in [
        (["--n", 0], "--n must be a positive integer"),
        (["--n", 2, "--n-test", 0], "--n-test must be a positive integer"),
        (["--n", -3], "--n must be a positive integer"),
    ]:
        code, _, err = cli("tasks", "make", "--tasks", "add", "--out", tmp_path / "t", *flags)
        assert_one_line(code, err, words)
    assert not (tmp_path / "t").exists()


def test_a_reward_model_is_refused_where_a_language_model_is_expected(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    f = tmp_path / "test.jsonl"
    f.write_text(json.dumps(CONVERSATION) + "\n", encoding="utf-8")
    for argv in (
        ["chat", "--checkpoint", runs["rm"]],
        ["eval", "tasks", "--checkpoint", runs["rm"], "--data", f, "--device", "cpu"],
    ):
        assert_one_line(*cli(*argv)[::2], "this is a reward model", "wants a")
    from folio.serve.served import load_served_model  # `folio serve` said "chat mode" for one

    with pytest.raises(FolioError, match="this is a reward model .*folio serve wants a language"):
        load_served_model(str(runs["rm"]))


def test_every_training_command_refuses_settings_of_a_section_it_never_reads(
    tmp_path: Path,
) -> None:
    """`--set rl.kl_coef=1` on `folio train` was silently ignored, and likewise elsewhere."""
    cases = [
        (["train", "--data", tmp_path, "--preset", "tiny"], "rl.kl_coef=1", "[rl]"),
        (["train", "--data", tmp_path, "--preset", "tiny"], "prefs.beta=1", "[prefs]"),
        (["rl", "--algo", "grpo", "--init-from", "run:x", "--tasks", "add"], "prefs.beta=1",
         "[prefs]"),
        (["reward", "--init-from", "run:x", "--data", tmp_path], "rl.kl_coef=1", "[rl]"),
        (["dpo", "--init-from", "run:x", "--data", tmp_path], "rl.kl_coef=1", "[rl]"),
    ]  # fmt: skip
    for argv, setting, section in cases:
        code, _, err = cli(*argv, "--out", tmp_path / "out", "--set", setting)
        assert_one_line(code, err, f"this command reads no {section} settings")
