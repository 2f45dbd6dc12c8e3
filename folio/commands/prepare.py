"""`folio prepare`: text -> a dataset directory of token ids (folio/data/prepare.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "tokenize a corpus into a dataset directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `folio prepare`."""
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="'shakespeare', 'tinyshakespeare', or text files / directories / globs",
    )
    parser.add_argument("--out", required=True, help="dataset directory to write")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of tokens (the end) kept for validation",
    )
    parser.add_argument("--input", default=None, help="local copy of tinyshakespeare's input.txt")
    parser.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="how to treat bytes that are not UTF-8",
    )
    parser.add_argument(
        "--allow-binary",
        action="store_true",
        help="read files that look binary (over 30%% control bytes in the first 64 KB)",
    )
    parser.add_argument(
        "--tokenizer",
        choices=["char", "bpe", "gpt2"],
        default="char",
        help="char: one token per character; bpe: byte-level BPE trained on the corpus; "
        "gpt2: GPT-2's own BPE from --tokenizer-dir",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        help="vocabulary size of a trained BPE tokenizer (at least 257)",
    )
    parser.add_argument(
        "--tokenizer-dir",
        default=None,
        help="directory holding GPT-2's vocab.json and merges.txt (for --tokenizer gpt2)",
    )


def run(args: argparse.Namespace) -> None:
    """Prepare the dataset and print what it holds, as the video explores its text."""
    from folio.data.corpora import load_corpus
    from folio.data.prepare import prepare_dataset

    corpus = load_corpus(
        args.sources,
        errors=args.errors,
        input_path=args.input,
        allow_binary=args.allow_binary,
        stream=True,  # the user's files are read a block at a time: any size fits in memory
    )
    s = prepare_dataset(
        corpus,
        Path(args.out),
        val_fraction=args.val_fraction,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        tokenizer_dir=args.tokenizer_dir,
        progress=True,
    )
    print(f"corpus: {corpus.name} ({len(corpus.files)} file(s))")
    print(f"length of dataset in characters: {s.characters:,}")
    if s.tokenizer == "char":
        print(f"vocabulary ({s.vocab_size} characters): {s.vocab!r}")
    else:
        print(f"vocabulary ({s.vocab_size} {s.tokenizer} tokens), first merges: {s.vocab}")
    print(f"train tokens: {s.train_tokens:,}  val tokens: {s.val_tokens:,}  ({s.dtype})")
    print("excerpt:")
    print("  " + s.excerpt[:200].replace("\n", "\n  "))
    print(f"wrote {s.out_dir}")
