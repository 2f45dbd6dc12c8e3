"""A fixed-shape step compiled ahead of time, and kept on disk.

Used for `StaticDecoder`'s one-token step (folio/sample/decode.py), but it
knows nothing of decoders: any function of tensors whose shapes never change
can be compiled. `StaticDecoder.compile()` hands the step to `torch.compile`: it compiles in
the process, and every call then goes through dynamo's guards and a runtime
wrapper before the kernels run. At batch 1 on a CPU those per-call costs were
a quarter of a token's time (benchmarks/decode_profile.py). Here the step is
exported once (`torch.export`, every tensor it reads an explicit input, the
KV cache among them, written in place) and compiled by AOTInductor into a
shared library: a call is then one C++ function over the inputs, with no
guards and no Python between kernels.

The library depends only on the step's code and the inputs' shapes and
dtypes, never on weight values (the weights are inputs), so it is kept in a
cache directory (`$FOLIO_CACHE/aot`, default `~/.cache/folio/aot`) under a
hash of the exported program, the torch version and the CPU's instruction
sets. The first decoder of a model shape, weight format and batch size pays
the compile (20-30 s for the video model on 2 cores); later ones, in any
process, load it in well under a second. A library is written under a
temporary name and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from folio.errors import FolioError
from folio.runtime import cache_dir, cpu_info

Step = Callable[..., tuple[torch.Tensor, ...]]
"""A compiled step: called with the per-call tensors, it returns the function's outputs."""


class _Exported(torch.nn.Module):
    """A function of tensors as a module whose inputs are every tensor it reads."""

    def __init__(self, fn: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.fn = [fn]  # in a list: not a submodule, nothing to register

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.fn[0](*inputs)


def library_key(program: torch.export.ExportedProgram, inputs: list[torch.Tensor]) -> str:
    """What the compiled library depends on: the program's code, input layouts, torch, the CPU."""
    cpu = cpu_info()
    parts = [
        torch.__version__,
        cpu.name,
        ",".join(sorted(cpu.flags)),
        program.graph_module.code,
        *(f"{tuple(t.shape)}|{tuple(t.stride())}|{t.dtype}|{t.device}" for t in inputs),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def compile_step(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    call_args: tuple[torch.Tensor, ...],
    bound: list[torch.Tensor],
    directory: Path | None = None,
) -> tuple[Step, bool]:
    """`fn` as an AOTInductor library, and whether it came from the cache.

    `fn(*call_args, *bound)` is exported with these example tensors: the
    returned step takes tensors shaped like `call_args` and passes them, with
    the same `bound` tensors (weights, caches: read, or written in place), to
    the library.
    """
    with warnings.catch_warnings():
        # torch's export and packaging warn about their own internals (deprecated
        # torch.jit and pytree names): nothing a user can act on.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _compile_step(fn, call_args, bound, directory)


def _compile_step(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    call_args: tuple[torch.Tensor, ...],
    inputs: list[torch.Tensor],
    directory: Path | None,
) -> tuple[Step, bool]:
    args = (*call_args, *inputs)
    with torch.no_grad():
        program = torch.export.export(_Exported(fn), args, strict=False)
    directory = cache_dir() / "aot" if directory is None else directory
    path = directory / f"step-{library_key(program, [*args])}.pt2"
    cached = path.exists()
    runner = None
    if cached:
        try:
            runner = torch._inductor.aoti_load_package(str(path))
        except Exception:  # a library that cannot be read (disk trouble, another torch): rebuild
            cached = False
    if runner is None:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # still ends in .pt2
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:  # no C++ compiler, a full disk, ...
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FolioError(
                f"cannot compile the decode step ahead of time ({why[:200]}); "
                "use the decode path 'static'"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        runner = torch._inductor.aoti_load_package(str(path))
    # The package's __call__ parses its input and output specs (JSON) and flattens
    # the arguments on every call, about 70 us at batch 1; the loader underneath
    # takes the flat list of tensors (and consumes it: a fresh list each call).
    loader = getattr(runner, "loader", None)
    run = getattr(loader, "boxed_run", None)

    def step(*per_call: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if run is None:
            return tuple(runner(*per_call, *inputs))
        return tuple(run([*per_call, *inputs]))

    return step, cached
