"""The ground floor every command stands on: device, precision, threads, CPU
features, the hardware's peak speed (for MFU) and the torchrun environment.

Sampling, evaluation, benchmarks and training all come here, so there is one
dtype table and `/proc/cpuinfo` is read once per process.

`--dtype auto` uses bf16 autocast where the hardware runs bf16 matmuls fast:
CPUs with AMX or AVX512-BF16, and CUDA devices that support bf16. Older CUDA
devices get fp16 with a gradient scaler; everything else stays fp32. On a CPU
without those instructions bf16 is emulated and far slower than fp32, so auto
must not pick it there. Master weights are always fp32; autocast only changes
the precision of the matmuls.

This module imports torch only inside the functions that need it (and
TORCH_DTYPES on first use), so the CLI can parse its flags, print its help and
refuse a bad argument without the second or so that importing torch costs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from folio.errors import FolioError

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""What `--dtype` accepts; every name but auto is a torch dtype (`dtype_from_name`)."""


def __getattr__(name: str) -> Any:
    """TORCH_DTYPES, built (and torch imported) on first use."""
    if name == "TORCH_DTYPES":
        import torch

        table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        globals()["TORCH_DTYPES"] = table
        return table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    import torch

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


@dataclass(frozen=True)
class CPUInfo:
    """What /proc/cpuinfo says about this machine's processor."""

    name: str
    """The model name, e.g. 'AMD EPYC 9R14'."""
    flags: frozenset[str]
    """Instruction-set flags, e.g. avx2, avx512_bf16, amx_bf16."""
    physical_cores: int
    """Distinct (package, core) pairs: cores, not hyper-threads."""

    @property
    def fast_bf16(self) -> bool:
        """Native bf16 matmuls: AMX-BF16 or AVX512-BF16 (elsewhere bf16 is emulated, slowly)."""
        return bool(self.flags & {"amx_bf16", "avx512_bf16"})

    def notable_flags(self) -> list[str]:
        """The flags that decide matmul speed, for benchmark records."""
        keep = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx")
        return sorted(f for f in self.flags if f.startswith(keep))


def cache_dir() -> Path:
    """Where Folio keeps what it measured or compiled once: $FOLIO_CACHE, else ~/.cache/folio."""
    return Path(os.environ.get("FOLIO_CACHE", Path.home() / ".cache" / "folio"))


@functools.cache
def cpu_info() -> CPUInfo:
    """This machine's CPU, read from /proc/cpuinfo once per process."""
    name, flags, cores = "", set(), set()
    phys = core = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "model name" and not name:
                    name = value
                elif key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and core is not None:
                    cores.add((phys, core))
                    phys = core = None
    except OSError:
        pass
    n = len(cores) or os.cpu_count() or 1
    with contextlib.suppress(AttributeError):
        n = min(n, len(os.sched_getaffinity(0)))
    return CPUInfo(
        name=name or platform.processor() or platform.machine(),
        flags=frozenset(flags),
        physical_cores=max(1, n),
    )


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX-BF16 or AVX512-BF16 instructions."""
    return cpu_info().fast_bf16


def physical_cores() -> int:
    """Physical cores (not hyper-threads) where Linux tells us, else os.cpu_count()."""
    return cpu_info().physical_cores


def default_threads(processes_here: int = 1) -> int:
    """The threads a process takes when told 0: $OMP_NUM_THREADS where it is a positive integer
    (the usual way to say it, which PyTorch also reads at start-up), else the physical cores
    shared among this machine's `processes_here` processes."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, physical_cores() // processes_here)


def set_threads(threads: int, processes_here: int = 1) -> None:
    """CPU threads for PyTorch: `threads`, or (0) `default_threads(processes_here)`."""
    import torch

    torch.set_num_threads(threads or default_threads(processes_here))


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of giving it back to the kernel.

    A CPU training step allocates and frees activation-sized buffers (tens of MB on the
    video model). glibc serves blocks above its mmap threshold with a fresh mmap() and
    frees them with munmap(), so every step the kernel zeroes and faults in every page
    of them again: on the video model in bf16 that was about a fifth of a step
    (BENCHMARKS.md). With mmap off and heap trimming off, a freed block returns to the
    heap and the next step reuses it. The price: the process keeps its peak memory
    until it exits. True if glibc took the settings; a no-op elsewhere.
    """
    import ctypes

    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def machine_name(device: torch.device) -> str:
    """The CPU model, or the GPU's name: what a benchmark record says it ran on."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_info().name


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The autocast dtype that `--dtype` means on this device (float32 = no autocast)."""
    import torch

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
    return __getattr__("TORCH_DTYPES")[dtype]


def autocast_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """None for float32 (run as is), else the lower precision to compute in."""
    import torch

    return None if dtype == torch.float32 else dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass; a no-op in float32."""
    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _matmul_flops(dtype: torch.dtype, device: torch.device, budget_s: float = 0.5) -> float:
    """Measured FLOP/s of a square matmul, growing the size while a product stays quick."""
    import torch

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
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return (
                    peak if dtype != torch.float32 else peak / 2
                )  # TF32 peak is half the bf16 one
    # The host name alone is not enough: machines that share one have carried a
    # peak measured on another CPU (585 against a measured 2,000 GFLOP/s in bf16).
    cpu = cpu_info()
    key = (
        f"{platform.node()}|{cpu.name}|{','.join(cpu.notable_flags())}|{device}|{dtype}"
        f"|{torch.__version__}|{torch.get_num_threads()}"
    )
    cache = cache_dir() / "peak_flops.json"
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


# ---------------------------------------------------------------- torchrun


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job."""

    rank: int = 0
    """Global rank, 0 .. world_size - 1."""
    world_size: int = 1
    """Processes in the job."""
    local_rank: int = 0
    """Rank on this machine; picks the GPU."""
    local_world_size: int = 1
    """Processes on this machine; splits the CPU cores."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_environ() -> DistEnv:
    """The torchrun variables, or a single process when they are absent."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistEnv()
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise FolioError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if not 0 <= rank < world:
        raise FolioError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return DistEnv(rank, world, local_rank, local_world)


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group torchrun describes (NCCL on CUDA, gloo elsewhere).

    A single process (no torchrun, or WORLD_SIZE=1) creates no group.
    """
    import torch
    import torch.distributed as dist

    env = env_from_environ()
    if not env.enabled or dist.is_initialized():
        return env
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
        backend = "nccl"
    elif device_type == "cpu":
        backend = "gloo"
    else:
        raise FolioError(f"distributed training supports cuda and cpu, not {device_type}")
    dist.init_process_group(backend=backend)
    global _owned_group
    _owned_group = True
    return env


_owned_group = False
"""Whether init_distributed() created the group (a caller's own group is left for the caller to destroy)."""


def teardown_distributed() -> None:
    """Leave the process group init_distributed() created, after a last barrier so rank 0's files are complete."""
    import torch.distributed as dist

    global _owned_group
    if _owned_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _owned_group = False


def is_main() -> bool:
    """True on rank 0, and in a single process: the process that logs and writes files."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_from_environ().is_main


def device_for(device: torch.device, env: DistEnv) -> torch.device:
    """One GPU per process: cuda:LOCAL_RANK."""
    import torch

    if env.enabled and device.type == "cuda":
        return torch.device("cuda", env.local_rank)
    return device
