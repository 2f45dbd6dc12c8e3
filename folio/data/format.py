"""The dataset format on disk, in one place: what `prepare` writes and `Dataset.open` reads.

A dataset directory holds exactly three files:

- `train.bin`, `val.bin`: the splits' token ids as raw little-endian
  unsigned integers (`dtype` in meta.json: uint16, or uint32 when the
  vocabulary has more than 65,536 tokens), read back with numpy.memmap;
- `meta.json`, written last (its presence marks a complete dataset), with
  the fields of `META_FIELDS`.

The writer (`folio.data.prepare`) and the reader (`folio.data.batches`) both
import this module, so the two cannot drift apart. `check_meta` holds every
rule a reader relies on, so a damaged or hand-edited meta.json fails in one
line when the dataset opens rather than as an IndexError deep in training.
"""

from __future__ import annotations

from typing import Any

from folio.errors import FolioError
from folio.tokenizers import Tokenizer, tokenizer_from_dict

DATASET_FORMAT = "folio-dataset"
DATASET_VERSION = 1
META_FILE = "meta.json"
SPLITS = ("train", "val")
TOKEN_DTYPES = ("uint16", "uint32")


def token_file(split: str) -> str:
    """The file name of a split's token ids."""
    return f"{split}.bin"


DATASET_FILES = frozenset({META_FILE, *(token_file(s) for s in SPLITS)})

META_FIELDS: dict[str, str] = {
    "format": f"always {DATASET_FORMAT!r}",
    "version": f"the format version ({DATASET_VERSION}); a newer one is refused",
    "tokenizer": "the tokenizer's JSON form (`to_dict`), so the dataset decodes itself",
    "vocab_size": "the tokenizer's vocabulary size; every token id is below it",
    "dtype": f"the token files' dtype, one of {', '.join(TOKEN_DTYPES)}",
    "train_tokens": "number of tokens in train.bin",
    "val_tokens": "number of tokens in val.bin",
    "train_max_token_id": "the largest id in train.bin (absent in older datasets)",
    "val_max_token_id": "the largest id in val.bin (absent in older datasets)",
    "train_bytes": "UTF-8 bytes of the text behind train.bin's tokens (for bits per byte)",
    "val_bytes": "UTF-8 bytes of the text behind val.bin's tokens",
    "val_fraction": "the fraction of the tokens that validate (the last ones)",
    "source": "the corpus: name, files, characters and the SHA-256 of its text",
}


def split_key(split: str, field: str) -> str:
    """The meta.json key of a per-split field: split_key('val', 'tokens') == 'val_tokens'."""
    return f"{split}_{field}"


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_meta(where: object, meta: dict[str, Any]) -> Tokenizer:
    """Every field a reader relies on is present, well typed and consistent; returns the tokenizer.

    Consistent: the tokenizer has exactly `vocab_size` tokens, and each split's
    recorded largest token id (where recorded) is below it.
    """
    problem = None
    tokenizer = None
    if not _count(meta.get("version", 0)):
        problem = "version must be an integer"
    elif meta.get("dtype") not in TOKEN_DTYPES:
        problem = f"dtype must be 'uint16' or 'uint32', got {meta.get('dtype')!r}"
    elif not all(
        _count(meta.get(k)) for k in ("vocab_size", *(split_key(s, "tokens") for s in SPLITS))
    ):
        problem = "vocab_size, train_tokens and val_tokens must be integers"
    elif not all(_count(meta.get(k, 0)) for k in (split_key(s, "max_token_id") for s in SPLITS)):
        problem = "train_max_token_id and val_max_token_id must be integers"
    else:
        try:
            tokenizer = tokenizer_from_dict(meta.get("tokenizer"))
        except FolioError as e:
            problem = str(e)
    if problem:
        raise FolioError(f"{where}: dataset metadata is malformed ({problem})")
    assert tokenizer is not None
    vocab_size = meta["vocab_size"]
    if tokenizer.vocab_size != vocab_size:
        raise FolioError(
            f"{where}: vocab_size is {vocab_size} but the dataset's tokenizer has "
            f"{tokenizer.vocab_size} tokens; the metadata is inconsistent (prepare the dataset again)"
        )
    for split in SPLITS:
        largest = meta.get(split_key(split, "max_token_id"))
        if largest is not None:
            check_max_token_id(where, split, largest, vocab_size)
    return tokenizer


def check_max_token_id(where: object, split: str, largest: int, vocab_size: int) -> None:
    """Refuse a split whose largest token id does not fit a vocabulary of `vocab_size`."""
    if largest >= vocab_size:
        raise FolioError(
            f"{where}: the {split} split holds token id {largest}, but vocab_size is {vocab_size}; "
            f"the token files and the metadata disagree (prepare the dataset again)"
        )
