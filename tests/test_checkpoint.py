"""Saving the same step twice never removes the checkpoint a pointer names."""

import json

from folio.checkpoint import load_checkpoint, save_checkpoint
from folio.models import GPT, GPTConfig
from folio.tokenizers import CharTokenizer


def test_resaving_a_step_writes_a_new_directory(tmp_path):
    cfg = GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)
    model, tok = GPT(cfg), CharTokenizer("abcde")
    first = save_checkpoint(tmp_path, model, cfg, tok, {"step": 3, "val_loss": 1.0})
    second = save_checkpoint(tmp_path, model, cfg, tok, {"step": 3, "val_loss": 0.9})
    assert first.name == "step-00000003" and second.name == "step-00000003.1"
    assert (
        json.loads((tmp_path / "latest.json").read_text())["checkpoint"]
        == "checkpoints/step-00000003.1"
    )
    assert load_checkpoint(tmp_path).path == second
    assert sorted(d.name for d in (tmp_path / "checkpoints").iterdir()) == ["step-00000003.1"]
