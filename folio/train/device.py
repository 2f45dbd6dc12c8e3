"""Devices, threads, precision and the hardware's peak speed (for MFU).

`--dtype auto` uses bf16 autocast where the hardware runs bf16 matmuls fast:
CPUs with AMX or AVX512-BF16, and CUDA devices that support bf16. Older CUDA
devices get fp16 with a gradient scaler; everything else stays fp32. On a CPU
without those instructions bf16 is emulated and far slower than fp32, so auto
must not pick it there. Master weights are always fp32; autocast only changes
the precision of the matmuls.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from folio.errors import FolioError

DTYPES = ("auto", "float32", "bfloat16", "float16")

# Dense bf16 tensor-core peaks (FLOP/s) of common GPUs, from their data sheets.
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu; or the device the user named."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FolioError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FolioError("--device cuda asked for, but no CUDA device is available")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise FolioError("--device mps asked for, but MPS is not available")
    return dev


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX-BF16 or AVX512-BF16 instructions."""
    return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})


def physical_cores() -> int:
    """Physical cores (not hyper-threads) where Linux tells us, else os.cpu_count()."""
    cores = set()
    phys = core = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                elif not line.strip() and core is not None:
                    cores.add((phys, core))
                    phys = core = None
    except OSError:
        pass
    n = len(cores) or os.cpu_count() or 1
    try:
        n = min(n, len(os.sched_getaffinity(0)))
    except AttributeError:
        pass
    return max(1, n)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The autocast dtype that `--dtype` means on this device (float32 = no autocast)."""
    if dtype not in DTYPES:
        raise FolioError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if dtype == "float16" and device.type == "cpu":
        raise FolioError("--dtype float16 is for GPUs; on a CPU use bfloat16 or float32")
    return getattr(torch, dtype)


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass; a no-op in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _matmul_flops(dtype: torch.dtype, device: torch.device, budget_s: float = 0.5) -> float:
    """Measured FLOP/s of a square matmul, growing the size while a product stays quick."""
    best = 0.0
    n = 256
    g = torch.Generator().manual_seed(0)  # never the global RNG: measuring must not change a run
    while n <= 2048:
        a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        reps, t0 = 0, time.perf_counter()
        while True:
            a @ b
            reps += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if dt > budget_s / 4 or reps >= 20:
                break
        best = max(best, 2 * n**3 * reps / dt)
        if dt / reps > 0.05:  # slow at this size already: a bigger one tells no more
            break
        n *= 2
    return best


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's matmul peak for `dtype` (FLOP/s): a data-sheet table for known GPUs,
    else measured once and cached in ~/.cache/folio."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return (
                    peak if dtype != torch.float32 else peak / 2
                )  # TF32 peak is half the bf16 one
    key = f"{platform.node()}|{platform.processor()}|{device}|{dtype}|{torch.__version__}|{torch.get_num_threads()}"
    cache = (
        Path(os.environ.get("FOLIO_CACHE", Path.home() / ".cache" / "folio")) / "peak_flops.json"
    )
    table: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError):
        table = json.loads(cache.read_text())
    h = hashlib.sha1(key.encode()).hexdigest()[:16]
    if h not in table:
        table[h] = _matmul_flops(dtype, device)
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(table))
            os.replace(tmp, cache)
    return table[h]


def flops_per_token(n_params: int, n_layer: int, n_embd: int, block_size: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward + backward) plus attention's
    12 * n_layer * n_embd * T (the PaLM paper's appendix B estimate)."""
    return 6 * n_params + 12 * n_layer * n_embd * block_size
