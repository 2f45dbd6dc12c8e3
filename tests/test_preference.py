"""Preference pairs, the reward model and DPO (folio/data/prefs.py, folio/stages/preference.py,
folio/stages/, `folio prefs`, `folio reward`, `folio dpo`, `folio eval prefs`)."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from factories import cli

from folio.checkpoint import clean_state_dict, load_checkpoint, save_checkpoint
from folio.data.conversations import Conversation, sft_rows
from folio.data.prefs import (
    Pair,
    all_comparisons,
    check_prefs_target,
    gold_score,
    make_pairs,
    rank_replies,
    read_pairs,
    read_pref_dir,
    write_pref_dir,
)
from folio.errors import FolioError
from folio.models import GPT, GPTConfig, build_model
from folio.models.config import RewardModelConfig
from folio.stages.preference import DPOObjective, PrefConfig, RewardObjective, pair_rows
from folio.stages.ptx import ptx_loss
from folio.tokenizers import CharTokenizer
from folio.tokenizers.chat import END, with_chat_tokens

USER = [{"role": "user", "content": "Pick"}]


def tokenizer(extra: str = "") -> CharTokenizer:
    return with_chat_tokens(CharTokenizer.from_text("Pick ab" + extra))


def tiny(tok: CharTokenizer, reward: bool = False, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cls = RewardModelConfig if reward else GPTConfig
    return build_model(cls(tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))


def pairs_ab(ks) -> list[Pair]:
    """Replies of a's are preferred to replies of b's."""
    return [Pair(USER, "a" * k, "b" * k) for k in ks]


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


# ------------------------------------------------------------------ the data


def test_pairs_read_and_each_bad_line_is_one_error(tmp_path: Path) -> None:
    good = {"prompt": USER, "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "p.jsonl", [good, "", good])
    assert [p.chosen for p in read_pairs(path)] == ["a", "a"]
    bad = [
        ("{not json", "not valid JSON"),
        ({"prompt": USER, "chosen": "a"}, '"prompt", "chosen" and "rejected"'),
        ({**good, "prompt": []}, "empty"),
        ({**good, "prompt": [*USER, {"role": "assistant", "content": "x"}]}, "end with the user"),
        ({**good, "prompt": [*USER, *USER]}, "expected"),
        ({**good, "chosen": 3}, '"chosen" must be a string'),
        ({**good, "rejected": "a"}, "the same reply"),
    ]
    for line, message in bad:
        path = write_jsonl(tmp_path / "bad.jsonl", [good, line])
        with pytest.raises(FolioError, match=message) as e:
            read_pairs(path)
        assert str(e.value).startswith(f"{path}:2: ") and "\n" not in str(e.value)
    with pytest.raises(FolioError, match="no pairs"):
        read_pairs(write_jsonl(tmp_path / "empty.jsonl", [""]))


def test_a_preference_file_needs_its_held_out_split(tmp_path: Path) -> None:
    one = write_jsonl(tmp_path / "train.jsonl", [{"prompt": USER, "chosen": "a", "rejected": "b"}])
    with pytest.raises(FolioError, match="no held-out split"):
        read_pref_dir(one)
    with pytest.raises(FolioError, match="no test.jsonl"):
        read_pref_dir(tmp_path)
    write_jsonl(tmp_path / "test.jsonl", [{"prompt": USER, "chosen": "b", "rejected": "a"}])
    train, test = read_pref_dir(tmp_path)
    assert (train[0].chosen, test[0].chosen) == ("a", "b")


def test_gold_rule_by_hand_and_ranking() -> None:
    prompt = "Write a line for ROMEO about love"
    good = "My love is deeper than the sea, and more."  # 41 characters
    assert gold_score(prompt, good) == 1.0
    assert gold_score(prompt, good, ended=False) == pytest.approx(2 / 3)
    assert gold_score(prompt, "love") == pytest.approx(2 / 3)  # too short
    assert gold_score(prompt, "x" * 30) == pytest.approx(2 / 3)  # no word
    assert gold_score("Reverse: abc", good) == 0.0
    rng = random.Random(0)
    replies = [("love", True), (good, True), ("x" * 90, False)]
    assert rank_replies(prompt, replies, 0.0, rng) == (good, "x" * 90)
    assert rank_replies(prompt, replies, 1.0, rng) == ("x" * 90, good)  # always flipped
    assert rank_replies(prompt, [("love", True), ("dove love", True)], 0.0, rng) is None  # a tie


def test_all_comparisons_by_hand() -> None:
    """Every two replies whose scores differ, the better chosen; ties and equal texts skipped."""
    prompt = "Write a line for ROMEO about love"
    good = "My love is deeper than the sea, and more."  # 3 of 3
    wordless = "x" * 30  # 2 of 3: length and end
    short = "love"  # 2 of 3: word and end
    bad = "x" * 90  # 0 of 3 (not ended)
    replies = [(short, True), (good, True), (wordless, True), (bad, False), (good, True)]
    got = all_comparisons(prompt, replies, 0.0, random.Random(0))
    assert got == [
        (good, short), (short, bad), (good, short),  # short against good, bad, good
        (good, wordless), (good, bad),  # good against wordless and bad (good == good: skipped)
        (wordless, bad), (good, wordless),  # wordless against bad and the second good
        (good, bad),  # bad against the second good
    ]  # fmt: skip
    flipped = all_comparisons(prompt, replies, 1.0, random.Random(0))
    assert flipped == [(r, c) for c, r in got]
    # one pair a prompt with "extremes", every differing pair with "all"
    sample = lambda prompts: [replies for _ in prompts]  # noqa: E731
    assert len(make_pairs([prompt], sample, 0.0, 0, "extremes")) == 1
    assert len(make_pairs([prompt], sample, 0.0, 0, "all")) == 8
    with pytest.raises(FolioError, match="--pairs must be one of extremes, all"):
        make_pairs([prompt], sample, 0.0, 0, "some")


def test_pair_rows_read_the_end_token_and_refuse_what_does_not_fit() -> None:
    tok = tokenizer()
    rows = pair_rows([Pair(USER, "ab", "b")], tok, 16)
    end = tok.special_token_id(END)
    assert rows.tokens[rows.rows(torch.tensor([0])), rows.end].tolist() == [end, end]
    # the mask covers the reply and its END: targets "a", "b", END of the chosen row
    assert tok.decode(rows.tokens[0, 1:][rows.mask[0] == 1].tolist()) == "ab" + END
    with pytest.raises(FolioError, match="longer than the model's context"):
        pair_rows([Pair(USER, "a" * 12, "b")], tok, 16)


# -------------------------------------------------------------------- losses


def test_reward_model_starts_at_ln2_and_learns_the_preference() -> None:
    tok = tokenizer()
    data = {"train": pair_rows(pairs_ab(range(1, 6)), tok, 16),
            "val": pair_rows(pairs_ab([6, 7]), tok, 16)}  # fmt: skip
    rm = tiny(tok, reward=True)
    obj = RewardObjective(data, batch_size=8)
    g = torch.Generator().manual_seed(0)
    assert obj.loss(rm, obj.batch("train", g)).item() == pytest.approx(math.log(2))
    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    for _ in range(40):
        loss = obj.loss(rm, obj.batch("train", g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    figures = obj.metrics(rm)
    assert figures["accuracy"] == 1.0 and figures["margin"] > 1.0


def test_dpo_loss_is_ln2_when_policy_is_the_reference_and_learns_the_preference() -> None:
    tok = tokenizer()
    data = {"train": pair_rows(pairs_ab(range(1, 6)), tok, 16),
            "val": pair_rows(pairs_ab([6, 7]), tok, 16)}  # fmt: skip
    policy, ref = tiny(tok), tiny(tok)
    obj = DPOObjective(data, ref, 8, PrefConfig(beta=0.5), tok, gold_prompts=[])
    g = torch.Generator().manual_seed(0)
    assert obj.loss(policy, obj.batch("train", g)).item() == pytest.approx(math.log(2), abs=1e-6)
    before = obj.metrics(policy)
    assert before["margin"] == pytest.approx(0.0, abs=1e-5)
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(30):
        loss = obj.loss(policy, obj.batch("train", g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = obj.metrics(policy)
    assert after["accuracy"] == 1.0 and after["margin"] > 0.5
    assert after["chosen_logprob"] - after["rejected_logprob"] > (
        before["chosen_logprob"] - before["rejected_logprob"]
    )
    assert all(torch.equal(ref_state[k], v) for k, v in ref.state_dict().items())
    assert not any(p.requires_grad for p in ref.parameters())


# ------------------------------------------------------------------ commands


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    tok = tokenizer()
    sft = tiny(tok)
    save_checkpoint(tmp_path / "sft", clean_state_dict(sft), sft.config, tok, {"step": 1})
    other_tok = tokenizer("xyz")
    other = tiny(other_tok)
    save_checkpoint(tmp_path / "other", clean_state_dict(other), other.config, other_tok,
                    {"step": 1})  # fmt: skip
    prefs = tmp_path / "prefs"
    prefs.mkdir()
    write_jsonl(prefs / "train.jsonl", [p.to_json() for p in pairs_ab(range(1, 6))])
    write_jsonl(prefs / "test.jsonl", [p.to_json() for p in pairs_ab([6, 7])])
    return {"root": tmp_path, "sft": tmp_path / "sft", "other": tmp_path / "other", "prefs": prefs}


NO_PLOT = ("--set", "train.plot=false")
"""For the runs after a command's first: nothing here looks at loss.png, and each drawing of it
costs more than a step of these models."""

COMMON = ("--max-iters", 30, "--batch-size", 8, "--learning-rate", 3e-3, "--eval-interval", 30,
          "--train.eval_iters", 2, "--threads", 1, "--quiet", "--json")  # fmt: skip


def test_folio_reward_then_eval_prefs(runs: dict[str, Path]) -> None:
    rm = runs["root"] / "rm"
    code, out, err = cli("reward", "--init-from", f"run:{runs['sft']}", "--data", runs["prefs"],
                         "--out", rm, *COMMON)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["accuracy"] == 1.0
    assert load_checkpoint(rm).model_config.model_type == "reward"
    code, out, err = cli("eval", "prefs", "--checkpoint", rm, "--data", runs["prefs"], "--json")
    assert code == 0, err
    assert json.loads(out)["pairs"] == 2 and json.loads(out)["accuracy"] == 1.0
    # a policy is not a reward model, and a reward model is not a policy
    code, _, err = cli("eval", "prefs", "--checkpoint", runs["sft"], "--data", runs["prefs"])
    assert code == 2 and "not a reward model" in err and err.count("\n") == 1
    code, _, err = cli("dpo", "--init-from", f"run:{rm}", "--data", runs["prefs"], "--out",
                       runs["root"] / "x", *COMMON)  # fmt: skip
    assert code == 2 and "this is a reward model" in err and err.count("\n") == 1
    # nor a base for fine-tuning (its fine-tune would later pass for a reward model)
    conversations = runs["root"] / "c.jsonl"
    write_jsonl(conversations, [{"messages": [{"role": "user", "content": "ab"},
                                              {"role": "assistant", "content": "ba"}]}] * 4)  # fmt: skip
    code, _, err = cli("sft", "--init-from", f"run:{rm}", "--data", conversations, "--out",
                       runs["root"] / "y", "--quiet")  # fmt: skip
    assert code == 2 and "this is a reward model; --init-from wants a language model" in err, err
    assert err.count("\n") == 1 and not (runs["root"] / "y").exists()


def test_folio_dpo_end_to_end_and_bad_input(runs: dict[str, Path]) -> None:
    out_dir = runs["root"] / "dpo"
    code, out, err = cli("dpo", "--init-from", f"run:{runs['sft']}", "--data", runs["prefs"],
                         "--beta", 0.5, "--out", out_dir, *COMMON)  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["accuracy"] == 1.0 and result["margin"] > 0
    assert json.loads((out_dir / "run.json").read_text())["prefs"]["beta"] == 0.5
    cases = [
        (("--reference", f"run:{runs['other']}"), "tokenizer differs"),
        (("--data", runs["prefs"] / "train.jsonl"), "no held-out split"),
        (("--beta", 0), "beta must be positive"),
    ]
    for args, message in cases:
        argv = ["dpo", "--init-from", f"run:{runs['sft']}", "--data", runs["prefs"], "--out",
                runs["root"] / "bad", *COMMON, *args]  # fmt: skip
        code, _, err = cli(*argv)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)


def test_folio_prefs_make_ranks_sampled_replies(tmp_path: Path) -> None:
    from folio.data.material import load_material

    m = load_material()
    text = "".join(m.speakers) + "".join(m.words) + "Write a line for about "
    tok = with_chat_tokens(CharTokenizer.from_text(text))
    torch.manual_seed(0)
    cfg = GPTConfig(tok.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(tmp_path / "sft", clean_state_dict(GPT(cfg)), cfg, tok, {"step": 1})
    out = tmp_path / "prefs"
    code, stdout, err = cli("prefs", "make", "--checkpoint", f"run:{tmp_path / 'sft'}", "--out",
                            out, "--n", 12, "--n-test", 6, "--replies", 3, "--max-new-tokens",
                            40, "--json")  # fmt: skip
    assert code == 0, err
    manifest = json.loads(stdout)
    train, test = read_pref_dir(out)
    assert len(train) == manifest["pairs"]["train"] > 0 and len(test) > 0
    assert {p.prompt[0]["content"] for p in train}.isdisjoint(
        {p.prompt[0]["content"] for p in test}
    )
    code, stdout, _ = cli("prefs", "check", out, "--json")
    assert json.loads(stdout) == {"train": len(train), "test": len(test)}
    code, _, err = cli("prefs", "make", "--checkpoint", f"run:{tmp_path / 'sft'}", "--out", out,
                       "--replies", 1)  # fmt: skip
    assert code == 2 and "--replies" in err


def test_prefs_make_cuts_a_reply_at_a_turn_token_and_counts_it_unended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply that writes <|user|> would otherwise put "<|user|>" into the pair file as text,
    which the model's tokenizer cannot encode, and the reward model could not read."""
    import folio.stages.prefs as prefs_stage
    from folio.data.material import load_material
    from folio.eval.tasks import Reply
    from folio.tokenizers.chat import USER

    m = load_material()
    tok = with_chat_tokens(CharTokenizer.from_text(
        "".join(m.speakers) + "".join(m.words) + "Write a line for about "))  # fmt: skip
    cfg = GPTConfig(tok.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(tmp_path / "sft", clean_state_dict(GPT(cfg)), cfg, tok, {"step": 1})
    user = tok.special_token_id(USER)

    def fake(model, ids, end_id, num_samples, **kw):  # one reply with a turn token, one without
        a, b = tok.encode("about a line"), tok.encode("x")
        return [[Reply([*a, user, *b], True), Reply(b, True)] for _ in ids]

    monkeypatch.setattr(prefs_stage, "generate_replies", fake)
    code, _, err = cli("prefs", "make", "--checkpoint", f"run:{tmp_path / 'sft'}", "--out",
                       tmp_path / "p", "--n", 4, "--n-test", 2, "--replies", 2)  # fmt: skip
    assert code == 0, err
    train, _ = read_pref_dir(tmp_path / "p")
    assert train and all("<|" not in p.chosen + p.rejected for p in train)
    assert {p.chosen for p in train} | {p.rejected for p in train} == {"about a line", "x"}


def test_the_gold_rule_by_its_three_tests() -> None:
    from folio.data.prefs import gold_tests

    prompt = "Write a line for HAMLET about love"
    assert gold_tests(prompt, "  I love thee, and I will ever love.  ", True) == (True, True, True)
    assert gold_tests(prompt, "", True) == (False, False, True)  # the empty reply: ends only
    assert gold_tests(prompt, "LOVE" + "x" * 60, False) == (True, False, False)
    assert gold_tests("Reverse: love", "I love thee, and I will ever love.", True) == (False,) * 3
    assert gold_score(prompt, "", True) == pytest.approx(1 / 3)


def test_a_preference_directory_edited_by_hand_is_not_replaced_without_force(
    tmp_path: Path,
) -> None:
    """Pairs written by hand are the user's: a rerun of `prefs make` refuses to replace them."""
    out = tmp_path / "p"
    write_pref_dir(out, pairs_ab([1, 2]), pairs_ab([3]), {"seed": 0})
    write_pref_dir(out, pairs_ab([1, 2]), pairs_ab([3]), {"seed": 0})  # untouched: replaced
    mine = (out / "train.jsonl").read_text().replace('"a"', '"mine"', 1)
    (out / "train.jsonl").write_text(mine)
    with pytest.raises(FolioError, match=r"train\.jsonl changed since it was written.*--force"):
        write_pref_dir(out, pairs_ab([1]), pairs_ab([3]), {"seed": 1})
    with pytest.raises(FolioError, match="--force"):
        check_prefs_target(out)
    assert (out / "train.jsonl").read_text() == mine
    (out / "notes.txt").write_text("x")
    with pytest.raises(FolioError, match="not a Folio preference directory"):
        write_pref_dir(out, pairs_ab([1]), pairs_ab([3]), {"seed": 1}, force=True)
    (out / "notes.txt").unlink()
    write_pref_dir(out, pairs_ab([1]), pairs_ab([3]), {"seed": 1}, force=True)
    assert (out / "train.jsonl").read_text() != mine


def test_a_resumed_dpo_run_keeps_its_pinned_reference(runs: dict[str, Path]) -> None:
    """The reference `run:DIR` named is the checkpoint the run began with, even after DIR trains
    on: a resumed run equals an uninterrupted one, and changed pinned weights are refused."""
    root, sft = runs["root"], runs["sft"]
    shutil.copytree(sft, root / "sft-copy")
    args = ["--data", runs["prefs"], "--beta", 0.5, *COMMON, "--eval-interval", 4, *NO_PLOT]
    code, straight, err = cli("dpo", "--init-from", f"run:{root / 'sft-copy'}", "--out",
                              root / "straight", *args, "--max-iters", 8)  # fmt: skip
    assert code == 0, err
    code, _, err = cli("dpo", "--init-from", f"run:{sft}", "--out", root / "dpo", *args,
                       "--max-iters", 4)  # fmt: skip
    assert code == 0, err
    pinned = json.loads((root / "dpo" / "run.json").read_text())["pinned"]["reference"]
    assert Path(pinned["checkpoint"]).name == "step-00000001"
    assert (root / "dpo" / "pinned" / "reference" / "model.safetensors").exists()
    # sft trains on: its latest checkpoint is now other weights
    tok = tokenizer()
    moved = tiny(tok, seed=5)
    save_checkpoint(sft, clean_state_dict(moved), moved.config, tok, {"step": 2})
    code, resumed, err = cli("dpo", "--init-from", f"run:{sft}", "--out", root / "dpo", *args,
                             "--max-iters", 8, "--resume")  # fmt: skip
    assert code == 0, err
    a, b = json.loads(straight), json.loads(resumed)
    assert (a["val_loss"], a["margin"], a["accuracy"]) == (
        b["val_loss"],
        b["margin"],
        b["accuracy"],
    )
    # the pinned checkpoint's weights changed in place: refused in one line
    weights = root / "dpo" / "pinned" / "init_from" / "model.safetensors"  # the reference too
    weights.unlink()  # a hard link: replace it, never write through it
    save_checkpoint(root / "scratch", clean_state_dict(moved), moved.config, tok, {"step": 1})
    shutil.copy(root / "scratch" / "checkpoints" / "step-00000001" / "model.safetensors", weights)
    code, _, err = cli("dpo", "--init-from", f"run:{sft}", "--out", root / "dpo", *args,
                       "--max-iters", 12, "--resume")  # fmt: skip
    assert code == 2 and "weights changed" in err and err.count("\n") == 1, err
    # a run written where its own reference lives is refused before anything is loaded
    code, _, err = cli("dpo", "--init-from", f"run:{sft}", "--out", sft, *args, "--restart")
    assert code == 2 and "is where --init-from" in err and err.count("\n") == 1, err


def test_dpo_with_ptx_adds_the_weighted_sft_loss_and_resumes_exactly(
    runs: dict[str, Path],
) -> None:
    tok = tokenizer()
    data = {"train": pair_rows(pairs_ab(range(1, 6)), tok, 16),
            "val": pair_rows(pairs_ab([6, 7]), tok, 16)}  # fmt: skip
    convs = [Conversation([*USER, {"role": "assistant", "content": "ab"}], "x", "reverse")] * 3
    rows = sft_rows(convs, tok, 16)
    policy, ref = tiny(tok, seed=1), tiny(tok)
    plain = DPOObjective(data, ref, 4, PrefConfig(beta=0.5), tok, gold_prompts=[])
    mixed = DPOObjective(data, ref, 4, PrefConfig(beta=0.5, ptx_coef=0.25), tok, [], rows)
    batch = mixed.batch("train", torch.Generator().manual_seed(0))
    assert len(batch) == 6 and len(mixed.batch("val", torch.Generator())) == 3  # evals: pairs
    expected = plain.loss(policy, batch[:3]) + 0.25 * ptx_loss(policy, *batch[3:])
    assert torch.allclose(mixed.loss(policy, batch), expected)
    # the command: both flags or neither; a run stopped and resumed equals one that never stopped
    ptx = write_jsonl(runs["root"] / "ptx.jsonl", [{"task": "reverse", "messages": [
        *USER, {"role": "assistant", "content": "ab"}]}] * 3)  # fmt: skip
    args = ("dpo", "--init-from", f"run:{runs['sft']}", "--data", runs["prefs"], "--ptx-data", ptx,
            "--prefs.ptx_coef", 0.5, "--batch-size", 4, "--eval-interval", 2,
            "--train.eval_iters", 1, "--threads", 1, "--quiet", *NO_PLOT)  # fmt: skip
    assert cli(*args, "--out", runs["root"] / "a", "--max-iters", 4)[0] == 0
    assert cli(*args, "--out", runs["root"] / "b", "--max-iters", 2)[0] == 0
    assert cli(*args, "--out", runs["root"] / "b", "--max-iters", 4, "--resume")[0] == 0
    a, b = (load_checkpoint(runs["root"] / r).model.state_dict() for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for extra in (("--ptx-data", ptx), ("--prefs.ptx_coef", 0.5)):
        code, _, err = cli("dpo", "--init-from", f"run:{runs['sft']}", "--data", runs["prefs"],
                           "--out", runs["root"] / "bad", *COMMON, *extra)  # fmt: skip
        assert code == 2 and "give both or neither" in err and err.count("\n") == 1, err
