"""Byte-level BPE on the shakespeare corpus: training time and encode throughput.

Usage: python benchmarks/tokenizer_speed.py [VOCAB ...]   (default 512 2048 8192)

For each vocabulary size: the seconds `BPETokenizer.train` takes on the corpus
(in the pieces `folio prepare` feeds it), then the encode throughput in MB/s
of UTF-8 text, encoding the corpus the way `folio prepare` does (pieces of
64K characters, `encode_batch` over 1M characters at a time).
"""

from __future__ import annotations

import sys
import time

from folio.data.corpora import load_corpus
from folio.data.prepare import BATCH_CHARS, PIECE_CHARS
from folio.tokenizers import BPETokenizer
from folio.tokenizers.bpe import iter_pieces


def main(vocab_sizes: list[int]) -> None:
    corpus = load_corpus(["shakespeare"])
    pieces = [p for d in corpus.documents for p in iter_pieces(d, PIECE_CHARS)]
    n_bytes = sum(len(p.encode("utf-8")) for p in pieces)
    print(f"corpus: {n_bytes / 1e6:.2f} MB in {len(pieces)} pieces")
    print("| vocab | train s | encode MB/s | tokens | bytes/token |")
    print("|---:|---:|---:|---:|---:|")
    for vocab in vocab_sizes:
        t0 = time.perf_counter()
        tok = BPETokenizer.train(iter(pieces), vocab)
        t1 = time.perf_counter()
        n_tokens, batch, size = 0, [], 0
        for p in pieces:
            batch.append(p)
            size += len(p)
            if size >= BATCH_CHARS:
                n_tokens += sum(len(ids) for ids in tok.encode_batch(batch))
                batch, size = [], 0
        n_tokens += sum(len(ids) for ids in tok.encode_batch(batch))
        t2 = time.perf_counter()
        print(
            f"| {vocab} | {t1 - t0:.2f} | {n_bytes / 1e6 / (t2 - t1):.1f} | "
            f"{n_tokens:,} | {n_bytes / n_tokens:.2f} |"
        )


if __name__ == "__main__":
    main([int(v) for v in sys.argv[1:]] or [512, 2048, 8192])
