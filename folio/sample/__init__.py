"""Sampling: a trained model and a prompt -> generated text, step by step or all at once."""

from folio.sample.sampler import Sampler, SamplingConfig, Step, filter_logits

__all__ = ["Sampler", "SamplingConfig", "Step", "filter_logits"]
