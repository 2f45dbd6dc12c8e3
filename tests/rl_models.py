"""Tiny chat models the RL tests share: a tokenizer, a GPT, and a "picker" fine-tuned to answer
"Pick" with any of four letters, about equally (so a reward for one letter can be learned)."""

from __future__ import annotations

import torch

from folio.data.conversations import Conversation, sft_rows
from folio.models import GPT, GPTConfig
from folio.tokenizers import CharTokenizer
from folio.tokenizers.chat import with_chat_tokens
from folio.train.losses import masked_lm_loss

LETTERS = "abcd"


def tokenizer() -> CharTokenizer:
    return with_chat_tokens(CharTokenizer.from_text("Pick" + LETTERS + "0123456789+="))


def tiny(tok: CharTokenizer, dropout: float = 0.0, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=dropout)
    return GPT(cfg)


def picker(tok: CharTokenizer, steps: int = 30) -> GPT:
    """A model fine-tuned to answer "Pick" with any of the four letters, about equally."""
    model = tiny(tok)
    convos = [
        Conversation(
            [{"role": "user", "content": "Pick"}, {"role": "assistant", "content": c}], "x"
        )
        for c in LETTERS
    ] * 4
    x, y, mask = sft_rows(convos, tok, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        logits, _ = model(x)
        loss = masked_lm_loss(logits, y, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model
