"""How much memory a training run needs, checked before any tensor is allocated.

A config that cannot fit (say n_layer 200 and n_embd 8192 on a laptop) would
otherwise allocate until the operating system kills the process, or swap for
an hour first. The trainer asks `check_training_memory` before building the
model and refuses with one line giving the estimate and what is available,
unless forced.

The estimate, for fp32 training with AdamW (bytes):

- model states: 16 per parameter: the weights, their gradients and AdamW's
  two moments, 4 bytes each;
- activations kept for the backward pass, per micro-batch: Korthikanti et al.
  2022, "Reducing Activation Recomputation in Large Transformer Models",
  eq. 2: s*b*h*(34 + 5*a*s/h) bytes per layer for 16-bit activations (s
  block size, b batch, h n_embd, a heads), doubled for fp32. The a*s^2 part
  is the attention matrix, which a fused kernel may never store; keeping it
  makes the estimate an upper bound, which is the safe side for a guard;
- logits: b*s*V floats, three times (the logits, the softmax inside the
  cross-entropy and their gradient);
- eval: estimate_loss runs between steps under no_grad, when the training
  activations are already freed; its peak (one layer's activations and the
  logits of one batch) is below the training peak, so it is reported but not
  added.

Mixed precision and a smaller real attention footprint only lower the real
figure.

Loading a checkpoint (`check_loading_memory`) needs the file's tensors, read
into memory, and the fp32 model they are copied into, both at once on the
CPU; on an accelerator the model needs its 4 bytes per parameter there too. Available memory is /proc/meminfo's MemAvailable on Linux (else
free physical pages from sysconf), and torch.cuda.mem_get_info on CUDA; where
none of these answers, the check is skipped.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from folio.errors import FolioError
from folio.models.config import BigramConfig, GPTConfig, RewardModelConfig

BYTES_FP32 = 4
STATE_BYTES_PER_PARAM = 16  # weights + gradients + AdamW exp_avg + exp_avg_sq, fp32 each


def count_parameters(config: BigramConfig | GPTConfig) -> int:
    """The parameter count of the model a config describes, without building it."""
    if isinstance(config, BigramConfig):
        return config.vocab_size * config.vocab_size
    c, v = config.n_embd, config.vocab_size
    bias = 1 if config.bias else 0
    ln = (c + bias * c) if config.layer_norm else 0
    attn = 3 * c * c + 3 * c * bias + c * c + c * bias  # c_attn (q, k, v) and c_proj
    hidden = config.mlp_ratio * c
    mlp = (c * hidden + hidden * bias + hidden * c + c * bias) if config.feed_forward else 0
    per_layer = ln + attn + (ln + mlp if config.feed_forward else 0)
    embeddings = v * c + (config.block_size * c if config.pos_embedding else 0)
    head = 0 if config.tie_weights else c * v
    score_head = c + 1 if isinstance(config, RewardModelConfig) else 0  # a reward model's scalar
    return embeddings + config.n_layer * per_layer + ln + head + score_head


def estimate_training_memory(
    model_config: BigramConfig | GPTConfig, train_config
) -> dict[str, Any]:
    """Bytes a training run needs at its peak, by part (see the module docstring)."""
    n_params = count_parameters(model_config)
    b, s, v = train_config.batch_size, model_config.block_size, model_config.vocab_size
    logits = 3 * b * s * v * BYTES_FP32
    if isinstance(model_config, GPTConfig):
        h, a, n_layer = model_config.n_embd, model_config.n_head, model_config.n_layer
        # Korthikanti et al. 2022, eq. 2, in fp32: 2 * s*b*h*(34 + 5*a*s/h) = s*b*(68h + 10as).
        per_layer = s * b * (68 * h + 10 * a * s)
        activations = n_layer * per_layer
        eval_peak = per_layer + logits // 3
    else:
        activations, eval_peak = 0, logits // 3
    states = STATE_BYTES_PER_PARAM * n_params
    return {
        "n_params": n_params,
        "states_bytes": states,
        "activations_bytes": activations,
        "logits_bytes": logits,
        "eval_bytes": eval_peak,
        "total_bytes": states + activations + logits,
    }


def available_memory(device: torch.device) -> int | None:
    """Free bytes on `device`, or None where the platform does not say."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None  # mps shares system memory but reports no budget we can trust
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: int) -> str:
    n = min(n, 10**300)  # a fuzzed config can need more bytes than a float holds
    return f"{n / 2**30:,.1f} GiB" if n < 10**15 * 2**30 else f"{n / 2**30:.2e} GiB"


def check_training_memory(
    model_config: BigramConfig | GPTConfig,
    train_config,
    device: torch.device,
    *,
    force: bool = False,
    available: int | None = None,
) -> dict[str, Any]:
    """Refuse (FolioError) a run whose estimate exceeds the memory available, unless forced."""
    est = estimate_training_memory(model_config, train_config)
    avail = available if available is not None else available_memory(device)
    est["available_bytes"] = avail
    if force or avail is None or est["total_bytes"] <= avail:
        return est
    raise FolioError(
        f"this run needs about {_gib(est['total_bytes'])} "
        f"({_gib(est['states_bytes'])} weights, gradients and AdamW state for "
        f"{est['n_params']:,} parameters; {_gib(est['activations_bytes'] + est['logits_bytes'])} "
        f"activations at batch_size {train_config.batch_size}) but only {_gib(avail)} is "
        f"available on {device.type}; shrink the model, batch_size or block_size, "
        "or pass --force to try anyway"
    )


def check_loading_memory(
    model_config: BigramConfig | GPTConfig,
    file_bytes: int,
    device: torch.device,
    *,
    where: object = "checkpoint",
    available: dict[str, int | None] | None = None,
) -> None:
    """Refuse (FolioError) to load a model whose weights would not fit in memory.

    `file_bytes` is the size of the tensors in the weights file; `available`
    (by device type) replaces the measured free memory, for tests.
    """
    n_params = count_parameters(model_config)
    model_bytes = BYTES_FP32 * n_params
    needs = {"cpu": file_bytes + model_bytes}
    if device.type != "cpu":
        needs[device.type] = model_bytes
    for kind, need in needs.items():
        if available is not None and kind in available:
            avail = available[kind]
        else:
            avail = available_memory(device if kind == device.type else torch.device("cpu"))
        if avail is not None and need > avail:
            raise FolioError(
                f"{where}: loading this model of {n_params:,} parameters needs about "
                f"{_gib(need)} on {kind} but only {_gib(avail)} is available"
            )


# ------------------------------------------------------------------ sampling

TOKEN_ID_BYTES = 8  # the sampler's token buffer is int64
LOGITS_COPIES = 8  # (B, V) tensors alive while choosing a token: logits, fp32 copy, scaled,
# filtered, probabilities, top-p's sorted values, its int64 order (two) and the scatter
HOST_BYTES_PER_TOKEN = 72  # text kept per generated token and sample: a str piece in a list
# (about 50 bytes of object and an 8-byte pointer) plus its characters in the running text


def estimate_sampling_memory(
    model_config: BigramConfig | GPTConfig,
    num_samples: int,
    context_tokens: int,
    *,
    cache: bool,
    cache_bytes_per_value: int = BYTES_FP32,
) -> dict[str, Any]:
    """Bytes a `Sampler` call needs beyond the loaded weights, by part, for `num_samples`
    sequences of `context_tokens` tokens (prompt plus max_new_tokens).

    - the token buffer: num_samples x context_tokens int64, allocated whole up front;
    - the KV cache (fused-attention GPT): 2 x n_layer x B x block_size x n_embd values.
      It holds block_size positions, not the whole context: when the context
      outgrows it the window slides and the cache is refilled (see the sampler);
    - one forward pass over a full window under no_grad, where a layer's
      activations are freed before the next: the residual, q/k/v, the MLP's
      hidden layer and the attention scores (B x n_head x T x T, kept as for
      training: an upper bound where a fused kernel never stores them);
    - the logits of the last position and the tensors top-k/top-p make of them;
    - the text kept on the host: about HOST_BYTES_PER_TOKEN per token and sample.
    """
    B, n = num_samples, context_tokens
    v = model_config.vocab_size
    tokens = B * n * TOKEN_ID_BYTES
    logits = B * v * BYTES_FP32 * LOGITS_COPIES
    if isinstance(model_config, GPTConfig):
        c, t, h = model_config.n_embd, model_config.block_size, model_config.n_head
        t = min(t, n)
        kv = 2 * model_config.n_layer * B * model_config.block_size * c * cache_bytes_per_value
        kv = kv if cache else 0
        forward = B * t * ((4 + model_config.mlp_ratio) * c + h * t) * BYTES_FP32
    else:  # the bigram model reads one token: its forward is the logits
        kv, forward = 0, 0
    text = B * n * HOST_BYTES_PER_TOKEN
    device = tokens + kv + forward + logits
    return {
        "tokens_bytes": tokens,
        "kv_cache_bytes": kv,
        "forward_bytes": forward,
        "logits_bytes": logits,
        "device_bytes": device,
        "host_bytes": text,
    }


def check_sampling_memory(
    model_config: BigramConfig | GPTConfig,
    num_samples: int,
    context_tokens: int,
    device: torch.device,
    *,
    cache: bool,
    cache_bytes_per_value: int = BYTES_FP32,
    force: bool = False,
    available: int | None = None,
    available_host: int | None = None,
) -> dict[str, Any]:
    """Refuse (FolioError) a sampling call whose estimate exceeds the memory available.

    On the CPU, device and host memory are one budget; on a GPU the token
    buffer, cache and forward pass need GPU memory and the text host memory.
    """
    est = estimate_sampling_memory(
        model_config,
        num_samples,
        context_tokens,
        cache=cache,
        cache_bytes_per_value=cache_bytes_per_value,
    )
    cpu = torch.device("cpu")
    avail = available if available is not None else available_memory(device)
    if device.type == "cpu":
        need, host_need, host_avail = est["device_bytes"] + est["host_bytes"], 0, None
    else:
        need, host_need = est["device_bytes"], est["host_bytes"]
        host_avail = available_host if available_host is not None else available_memory(cpu)
    est["available_bytes"] = avail
    short = []
    if avail is not None and need > avail:
        short.append(f"{_gib(need)} on {device.type}, where {_gib(avail)} is available")
    if host_avail is not None and host_need > host_avail:
        short.append(f"{_gib(host_need)} of host memory, where {_gib(host_avail)} is available")
    if force or not short:
        return est
    raise FolioError(
        f"sampling {num_samples:,} sample(s) of {context_tokens:,} tokens (prompt + "
        f"max_new_tokens) needs about {' and '.join(short)} (token buffer "
        f"{_gib(est['tokens_bytes'])}, KV cache {_gib(est['kv_cache_bytes'])}, text "
        f"{_gib(est['host_bytes'])}); lower --num-samples or --max-new-tokens, "
        "or pass --force to try anyway"
    )
