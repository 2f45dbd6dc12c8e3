"""The checkpoints a server serves: each one a model id, its own engine and its tokenizer.

`load_served_model` reads a checkpoint for `folio serve`; `ServedModel` is
what the routes find in `app.state.models`, and what `/v1/models` describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from folio.models.gpt import GPT
from folio.sample.engine import Engine
from folio.sample.paths import DecodePath
from folio.serve.prompt import is_chat_model, stop_ids_for
from folio.tokenizers.stream import TokenBytes


@dataclass
class ServedModel:
    """One checkpoint behind one model id, with its own engine."""

    id: str
    engine: Engine
    tokenizer: Any
    created: int = 0

    def __post_init__(self) -> None:
        self.token_bytes = TokenBytes(self.tokenizer)
        self.chat = is_chat_model(self.tokenizer)
        self.stop_ids = stop_ids_for(self.tokenizer)

    @property
    def config(self) -> Any:
        return self.engine.model.config

    def info(self) -> dict[str, Any]:
        """The /v1/models entry, with Folio's details under "folio"."""
        c = self.config
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": "folio",
            "folio": {
                "mode": "chat" if self.chat else "completion",
                "block_size": self.engine.block_size,
                "vocab_size": c.vocab_size,
                "n_layer": getattr(c, "n_layer", 0),
                "n_head": getattr(c, "n_head", 0),
                "attention": isinstance(self.engine.model, GPT),
                "decode": self.engine.path.name,
                "batch_invariant": self.engine.batch_invariant,
                "invariance_note": self.engine.invariance_note,
            },
        }


def load_served_model(
    spec: str,
    *,
    device: torch.device | str = "cpu",
    max_batch: int = 32,
    max_queue: int = 64,
    which: str = "latest",
    decode: str | DecodePath = "auto",
) -> ServedModel:
    """A checkpoint to serve from `PATH` or `ID=PATH` (the id defaults to the run's folder name),
    on the decode path `decode` (`folio.sample.paths`)."""
    from folio.checkpoint import load_checkpoint, require_language_model

    model_id, sep, path = spec.partition("=")
    if not sep:
        model_id, path = "", spec
    ck = load_checkpoint(path, which, device)
    require_language_model(ck, "folio serve wants a language model")
    if not model_id:
        p = Path(path).resolve()
        model_id = (p.parent.parent.name if p.parent.name == "checkpoints" else p.name) or "folio"
    engine = Engine(
        ck.model, max_batch=max_batch, max_queue=max_queue, device=device, decode=decode
    )
    created = int((ck.path / "model.safetensors").stat().st_mtime)
    return ServedModel(model_id, engine, ck.tokenizer, created)
