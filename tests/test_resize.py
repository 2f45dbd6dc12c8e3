"""Tests for folio/models/resize.py and folio/tokenizers/extend.py: growing a vocabulary."""

from __future__ import annotations

import pytest
import torch

from folio.errors import FolioError
from folio.models import GPT, BigramConfig, BigramLanguageModel, GPTConfig
from folio.models.resize import resize_vocab
from folio.tokenizers import BPETokenizer, CharTokenizer
from folio.tokenizers.chat import END, has_chat_template, with_chat_tokens
from folio.tokenizers.extend import added_tokens, extend_for_text


def tiny_gpt(vocab_size: int, tie: bool) -> GPT:
    torch.manual_seed(0)
    return GPT(
        GPTConfig(vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32, tie_weights=tie)
    )


@pytest.mark.parametrize("tie", [False, True])
def test_old_logits_are_unchanged_and_ties_kept(tie: bool) -> None:
    model = tiny_gpt(20, tie).eval()
    idx = torch.randint(0, 20, (3, 16), generator=torch.Generator().manual_seed(1))
    before, _ = model(idx)
    grown = resize_vocab(model, 27, generator=torch.Generator().manual_seed(2)).eval()
    after, _ = grown(idx)
    assert grown.config.vocab_size == 27 and after.shape == (3, 16, 27)
    assert torch.equal(after[..., :20], before)  # exactly the old logits
    assert model.config.vocab_size == 20 and model.lm_head.weight.shape[0] == 20  # input untouched
    wte, head = grown.transformer.wte.weight, grown.lm_head.weight
    assert (wte is head) == tie
    old_wte = model.transformer.wte.weight
    assert torch.equal(wte[:20], old_wte)
    # New rows: near the mean of the old rows, but not all the same.
    assert torch.allclose(wte[20:], old_wte.mean(0).expand(7, -1), atol=0.01)
    assert not torch.equal(wte[20], wte[21])
    # New tokens' logits are near the average old logit: none becomes likely.
    assert (after[..., 20:] - before.mean(-1, keepdim=True)).abs().max() < 0.05
    if tie:  # training one step keeps them tied
        grown.train()
        _, loss = grown(idx, idx)
        loss.backward()
        assert grown.lm_head.weight is grown.transformer.wte.weight


def test_bigram_grows_rows_and_columns() -> None:
    torch.manual_seed(0)
    model = BigramLanguageModel(BigramConfig(5))
    idx = torch.tensor([[0, 4, 2, 1]])
    before, _ = model(idx)
    grown = resize_vocab(model, 8)
    after, _ = grown(idx)
    assert after.shape == (1, 4, 8) and torch.equal(after[..., :5], before)
    with pytest.raises(ValueError, match="cannot shrink"):
        resize_vocab(model, 4)


def test_char_tokenizer_extension_keeps_old_ids_and_specials() -> None:
    base = with_chat_tokens(CharTokenizer.from_text("abc \n"))
    grown = extend_for_text(base, ["12+30=42", "a b"])
    assert grown.chars[: base.vocab_size] == base.chars
    assert added_tokens(base, grown) == ["+", "0", "1", "2", "3", "4", "="]
    assert has_chat_template(grown) and grown.special_token_id(END) == base.special_token_id(END)
    assert grown.decode(grown.encode("12+30=42")) == "12+30=42"
    assert extend_for_text(grown, ["abc"]) is grown  # nothing missing: the same tokenizer
    # Chat tokens added after new characters are appended too.
    plain = CharTokenizer.from_text("ab")
    both = with_chat_tokens(extend_for_text(plain, ["+"]))
    assert added_tokens(plain, both) == ["+", "<|system|>", "<|user|>", "<|assistant|>", END]


def test_a_tokenizer_that_does_not_extend_is_refused() -> None:
    base = CharTokenizer.from_text("abc")
    with pytest.raises(FolioError, match="changed id or are missing, e.g. 'a'"):
        added_tokens(base, CharTokenizer.from_text("Xabc"))
    bpe = BPETokenizer.train(["hello world"] * 10, vocab_size=300)
    with pytest.raises(FolioError, match="a bpe tokenizer cannot extend a char tokenizer"):
        added_tokens(base, bpe)
    assert extend_for_text(bpe, ["any text + = 42"]) is bpe  # bytes cover every text
    assert added_tokens(bpe, with_chat_tokens(bpe))[-1] == END
