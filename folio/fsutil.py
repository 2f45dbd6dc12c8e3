"""Writing files so that nothing a user has is ever half-written.

Every file goes to a temporary name in the same directory, is flushed and
fsynced, then renamed over its final name: a crash at any instant leaves
either the old file or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from folio.errors import FolioError
from folio.inputs import parse_json


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and put back at once
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give a file the permissions a plain open() would have (some writers use 0600)."""
    os.chmod(path, 0o666 & ~current_umask())


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path), fsync it, then rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FolioError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, what: str) -> Any:
    """Load a JSON file, turning every way it can be missing or broken into one clear line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FolioError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FolioError(
            f"{path}: {what} is unreadable or corrupt ({e.__class__.__name__})"
        ) from None


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory `tmp` to `final`, replacing any directory there.

    The old directory is renamed aside first and removed last, so that a
    crash leaves either the old or the new one in place (or, for an instant,
    the old one under its aside name).
    """
    aside = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.rename(final, aside)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if aside.exists():
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(
    tmp: Path, failure: str, catch: tuple[type[BaseException], ...] = (OSError,)
) -> Iterator[Path]:
    """A fresh, empty directory `tmp` to build something in before renaming it into place.

    If the block fails, `tmp` is removed; the exceptions in `catch` become one
    FolioError line, `failure` with `{why}` replaced by the reason.
    """
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
    except catch as e:
        shutil.rmtree(tmp, ignore_errors=True)
        why = (e.strerror or e) if isinstance(e, OSError) else str(e).splitlines()[0]
        raise FolioError(failure.format(why=why)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def describe_entries(entries: list[str]) -> str:
    """'3 entries: a, b, c' (the first five named), for an error about a directory's contents."""
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {shown}"


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex (read in blocks)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def file_digests(directory: Path, names: Iterable[str]) -> dict[str, str]:
    """{name: SHA-256} of the named files in `directory`: what a manifest records as written."""
    return {name: file_digest(directory / name) for name in names}


def edited_files(directory: Path, manifest: str) -> list[str]:
    """The files of `directory` that are not exactly as the command that wrote it left them.

    The manifest's "files" maps each written file to its SHA-256. A file that
    differs, one the manifest does not list, and every file of a manifest that
    lists none (written before manifests did) count as edited.
    """
    try:
        document = parse_json((directory / manifest).read_bytes(), str(directory / manifest))
        recorded = document.get("files") if isinstance(document, dict) else None
        names = sorted(p.name for p in directory.iterdir() if p.name != manifest)
    except (OSError, FolioError):
        return [manifest]
    if not isinstance(recorded, dict):
        return names
    edited = []
    for name in names:
        try:
            same = recorded.get(name) == file_digest(directory / name)
        except OSError:
            same = False
        if not same:
            edited.append(name)
    return edited


def check_replaceable_dir(
    out_dir: str | Path,
    is_ours: Callable[[Path], bool],
    what: str,
    manifest: str | None = None,
    force: bool = False,
) -> Path:
    """The absolute path a command may (re)write as a whole directory, or a FolioError.

    A new or empty directory, or one `is_ours` recognises (something the same
    command wrote, replaced atomically), may be written; anything else holds
    something of the user's and is refused, naming what is there. `what` names
    the kind of directory ("a Folio dataset"). With a `manifest` (the file that
    records each written file's digest), a directory of ours whose files were
    edited since is refused too, unless `force`: hand-made changes are the user's.
    """
    out = Path(os.path.abspath(Path(out_dir).expanduser()))  # "." and ".." get real names
    if out.parent == out:
        raise FolioError(f"--out {out_dir}: cannot write {what} over the filesystem root")
    if not out.exists():
        return out
    if not out.is_dir():
        raise FolioError(f"--out {out_dir}: exists and is not a directory")
    try:
        entries = sorted(p.name for p in out.iterdir())
    except OSError as e:
        raise FolioError(f"--out {out_dir}: cannot read it ({e.strerror or e})") from None
    if entries and not is_ours(out):
        raise FolioError(
            f"--out {out_dir}: refusing to replace a directory that is not {what} "
            f"(it holds {describe_entries(entries)}); choose a new or empty directory"
        )
    if entries and manifest is not None and not force and (edited := edited_files(out, manifest)):
        raise FolioError(
            f"--out {out_dir}: {', '.join(edited[:3])} changed since it was written (edited by "
            f"hand?); choose a new directory, or pass --force to replace it"
        )
    return out
