"""`folio rl`: RL from a chat checkpoint: GRPO on task rewards (folio/stages/grpo.py), or PPO
against a reward model (folio/stages/ppo.py)."""

from __future__ import annotations

import argparse

from folio.commands.common import report_result, run_flags, trainer_flags
from folio.config.rl import RLConfig, check_algo_fields, check_ptx
from folio.config.run import add_config_flags, add_stage_flags, list_presets
from folio.errors import FolioError

HELP = "RL from a chat model: GRPO on task rewards, or PPO against a reward model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio rl`."""
    parser.add_argument(
        "--algo", choices=["grpo", "ppo"], default="grpo",
        help="grpo: group-relative advantages, reward = the task's checker (--tasks); ppo: a "
        "value head and GAE, reward = the --reward-model's score minus a KL penalty",
    )  # fmt: skip
    parser.add_argument(
        "--reward-model", default=None, metavar="run:DIR",
        help="ppo: the reward model (a `folio reward` run); its prompts are the gold rule's",
    )  # fmt: skip
    parser.add_argument(
        "--init-from", required=True, metavar="run:DIR",
        help="the chat model to start from (a `folio sft` run); its shape and tokenizer are kept",
    )  # fmt: skip
    parser.add_argument(
        "--reference", default=None, metavar="run:DIR",
        help="the frozen model of the KL penalty (default: the --init-from model)",
    )  # fmt: skip
    parser.add_argument(
        "--tasks", default=None, help="grpo: comma-separated task names (folio tasks list)"
    )
    parser.add_argument(
        "--corpus", default="shakespeare",
        help="where the words and lines of the tasks come from (as `folio tasks make --corpus`)",
    )  # fmt: skip
    parser.add_argument(
        "--ptx-data", default=None, metavar="PATH",
        help="ppo: conversations (a JSONL file, or a tasks directory's train.jsonl) whose SFT loss "
        "is mixed into every step, weighted by --rl.ptx_coef (PPO-ptx)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="run directory (checkpoints, metrics, plot)")
    parser.add_argument(
        "--preset", default="rl",
        help=f"preset with [train] and [rl] tables ({', '.join(list_presets())}) or a TOML file",
    )  # fmt: skip
    run_flags(parser)
    add_stage_flags(parser, "rl", RLConfig, "RL settings (override the preset's [rl] table)")
    add_config_flags(parser, model=False)


def run(args: argparse.Namespace) -> None:
    """Train with RL, then print the result and the last held-out figures."""
    from folio.config.run import build_run_config, config_overrides, stage_config
    from folio.runtime import env_from_environ

    overrides = config_overrides(args)
    for key, _ in overrides:
        if key.startswith("model."):
            raise FolioError(
                f"{key}: the model of `folio rl` is the --init-from checkpoint's (with dropout "
                f"off); model settings do not apply"
            )
        if key in ("train.batch_size", "batch_size"):
            raise FolioError(
                f"{key}: a minibatch of `folio rl` is rl.prompts_per_rollout x rl.group_size / "
                f"rl.minibatches replies; set those instead"
            )
    check_algo_fields([key for key, _ in overrides], args.algo)
    if env_from_environ().enabled:
        raise FolioError("folio rl runs in a single process; launch it without torchrun")
    run_config = build_run_config(args.preset, overrides, stages=("rl",))
    rl = stage_config(RLConfig, args.preset, "rl", overrides)
    common = dict(reference_from=args.reference, corpus=args.corpus, **trainer_flags(args))
    check_ptx(args.ptx_data, rl.ptx_coef, "rl")
    if args.algo == "grpo":
        if args.ptx_data is not None:
            raise FolioError("--ptx-data is PPO's (--algo ppo); GRPO learns from its tasks alone")
        if args.tasks is None or args.reward_model is not None:
            raise FolioError(
                "--algo grpo takes --tasks (their checkers are the reward) and no --reward-model"
            )
        from folio.stages.grpo import train_grpo  # torch, only once the flags are known to be good

        result = train_grpo(run_config, rl, args.init_from, args.tasks, args.out, **common)
    else:
        if args.reward_model is None or args.tasks is not None:
            raise FolioError("--algo ppo takes --reward-model (its reward) and no --tasks")
        from folio.stages.ppo import train_ppo  # torch, only once the flags are known to be good

        result = train_ppo(
            run_config, rl, args.init_from, args.reward_model, args.out,
            ptx_data=args.ptx_data, **common,
        )  # fmt: skip
    keys = ("pass_at_1", "reward", "rm_score", "gold_score", "kl", "end_rate")
    report_result(args, result, keys, algo=args.algo)
