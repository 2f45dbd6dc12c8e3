"""One validator for the stage configs: types from the annotations, bounds from the metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from folio.cli import main
from folio.config.checks import check_fields, within
from folio.config.prefs import PrefConfig
from folio.config.rl import RLConfig, algo_of, check_algo_fields
from folio.config.run import stage_config
from folio.config.sft import SFTConfig
from folio.errors import FolioError


@dataclass
class Example:
    count: int = field(default=1, metadata=within(1))
    share: float = field(default=0.5, metadata=within(0, 1, lo_open=True, hi_open=True))
    weight: float = field(default=0.0, metadata=within(0))
    rate: float = field(default=1.0, metadata=within(0, lo_open=True))
    mode: str = field(default="a", metadata=within(choices=("a", "b")))
    flag: bool = True
    free: int = -3

    def __post_init__(self) -> None:
        check_fields(self, "example config")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"count": 0}, "example config: count must be positive, got 0"),
        ({"count": 2.0}, "example config: count must be an integer, got 2.0"),
        ({"count": True}, "example config: count must be an integer, got True"),
        ({"share": 1}, "example config: share must be in (0, 1), got 1.0"),
        ({"share": 0.0}, "example config: share must be in (0, 1), got 0.0"),
        ({"share": float("nan")}, "example config: share must be a finite number, got nan"),
        ({"share": "0.5"}, "example config: share must be a finite number, got '0.5'"),
        ({"weight": -0.5}, "example config: weight must not be negative, got -0.5"),
        ({"rate": 0}, "example config: rate must be positive, got 0.0"),
        ({"mode": "c"}, "example config: mode must be one of ('a', 'b'), got 'c'"),
        ({"mode": 1}, "example config: mode must be a string, got 1"),
        ({"flag": 1}, "example config: flag must be true or false, got 1"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_table_and_the_field(kw: dict, message: str) -> None:
    with pytest.raises(FolioError) as e:
        Example(**kw)
    assert str(e.value) == message


def test_good_values_pass_and_integers_become_floats() -> None:
    e = Example(count=3, share=0.25, weight=0, rate=2, mode="b", flag=False, free=-9)
    assert (e.weight, e.rate) == (0.0, 2.0) and isinstance(e.rate, float)
    assert e.free == -9  # no bounds: any integer


@pytest.mark.parametrize("cls", [SFTConfig, RLConfig, PrefConfig])
def test_every_stage_config_is_checked_by_its_annotations(cls: type) -> None:
    cls()  # the defaults are valid
    name = next(f for f in cls.__dataclass_fields__.values() if f.type in ("int", "float")).name
    with pytest.raises(FolioError, match=f"config: {name} must be"):
        cls(**{name: "text"})


def test_the_sft_table_comes_from_the_preset_and_the_flags(tmp_path) -> None:
    assert stage_config(SFTConfig, "sft", "sft", []) == SFTConfig()
    preset = tmp_path / "p.toml"
    preset.write_text("[train]\nmax_iters = 5\n\n[sft]\neval_prompts = 0\nval_fraction = 0.2\n")
    cfg = stage_config(SFTConfig, str(preset), "sft", [("sft.val_fraction", 0.3)])
    assert (cfg.eval_prompts, cfg.val_fraction, cfg.mix_fraction) == (0, 0.3, 0.1)
    preset.write_text("[sft]\neval_prompt = 3\n")
    with pytest.raises(FolioError, match="did you mean 'eval_prompts'"):
        stage_config(SFTConfig, str(preset), "sft", [])


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--sft.val_fraction", "2"], "sft config: val_fraction must be in (0, 1), got 2.0"),
        (["--val-fraction", "0"], "sft config: val_fraction must be in (0, 1), got 0.0"),
        (["--eval-prompts", "-1"], "sft config: eval_prompts must not be negative, got -1"),
        (["--mix-fraction", "0.2"], "--mix-fraction needs --mix-data"),
        (["--set", "rl.kl_coef=1"], "it takes settings of the sections model, train, sft"),
    ],
)
def test_sft_settings_are_checked_before_anything_loads(tmp_path, capsys, flags, words) -> None:
    argv = ["sft", "--init-from", f"run:{tmp_path / 'none'}", "--data", str(tmp_path / "none.jsonl"),
            "--out", str(tmp_path / "run"), *flags]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "run").exists()


def test_each_algorithms_own_rl_settings_are_marked_and_refused_to_the_other() -> None:
    assert [
        n for n in ("scale_by_std", "loss_mean", "dynamic_sampling") if algo_of(n) != "grpo"
    ] == []
    assert [n for n in ("gamma", "gae_lambda", "vf_coef", "value_clip", "ptx_coef")
            if algo_of(n) != "ppo"] == []  # fmt: skip
    assert algo_of("kl_coef") is None and algo_of("no_end_penalty") is None  # both read them
    check_algo_fields(["rl.gamma", "rl.kl_coef", "train.learning_rate"], "ppo")
    check_algo_fields(["rl.dynamic_sampling", "rl.kl_coef"], "grpo")
    with pytest.raises(FolioError, match=r"rl.gamma is PPO's setting \(--algo ppo\)"):
        check_algo_fields(["rl.gamma"], "grpo")
    with pytest.raises(FolioError, match=r"rl.loss_mean is GRPO's setting"):
        check_algo_fields(["rl.loss_mean"], "ppo")


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--algo", "grpo", "--tasks", "add", "--rl.vf_coef", "0.5"], "rl.vf_coef is PPO's"),
        (
            ["--algo", "ppo", "--reward-model", "run:x", "--set", "rl.dynamic_sampling=2"],
            "rl.dynamic_sampling is GRPO's",
        ),  # fmt: skip
    ],
)
def test_rl_refuses_the_other_algorithms_setting_before_anything_loads(
    tmp_path, capsys, flags, words
) -> None:
    argv = ["rl", "--init-from", f"run:{tmp_path / 'none'}", "--out", str(tmp_path / "run"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "run").exists()
