"""Model configurations: what a model is, separate from how it is trained.

Each field is validated in `__post_init__` with a message a user understands,
so a bad preset or `--set` override fails before any tensor is allocated.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from typing import Any

from folio.errors import FolioError

ATTENTION_FORMS = ("fused", "heads")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
INITS = ("gpt2", "pytorch")
RESIDUAL_PRECISIONS = ("float32", "autocast")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise FolioError(f"model config: {name} must be a positive integer, got {value!r}")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise FolioError(f"model config: {name} must be true or false, got {value!r}")


def _vocab_size(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FolioError(
            f"model config: vocab_size must be a positive integer (or 0: the dataset's), got {value!r}"
        )


def unknown_key_error(what: str, key: str, known: list[str]) -> FolioError:
    """One line naming an unknown setting and the nearest valid one."""
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(sorted(known))}"
    return FolioError(f"{what}: unknown setting {key!r} ({hint})")


def _from_dict(cls: type, d: dict[str, Any], what: str) -> Any:
    known = [f.name for f in fields(cls)]
    for key in d:
        if key not in known:
            raise unknown_key_error(what, key, known)
    return cls(**d)


@dataclass
class BigramConfig:
    """The video's baseline: each token's logits for the next token are a table lookup."""

    vocab_size: int = 0
    """Number of distinct tokens (0: the dataset's, filled in when the run starts)."""
    block_size: int = 8
    """Context length used for batching; the model itself looks at one token only."""

    model_type = "bigram"

    def __post_init__(self) -> None:
        _vocab_size(self.vocab_size)
        _positive_int("block_size", self.block_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BigramConfig:
        return _from_dict(cls, d, "bigram config")


@dataclass
class GPTConfig:
    """A decoder-only Transformer. The defaults are the video's final model without dropout."""

    vocab_size: int = 0
    """Number of distinct tokens (65 for tinyshakespeare's characters; 0: the dataset's,
    filled in when the run starts)."""
    block_size: int = 256
    """Maximum context length; learned position embeddings exist for this many positions."""
    n_layer: int = 6
    """Number of transformer blocks."""
    n_head: int = 6
    """Attention heads per block; n_embd must be divisible by it."""
    n_embd: int = 384
    """Width of the residual stream (C)."""
    dropout: float = 0.0
    """Dropout probability on attention weights and residual branches (training only)."""
    fast_dropout: bool = True
    """On a CPU, draw dropout masks from 16-bit random lanes (p rounded to a multiple of
    1/65536) and run the fused attention's dropout one chunk of queries at a time, skipping
    the masked future (folio/models/dropout.py). False: PyTorch's bernoulli masks and its
    math attention path. A GPU always uses PyTorch's kernels."""
    fused_linear: bool = True
    """On a CPU in training, add the Linear layers' biases, and the feed-forward's ReLU,
    inside oneDNN's matmul instead of in separate passes over the output
    (folio/models/linear.py); the same sums. False: PyTorch's `F.linear` and `F.relu`."""
    residual_precision: str = "float32"
    """Under autocast (bf16 training), the residual stream's dtype. 'float32': the stream
    stays fp32 and each branch's bf16 output is cast up to be added to it (PyTorch's
    autocast default). 'autocast': the stream is cast once, after the embeddings, to
    autocast's dtype, so every add, LayerNorm and branch input is bf16, as in Megatron-LM's
    default; this halves the stream's memory traffic and removes its casts, at the cost of
    adding each branch to the stream in bf16. Parameters and optimizer state stay fp32, and
    without autocast the two are the same model."""
    bias: bool = True
    """Biases in Linear layers and LayerNorms (GPT-2: true)."""
    attention: str = "fused"
    """'fused' (one qkv projection, fused kernel) or 'heads' (the teaching list of Heads)."""
    activation: str = "relu"
    """Feed-forward non-linearity: 'relu' (the video), 'gelu' (exact) or 'gelu_tanh' (GPT-2)."""
    mlp_ratio: int = 4
    """Feed-forward hidden width as a multiple of n_embd (the paper and the video use 4)."""
    tie_weights: bool = False
    """Share the token embedding matrix with the language-model head (GPT-2: true)."""
    pos_embedding: bool = True
    """Learned absolute position embeddings. Without them attention works on sets."""
    causal: bool = True
    """Decoder (true: a token sees only its past) or encoder (false: it sees everything)."""
    feed_forward: bool = True
    """Include the feed-forward sub-layer (the video's ladder turns it on at one rung)."""
    residual: bool = True
    """Residual connections around attention and feed-forward (the ladder turns them on)."""
    layer_norm: bool = True
    """Pre-LayerNorm in each block and a final LayerNorm (the ladder turns them on)."""
    init: str = "gpt2"
    """'gpt2' (normal std 0.02, residual projections scaled by 1/sqrt(2 n_layer)) or
    'pytorch' (PyTorch's default initialisation, as in the video's small stages)."""

    model_type = "gpt"

    def __post_init__(self) -> None:
        _vocab_size(self.vocab_size)
        for name in ("block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            _positive_int(name, getattr(self, name))
        for name in (
            "bias",
            "fast_dropout",
            "fused_linear",
            "tie_weights",
            "pos_embedding",
            "causal",
            "feed_forward",
            "residual",
            "layer_norm",
        ):
            _bool(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise FolioError(
                f"model config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, int | float)
            or not 0.0 <= self.dropout < 1.0
        ):
            raise FolioError(
                f"model config: dropout must be a number in [0, 1), got {self.dropout!r}"
            )
        self.dropout = float(self.dropout)
        if self.attention not in ATTENTION_FORMS:
            raise FolioError(
                f"model config: attention must be one of {ATTENTION_FORMS}, got {self.attention!r}"
            )
        if self.residual_precision not in RESIDUAL_PRECISIONS:
            raise FolioError(
                f"model config: residual_precision must be one of {RESIDUAL_PRECISIONS}, "
                f"got {self.residual_precision!r}"
            )
        if self.init not in INITS:
            raise FolioError(f"model config: init must be one of {INITS}, got {self.init!r}")
        if self.activation not in ACTIVATIONS:
            raise FolioError(
                f"model config: activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        return _from_dict(cls, d, "model config")


@dataclass
class RewardModelConfig(GPTConfig):
    """A GPT with a scalar head that scores replies (folio/models/reward.py); the GPT's fields."""

    model_type = "reward"


@dataclass
class PolicyValueConfig(GPTConfig):
    """PPO's model: a GPT (the policy) with a value head on the same transformer; the GPT's
    fields. It samples and is evaluated like any GPT."""

    model_type = "gpt-value"


MODEL_CONFIGS: dict[str, type] = {
    "bigram": BigramConfig,
    "gpt": GPTConfig,
    "reward": RewardModelConfig,
    "gpt-value": PolicyValueConfig,
}


def model_config_from_dict(model_type: str, d: dict[str, Any]) -> BigramConfig | GPTConfig:
    """Build the config of a model type from its JSON/TOML form."""
    if not isinstance(model_type, str) or model_type not in MODEL_CONFIGS:
        raise FolioError(f"unknown model type {model_type!r} (known: {', '.join(MODEL_CONFIGS)})")
    return MODEL_CONFIGS[model_type].from_dict(d)


ModelConfig = BigramConfig | GPTConfig
