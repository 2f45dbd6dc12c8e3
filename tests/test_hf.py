"""Hugging Face interop (folio.hf): GPT-2 weights in and out with identical logits.

Every model here is tiny and random, built locally: nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import pytest
import torch

from folio.checkpoint import clean_state_dict, save_checkpoint
from folio.cli import main
from folio.data.batches import Dataset
from folio.data.corpora import load_corpus
from folio.data.prepare import prepare_dataset
from folio.errors import FolioError
from folio.eval.loss import estimate_loss
from folio.hf import export_hf, load_hf_gpt2
from folio.models import GPT, GPTConfig
from folio.tokenizers import CharTokenizer
from folio.train import trainer as trainer_module

transformers = pytest.importorskip(
    "transformers",
    reason="transformers is not installed (pip install -e '.[hf]'); the parity tests need it",
)

V, BLOCK, NEW = 65, 32, 20
TOL = 1e-5
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
assert len(CHARS) == V


def _hf_model(vocab: int = V, seed: int = 0, **kw) -> transformers.GPT2LMHeadModel:
    """A random GPT-2; every parameter perturbed so biases and LayerNorms are not 0 and 1."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=BLOCK,
        vocab_size=vocab,
        bos_token_id=None,
        eos_token_id=None,
        **kw,
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _folio_model(**kw) -> GPT:
    torch.manual_seed(1)
    fields = dict(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    model = GPT(GPTConfig(**{**fields, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _tokens(vocab: int = V) -> torch.Tensor:
    return torch.randint(0, vocab, (3, BLOCK), generator=torch.Generator().manual_seed(2))


@torch.no_grad()
def _folio_greedy(model: GPT, prompt: torch.Tensor, n: int) -> torch.Tensor:
    idx = prompt
    for _ in range(n):
        logits, _ = model(idx)  # (B, T, V)
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)  # (B, T + 1)
    return idx


@torch.no_grad()
def _hf_greedy(model: transformers.GPT2LMHeadModel, prompt: torch.Tensor, n: int) -> torch.Tensor:
    return model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
    )


def _assert_parity(hf: transformers.GPT2LMHeadModel, folio: GPT) -> float:
    x = _tokens(folio.config.vocab_size)
    with torch.no_grad():
        diff = (hf(x).logits - folio(x)[0]).abs().max().item()
    assert diff < TOL, diff
    prompt = x[:, :4]
    assert torch.equal(_hf_greedy(hf, prompt, NEW), _folio_greedy(folio, prompt, NEW))
    return diff


# --- import ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, transformers.GPT2LMHeadModel]:
    d = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    hf = _hf_model()
    hf.save_pretrained(d)
    return d, hf


def test_import_gives_the_same_logits_and_greedy_tokens(hf_dir) -> None:
    d, hf = hf_dir
    model, config = load_hf_gpt2(d)
    assert (config.activation, config.tie_weights, config.block_size) == ("gelu_tanh", True, BLOCK)
    assert model.lm_head.weight is model.transformer.wte.weight
    _assert_parity(hf, model)


def test_pytorch_model_bin_is_read_with_weights_only(
    hf_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, hf = hf_dir
    # The original GPT-2 layout: no "transformer." prefix, the causal-mask buffers included.
    sd = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    sd["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, BLOCK, BLOCK))
    sd["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model, _ = load_hf_gpt2(tmp_path)
    assert calls == [True]
    _assert_parity(hf, model)


def test_import_refuses_what_folio_cannot_represent(hf_dir, tmp_path: Path) -> None:
    d, _ = hf_dir
    config = json.loads((d / "config.json").read_text())
    for change, words in (
        ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
        ({"activation_function": "silu"}, "activation_function"),
        ({"model_type": "llama"}, "not GPT-2"),
    ):
        (tmp_path / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(FolioError, match=words):
            load_hf_gpt2(tmp_path)
    with pytest.raises(FolioError, match="no model.safetensors"):
        (tmp_path / "config.json").write_text(json.dumps(config))
        (tmp_path / "model.safetensors").unlink()
        load_hf_gpt2(tmp_path)


# --- export ----------------------------------------------------------------------------------


def _run_dir(root: Path, model: GPT) -> Path:
    run = root / "run"
    save_checkpoint(run, clean_state_dict(model), model.config, CharTokenizer(CHARS), {"step": 1})
    return run


def test_cli_export_loads_in_transformers_with_the_same_logits(tmp_path: Path) -> None:
    model = _folio_model(activation="gelu_tanh", tie_weights=True, bias=True)
    run, out = _run_dir(tmp_path, model), tmp_path / "hf"
    assert main(["export", "--format", "hf", "--checkpoint", str(run), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "folio_tokenizer.json",
    }
    assert json.loads((out / "folio_tokenizer.json").read_text()) == CharTokenizer(CHARS).to_dict()
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    _assert_parity(hf, model)


@pytest.mark.parametrize(
    "fields",
    [
        {"activation": "gelu_tanh", "bias": False, "tie_weights": True},
        {"activation": "relu", "tie_weights": False, "mlp_ratio": 2},
        {"activation": "gelu", "attention": "heads", "tie_weights": True},
    ],
    ids=["no-bias", "relu-untied-ratio2", "exact-gelu-heads"],
)
def test_export_is_exact_for_every_config_gpt2_can_express(fields, tmp_path: Path) -> None:
    model = _folio_model(**fields)
    hf = transformers.GPT2LMHeadModel.from_pretrained(export_hf(model, tmp_path / "hf")).eval()
    _assert_parity(hf, model)


@pytest.mark.parametrize(
    "field", ["pos_embedding", "causal", "feed_forward", "residual", "layer_norm"]
)
def test_export_refuses_configs_gpt2_cannot_express(
    field: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run, out = _run_dir(tmp_path, _folio_model(**{field: False})), tmp_path / "hf"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{field}=false" in err, err
    assert not out.exists() and not list(tmp_path.glob(".hf.tmp-*"))


def test_export_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(FolioError, match="not empty"):
        export_hf(_folio_model(activation="gelu_tanh"), tmp_path / "hf")


def test_round_trip_folio_to_hf_to_folio_is_exact(tmp_path: Path) -> None:
    model = _folio_model(activation="gelu_tanh", tie_weights=True)
    back, config = load_hf_gpt2(export_hf(model, tmp_path / "hf"))
    assert config == GPTConfig.from_dict({**model.config.to_dict(), "dropout": 0.0})
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# --- fine-tuning from imported weights ----------------------------------------------------------


@pytest.fixture(scope="module")
def char_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    words = ["ROMEO:", "JULIET:", "thou", "art", "my", "lord", "good", "night", "sweet", "love"]
    lines = (" ".join(rng.choice(words) for _ in range(10)) for _ in range(300))
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare_dataset(load_corpus([str(root / "corpus.txt")]), root / "ds")
    return root / "ds"


@pytest.fixture
def quiet_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    # The session's FOLIO_CACHE (conftest): the peak FLOP/s, 0.6 s to measure, measured once.
    monkeypatch.setattr(trainer_module, "plot_losses", lambda out_dir, rows: None)


def _train_args(data: Path, init: str, out: Path) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--preset",
        "tiny",
        "--init-from",
        init,
        "--max-iters",
        "10",
        "--out",
        str(out),
        "--quiet",
        "--threads",
        "1",
    ]


def test_cli_fine_tunes_from_imported_weights(
    char_dataset: Path, tmp_path: Path, quiet_trainer: None
) -> None:
    ds = Dataset.open(char_dataset)
    hf_path = tmp_path / "gpt2-char"
    _hf_model(vocab=ds.vocab_size).save_pretrained(hf_path)
    run = tmp_path / "run"
    assert main(_train_args(char_dataset, f"hf:{hf_path}", run)) == 0

    rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r.get("eval") and r["step"] == 0)
    tc = json.loads((run / "run.json").read_text())["train"]
    model, _ = load_hf_gpt2(hf_path)
    expected = estimate_loss(
        model,
        {"train": ds.tokens("train"), "val": ds.tokens("val")},
        tc["batch_size"],
        BLOCK,
        tc["eval_iters"],
        tc["seed"] + 1,
        torch.device("cpu"),
        contextlib.nullcontext,
    )
    # The step-0 loss is the imported model's, not a fresh initialisation's (about ln V).
    assert first["val_loss"] == pytest.approx(expected["val"], abs=TOL)
    assert first["train_loss"] == pytest.approx(expected["train"], abs=TOL)
    assert rows[-1]["step"] == 10 and (run / "latest.json").exists()


def test_init_from_needs_a_matching_vocabulary(
    char_dataset: Path, tmp_path: Path, quiet_trainer: None, capsys: pytest.CaptureFixture
) -> None:
    hf_path = tmp_path / "gpt2-big-vocab"
    _hf_model(vocab=300).save_pretrained(hf_path)
    capsys.readouterr()  # transformers' progress bars
    assert main(_train_args(char_dataset, f"hf:{hf_path}", tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vocabulary of 300" in err and "tokenizer" in err
    assert main(_train_args(char_dataset, str(hf_path), tmp_path / "run")) == 2
    assert "expected hf:DIR" in capsys.readouterr().err


# --- issue 19: inconsistent Hugging Face directories and exports --------------------------------


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        (
            "n_embd",
            64,
            "transformer.wte.weight is [V, 32] in the weights but [V, 64] by the config",
        ),
        ("n_positions", 64, "transformer.wpe.weight is [32, 32] in the weights but [64, 32]"),
    ],
)
def test_init_from_a_config_that_disagrees_with_its_weights_is_one_line(
    char_dataset: Path,
    tmp_path: Path,
    quiet_trainer: None,
    capsys: pytest.CaptureFixture,
    field: str,
    value: int,
    words: str,
) -> None:
    # issue 19 item 10: a RuntimeError listing every mismatched tensor.
    vocab = Dataset.open(char_dataset).vocab_size
    hf_path = tmp_path / "gpt2-char"
    _hf_model(vocab=vocab).save_pretrained(hf_path)
    config = json.loads((hf_path / "config.json").read_text())
    (hf_path / "config.json").write_text(json.dumps({**config, field: value}))
    capsys.readouterr()
    assert main(_train_args(char_dataset, f"hf:{hf_path}", tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{hf_path}: weights do not match the config" in err, err
    assert words.replace("V", str(vocab)) in err, err


def _export_char(root: Path, chars: list[str]) -> Path:
    model = _folio_model(vocab_size=len(chars), activation="gelu_tanh", tie_weights=True)
    return export_hf(model, root / "export", CharTokenizer(chars))


def test_init_from_a_char_export_needs_the_datasets_characters(
    char_dataset: Path, tmp_path: Path, quiet_trainer: None, capsys: pytest.CaptureFixture
) -> None:
    # issue 19 item 10: an export of as many but other characters was accepted silently.
    chars = list(Dataset.open(char_dataset).tokenizer.chars)
    other = chars[:-1] + ["\u00e9"]  # the same size, one character different
    export = _export_char(tmp_path / "other", other)
    assert main(_train_args(char_dataset, f"hf:{export}", tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (
        f"{export / 'folio_tokenizer.json'}: this model was trained with another tokenizer" in err
    )
    assert f"token {len(chars) - 1} is 'é' where the dataset's is {chars[-1]!r}" in err, err
    assert not (tmp_path / "run").exists()
    same = _export_char(tmp_path / "same", chars)
    assert main(_train_args(char_dataset, f"hf:{same}", tmp_path / "run")) == 0


def test_exported_bpe_tokenizer_encodes_a_literal_endoftext_as_folio_does(tmp_path: Path) -> None:
    # issue 19 (smaller): the exported tokenizer.json matched "<|endoftext|>" in text as the
    # special token, while Folio encodes it as bytes; eos_token_id was null.
    from tokenizers import Tokenizer

    from folio.tokenizers import BPETokenizer
    from folio.tokenizers.bpe import EOT

    docs = ["the king of my lord <|endoftext|> art good, sweet love.\n" * 30, "Ends here.\n"]
    tok = BPETokenizer.train(docs, vocab_size=300)
    model = _folio_model(vocab_size=tok.vocab_size, activation="gelu_tanh")
    run, out = tmp_path / "run", tmp_path / "hf"
    save_checkpoint(run, clean_state_dict(model), model.config, tok, {"step": 1})
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0

    text = f"my lord{EOT}art good {EOT}\n<|endoftext|x> sweet"
    ids = tok.encode(text)
    assert tok.eot_id not in ids and tok.decode(ids) == text
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(out)
    assert raw.encode(text).ids == ids
    assert fast.encode(text) == ids
    assert auto.encode(text) == ids
    assert auto.decode(ids) == text
    assert raw.decode([tok.eot_id], skip_special_tokens=False) == EOT
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == tok.eot_id is not None
    assert auto.eos_token_id == tok.eot_id
    hf = transformers.GPT2LMHeadModel.from_pretrained(out)
    assert hf.generation_config.eos_token_id == tok.eot_id
