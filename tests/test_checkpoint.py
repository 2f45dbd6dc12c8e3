"""Checkpoints: saving, finding and loading, and refusing hostile or inconsistent files."""

import json
import time
from pathlib import Path

import pytest
import torch

import folio.checkpoint as checkpoint_module
import folio.memory as memory_module
from folio.checkpoint import clean_state_dict, load_checkpoint, save_checkpoint
from folio.cli import main
from folio.errors import FolioError
from folio.models import GPT, GPTConfig
from folio.tokenizers import CharTokenizer


def test_resaving_a_step_writes_a_new_directory(tmp_path):
    cfg = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)
    model, tok = GPT(cfg), CharTokenizer("abcde")
    first = save_checkpoint(
        tmp_path, clean_state_dict(model), cfg, tok, {"step": 3, "val_loss": 1.0}
    )
    second = save_checkpoint(
        tmp_path, clean_state_dict(model), cfg, tok, {"step": 3, "val_loss": 0.9}
    )
    assert first.name == "step-00000003" and second.name == "step-00000003.1"
    assert (
        json.loads((tmp_path / "latest.json").read_text())["checkpoint"]
        == "checkpoints/step-00000003.1"
    )
    assert load_checkpoint(tmp_path).path == second
    assert sorted(d.name for d in (tmp_path / "checkpoints").iterdir()) == ["step-00000003.1"]


# --- issue 19: hostile or inconsistent checkpoint files ----------------------------------------


def _tiny_run(root: Path, **config) -> Path:
    cfg = GPTConfig(
        **{"vocab_size": 5, "block_size": 8, "n_layer": 1, "n_head": 1, "n_embd": 8, **config}
    )
    torch.manual_seed(0)
    save_checkpoint(
        root, clean_state_dict(GPT(cfg)), cfg, CharTokenizer("abcde"), {"step": 1, "val_loss": 1.0}
    )
    return root


def _edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def _nothing_built(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(config):
        raise AssertionError("a model was built before the config was checked")

    monkeypatch.setattr(checkpoint_module, "build_model", refuse)


def test_a_config_claiming_a_huge_model_is_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 19 item 7: n_layer 1000, n_embd 4096 made load_checkpoint allocate 5.4 GB first.
    run = _tiny_run(tmp_path / "run")
    ckpt = load_checkpoint(run).path

    def bomb(c: dict) -> None:
        c["model"].update(n_layer=1000, n_embd=4096, n_head=8)

    _edit_json(ckpt / "config.json", bomb)
    _nothing_built(monkeypatch)
    t0 = time.perf_counter()
    with pytest.raises(
        FolioError, match=r"model.safetensors: weights do not match the config \(the file"
    ):
        load_checkpoint(run)
    assert time.perf_counter() - t0 < 1.0
    assert main(["sample", "--checkpoint", str(run), "--max-new-tokens", "2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "weights do not match the config" in err[0], err


def test_weights_whose_names_differ_from_the_config_are_refused_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 19 item 7: the same parameter count, other tensors ("heads" attention): one line,
    # from the safetensors header, before the model is built.
    run = _tiny_run(tmp_path / "run")
    _edit_json(
        load_checkpoint(run).path / "config.json", lambda c: c["model"].update(attention="heads")
    )
    _nothing_built(monkeypatch)
    with pytest.raises(FolioError, match=r"weights do not match the config \(missing .*unexpected"):
        load_checkpoint(run)


def test_weights_of_another_shape_are_named_in_one_line(tmp_path: Path) -> None:
    run = _tiny_run(tmp_path / "run")
    header = checkpoint_module.read_safetensors_header(
        load_checkpoint(run).path / "model.safetensors"
    )
    assert header["transformer.wte.weight"] == ("F32", (5, 8))
    expected = {"transformer.wte.weight": (5, 16), "transformer.wpe.weight": (8, 8)}
    found = {"transformer.wte.weight": (5, 8), "transformer.wpe.weight": (8, 8)}
    with pytest.raises(FolioError) as e:
        checkpoint_module.check_weight_shapes(expected, found, "W")
    assert str(e.value) == (
        "W: weights do not match the config "
        "(transformer.wte.weight is [5, 8] in the weights but [5, 16] by the config)"
    )


def test_a_model_that_does_not_fit_in_memory_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 19 item 7: the memory guard applies to loading too.
    run = _tiny_run(tmp_path / "run")
    monkeypatch.setattr(memory_module, "available_memory", lambda device: 1000)
    _nothing_built(monkeypatch)
    with pytest.raises(
        FolioError, match=r"loading this model of [\d,]+ parameters needs about .* only"
    ):
        load_checkpoint(run)


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 19 item 8: a huge tokenizer beside a 5-token model sampled garbage and exported.
    run = _tiny_run(tmp_path / "run")
    ckpt = load_checkpoint(run).path
    big = [chr(c) for c in range(0x4E00, 0x4E00 + 5000)]
    (ckpt / "tokenizer.json").write_text(json.dumps({"kind": "char", "chars": big}))
    with pytest.raises(
        FolioError, match="tokenizer has 5,000 tokens but the model's vocab_size is 5"
    ):
        load_checkpoint(run)
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "vocab_size is 5" in err[0], err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    "target",
    [
        "../other/checkpoints/step-00000001",
        "checkpoints/../../other/checkpoints/step-00000001",
        "ABSOLUTE",
        "checkpoints/escape",
    ],
)
def test_a_pointer_cannot_leave_its_run_directory(tmp_path: Path, target: str) -> None:
    # issue 19 item 12: latest.json naming ../../runs/other/... loaded another run's model.
    run, other = _tiny_run(tmp_path / "run"), _tiny_run(tmp_path / "other")
    elsewhere = other / "checkpoints" / "step-00000001"
    (run / "checkpoints" / "escape").symlink_to(elsewhere, target_is_directory=True)
    target = str(elsewhere) if target == "ABSOLUTE" else target
    _edit_json(run / "latest.json", lambda p: p.update(checkpoint=target))
    with pytest.raises(
        FolioError, match="latest.json: points to .*outside this run's checkpoints/"
    ):
        load_checkpoint(run)


def test_a_run_whose_checkpoints_directory_is_a_link_still_loads(tmp_path: Path) -> None:
    (tmp_path / "big-disk").mkdir()
    run = _tiny_run(tmp_path / "big-disk" / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").symlink_to(run / "checkpoints", target_is_directory=True)
    (tmp_path / "run" / "latest.json").write_text((run / "latest.json").read_text())
    assert load_checkpoint(tmp_path / "run").state["step"] == 1


def test_the_loading_guard_counts_the_file_and_the_model_on_cpu_and_the_model_on_a_gpu() -> None:
    cfg = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)
    model_bytes = 4 * memory_module.count_parameters(cfg)
    check = memory_module.check_loading_memory
    cuda = torch.device("cuda")
    check(cfg, 100, cuda, available={"cpu": model_bytes + 100, "cuda": model_bytes})
    with pytest.raises(FolioError, match="on cpu but only"):
        check(cfg, 100, cuda, available={"cpu": model_bytes + 99, "cuda": model_bytes})
    with pytest.raises(FolioError, match="on cuda but only"):
        check(cfg, 100, cuda, available={"cpu": model_bytes + 100, "cuda": model_bytes - 1})
    check(cfg, 100, torch.device("cpu"), available={"cpu": model_bytes + 100, "cuda": 0})
