"""What many tests build: a dataset of random words, a tiny GPT with wide random weights, and
`folio` run in the test's own process."""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import torch

from folio.cli import main
from folio.data.corpora import load_corpus
from folio.data.prepare import prepare_dataset
from folio.models import GPT, GPTConfig

WORDS = "the quick brown fox jumps over a lazy dog and runs far away".split()


def word_dataset(root: Path, words: list[str] = WORDS, lines: int = 300) -> Path:
    """A prepared character dataset of `lines` lines of 10 seeded random `words`, in root/ds."""
    rng = random.Random(0)
    text = (" ".join(rng.choice(words) for _ in range(10)) for _ in range(lines))
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    prepare_dataset(load_corpus([str(root / "corpus.txt")]), root / "ds")
    return root / "ds"


def wide_gpt(config: GPTConfig, seed: int = 0) -> GPT:
    """`config`'s GPT, seeded, its matrices drawn with std 0.2 so that greedy text does not
    settle into a loop at once; in eval mode."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model.eval()


def cli(*argv: object) -> tuple[int, str, str]:
    """`folio ARGV` in this process (the same CLI, without a Python start-up): its exit status,
    stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()
