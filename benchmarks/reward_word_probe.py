"""Does a reward model see the gold rule's word test? A probe of pairs that differ by the word alone.

The gold rule (folio/data/prefs.py) scores a reply to "Write a line for
{SPEAKER} about {word}" on three tests: it names the word, it is 20 to 60
characters long, and it ends. A reward model trained on ranked pairs may learn
some tests and not others; held-out accuracy alone does not say which. This
probe asks about the word:

1. every held-out reply (chosen or rejected) of the preference directory that
   names its prompt's word;
2. a twin of it with each occurrence of the word replaced by another topic
   word of the same length (so length and ending are unchanged), drawn with
   `--seed`;
3. the pair (reply, twin): the share the reward model scores the reply above
   its twin. 0.5 is blindness to the word; 1.0 is a model that always prefers
   the reply naming it.

    python benchmarks/reward_word_probe.py --prefs OUT/prefs OUT/reward [RUN ...]

Prints one line per reward model and, with --json, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from folio.checkpoint import load_checkpoint  # noqa: E402
from folio.data.material import load_material  # noqa: E402
from folio.data.prefs import Pair, read_pref_dir  # noqa: E402
from folio.stages.preference import pair_rows, pairwise_accuracy  # noqa: E402

PROMPT = re.compile(r"Write a line for (.+) about (\S+)")


def probe_pairs(pairs: list[Pair], topics: list[str], seed: int) -> list[Pair]:
    """(reply naming the word, the same reply naming another word of its length) pairs."""
    rng = random.Random(seed)
    out = []
    for p in pairs:
        m = PROMPT.fullmatch(p.prompt[-1]["content"].strip())
        if m is None:
            continue
        word = m.group(2)
        others = [t for t in topics if len(t) == len(word) and t.lower() != word.lower()]
        for reply in (p.chosen, p.rejected):
            if word.lower() in reply.lower() and others:
                twin = re.sub(re.escape(word), rng.choice(others), reply, flags=re.IGNORECASE)
                out.append(Pair(p.prompt, reply, twin))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rewards", nargs="+", help="reward model run directories")
    ap.add_argument("--prefs", required=True, help="a preference directory (its test.jsonl)")
    ap.add_argument("--corpus", default="shakespeare", help="where the topic words come from")
    ap.add_argument("--seed", type=int, default=0, help="seed of the replacement words")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    test = read_pref_dir(args.prefs)[1]
    probe = probe_pairs(test, list(load_material(args.corpus).topics), args.seed)
    if not probe:
        sys.exit(f"{args.prefs}: no held-out reply names its prompt's word; nothing to probe")
    results = {}
    for run in args.rewards:
        ck = load_checkpoint(run, "latest", "cpu")
        ck.model.eval()
        rows = pair_rows(probe, ck.tokenizer, ck.model_config.block_size)
        results[run] = pairwise_accuracy(ck.model, rows)
        if not args.json:
            r = results[run]
            print(f"{run}: prefers the word in {r['accuracy']:.3f} of {len(probe)} pairs "
                  f"(margin {r['margin']:.3f})")  # fmt: skip
    if args.json:
        print(json.dumps({"prefs": args.prefs, "pairs": len(probe), "rewards": results}))


if __name__ == "__main__":
    main()
