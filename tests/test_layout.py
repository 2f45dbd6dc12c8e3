"""The shape of the package: imports run one way, and every test the docs cite exists.

Layers, bottom to top (a module may import its own layer and those below):
  0  errors, fsutil, lazy, inputs
  1  tokenizers, models, runtime, memory, config
  2  data, checkpoint, sample, hf
  3  train, rl, eval, bench, serve
  4  stages, recipes
  5  commands, cli, __main__
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "folio"
LAYERS = {
    "errors": 0, "fsutil": 0, "lazy": 0, "inputs": 0,
    "tokenizers": 1, "models": 1, "runtime": 1, "memory": 1, "config": 1,
    "data": 2, "checkpoint": 2, "sample": 2, "hf": 2,
    "train": 3, "rl": 3, "eval": 3, "bench": 3, "serve": 3,
    "stages": 4, "recipes": 4,
    "commands": 5, "cli": 5, "__main__": 5, "__init__": 5,
}  # fmt: skip


def _part(module: str) -> str:
    """folio.train.trainer -> 'train'; folio.hf -> 'hf'."""
    return module.split(".")[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every folio module `path` imports (module level and inside functions), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("folio"):
            if node.module == "folio":  # from folio import x: x is the module
                found += [(node.lineno, f"folio.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("folio.")]
    return found


def test_every_package_part_has_a_layer() -> None:
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    parts -= {"__pycache__", "py"}
    assert parts <= set(LAYERS), parts - set(LAYERS)


def test_imports_never_go_up_a_layer() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        here = _part(".".join(rel.parts)) if len(rel.parts) > 1 else rel.parts[0]
        if path.name == "__init__.py" and len(rel.parts) == 2:
            here = "__init__"
        for line, module in _imports(path):
            if module.count(".") == 0 or _part(module) not in LAYERS:
                continue
            if LAYERS[_part(module)] > LAYERS[here]:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert upward == []


DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "dev").glob("*.md")),
]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_test_a_doc_cites_exists(doc: Path) -> None:
    cited = re.findall(r"(tests/test_\w+\.py)::(\w+)", doc.read_text(encoding="utf-8"))
    missing = []
    for file, name in cited:
        source = (ROOT / file).read_text(encoding="utf-8") if (ROOT / file).exists() else ""
        if not re.search(rf"^def {name}\(", source, re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert missing == []


def test_the_package_metadata_names_its_license_as_spdx() -> None:
    """A table (`{text = ...}`) makes setuptools print a deprecation warning at every install."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert isinstance(project["license"], str) and project["license"] == "MIT"
