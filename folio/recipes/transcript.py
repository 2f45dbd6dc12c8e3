"""A scripted chat with a recipe's models: what the assistant says, shown beside its figures.

`folio recipe assistant` ends by writing OUT/transcript.md: held-out prompts of
each kind the recipe trained on (one per task of the test set, and one of the
gold rule's "Write a line for {SPEAKER} about {word}"), plus one of a kind no
stage ever trained on, each sent as the first message of a new conversation
to each chat model (SFT, GRPO, PPO, DPO). The replies come from
`folio chat`'s own session (folio/serve/session.py), greedy (temperature 0),
so the same models always give the same transcript, and
`folio chat --checkpoint OUT/ppo --temperature 0` answers the same prompt
the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from folio.data.material import load_material
from folio.data.prefs import line_prompts

UNSEEN_PROMPT = "Who are you, and what can you do?"
"""The prompt of a kind no stage trained on."""


def transcript_prompts(test_file: Path, corpus: str = "shakespeare") -> list[tuple[str, str]]:
    """(kind, prompt): the first test prompt of each task in `test_file` (a tasks directory's
    test.jsonl), the first held-out prompt of the gold rule, and `UNSEEN_PROMPT`."""
    first: dict[str, str] = {}
    with test_file.open(encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            first.setdefault(obj.get("task") or "conversation", obj["messages"][0]["content"])
    line = line_prompts("test", 1, 0, load_material(corpus))[0]
    return [*first.items(), ("line (ranked by the gold rule)", line), ("never trained on",
            UNSEEN_PROMPT)]  # fmt: skip


def chat_replies(checkpoint: Path, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
    """Each prompt as the first turn of a new `folio chat` conversation: the greedy replies."""
    from folio.checkpoint import load_checkpoint
    from folio.sample.engine import Engine
    from folio.serve.session import ChatSession, ChatSettings

    ck = load_checkpoint(checkpoint)
    settings = ChatSettings(max_new_tokens=max_new_tokens, temperature=0.0, top_k=None, seed=0)
    session = ChatSession(Engine(ck.model, max_batch=1, max_queue=1), ck.tokenizer, settings)
    replies = []
    for prompt in prompts:
        session.reset()
        text = "".join(session.reply(prompt))
        if session.finish_reason == "length":
            text += f" [... cut at {max_new_tokens} tokens]"
        replies.append(text)
    return replies


def format_transcript(
    kinds: Sequence[str], prompts: Sequence[str], by_model: dict[str, list[str]]
) -> str:
    """The transcript as Markdown: per prompt, the user's message and each model's reply."""
    lines = ["Each prompt starts a new conversation; replies are greedy (temperature 0).", ""]
    for i, (kind, prompt) in enumerate(zip(kinds, prompts, strict=True)):
        lines += [f"**{kind}**", "", "```text", f"you> {prompt}"]
        for model, replies in by_model.items():
            lines.append(f"{model}> {replies[i]}")
        lines += ["```", ""]
    return "\n".join(lines)


def make_transcript(out: Path, stages: Sequence[str], test_file: Path) -> str:
    """The transcript of the recipe in `out`: its chat models in `stages` that exist."""
    kinds, prompts = zip(*transcript_prompts(test_file), strict=True)
    by_model = {
        stage: chat_replies(out / stage, prompts)
        for stage in stages
        if (out / stage / "latest.json").is_file()
    }
    return format_transcript(kinds, prompts, by_model)
