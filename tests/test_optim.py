"""The optimizer and the learning-rate schedules (folio.train.optim), gradient
accumulation, and the validation of TrainConfig.

The tiny model is 2 layers, 32 wide, block 16, fp32 on CPU, seeded.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from folio.checkpoint import resolve_checkpoint
from folio.cli import main as cli_main
from folio.config.run import TrainConfig, build_run_config
from folio.data.corpora import load_corpus
from folio.data.prepare import prepare_dataset
from folio.errors import FolioError
from folio.models import GPT, GPTConfig
from folio.stages.pretrain import train
from folio.train.optim import (
    NS_COEFFICIENTS,
    SCHEDULES,
    MuonAdamW,
    learning_rate,
    make_optimizer,
    muon_param_groups,
    orthogonalize,
    orthogonalize_many,
    param_groups,
)

V, BLOCK = 20, 16


@pytest.fixture(autouse=True)
def flops_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    # The trainer caches its measured peak FLOP/s; keep that cache out of the home directory.
    monkeypatch.setenv("FOLIO_CACHE", str(tmp_path_factory.getbasetemp() / "folio-cache"))


def _gpt(seed: int = 0, **overrides: Any) -> GPT:
    kw: dict[str, Any] = dict(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    kw.update(overrides)
    torch.manual_seed(seed)
    return GPT(GPTConfig(**kw))


# --- weight-decay groups -------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_only_matrices_are_decayed_and_every_tensor_appears_once(tie: bool) -> None:
    model = _gpt(tie_weights=tie)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["params"] and no_decay["params"]
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(grouped) == len(set(grouped))  # no tensor twice, tied or not
    unique = {id(p) for p in model.parameters()}
    assert set(grouped) == unique
    names = {id(p): n for n, p in model.named_parameters()}  # a tied tensor: its first name
    decayed = {names[id(p)] for p in decay["params"]}
    assert "transformer.wte.weight" in decayed and "transformer.wpe.weight" in decayed
    assert ("lm_head.weight" in decayed) is not tie  # tied: it is wte's tensor, listed once
    assert not any(n.endswith(".bias") or ".ln_" in n for n in decayed)


def test_optimizer_is_adamw_over_the_two_groups() -> None:
    model = _gpt(tie_weights=True)
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == model.num_params()


def test_frozen_parameters_are_left_out() -> None:
    model = _gpt()
    model.transformer.wpe.weight.requires_grad_(False)
    decay, _ = param_groups(model, 0.1)
    assert all(p is not model.transformer.wpe.weight for p in decay["params"])


# --- Muon ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32)])
def test_orthogonalize_pushes_every_singular_value_towards_one(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    # Singular values spread over two orders of magnitude (five iterations lift a value by
    # about 3.4**5 = 480x, so much smaller ones would stay small: Muon does not need them).
    u, _ = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=g))
    v, _ = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=g))
    s = torch.logspace(-1, 1, min(shape))
    m = u @ torch.diag(s) @ v.T  # (r, k) @ (k, k) @ (k, c) -> (r, c)
    o = orthogonalize(m)
    assert o.shape == m.shape
    sv = torch.linalg.svdvals(o)
    assert sv.min() > 0.5 and sv.max() < 1.3, sv
    # The directions are kept: o is close to u v^T, the exact orthogonal factor.
    cos = (o * (u @ v.T)).sum() / (o.norm() * (u @ v.T).norm())
    assert cos > 0.95


def _newton_schulz_by_hand(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The iteration written term by term, one matrix at a time: the reference for the fused form."""
    a, b, c = NS_COEFFICIENTS
    x = g / (g.norm() + 1e-7)
    if x.shape[0] > x.shape[1]:
        return _newton_schulz_by_hand(g.T, steps).T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * (gram @ x) + c * (gram @ (gram @ x))
    return x


def test_orthogonalize_equals_the_iteration_written_out() -> None:
    g = torch.Generator().manual_seed(4)
    for shape in [(48, 16), (16, 48), (24, 24)]:
        m = torch.randn(*shape, generator=g)
        torch.testing.assert_close(orthogonalize(m), _newton_schulz_by_hand(m), rtol=0, atol=1e-5)


def test_orthogonalize_many_equals_one_matrix_at_a_time() -> None:
    # Two matrices of each of three shapes (batched), one of a fourth (alone), in mixed order.
    g = torch.Generator().manual_seed(5)
    shapes = [(48, 16), (16, 16), (16, 48), (48, 16), (16, 48), (16, 16), (32, 16)]
    grads = [torch.randn(*s, generator=g) for s in shapes]
    out = orthogonalize_many(grads)
    assert [tuple(o.shape) for o in out] == shapes
    for grad, o in zip(grads, out, strict=True):
        torch.testing.assert_close(o, orthogonalize(grad), rtol=0, atol=1e-5)
    # Each matrix is normalised on its own: scaling one does not change another's result.
    grads[0] = grads[0] * 100
    torch.testing.assert_close(orthogonalize_many(grads)[3], out[3], rtol=0, atol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_muon_takes_the_block_matrices_and_adamw_the_rest(tie: bool) -> None:
    model = _gpt(tie_weights=tie)
    hidden, matrices, vectors = muon_param_groups(model, 1e-3, 0.02, 0.1)
    assert hidden["muon"] and hidden["lr_scale"] == pytest.approx(20.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in hidden["params"]} == {
        n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("transformer.h.")
    }
    assert {names[id(p)] for p in matrices["params"]} >= {"transformer.wte.weight"}
    assert matrices["weight_decay"] == 0.1 and vectors["weight_decay"] == 0.0
    grouped = [id(p) for grp in (hidden, matrices, vectors) for p in grp["params"]]
    assert len(grouped) == len(set(grouped)) == len({id(p) for p in model.parameters()})


def test_muon_optimizer_adamw_part_matches_torch_adamw() -> None:
    # No biases: the key bias gets a gradient of zero up to rounding, which Adam amplifies
    # into steps of +-lr in whatever direction the rounding points.
    a, b = _gpt(seed=3, bias=False), _gpt(seed=3, bias=False)
    ours = MuonAdamW([{"params": list(a.parameters()), "weight_decay": 0.1}], lr=1e-2)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randint(0, V, (4, BLOCK), generator=g)
        y = torch.randint(0, V, (4, BLOCK), generator=g)
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x, y)[1].backward()
            opt.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_muon_step_moves_a_matrix_by_an_orthogonal_update() -> None:
    w = torch.nn.Parameter(torch.zeros(8, 32))
    opt = MuonAdamW([{"params": [w], "muon": True}], lr=0.1, momentum=0.0)
    w.grad = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    opt.step()
    sv = torch.linalg.svdvals(-w.detach() / 0.1)  # wide matrix: no shape rescaling
    assert sv.min() > 0.5 and sv.max() < 1.3
    assert "momentum_buffer" in opt.state[w]


def test_trainer_with_muon_learns_and_scales_the_muon_rate(dataset: Path, tmp_path: Path) -> None:
    run = build_run_config(
        "tiny",
        [
            ("train.optimizer", "muon"),
            ("train.muon_lr", 0.02),
            ("train.learning_rate", 1e-3),
            ("train.max_iters", 30),
            ("train.eval_interval", 30),
            ("train.threads", 1),
        ],
    )
    result = train(run, dataset, tmp_path / "run", progress=False, log=lambda _: None)
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"] - 0.5
    opt_meta = json.loads(next((tmp_path / "run").glob("checkpoints/*/optimizer.json")).read_text())
    groups = opt_meta["param_groups"]
    assert groups[0]["muon"] and not groups[1]["muon"]
    assert groups[0]["lr"] == pytest.approx(groups[1]["lr"] * 20.0)


# --- learning-rate schedules ---------------------------------------------------------------


MAX_LR, MIN_LR = 1e-3, 1e-4


def _lr(step: int, schedule: str, warmup: int = 10, max_iters: int = 100, **kw: Any) -> float:
    return learning_rate(
        step,
        schedule=schedule,
        max_lr=MAX_LR,
        min_lr=MIN_LR,
        warmup_iters=warmup,
        max_iters=max_iters,
        **kw,
    )


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_warmup_is_linear_up_to_max_lr(schedule: str) -> None:
    lrs = [_lr(s, schedule) for s in range(10)]
    for s, lr in enumerate(lrs):
        assert lr == pytest.approx(MAX_LR * (s + 1) / 10)
    steps = [b - a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert all(d == pytest.approx(MAX_LR / 10) for d in steps)
    assert lrs[-1] == pytest.approx(MAX_LR)
    assert _lr(10, schedule) == pytest.approx(MAX_LR)  # the first step after warmup


def test_cosine_starts_at_max_lr_falls_monotonically_and_ends_at_min_lr() -> None:
    lrs = [_lr(s, "cosine") for s in range(10, 101)]
    assert lrs[0] == pytest.approx(MAX_LR)
    assert all(b < a for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(MIN_LR)  # step max_iters
    assert _lr(99, "cosine") == pytest.approx(MIN_LR, rel=1e-2)  # the last step taken
    assert _lr(55, "cosine") == pytest.approx((MAX_LR + MIN_LR) / 2)  # half way: the midpoint
    assert _lr(500, "cosine") == pytest.approx(MIN_LR)  # past the end: stays at the floor


def test_cosine_without_warmup_starts_at_max_lr() -> None:
    assert _lr(0, "cosine", warmup=0) == MAX_LR


@pytest.mark.parametrize("fraction", [0.2, 0.5, 1.0])
def test_wsd_is_flat_then_decays_linearly_over_the_last_fraction(fraction: float) -> None:
    max_iters = 100
    decay_start = max_iters - int(fraction * max_iters)
    lrs = {s: _lr(s, "wsd", warmup=0, decay_fraction=fraction) for s in range(max_iters + 1)}
    assert all(lrs[s] == MAX_LR for s in range(decay_start))
    decaying = [lrs[s] for s in range(decay_start, max_iters + 1)]
    assert decaying[0] == pytest.approx(MAX_LR)
    assert decaying[-1] == pytest.approx(MIN_LR)
    diffs = [b - a for a, b in zip(decaying, decaying[1:], strict=False)]
    slope = (MIN_LR - MAX_LR) / (max_iters - decay_start)
    assert all(d == pytest.approx(slope) for d in diffs)  # a straight line


def test_wsd_with_no_decay_fraction_stays_flat() -> None:
    assert {_lr(s, "wsd", warmup=0, decay_fraction=0.0) for s in range(100)} == {MAX_LR}


def test_constant_schedule() -> None:
    assert {_lr(s, "constant") for s in range(10, 1000, 7)} == {MAX_LR}
    assert _lr(0, "constant", warmup=0) == MAX_LR


def test_a_time_clocked_cosine_follows_the_share_of_the_budget_not_the_step() -> None:
    # The step no longer matters after warmup: only how much of the budget is spent.
    assert _lr(20, "cosine", time_fraction=0.0) == pytest.approx(MAX_LR)
    assert _lr(20, "cosine", time_fraction=0.5) == pytest.approx((MAX_LR + MIN_LR) / 2)
    assert _lr(5000, "cosine", time_fraction=0.5) == pytest.approx((MAX_LR + MIN_LR) / 2)
    assert _lr(20, "cosine", time_fraction=1.0) == pytest.approx(MIN_LR)
    assert _lr(20, "cosine", time_fraction=1.7) == pytest.approx(MIN_LR)  # an overrun: the floor
    assert _lr(3, "cosine", time_fraction=0.9) == pytest.approx(MAX_LR * 4 / 10)  # warmup: steps


def test_a_time_clocked_wsd_decays_over_the_last_fraction_of_the_budget() -> None:
    kw = {"warmup": 0, "decay_fraction": 0.2}
    assert _lr(7, "wsd", time_fraction=0.79, **kw) == MAX_LR
    assert _lr(7, "wsd", time_fraction=0.9, **kw) == pytest.approx((MAX_LR + MIN_LR) / 2)
    assert _lr(7, "wsd", time_fraction=1.2, **kw) == pytest.approx(MIN_LR)


def test_unknown_schedule_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        _lr(0, "linear", warmup=0)


# --- gradient accumulation -----------------------------------------------------------------


def test_accumulated_micro_batches_give_the_big_batch_gradient() -> None:
    # k micro-batches of b, each loss divided by k, sum to the gradient of one batch of k*b:
    # the mean over k*b rows is the mean of the k micro-batch means.
    k, b = 4, 3
    model = _gpt(dropout=0.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (k * b, BLOCK), generator=g)  # (k*b, T)
    y = torch.randint(0, V, (k * b, BLOCK), generator=g)  # (k*b, T)

    model.zero_grad()
    _, loss = model(x, y)
    loss.backward()
    big = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    for i in range(k):
        _, loss = model(x[i * b : (i + 1) * b], y[i * b : (i + 1) * b])  # (b, T) each
        (loss / k).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, big[n], rtol=1e-5, atol=1e-7, msg=n)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("optim-data")
    rng = random.Random(0)
    words = ["the", "king", "queen", "of", "and", "to", "my", "lord", "thou", "art", "good"]
    lines = (" ".join(rng.choice(words) for _ in range(10)) for _ in range(300))
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare_dataset(load_corpus([str(root / "corpus.txt")]), root / "ds")
    return root / "ds"


def test_trainer_with_gradient_accumulation_trains(dataset: Path, tmp_path: Path) -> None:
    # grad_accum=2 of batch 4 draws different batches from grad_accum=1 of batch 8, so
    # the two runs are not compared step by step; the accumulating run must simply learn.
    run = build_run_config(
        "tiny",
        [
            ("train.grad_accum", 2),
            ("train.batch_size", 4),
            ("train.max_iters", 30),
            ("train.eval_interval", 30),
            ("train.threads", 1),
        ],
    )
    result = train(run, dataset, tmp_path / "run", progress=False, log=lambda _: None)
    first, last = result.history[0], result.history[-1]
    assert first["step"] == 0 and last["step"] == 30
    assert last["val_loss"] < first["val_loss"] - 0.5
    rows = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "loss" in r]
    assert all(r["tokens"] == r["step"] * 2 * 4 * BLOCK for r in step_rows)


# --- TrainConfig validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("learning_rate", -1e-3, "learning_rate must not be negative"),
        ("learning_rate", 0.0, "learning_rate must be positive"),
        ("learning_rate", math.nan, "learning_rate must be a finite number"),
        ("learning_rate", math.inf, "learning_rate must be a finite number"),
        ("learning_rate", "fast", "learning_rate must be a finite number"),
        ("min_lr", -1.0, "min_lr must not be negative"),
        ("lr_schedule", "linear", "lr_schedule must be one of"),
        ("max_iters", True, "max_iters must be an integer"),
        ("batch_size", 8.0, "batch_size must be an integer"),
        ("batch_size", 0, "batch_size must be positive"),
        ("grad_accum", 0, "grad_accum must be positive"),
        ("warmup_iters", -1, "warmup_iters must not be negative"),
        ("weight_decay", math.nan, "weight_decay must be a finite number"),
        ("grad_clip", -1.0, "grad_clip must not be negative"),
        ("beta2", 1.0, "beta2 must be in"),
        ("decay_fraction", 1.5, "decay_fraction must be in"),
        ("decay_fraction", -0.1, "decay_fraction must be in"),
        ("compile", 1, "compile must be true or false"),
        ("dtype", "float8", "dtype must be one of"),
        ("max_time", -5.0, "max_time must not be negative"),
        ("schedule_clock", "tokens", "schedule_clock must be one of"),
        ("schedule_clock", "time", "needs a time budget"),
        ("patience", -1, "patience must not be negative"),
        ("target_val_loss", -1.0, "target_val_loss must not be negative"),
        ("optimizer", "sgd", "optimizer must be one of"),
        ("muon_lr", -0.02, "muon_lr must not be negative"),
        ("muon_momentum", 1.0, "muon_momentum must be in"),
    ],
)
def test_train_config_rejects_bad_values(field: str, value: Any, words: str) -> None:
    with pytest.raises(FolioError, match=words):
        TrainConfig(**{field: value})


def test_train_config_accepts_ints_for_floats_and_the_edges() -> None:
    tc = TrainConfig(learning_rate=1, decay_fraction=1.0, beta1=0.0, grad_clip=0)
    assert isinstance(tc.learning_rate, float) and tc.learning_rate == 1.0
    assert tc.decay_fraction == 1.0


def test_overrides_are_validated_too() -> None:
    with pytest.raises(FolioError, match="learning_rate must not be negative"):
        build_run_config("tiny", [("train.learning_rate", -3e-4)])
    with pytest.raises(FolioError, match="unknown setting 'learning_rat'"):
        build_run_config("tiny", [("train.learning_rat", 3e-4)])
    run = build_run_config("tiny", [("learning_rate", 3e-4), ("n_layer", 3)])  # bare names
    assert run.train.learning_rate == 3e-4 and run.model.n_layer == 3


# --- resuming with the optimizer state of another optimizer (issue 19 item 11) -------------


@pytest.fixture(scope="module")
def adamw_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adamw-run") / "run"
    args = ["train", "--data", str(dataset), "--preset", "tiny", "--out", str(out), "--quiet"]
    assert (
        cli_main([*args, "--threads", "1", "--max-iters", "2", "--set", "train.eval_interval=2"])
        == 0
    )
    return out


def _resume(dataset: Path, run: Path, *extra: str) -> list[str]:
    args = ["train", "--data", str(dataset), "--preset", "tiny", "--out", str(run), "--quiet"]
    return [*args, "--threads", "1", "--max-iters", "3", "--resume", *extra]


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("folio: error: "), err
    return err[0]


def _copy(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", resolve_checkpoint(tmp_path / "run")


def test_resuming_with_another_optimizer_is_one_line_naming_the_one_used(
    dataset: Path, adamw_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, ckpt = _copy(adamw_run, tmp_path)
    assert cli_main(_resume(dataset, run, "--set", "train.optimizer=muon")) == 2
    line = _one_line(capsys)
    assert "this run was trained with adamw; resume with the same optimizer" in line, line
    assert json.loads((ckpt / "optimizer.json").read_text())["optimizer"] == "adamw"
    assert cli_main(_resume(dataset, run)) == 0  # nothing was lost: it resumes as it was


def _drop_name(meta: dict) -> None:
    meta.pop("optimizer", None)  # a checkpoint written before the name was recorded


def _bad_betas(meta: dict) -> None:
    meta["param_groups"][0]["betas"] = "fast"


def _fewer_params(meta: dict) -> None:
    meta["param_groups"][0]["params"] = meta["param_groups"][0]["params"][:-1]


def _not_a_list(meta: dict) -> None:
    meta["param_groups"] = {"lr": 1}


@pytest.mark.parametrize(
    ("tamper", "optimizer", "words"),
    [
        (_drop_name, "muon", "it has 2 parameter groups, this optimizer 3"),
        (_bad_betas, "adamw", "parameter group 0 has betas = 'fast'"),
        (_fewer_params, "adamw", "parameter group 0 holds"),
        (_not_a_list, "adamw", "no list of parameter groups"),
    ],
)
def test_a_tampered_or_foreign_optimizer_state_is_one_line(
    dataset: Path,
    adamw_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tamper,
    optimizer: str,
    words: str,
) -> None:
    run, ckpt = _copy(adamw_run, tmp_path)
    meta = json.loads((ckpt / "optimizer.json").read_text())
    tamper(meta)
    (ckpt / "optimizer.json").write_text(json.dumps(meta))
    assert cli_main(_resume(dataset, run, "--set", f"train.optimizer={optimizer}")) == 2
    line = _one_line(capsys)
    assert f"{ckpt / 'optimizer.json'}: the saved optimizer state does not fit" in line, line
    assert words in line, line


def test_optimizer_state_tensors_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    from folio.train.optim import load_optimizer_state

    model = _gpt()
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu")
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    state = opt.state_dict()
    state["state"][0]["exp_avg"] = torch.zeros(3, 3)
    with pytest.raises(FolioError, match=r"exp_avg of parameter 0 is \[3, 3\], the parameter"):
        load_optimizer_state(make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu"), state, tmp_path)
    state["state"][0]["exp_avg"] = torch.zeros_like(state["state"][0]["exp_avg_sq"])
    load_optimizer_state(make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), "cpu"), state, tmp_path)
