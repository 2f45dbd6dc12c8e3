"""GRPO's mechanics (folio/rl/rollout.py, folio/stages/grpo.py, `folio rl`).

Tiny models (2 layers, 32 wide, block 16), fp32 on CPU, seeded. The smoke
test fine-tunes a model to pick one of four letters at random, then rewards
one letter only: GRPO must make it more likely.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest
import torch
from factories import cli
from rl_models import picker, tiny, tokenizer

from folio.checkpoint import clean_state_dict, load_checkpoint, save_checkpoint
from folio.config.rl import RLConfig
from folio.config.run import build_run_config
from folio.data.tasks import Example
from folio.errors import FolioError
from folio.models import GPT
from folio.rl.rollout import reply_logprobs, sample_rollout
from folio.stages.grpo import GRPOObjective, informative_groups, keep_informative
from folio.tokenizers import CharTokenizer
from folio.tokenizers.chat import END, with_chat_tokens
from folio.train.run_log import extra_metrics
from folio.train.trainer import Trainer

PICK_A = [Example("pick", "Pick", "a", 0)]
"""The rewarded task: the reply "a" is right (an unknown task name: exact match)."""


def rl_config(**kw) -> RLConfig:
    base = dict(
        prompts_per_rollout=4, group_size=8, minibatches=2, epochs=2, max_new_tokens=4,
        eval_prompts=1, prompt_pool=1,
    )  # fmt: skip
    return RLConfig(**{**base, **kw})


def objective(model: GPT, tok: CharTokenizer, **kw) -> GRPOObjective:
    ref = tiny(tok)
    ref.load_state_dict(model.state_dict())
    return GRPOObjective(rl_config(**kw), tok, ref, PICK_A, PICK_A)


def trainer(model: GPT, tok: CharTokenizer, out: Path, iters: int, resume=False, **kw) -> Trainer:
    run = build_run_config(
        "tiny",
        [("train.learning_rate", 1e-3), ("train.max_iters", iters), ("train.eval_iters", 1),
         ("train.eval_interval", kw.pop("eval_interval", iters)), ("train.weight_decay", 0.0),
         ("train.eval_at_start", kw.pop("eval_at_start", True)), ("train.threads", 1),
         ("train.plot", kw.pop("plot", True))],
    )  # fmt: skip
    run = dataclasses.replace(run, model=model.config)
    return Trainer(
        run, objective(model, tok, **kw), out, tok, init_weights=model.state_dict(),
        resume=resume, progress=False, log=lambda *a: None,
    )  # fmt: skip


# ------------------------------------------------------------------ rollouts


def test_rollout_rows_masks_and_sampling_logprobs() -> None:
    tok = tokenizer()
    model = tiny(tok, seed=1)
    prompts = [[tok.special_token_id("<|user|>"), *tok.encode("Pick"), tok.special_token_id(END),
                tok.special_token_id("<|assistant|>")], tok.encode("12+3=")]  # fmt: skip
    end = tok.special_token_id(END)
    args = dict(max_new_tokens=5, temperature=0.7, top_k=5, pad_id=end)
    ro = sample_rollout(model, prompts, 3, end, generator=torch.Generator().manual_seed(0), **args)
    assert ro.tokens.shape[0] == 6 and ro.mask.shape == ro.logprobs.shape
    for b in range(6):
        n_prompt = len(prompts[b // 3])  # the 3 replies of a prompt are consecutive rows
        assert ro.tokens[b, :n_prompt].tolist() == prompts[b // 3]
        span = ro.mask[b].nonzero().flatten().tolist()
        reply = ro.replies[b] + ([end] if ro.ended[b] else [])
        assert span == list(range(n_prompt - 1, n_prompt - 1 + len(reply)))
        assert ro.tokens[b, 1:][ro.mask[b] == 1].tolist() == reply  # END included when ended
        assert (ro.logprobs[b][ro.mask[b] == 0] == 0).all()
    # the log-probs are those of the distribution the tokens were drawn from
    again = reply_logprobs(model, ro.tokens, ro.mask, 0.7, 5)
    assert torch.allclose(again, ro.logprobs, atol=1e-5)
    assert not torch.allclose(reply_logprobs(model, ro.tokens, ro.mask, 1.0, None), ro.logprobs)
    # the same generator state draws the same rollout
    same = sample_rollout(
        model, prompts, 3, end, generator=torch.Generator().manual_seed(0), **args
    )
    assert torch.equal(same.tokens, ro.tokens)
    with pytest.raises(FolioError, match="context"):
        sample_rollout(model, prompts, 2, end, max_new_tokens=12, temperature=1.0, top_k=None,
                       generator=torch.Generator())  # fmt: skip


# ---------------------------------------------------------------- mechanics


def test_advantages_sum_to_zero_within_each_group() -> None:
    tok = tokenizer()
    obj = objective(picker(tok, steps=10), tok)
    obj.bind(obj.reference)  # any model will do to sample
    batch = obj.sample(obj.reference, PICK_A * 4, [obj.test_prompts[0]] * 4, torch.Generator())
    adv = batch["advantages"].view(4, 8)
    assert adv.sum(dim=1).abs().max() < 1e-5
    rewards = batch["rewards"].view(4, 8)
    spread = rewards.amax(dim=1) > rewards.amin(dim=1)
    assert (adv[spread].abs().sum(dim=1) > 0).all() and (adv[~spread] == 0).all()


def _part(rewards: list[float], width: int, pad: int = 9) -> dict[str, torch.Tensor]:
    B = len(rewards)
    return {
        "tokens": torch.arange(B * width).view(B, width),
        "mask": torch.ones(B, width - 1),
        "old_logprobs": -torch.ones(B, width - 1),
        "advantages": torch.arange(B, dtype=torch.float),
        "rewards": torch.tensor(rewards),
    }


def test_dynamic_sampling_keeps_informative_groups_first_and_pads_shorter_rollouts() -> None:
    # Groups of 2. Part 0 (width 3): group 0 all 1s (no spread), group 1 informative.
    # Part 1 (width 5): group 0 informative, group 1 all 2s.
    a, b = _part([1, 1, 0, 1], 3), _part([0, 1, 2, 2], 5)
    assert informative_groups(a["rewards"], 2) == [1]
    out = keep_informative([a, b], 2, 2, pad_id=9)
    assert out["rewards"].tolist() == [0, 1, 0, 1]  # part 0 group 1, then part 1 group 0
    assert out["advantages"].tolist() == [2, 3, 0, 1]
    assert out["tokens"].shape == (4, 5) and out["mask"].shape == (4, 4)
    assert out["tokens"][0].tolist() == [6, 7, 8, 9, 9]  # part 0's row 2, padded with pad_id
    assert out["mask"][0].tolist() == [1, 1, 0, 0] and out["old_logprobs"][0, 2:].eq(0).all()
    assert out["tokens"][2].tolist() == [0, 1, 2, 3, 4]  # part 1's row 0, unpadded
    # Too few informative groups: zero-spread ones fill the batch, in order.
    out = keep_informative([a, b], 2, 3, pad_id=9)
    assert out["rewards"].tolist() == [0, 1, 0, 1, 1, 1]


def test_dynamic_sampling_draws_more_rollouts_until_every_group_has_spread() -> None:
    tok = tokenizer()
    model = picker(tok, steps=10)
    obj = objective(model, tok, dynamic_sampling=6)
    obj.bind(model)
    torch.manual_seed(0)
    rollout = obj._training_rollout(torch.Generator().manual_seed(0))
    drawn = int(obj.stats[3])  # groups sampled, every draw included
    informative = informative_groups(rollout["rewards"], 8)
    assert rollout["rewards"].shape == (4 * 8,)
    assert len(informative) == 4 or drawn == 4 * 7  # all informative, or every try spent
    assert drawn >= 4


def test_first_minibatch_ratio_is_one_with_dropout_off() -> None:
    tok = tokenizer()
    model = picker(tok, steps=10)
    obj = objective(model, tok, temperature=0.7, top_k=3)
    obj.bind(model)
    model.train()  # as in the trainer; dropout is 0
    tokens, mask, old, ref, adv = obj.batch("train", torch.Generator().manual_seed(0))
    logprobs = reply_logprobs(model, tokens, mask, 0.7, 3)
    ratio = torch.exp(logprobs - old)[mask == 1]
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    # ...so the first step's loss is -mean(A) over reply tokens, with no KL (policy = reference)
    expected = -(adv[:, None] * mask).sum() / mask.sum()
    assert obj.loss(model, (tokens, mask, old, ref, adv)).item() == pytest.approx(
        expected.item(), abs=1e-5
    )
    # with dropout on, the network that scores is not the one that sampled
    noisy = tiny(tok, dropout=0.3)
    noisy.load_state_dict(model.state_dict())
    noisy.train()
    drift = torch.exp(reply_logprobs(noisy, tokens, mask, 0.7, 3) - old)[mask == 1]
    assert (drift - 1).abs().max() > 0.01


def test_reference_is_frozen_and_unchanged_after_steps(tmp_path: Path) -> None:
    tok = tokenizer()
    model = picker(tok, steps=10)
    t = trainer(model, tok, tmp_path / "run", iters=3, kl_coef=0.1, eval_at_start=False,
                plot=False)  # fmt: skip
    ref = t.objective.reference
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    t.fit()
    assert all(not p.requires_grad for p in ref.parameters()) and not ref.training
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())


def test_grpo_raises_the_reward_of_a_learnable_task(tmp_path: Path) -> None:
    tok = tokenizer()
    result = trainer(picker(tok), tok, tmp_path / "run", iters=30).fit()
    first, last = result.history[0], result.history[-1]
    assert first["kl"] == 0.0  # the policy starts as the reference
    assert first["reward"] <= 0.25 and last["reward"] >= first["reward"] + 0.5
    assert last["pass_at_1"] == 1.0 and 0 < last["kl"] < 5
    # every figure reaches metrics.jsonl and gets a panel in the plot
    rows = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("eval")]
    names = {"pass_at_1", "reward", "kl", "reply_tokens", "zero_spread", "end_rate"}
    assert names <= set(extra_metrics(evals))
    png = (tmp_path / "run" / "loss.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    assert height > width  # a row of loss panels, then three rows of metric panels


def test_resume_mid_rollout_continues_exactly(tmp_path: Path) -> None:
    tok = tokenizer()
    model = picker(tok, steps=10)
    args = dict(eval_interval=6, eval_at_start=False, plot=False)  # nothing looks at loss.png
    trainer(model, tok, tmp_path / "whole", iters=6, **args).fit()
    trainer(model, tok, tmp_path / "split", iters=3, **args).fit()  # 3 of a rollout's 4 steps
    trainer(model, tok, tmp_path / "split", iters=6, resume=True, **args).fit()
    a = load_checkpoint(tmp_path / "whole").model.state_dict()
    b = load_checkpoint(tmp_path / "split").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- folio rl


@pytest.fixture
def chat_run(tmp_path: Path) -> Path:
    tok = tokenizer()
    model = tiny(tok)
    save_checkpoint(tmp_path / "sft", clean_state_dict(model), model.config, tok, {"step": 1})
    return tmp_path / "sft"


SMALL = ("--rl.prompts_per_rollout", 2, "--rl.group_size", 2, "--rl.eval_prompts", 2,
         "--rl.prompt_pool", 4, "--rl.max_new_tokens", 4, "--train.eval_interval", 2,
         "--train.threads", 1)  # fmt: skip


def test_folio_rl_grpo_end_to_end(chat_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rl"
    code, stdout, err = cli("rl", "--algo", "grpo", "--init-from", f"run:{chat_run}", "--tasks",
                            "add", "--out", out, "--max-iters", 2, "--json", "--quiet", *SMALL)  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["step"] == 2 and 0 <= summary["pass_at_1"] <= 1 and summary["kl"] >= 0
    run = json.loads((out / "run.json").read_text())
    assert run["algo"] == "grpo" and run["tasks"] == ["add"] and run["rl"]["group_size"] == 2
    assert run["model"]["dropout"] == 0.0 and run["train"]["batch_size"] == 2
    # resume with other RL settings is refused; with the same ones it continues
    code, _, err = cli("rl", "--init-from", f"run:{chat_run}", "--tasks", "add", "--out", out,
                       "--max-iters", 4, "--resume", "--quiet", *SMALL, "--rl.kl_coef", 0.5)  # fmt: skip
    assert code == 2 and "another rl" in err
    code, _, err = cli("rl", "--init-from", f"run:{chat_run}", "--tasks", "add", "--out", out,
                       "--max-iters", 4, "--resume", "--quiet", *SMALL, "--set",
                       "train.plot=false")  # fmt: skip
    assert code == 0, err


def test_folio_rl_bad_input_is_one_line(chat_run: Path, tmp_path: Path) -> None:
    base_tok = CharTokenizer.from_text("0123456789+=")
    base = tiny(base_tok)
    save_checkpoint(tmp_path / "base", clean_state_dict(base), base.config, base_tok, {"step": 1})
    other_tok = with_chat_tokens(CharTokenizer.from_text("xyz0123456789+="))
    other = tiny(other_tok)
    save_checkpoint(
        tmp_path / "other", clean_state_dict(other), other.config, other_tok, {"step": 1}
    )
    out = tmp_path / "rl"
    cases = [
        (("--init-from", chat_run), "expects run:DIR"),
        (("--init-from", f"run:{tmp_path / 'base'}"), "no chat template"),
        (("--init-from", f"run:{chat_run}", "--reference", f"run:{tmp_path / 'other'}"),
         "tokenizer differs"),
        (("--init-from", f"run:{chat_run}", "--tasks", "nope"), "unknown task"),
        (("--init-from", f"run:{chat_run}", "--set", "model.n_layer=3"), "model settings"),
        (("--init-from", f"run:{chat_run}", "--batch-size", 8), "rl.minibatches"),
        (("--init-from", f"run:{chat_run}", "--rl.group_size", 1), "group_size of at least 2"),
        (("--init-from", f"run:{chat_run}", "--rl.minibatches", 3), "must divide"),
        (("--init-from", f"run:{chat_run}", "--set", "rl.group_sise=4"), "did you mean 'group_size'"),
        (("--init-from", f"run:{chat_run}", "--rl.temperature", 0), "temperature must be positive"),
        (("--init-from", f"run:{chat_run}", "--rl.bogus", 1), None),
    ]  # fmt: skip
    for args, message in cases:
        argv = ["rl", "--tasks", "add", "--out", out, "--max-iters", 1, "--quiet", *SMALL, *args]
        if message is None:  # an unknown flag is argparse's usage error
            with pytest.raises(SystemExit):
                cli(*argv)
            continue
        code, _, err = cli(*argv)
        assert code == 2 and message in err, (args, err)
        assert err.count("\n") == 1 and err.startswith("folio: error: ")


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("dynamic_sampling", -1, "dynamic_sampling must not be negative"),
        ("group_size", "8", "group_size must be an integer"),
        ("max_new_tokens", 0, "max_new_tokens must be positive"),
        ("loss_mean", "sequence", r"loss_mean must be one of \('token', 'reply'\)"),
    ],
)
def test_rl_config_rejects_bad_values_in_one_line(field: str, value, words: str) -> None:
    with pytest.raises(FolioError, match=words):
        RLConfig(**{field: value})
