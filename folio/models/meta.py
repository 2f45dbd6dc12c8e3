"""A model built on PyTorch's meta device, for its shapes alone, without its random fills.

Tensors on the meta device have shapes and no storage. Their initialisation
has nothing to fill, yet `normal_` on a meta tensor runs through a
decomposition that imports torch._dynamo: over a second in every process that
checks a checkpoint's shapes before loading it. `NoRandomFill` skips those
fills; every other operation runs as usual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

RANDOM_FILLS = frozenset({"normal_", "uniform_", "trunc_normal_"})


class NoRandomFill(TorchFunctionMode):
    """Within it, the random fills of initialisation leave their tensor as it is."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in RANDOM_FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def meta_model(build: Any, config: Any) -> torch.nn.Module:
    """`build(config)` on the meta device: every parameter's shape, no storage, no fills."""
    with torch.device("meta"), NoRandomFill():
        return build(config)
