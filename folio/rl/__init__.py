"""Reinforcement learning's pure parts: the estimators (advantages, KL, clipped losses) and
rollouts (sampled replies with their log-probabilities). No Trainer here."""
