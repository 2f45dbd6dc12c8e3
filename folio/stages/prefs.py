"""`folio prefs make`: preference pairs sampled from a chat model and ranked by the gold rule.

Replies are sampled from the chat model (`run:DIR`) for line prompts drawn
from the plays, ranked by the hidden gold rule (folio/data/prefs.py), a share
of the labels flipped, and written as a preference directory that `folio
reward` and `folio dpo` read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from folio.data.material import load_material
from folio.data.prefs import (
    FLIP,
    LINE_PROMPT,
    check_pairing,
    check_prefs_target,
    line_prompts,
    make_pairs,
    write_pref_dir,
)
from folio.errors import FolioError
from folio.eval.tasks import Reply, generate_replies
from folio.inputs import check_seed
from folio.tokenizers.chat import cut_at_turn_token, end_of_turn_id, render_prompt
from folio.train.policy import load_policy, where


def make_preferences(
    checkpoint: str,
    out_dir: str | Path,
    n: int,
    n_test: int,
    replies: int = 4,
    flip: float = FLIP,
    seed: int = 0,
    corpus: str = "shakespeare",
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    force: bool = False,
    pairing: str = "extremes",
) -> dict[str, Any]:
    """Sample `replies` replies to each of n train and n_test test prompts from the chat model
    `checkpoint` (run:DIR), rank them by the gold rule, flip a share `flip` of the labels, and
    write a preference directory. Prompts whose replies all score the same make no pair.
    Returns the manifest written to prefs.json. An earlier preference directory in out_dir
    is replaced only if its files are as written, or with `force`."""
    check_prefs_target(out_dir, force)  # before the slow sampling
    if isinstance(replies, bool) or not isinstance(replies, int) or replies < 2:
        raise FolioError(f"--replies must be at least 2 (a pair needs two), got {replies!r}")
    if not 0.0 <= flip < 0.5:
        raise FolioError(
            f"--flip must be in [0, 0.5) (beyond it the labels mean the opposite), got {flip!r}"
        )
    for name, v in (("--n", n), ("--n-test", n_test), ("--max-new-tokens", max_new_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise FolioError(f"{name} must be a positive integer, got {v!r}")
    if temperature <= 0:
        raise FolioError(f"--temperature must be positive (replies must differ), got {temperature}")
    check_pairing(pairing)  # before the slow sampling
    check_seed(seed)
    policy = load_policy(checkpoint, "--checkpoint")
    tok, model = policy.tokenizer, policy.model
    end_id = end_of_turn_id(tok)
    material = load_material(corpus)

    def sample(prompts):
        ids = [render_prompt(tok, [{"role": "user", "content": p}]) for p in prompts]
        out = generate_replies(
            model, ids, end_id, max_new_tokens=max_new_tokens, temperature=temperature,
            num_samples=replies, seed=seed,
        )  # fmt: skip
        return [[reply_text(r) for r in group] for group in out]

    def reply_text(r: Reply) -> tuple[str, bool]:
        # a reply that writes another turn token has not ended properly
        ids, cut = cut_at_turn_token(tok, r.ids)
        return tok.decode(ids), r.ended and not cut

    train_prompts = line_prompts("train", n, seed, material)
    train = make_pairs(train_prompts, sample, flip, seed, pairing)
    test = make_pairs(line_prompts("test", n_test, seed, material), sample, flip, seed + 1, pairing)
    manifest = {
        "checkpoint": where(policy), "replies": replies, "flip": flip, "seed": seed,
        "corpus": material.corpus, "prompts": {"train": n, "test": n_test},
        "pairs": {"train": len(train), "test": len(test)}, "max_new_tokens": max_new_tokens,
        "temperature": temperature, "rule": LINE_PROMPT, "pairing": pairing,
    }  # fmt: skip
    write_pref_dir(out_dir, train, test, manifest, force)
    return manifest
