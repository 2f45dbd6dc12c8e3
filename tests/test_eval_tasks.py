"""Tests for folio/eval/tasks.py and `folio eval tasks`: decoding, scoring, pass@k, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from factories import cli

from folio.checkpoint import clean_state_dict, save_checkpoint
from folio.data.conversations import Conversation
from folio.data.corpora import Corpus
from folio.data.prepare import prepare_dataset
from folio.data.tasks import make_task_files
from folio.errors import FolioError
from folio.eval.tasks import evaluate_tasks, generate_replies, pass_at_k, task_items
from folio.models import GPT, BigramConfig, BigramLanguageModel, GPTConfig
from folio.sample import Sampler, SamplingConfig
from folio.tokenizers import CharTokenizer
from folio.tokenizers.chat import ASSISTANT, END, with_chat_tokens

TEXT = "Reverse: abcdexy\nHow many a in cab?\n0123456789+=\n"


def chat_tokenizer() -> CharTokenizer:
    return with_chat_tokens(CharTokenizer.from_text(TEXT))


def conversation(prompt: str, answer: str, task: str, n: int = 1) -> Conversation:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return Conversation(messages, f"test.jsonl:{n}", task)


def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0  # n = k: any right
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # k = 1: the fraction right
    assert pass_at_k(100, 1, 8) == pytest.approx(1 - math.comb(99, 8) / math.comb(100, 8))
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def oracle_bigram(tok: CharTokenizer, branch: bool) -> BigramLanguageModel:
    """A model known to be right about its reply: after <|assistant|> it says "x" then END.

    With branch, after <|assistant|> it says "x" or "y" (equal odds) and after "y" says
    "x": replies "x" or "yx", always ending with END.
    """
    model = BigramLanguageModel(BigramConfig(tok.vocab_size))
    table = model.token_embedding_table.weight
    a, x, y, end = (tok.special_token_id(ASSISTANT), tok.stoi["x"], tok.stoi["y"])[:3] + (
        tok.special_token_id(END),
    )
    with torch.no_grad():
        table.zero_()
        table[a, x] = 60.0
        if branch:
            table[a, y] = 60.0
        table[y, x] = 60.0
        table[x, end] = 60.0
    return model


def test_scores_of_a_model_known_to_be_right() -> None:
    tok = chat_tokenizer()
    convos = [
        conversation("Reverse: x", "x", "reverse", 1),
        conversation("Reverse: yx", "xy", "reverse", 2),
        conversation("1+2=", " x\n", "add", 3),  # the reference is stripped too
        conversation("How many a in cab?", "1", "count", 4),
    ]
    report = evaluate_tasks(oracle_bigram(tok, False), tok, task_items(convos, tok), k=3)
    assert report["tasks"]["reverse"]["pass_at_1"] == 0.5
    assert report["tasks"]["add"]["pass_at_1"] == 1.0 and report["tasks"]["count"]["pass_at_1"] == 0
    overall = report["overall"]
    assert overall["n"] == 4 and overall["pass_at_1"] == 0.5 and overall["pass_at_k"] == 0.5
    assert overall["end_rate"] == 1.0 and overall["mean_reply_tokens"] == 1.0
    assert overall["sampled_end_rate"] == 1.0 and report["samples"] == 3


def test_rows_finishing_at_different_steps_and_pass_at_k() -> None:
    tok = chat_tokenizer()
    convos = [conversation(f"{i}+{i}=", "x", "add", i) for i in range(10)]
    items = task_items(convos, tok)
    model = oracle_bigram(tok, True)
    replies = generate_replies(
        model, [it.prompt for it in items], tok.special_token_id(END), 8, 1.0, 4, seed=3
    )
    texts = [tok.decode(r.ids) for rs in replies for r in rs]
    assert set(texts) == {"x", "yx"} and all(r.ended for rs in replies for r in rs)
    report = evaluate_tasks(model, tok, items, k=2, samples=4, seed=3)
    right = [[t == "x" for t in texts[4 * i : 4 * i + 4]] for i in range(10)]
    expected = sum(pass_at_k(4, sum(r), 2) for r in right) / 10
    assert report["overall"]["pass_at_k"] == pytest.approx(expected)
    assert 1.0 < report["overall"]["sampled_mean_reply_tokens"] < 2.0
    assert report["overall"]["pass_at_1"] == 1.0  # argmax breaks the x/y tie at the lower id, x
    assert report == evaluate_tasks(model, tok, items, k=2, samples=4, seed=3) | {
        "seconds": report["seconds"]
    }


def test_batched_greedy_equals_the_sampler_one_prompt_at_a_time() -> None:
    tok = chat_tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(tok.vocab_size, block_size=40, n_layer=2, n_head=2, n_embd=32)).eval()
    prompts = ["1+2=", "3+4=", "Reverse: abc", "Reverse: cab", "How many a in cab?", "9+9="]
    prompts += ["Reverse: abcdexy abcdexy abcdexy"]  # 37 tokens: decoded alone, sliding
    items = task_items([conversation(p, "1", "add", i) for i, p in enumerate(prompts)], tok)
    end = tok.special_token_id(END)
    batched = generate_replies(model, [it.prompt for it in items], end, 10, batch_size=3)
    sampler = Sampler(model)
    for item, (reply,) in zip(items, batched, strict=True):
        steps = sampler.generate_ids(item.prompt, SamplingConfig(max_new_tokens=10, temperature=0))
        ids = [int(s.item()) for s in steps]
        expected = ids[: ids.index(end)] if end in ids else ids
        assert reply.ids == expected and reply.ended == (end in ids)


def test_a_seed_at_the_top_of_the_range_also_seeds_prompts_decoded_alone() -> None:
    tok = chat_tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(tok.vocab_size, block_size=40, n_layer=2, n_head=2, n_embd=32)).eval()
    prompts = ["Reverse: abcdexy abcdexy abcdexy", "Reverse: abcdexy abcdexy abcdeyx"]  # alone
    items = task_items([conversation(p, "1", "add", i) for i, p in enumerate(prompts)], tok)
    ids, end = [it.prompt for it in items], tok.special_token_id(END)
    top = 2**63 - 1  # the alone prompts take seeds top + 1 and top + 2, wrapped to 0 and 1
    replies = generate_replies(model, ids, end, 10, temperature=1.0, seed=top)
    assert replies == generate_replies(model, ids, end, 10, temperature=1.0, seed=top)
    with pytest.raises(FolioError, match=r"must be a non-negative integer below 2\*\*63"):
        generate_replies(model, ids, end, 10, temperature=1.0, seed=2**63)


def test_bad_test_sets_and_a_tokenizer_without_chat_tokens() -> None:
    tok = chat_tokenizer()
    user_last = Conversation(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
        "t.jsonl:7",
    )
    with pytest.raises(FolioError, match="^t.jsonl:7: a test conversation must end with"):
        task_items([user_last], tok)
    with pytest.raises(FolioError, match="^test.jsonl:2: text contains 1 character"):
        task_items([conversation("Reverse: q", "q", "reverse", 2)], tok)
    model = oracle_bigram(tok, False)
    plain = CharTokenizer.from_text(TEXT)
    with pytest.raises(FolioError, match="no chat template"):
        evaluate_tasks(model, plain, task_items([conversation("1+1=", "2", "add")], tok))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A dataset, a base checkpoint on it, a chat checkpoint, and an `add` test set."""
    root = tmp_path_factory.mktemp("eval-tasks")
    text = "0123456789+= The quick brown fox.\n" * 40
    prepare_dataset(Corpus("t", [text], ["t.txt"]), root / "data")
    base_tok = CharTokenizer.from_text(text)
    config = GPTConfig(base_tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    save_checkpoint(root / "base", clean_state_dict(GPT(config)), config, base_tok, {"step": 3})
    chat_tok = with_chat_tokens(base_tok)
    chat_config = GPTConfig(chat_tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    save_checkpoint(
        root / "chat", clean_state_dict(GPT(chat_config)), chat_config, chat_tok, {"step": 5}
    )
    make_task_files(["add"], root / "tasks", n=2, n_test=6, seed=1)
    return {"root": root, **{k: root / k for k in ("data", "base", "chat", "tasks")}}


def test_cli_eval_tasks_json_and_table(runs: dict[str, Path]) -> None:
    test = runs["tasks"] / "test.jsonl"
    code, out, err = cli(
        "eval", "tasks", "--checkpoint", runs["chat"], "--data", test, "--k", 2, "--json",
        "--max-new-tokens", 5, "--limit", 4,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["step"] == 5 and report["k"] == 2 and report["max_new_tokens"] == 5
    assert set(report["tasks"]) == {"add"} and report["overall"]["n"] == 4
    for key in ("pass_at_1", "pass_at_k", "end_rate", "mean_reply_tokens", "sampled_end_rate"):
        assert 0 <= report["overall"][key] <= 5, key
    code, out, err = cli("eval", "tasks", "--checkpoint", runs["chat"], "--data", test, "--k", 0)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["task", "n", "pass@1", "ended", "tokens"]
    assert out.splitlines()[-1].split()[:2] == ["overall", "6"]


def test_cli_plain_eval_still_works(runs: dict[str, Path]) -> None:
    code, out, err = cli("eval", "--checkpoint", runs["base"], "--data", runs["data"], "--json")
    assert code == 0, err
    assert json.loads(out)["step"] == 3 and "val_loss" in json.loads(out)
    code, _, err = cli("eval", "--data", runs["data"])
    assert code == 2 and err == (
        "folio: error: eval: --checkpoint is required (or use `folio eval tasks ...`)\n"
    )


def test_cli_base_model_needs_extend_vocab(runs: dict[str, Path]) -> None:
    test = runs["tasks"] / "test.jsonl"
    code, _, err = cli("eval", "tasks", "--checkpoint", runs["base"], "--data", test)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("folio: error: ") and "has no chat template" in err
    code, out, err = cli(
        "eval", "tasks", "--checkpoint", runs["base"], "--data", test, "--k", 1, "--json",
        "--extend-vocab", "--max-new-tokens", 3,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["overall"]["n"] == 6
    bad = runs["root"] / "bad.jsonl"
    bad.write_text('{"task": "add", "messages": [{"role": "user", "content": "1+1="}]}\n')
    code, _, err = cli("eval", "tasks", "--checkpoint", runs["chat"], "--data", bad)
    assert (
        code == 2
        and err == f"folio: error: {bad}:1: the conversation has no assistant turn to learn from\n"
    )
