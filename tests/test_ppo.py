"""PPO's mechanics (folio/stages/ppo.py, `folio rl --algo ppo`).

Tiny models, fp32 on CPU, seeded. The smoke test trains a reward model to
prefer the reply "a", then PPO must raise its score on a policy fine-tuned to
pick any of four letters.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from factories import cli
from rl_models import picker, tokenizer
from safetensors.torch import load_file

from folio.checkpoint import clean_state_dict, save_checkpoint
from folio.config.rl import RLConfig
from folio.config.run import build_run_config
from folio.data.material import load_material
from folio.data.prefs import Pair
from folio.models import build_model
from folio.models.config import GPTConfig, PolicyValueConfig, RewardModelConfig
from folio.rl.rollout import reply_logprobs
from folio.stages.ppo import PPOObjective, end_positions
from folio.stages.preference import RewardObjective, pair_rows
from folio.stages.ptx import ptx_loss
from folio.tokenizers import CharTokenizer
from folio.tokenizers.chat import END, with_chat_tokens
from folio.train.init import Base
from folio.train.policy import with_scalar_head
from folio.train.trainer import Trainer

USER = [{"role": "user", "content": "Pick"}]


def reward_model(tok: CharTokenizer, steps: int = 40):
    """A tiny reward model that prefers the reply "a" to "b", "c" and "d"."""
    torch.manual_seed(0)
    rm = build_model(RewardModelConfig(tok.vocab_size, block_size=16, n_layer=2, n_head=2,
                                       n_embd=32))  # fmt: skip
    pairs = [Pair(USER, "a", other) for other in "bcd"]
    data = {"train": pair_rows(pairs, tok, 16), "val": pair_rows(pairs, tok, 16)}
    obj = RewardObjective(data, batch_size=6)
    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = obj.loss(rm, obj.batch("train", g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return rm.eval()


def policy_value(tok: CharTokenizer, steps: int = 30):
    """(config, weights) of the picker with a zero value head, as `folio rl --algo ppo` starts."""

    model = picker(tok, steps)
    base = Base(model, model.config, tok, {"from": "run:picker", "checkpoint": "picker"})
    return with_scalar_head(base, PolicyValueConfig, dropout=0.0), model


def objective(tok, sft, rm, **kw) -> PPOObjective:
    ref = build_model(sft.config)
    ref.load_state_dict(sft.state_dict())
    base = dict(prompts_per_rollout=4, group_size=8, minibatches=2, epochs=2, max_new_tokens=4,
                eval_prompts=1, prompt_pool=1, kl_coef=0.05)  # fmt: skip
    return PPOObjective(RLConfig(**{**base, **kw}), tok, ref, rm, ["Pick"], ["Pick"])


def trainer(tok, out: Path, iters: int, **kw) -> Trainer:
    (config, weights), sft = policy_value(tok)
    run = build_run_config(
        "tiny",
        [("train.learning_rate", 1e-3), ("train.max_iters", iters), ("train.eval_iters", 1),
         ("train.eval_interval", iters), ("train.weight_decay", 0.0), ("train.threads", 1)],
    )  # fmt: skip
    run = dataclasses.replace(run, model=config)
    return Trainer(
        run, objective(tok, sft, reward_model(tok), **kw), out, tok, init_weights=weights,
        progress=False, log=lambda *a: None,
    )  # fmt: skip


def test_end_positions_point_at_the_end_token() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    # targets t are tokens t + 1: the last reply target 3 is token 4
    assert end_positions(mask).tolist() == [4, 5, 0]


def test_first_ppo_minibatch_ratio_is_one_and_kl_starts_at_zero() -> None:
    tok = tokenizer()
    (config, weights), sft = policy_value(tok, steps=10)
    model = build_model(config)
    model.load_state_dict(weights)
    obj = objective(tok, sft, reward_model(tok, steps=5), temperature=0.8, top_k=4)
    obj.bind(model)
    model.train()
    tokens, mask, old, adv, returns, old_values = obj.batch("train", torch.Generator())
    ratio = torch.exp(reply_logprobs(model, tokens, mask, 0.8, 4) - old)[mask == 1]
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    assert (old_values == 0).all()  # the value head starts at zero
    assert masked_whitened(adv, mask)
    # the reward reached the end token: with V = 0, the last return is the score
    rollout = obj.sample(model, obj.test_prompts, torch.Generator())
    last = end_positions(rollout["mask"]) - 1
    rows = torch.arange(len(last))
    assert (rollout["tokens"][rows, last + 1][rollout["ended"]] == tok.special_token_id(END)).all()
    assert torch.allclose(rollout["returns"][rows, last], rollout["score"], atol=1e-5)
    assert obj.metrics(model)["kl"] == pytest.approx(0.0, abs=1e-5)


def masked_whitened(x: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether the masked entries have mean 0 and variance 1 (a whole rollout's would)."""
    values = x[mask == 1]
    return abs(float(values.mean())) < 0.5 and float(values.std()) > 0.3


def test_reference_and_reward_model_unchanged_and_ppo_raises_the_reward(tmp_path: Path) -> None:
    tok = tokenizer()
    t = trainer(tok, tmp_path / "run", iters=40)
    frozen = {"ref": t.objective.reference, "rm": t.objective.reward_model}
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in frozen.items()}
    result = t.fit()
    for name, m in frozen.items():
        assert all(torch.equal(before[name][k], v) for k, v in m.state_dict().items())
        assert not any(p.requires_grad for p in m.parameters()) and not m.training
    first, last = result.history[0], result.history[-1]
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)
    assert last["rm_score"] > first["rm_score"] + 1.0 and last["kl"] > 0
    assert {"ratio_mean", "ratio_max", "clip_fraction", "gold_score"} <= set(last)
    assert last["ratio_max"] >= 1.0


# ---------------------------------------------------------------- folio rl


@pytest.fixture(scope="module")
def line_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ppo")
    m = load_material()
    tok = with_chat_tokens(CharTokenizer.from_text(
        "".join(m.speakers) + "".join(m.words) + "Write a line for about "))  # fmt: skip
    torch.manual_seed(0)
    cfg = GPTConfig(tok.vocab_size, block_size=80, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(root / "sft", clean_state_dict(build_model(cfg)), cfg, tok, {"step": 1})
    rm_cfg = RewardModelConfig(**cfg.to_dict())
    save_checkpoint(root / "rm", clean_state_dict(build_model(rm_cfg)), rm_cfg, tok, {"step": 1})
    other = with_chat_tokens(CharTokenizer.from_text("xyz"))
    o_cfg = RewardModelConfig(other.vocab_size, block_size=80, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(root / "other", clean_state_dict(build_model(o_cfg)), o_cfg, other,
                    {"step": 1})  # fmt: skip
    return {"root": root, "sft": root / "sft", "rm": root / "rm", "other": root / "other"}


NO_PLOT = ("--set", "train.plot=false")
"""For the runs after a test's first: nothing here looks at loss.png, and each drawing of it
costs more than a step of these models."""

SMALL = ("--rl.prompts_per_rollout", 2, "--rl.group_size", 2, "--rl.eval_prompts", 2,
         "--rl.prompt_pool", 4, "--rl.max_new_tokens", 8, "--train.eval_interval", 2,
         "--train.threads", 1, "--quiet")  # fmt: skip


def test_folio_rl_ppo_end_to_end(line_runs: dict[str, Path]) -> None:
    out = line_runs["root"] / "ppo"
    code, stdout, err = cli("rl", "--algo", "ppo", "--init-from", f"run:{line_runs['sft']}",
                            "--reward-model", f"run:{line_runs['rm']}", "--out", out,
                            "--max-iters", 2, "--json", *SMALL)  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["step"] == 2 and 0 <= summary["gold_score"] <= 1 and "rm_score" in summary
    run = json.loads((out / "run.json").read_text())
    assert run["algo"] == "ppo" and run["model_type"] == "gpt-value"
    # a prompt pool larger than the gold rule has prompts takes them all, and says so
    code, said, err = cli("rl", "--algo", "ppo", "--init-from", f"run:{line_runs['sft']}",
                          "--reward-model", f"run:{line_runs['rm']}", "--out",
                          line_runs["root"] / "big-pool", "--max-iters", 1, *SMALL, *NO_PLOT,
                          "--rl.prompt_pool", 10**6)  # fmt: skip
    assert code == 0 and "training prompts; the pool takes them all" in said, err
    # a PPO run's model is a policy: GRPO, DPO or another PPO run may start from it
    code, _, err = cli("rl", "--algo", "ppo", "--init-from", f"run:{out}", "--reward-model",
                       f"run:{line_runs['rm']}", "--out", line_runs["root"] / "ppo2",
                       "--max-iters", 1, *SMALL, *NO_PLOT)  # fmt: skip
    assert code == 0, err


def test_folio_rl_ppo_bad_input_is_one_line(line_runs: dict[str, Path]) -> None:
    sft, rm = f"run:{line_runs['sft']}", f"run:{line_runs['rm']}"
    cases = [
        (("--init-from", sft), "takes --reward-model"),
        (("--init-from", sft, "--reward-model", rm, "--tasks", "add"), "no --tasks"),
        (("--init-from", sft, "--reward-model", sft), "not a reward model"),
        (("--init-from", rm, "--reward-model", rm), "this is a reward model"),
        (("--init-from", sft, "--reward-model", f"run:{line_runs['other']}"), "tokenizer differs"),
    ]
    for args, message in cases:
        argv = ["rl", "--algo", "ppo", "--out", line_runs["root"] / "bad", "--max-iters", 1,
                *SMALL, *args]  # fmt: skip
        code, _, err = cli(*argv)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)


# ---------------------------------------------------------------- PPO-ptx


def test_ptx_loss_is_the_sft_loss_on_the_assistant_tokens_by_hand() -> None:
    tok = tokenizer()
    (config, weights), _ = policy_value(tok, steps=0)
    model = build_model(config)
    model.load_state_dict(weights)
    x = torch.tensor([[3, 4, 5, 6], [6, 5, 4, 3]])
    y = torch.tensor([[4, 5, 6, 7], [5, 4, 3, 2]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 1]])
    logits = model.lm_head(model.hidden_states(x))
    # three supervised tokens: (0, 1), (0, 2) and (1, 3), each weighing the same
    nll = [-torch.log_softmax(logits[b, t], dim=-1)[y[b, t]] for b, t in ((0, 1), (0, 2), (1, 3))]
    assert torch.allclose(ptx_loss(model, x, y, mask), sum(nll) / 3, atol=1e-6)


def write_ptx(path: Path) -> Path:
    lines = [
        {"task": "reverse", "messages": [{"role": "user", "content": "about dog"},
                                         {"role": "assistant", "content": "god"}]},
        {"task": "line", "messages": [{"role": "user", "content": "Write a line for about dog"},
                                      {"role": "assistant", "content": "a dog"}]},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_ppo_ptx_trains_on_the_tasks_resumes_exactly_and_needs_both_flags(
    line_runs: dict[str, Path],
) -> None:
    root = line_runs["root"]
    ptx = write_ptx(root / "ptx.jsonl")
    base = ("rl", "--algo", "ppo", "--init-from", f"run:{line_runs['sft']}", "--reward-model",
            f"run:{line_runs['rm']}", "--ptx-data", ptx, "--rl.ptx_coef", 0.5, *SMALL,
            *NO_PLOT)  # fmt: skip
    code, _, err = cli(*base, "--out", root / "ptx-a", "--max-iters", 4)
    assert code == 0, err
    assert "1 demonstrations left out" in err or "1 demonstrations left out" in _
    run = json.loads((root / "ptx-a" / "run.json").read_text())
    assert run["ptx_data"] == str(ptx.resolve()) and run["rl"]["ptx_coef"] == 0.5
    # stopped at step 2 and resumed: the same weights as the run that never stopped
    code, _, err = cli(*base, "--out", root / "ptx-b", "--max-iters", 2)
    assert code == 0, err
    code, _, err = cli(*base, "--out", root / "ptx-b", "--max-iters", 4, "--resume")
    assert code == 0, err
    a = load_file(latest(root / "ptx-a"))
    b = load_file(latest(root / "ptx-b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for args, message in (
        (("--ptx-data", ptx), "give both or neither"),
        (("--rl.ptx_coef", 0.5), "give both or neither"),
    ):
        argv = ["rl", "--algo", "ppo", "--init-from", f"run:{line_runs['sft']}", "--reward-model",
                f"run:{line_runs['rm']}", "--out", root / "bad-ptx", "--max-iters", 1, *SMALL,
                *args]  # fmt: skip
        code, _, err = cli(*argv)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)


def latest(run: Path) -> Path:
    return run / json.loads((run / "latest.json").read_text())["checkpoint"] / "model.safetensors"
