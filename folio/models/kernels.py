"""Folio's own C++ operators: built with the system's compiler at first use, then cached.

A kernel's source sits beside its Python module (`w8a8.cpp`, `invariant.cpp`). It is
compiled into a shared library in `$FOLIO_CACHE/kernels`, under a hash of its source,
the torch version, Python's version and the compiler's name, so a later process loads
it in milliseconds and a changed source is rebuilt. The library is written to a
temporary name and renamed: a crash or a second process never leaves a half-written
file under the final name.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch

from folio.errors import FolioError
from folio.runtime import cache_dir


def compiler() -> str:
    """The C++ compiler: `$CXX`, else g++."""
    return os.environ.get("CXX", "g++")


def _build_command(source: Path, out: Path) -> list[str]:
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    lib = cpp_extension.library_paths()[0]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        compiler(), "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *includes, str(source),
        f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}", "-o", str(out),
    ]  # fmt: skip


def library_key(source: Path) -> str:
    """What a built library depends on: its source, torch, Python and the compiler's name."""
    parts = [source.read_text(), torch.__version__, sys.version.split()[0], compiler()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def build(source: Path, what: str, way_out: str, directory: Path | None = None) -> Path:
    """The shared library of `source`, built unless already in `directory`.

    `what` names the kernel and `way_out` what to do instead, for the one-line
    FolioError a failed build (no compiler, a full disk) gives.
    """
    directory = cache_dir() / "kernels" if directory is None else directory
    path = directory / f"{source.stem}-{library_key(source)}.so"
    if path.exists():
        return path
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115  # held until built
    except OSError as e:
        raise FolioError(f"cannot build {what} ({e.strerror or e}); {way_out}") from None
    with lock:
        # Processes starting together (test workers, servers) wait for the first one's build
        # instead of compiling the same library side by side. The lock file goes when the
        # build does: at worst a process arriving just then compiles again, and the rename
        # keeps either library whole.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():
                return path
            return _compile(source, path, what, way_out)
        finally:
            Path(lock.name).unlink(missing_ok=True)


def _compile(source: Path, path: Path, what: str, way_out: str) -> Path:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        done = subprocess.run(
            _build_command(source, tmp), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            why = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[0]
            raise FolioError(f"cannot build {what} with {compiler()} ({why[:200]}); {way_out}")
        os.replace(tmp, path)
    except OSError as e:  # no compiler at all, an unwritable cache
        raise FolioError(
            f"cannot build {what} with {compiler()} ({e.strerror or e}); {way_out}"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(source: Path, what: str, way_out: str) -> Path:
    """Build (at first use) and load `source`'s operators into this process."""
    path = build(source, what, way_out)
    try:
        torch.ops.load_library(str(path))
    except OSError as e:  # a library that cannot be loaded (torn by another tool): rebuild
        path.unlink(missing_ok=True)
        path = build(source, what, way_out)
        try:
            torch.ops.load_library(str(path))
        except OSError:
            raise FolioError(f"cannot load {what} {path} ({e})") from None
    return path
