"""Hugging Face interop: GPT-2 weights in and out, with identical logits.

Folio's GPT uses GPT-2's parameter names, so the mapping is a short table. The
one real difference is the layer type: GPT-2's `Conv1D` stores its weight as
(in, out) where `nn.Linear` stores (out, in), so the four projection matrices
(`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`) are transposed.

Reading a Hugging Face directory needs no `transformers`: config.json is
JSON and the weights are safetensors (or, for older checkpoints,
pytorch_model.bin, read with `torch.load(weights_only=True)`, which refuses to
run pickled code). Writing produces a directory `GPT2LMHeadModel.from_pretrained`
loads. Folio configs GPT-2 cannot express (no position embeddings, an encoder,
a block without feed-forward, residuals or LayerNorms) are refused with a
FolioError; configs it can express only with zeros (bias=False) are exported
exactly, with zero biases.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from folio.checkpoint import check_weight_shapes, load_checkpoint, save_safetensors
from folio.errors import FolioError
from folio.fsutil import atomic_write_json, fsync_dir, read_json, scratch_dir
from folio.memory import check_loading_memory
from folio.models import GPT, GPTConfig, parameter_shapes
from folio.models.attention import MultiHeadAttention
from folio.tokenizers import Tokenizer, tokenizer_from_dict
from folio.tokenizers.bpe import EOT

# Folio activation -> GPT-2 `activation_function`, and back. GPT-2's own is "gelu_new",
# the tanh approximation; "gelu_pytorch_tanh" is the same function in one kernel.
_TO_HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_FROM_HF_ACTIVATION = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}
# GPT-2 Conv1D layers: weights stored (in, out), transposed from nn.Linear's (out, in).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some GPT-2 checkpoints carry: the causal mask, not weights.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_TORCH_LN_EPS = 1e-5  # nn.LayerNorm's default, which Folio uses and GPT-2 was trained with
HF_PREFIX = "hf:"


# --- configs ---------------------------------------------------------------------------------


def folio_config_from_hf(hf: dict[str, Any], where: str = "config.json") -> GPTConfig:
    """The GPTConfig of a Hugging Face GPT-2 config.json, or a FolioError naming what differs."""
    if not isinstance(hf, dict):
        raise FolioError(f"{where}: not a JSON object")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise FolioError(
            f"{where}: model_type {hf.get('model_type')!r} is not GPT-2; only GPT-2 models import"
        )

    def get(name: str, default: Any = None, *aliases: str) -> Any:
        for key in (name, *aliases):
            if key in hf:
                return hf[key]
        return default

    act = get("activation_function", "gelu_new")
    if act not in _FROM_HF_ACTIVATION:
        raise FolioError(
            f"{where}: activation_function {act!r} has no Folio equivalent "
            f"(supported: {', '.join(_FROM_HF_ACTIVATION)})"
        )
    eps = get("layer_norm_epsilon", _TORCH_LN_EPS)
    if not isinstance(eps, int | float) or not math.isclose(eps, _TORCH_LN_EPS, rel_tol=1e-9):
        raise FolioError(
            f"{where}: layer_norm_epsilon {eps!r} differs from Folio's {_TORCH_LN_EPS} "
            "and would change the logits"
        )
    for flag, expected in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if get(flag, expected) != expected:
            raise FolioError(f"{where}: {flag}={get(flag)!r} is not supported by Folio's GPT")
    n_embd = get("n_embd", 768, "hidden_size")
    n_inner = get("n_inner")
    if n_inner is None:
        mlp_ratio = 4
    elif isinstance(n_inner, int) and isinstance(n_embd, int) and n_inner % n_embd == 0:
        mlp_ratio = n_inner // n_embd
    else:
        raise FolioError(
            f"{where}: n_inner {n_inner!r} is not a multiple of n_embd {n_embd!r}; "
            "Folio's feed-forward width is mlp_ratio * n_embd"
        )
    try:
        return GPTConfig(
            vocab_size=get("vocab_size", 50257),
            block_size=get("n_positions", 1024, "n_ctx", "max_position_embeddings"),
            n_layer=get("n_layer", 12, "num_hidden_layers"),
            n_head=get("n_head", 12, "num_attention_heads"),
            n_embd=n_embd,
            dropout=get("resid_pdrop", 0.1),
            bias=True,
            attention="fused",
            activation=_FROM_HF_ACTIVATION[act],
            mlp_ratio=mlp_ratio,
            tie_weights=bool(get("tie_word_embeddings", True)),
            init="gpt2",
        )
    except FolioError as e:
        raise FolioError(f"{where}: {e}") from None


def hf_config_from_folio(config: GPTConfig, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """A GPT-2 config.json for a Folio GPTConfig, or a FolioError saying what GPT-2 lacks.

    bos_token_id and eos_token_id are the tokenizer's `<|endoftext|>` (None for
    a tokenizer without it); without a tokenizer, a vocabulary of 50,257 is
    taken to be GPT-2's, whose `<|endoftext|>` is 50256.
    """
    unsupported = [
        (not config.pos_embedding, "pos_embedding=false (GPT-2 always adds position embeddings)"),
        (not config.causal, "causal=false (GPT-2 is a causal decoder)"),
        (not config.feed_forward, "feed_forward=false (every GPT-2 block has an MLP)"),
        (not config.residual, "residual=false (GPT-2 blocks are residual)"),
        (not config.layer_norm, "layer_norm=false (GPT-2 blocks have LayerNorms)"),
        (config.activation not in _TO_HF_ACTIVATION, f"activation {config.activation!r}"),
    ]
    reasons = [why for bad, why in unsupported if bad]
    if reasons:
        raise FolioError(f"cannot export to GPT-2: {'; '.join(reasons)}")
    if tokenizer is not None:
        special = getattr(tokenizer, "eot_id", None)
    else:  # A GPT-2 vocabulary implies GPT-2's <|endoftext|>; another one has no such token.
        special = 50256 if config.vocab_size == 50257 else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.mlp_ratio * config.n_embd,
        "activation_function": _TO_HF_ACTIVATION[config.activation],
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": _TORCH_LN_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": special,
        "eos_token_id": special,
        "use_cache": True,
    }


# --- weights ---------------------------------------------------------------------------------


def _read_hf_weights(d: Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face directory: single or sharded safetensors, or a .bin."""
    index = d / "model.safetensors.index.json"
    try:
        if (d / "model.safetensors").is_file():
            return load_file(str(d / "model.safetensors"))
        if index.is_file():
            shards = sorted(set(read_json(index, "safetensors index")["weight_map"].values()))
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(load_file(str(d / shard)))
            return out
        if (d / "pytorch_model.bin").is_file():
            sd = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
            if not isinstance(sd, dict):
                raise FolioError(f"{d / 'pytorch_model.bin'}: not a state dict")
            return sd
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        msg = str(e).splitlines()[0][:160] if str(e) else e.__class__.__name__
        raise FolioError(f"{d}: cannot read the weights ({msg})") from None
    raise FolioError(
        f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def folio_state_dict_from_hf(
    hf_sd: dict[str, torch.Tensor], config: GPTConfig, where: str = "weights"
) -> dict[str, torch.Tensor]:
    """A Hugging Face GPT-2 state dict renamed and transposed into Folio's layout (fp32)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in hf_sd.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        if key == "lm_head.weight" and config.tie_weights:
            continue  # tied to wte: the same matrix
        # The original GPT-2 checkpoints name the GPT2Model's tensors without the prefix.
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if name.endswith(_CONV1D):
            t = t.t()  # (in, out) -> (out, in)
        out[name] = t.to(torch.float32).contiguous()
    expected = _expected_keys(config)
    missing, unexpected = sorted(expected - set(out)), sorted(set(out) - expected)
    if missing or unexpected:
        raise FolioError(
            f"{where}: weights do not match a GPT-2 of this config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return out


def _expected_keys(config: GPTConfig) -> set[str]:
    keys = {"transformer.wte.weight", "transformer.wpe.weight"}
    keys |= {f"transformer.ln_f.{p}" for p in ("weight", "bias")}
    for i in range(config.n_layer):
        for mod in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            keys |= {f"transformer.h.{i}.{mod}.{p}" for p in ("weight", "bias")}
    if not config.tie_weights:
        keys.add("lm_head.weight")
    return keys


def hf_state_dict_from_folio(model: GPT) -> dict[str, torch.Tensor]:
    """Folio GPT weights in GPT2LMHeadModel's layout: Conv1D transposes, zero biases if none."""
    config = model.config
    hf_hidden = config.mlp_ratio * config.n_embd
    out: dict[str, torch.Tensor] = {}
    t = model.transformer

    def put(name: str, tensor: torch.Tensor | None, zeros: int) -> None:
        # bias=False is a bias fixed at zero, which GPT-2 expresses exactly.
        value = tensor if tensor is not None else torch.zeros(zeros)
        out[name] = value.detach().to("cpu", torch.float32).contiguous()

    C = config.n_embd
    put("transformer.wte.weight", t.wte.weight, 0)
    put("transformer.wpe.weight", t.wpe.weight, 0)
    for i, block in enumerate(t.h):
        p = f"transformer.h.{i}."
        attn = block.attn
        if isinstance(attn, MultiHeadAttention):  # the teaching list of heads -> fused qkv
            w = [
                torch.cat([getattr(h, n).weight for h in attn.heads])
                for n in ("query", "key", "value")
            ]
            w_attn = torch.cat(w)  # 3 x (C, C) -> (3C, C)
            b_attn = (
                torch.cat(
                    [getattr(h, n).bias for n in ("query", "key", "value") for h in attn.heads]
                )
                if config.bias
                else None
            )
        else:
            w_attn, b_attn = attn.c_attn.weight, attn.c_attn.bias
        for ln in ("ln_1", "ln_2"):
            put(p + f"{ln}.weight", getattr(block, ln).weight, 0)
            put(p + f"{ln}.bias", getattr(block, ln).bias, C)
        put(p + "attn.c_attn.weight", w_attn.t(), 0)  # (3C, C) -> (C, 3C)
        put(p + "attn.c_attn.bias", b_attn, 3 * C)
        put(p + "attn.c_proj.weight", attn.c_proj.weight.t(), 0)
        put(p + "attn.c_proj.bias", attn.c_proj.bias, C)
        put(p + "mlp.c_fc.weight", block.mlp.c_fc.weight.t(), 0)  # (4C, C) -> (C, 4C)
        put(p + "mlp.c_fc.bias", block.mlp.c_fc.bias, hf_hidden)
        put(p + "mlp.c_proj.weight", block.mlp.c_proj.weight.t(), 0)
        put(p + "mlp.c_proj.bias", block.mlp.c_proj.bias, C)
    put("transformer.ln_f.weight", t.ln_f.weight, 0)
    put("transformer.ln_f.bias", t.ln_f.bias, C)
    if not config.tie_weights:
        put("lm_head.weight", model.lm_head.weight, 0)
    return out


# --- directories -----------------------------------------------------------------------------


def load_hf_gpt2(path: str | Path) -> tuple[GPT, GPTConfig]:
    """A local Hugging Face GPT-2 directory as a Folio GPT (eval mode, fp32) and its config."""
    d = Path(path)
    if not d.is_dir():
        raise FolioError(f"{d}: not a directory (expected a Hugging Face GPT-2 model directory)")
    config = folio_config_from_hf(
        read_json(d / "config.json", "Hugging Face config"), str(d / "config.json")
    )
    weights = folio_state_dict_from_hf(_read_hf_weights(d), config, str(d))
    # config.json against the weights, on the meta device, before building the model.
    check_weight_shapes(
        parameter_shapes(config), {k: tuple(t.shape) for k, t in weights.items()}, d
    )
    check_loading_memory(
        config,
        sum(t.numel() * t.element_size() for t in weights.values()),
        torch.device("cpu"),
        where=d,
    )
    for name, tensor in weights.items():
        if not torch.isfinite(tensor).all():
            raise FolioError(f"{d}: tensor {name} holds NaN or Inf values")
    model = GPT(config)
    model.load_state_dict(weights, strict=False)  # lm_head.weight is wte's when tied
    return model.eval(), config


def hf_tokenizer_json(tokenizer: Tokenizer) -> dict[str, Any]:
    """A BPE tokenizer as Hugging Face's tokenizer.json, encoding text exactly as Folio does.

    Folio never reads `<|endoftext|>` in text as the special token: a literal
    "<|endoftext|>" is ordinary bytes, and only Folio inserts the token, between
    documents. A tokenizer.json lists its special tokens in `added_tokens`,
    which Hugging Face matches in text, and its flag to stop that is not saved.
    So the special tokens move into the BPE vocabulary under their own ids:
    decoding them is unchanged, and the pre-tokenizer splits their text before
    BPE can merge it, so text never yields them.
    """
    spec = copy.deepcopy(tokenizer.to_dict()["tokenizer"])
    vocab = spec["model"]["vocab"]
    for added in spec.get("added_tokens") or []:
        vocab.setdefault(added["content"], added["id"])
    spec["added_tokens"] = []
    return spec


def hf_tokenizer_config(tokenizer: Tokenizer, block_size: int) -> dict[str, Any]:
    """tokenizer_config.json: AutoTokenizer loads tokenizer.json as it is.

    split_special_tokens keeps a literal `<|endoftext|>` as text even though
    it is declared the eos and bos token (transformers would otherwise match it).
    """
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": block_size,
    }
    if getattr(tokenizer, "eot_id", None) is not None:
        config.update(eos_token=EOT, bos_token=EOT)
    return config


def export_hf(model: GPT, out_dir: str | Path, tokenizer: Tokenizer | None = None) -> Path:
    """Write `model` as a directory GPT2LMHeadModel.from_pretrained loads.

    Writes config.json and model.safetensors; with a tokenizer, also Folio's own
    tokenizer JSON as folio_tokenizer.json (a character tokenizer has no Hugging
    Face equivalent: encode and decode with folio.tokenizers.tokenizer_from_dict).
    A BPE tokenizer is also written as Hugging Face's tokenizer.json and
    tokenizer_config.json (`AutoTokenizer.from_pretrained(out_dir)`, or
    `PreTrainedTokenizerFast(tokenizer_file=...)`, loads it), which encode any
    text, a literal `<|endoftext|>` included, to Folio's ids (`hf_tokenizer_json`);
    config.json's eos_token_id and bos_token_id are `<|endoftext|>`'s id.
    The directory is built under a temporary name and renamed into place.
    """
    if not isinstance(model, GPT):
        raise FolioError("only GPT models export to GPT-2 (the bigram model has no equivalent)")
    if model.config.model_type == "reward":
        raise FolioError(
            "a reward model has no GPT-2 equivalent (GPT2LMHeadModel has no scalar head)"
        )
    hf_config = hf_config_from_folio(model.config, tokenizer)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FolioError(f"{out}: already exists and is not empty; choose another --out")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    with scratch_dir(tmp, f"cannot write {out}: {{why}}", catch=(OSError, SafetensorError)):
        atomic_write_json(tmp / "config.json", hf_config)
        save_safetensors(
            hf_state_dict_from_folio(model), tmp / "model.safetensors", {"format": "pt"}
        )
        if tokenizer is not None:
            atomic_write_json(tmp / "folio_tokenizer.json", tokenizer.to_dict())
            if tokenizer.kind == "bpe":  # BPE has a Hugging Face form
                atomic_write_json(tmp / "tokenizer.json", hf_tokenizer_json(tokenizer))
                atomic_write_json(
                    tmp / "tokenizer_config.json",
                    hf_tokenizer_config(tokenizer, model.config.block_size),
                )
        fsync_dir(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
        fsync_dir(out.parent)
    return out


def export_checkpoint_hf(
    checkpoint: str | Path, out_dir: str | Path, which: str = "latest"
) -> Path:
    """`folio export --format hf`: a run directory's (or checkpoint's) model as a GPT-2 directory."""
    ck = load_checkpoint(checkpoint, which)
    return export_hf(ck.model, out_dir, ck.tokenizer)


def pretrained_for_training(
    init_from: str, model_fields: dict[str, Any], vocab_size: int, data_dir: str | Path
) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """The config and weights `folio train --init-from hf:DIR` starts from.

    The model's shape comes from DIR; of the run's model fields only dropout
    applies. The vocabulary must be the dataset's: its size always, and the
    whole tokenizer where DIR holds Folio's (`check_exported_tokenizer`).
    """
    if not init_from.startswith(HF_PREFIX):
        raise FolioError(
            f"--init-from {init_from!r}: expected hf:DIR, a local Hugging Face GPT-2 directory"
        )
    d = Path(init_from[len(HF_PREFIX) :])
    check_exported_tokenizer(d, data_dir)
    model, config = load_hf_gpt2(d)
    if config.vocab_size != vocab_size:
        raise FolioError(
            f"{d} has a vocabulary of {config.vocab_size} tokens but the dataset {data_dir} has "
            f"{vocab_size}; a GPT-2 model needs a dataset tokenized with its own tokenizer "
            "(folio prepare --tokenizer gpt2 --tokenizer-dir DIR)"
        )
    if "dropout" in model_fields:
        config = GPTConfig.from_dict({**config.to_dict(), "dropout": model_fields["dropout"]})
    return config, model.state_dict()


def _tokenizer_difference(ours: Tokenizer, theirs: Tokenizer) -> str:
    """A few words on how two tokenizers differ, for an error message."""
    if ours.kind != theirs.kind:
        return f"a {ours.kind} tokenizer, the dataset's is {theirs.kind}"
    if ours.vocab_size != theirs.vocab_size:
        return f"{ours.vocab_size} tokens, the dataset's {theirs.vocab_size}"
    if ours.kind == "char":
        i = next(i for i, (a, b) in enumerate(zip(ours.chars, theirs.chars, strict=True)) if a != b)
        return (
            f"the same number of characters, but token {i} is {ours.chars[i]!r} "
            f"where the dataset's is {theirs.chars[i]!r}"
        )
    return "the same number of tokens, but other tokens or merges"


def check_exported_tokenizer(hf_dir: str | Path, data_dir: str | Path) -> None:
    """Refuse a Folio export (folio_tokenizer.json in hf_dir) whose tokenizer is not the dataset's.

    Equal vocabulary sizes are not enough: 65 other characters (or other BPE
    merges) give each id another meaning, and training would silently start
    from a model that reads the data wrongly. A directory without
    folio_tokenizer.json (GPT-2's own, say) is left to the size check.
    """
    from folio.data.batches import Dataset  # the data layer is needed only here

    f = Path(hf_dir) / "folio_tokenizer.json"
    if not f.is_file():
        return
    try:
        ours = tokenizer_from_dict(read_json(f, "tokenizer"))
    except FolioError as e:
        msg = str(e)
        raise FolioError(msg if str(f) in msg else f"{f}: {msg}") from None
    theirs = Dataset.open(data_dir).tokenizer
    if ours.to_dict() != theirs.to_dict():
        raise FolioError(
            f"{f}: this model was trained with another tokenizer than the dataset {data_dir} "
            f"uses ({_tokenizer_difference(ours, theirs)}); prepare the dataset with the "
            "model's tokenizer"
        )
