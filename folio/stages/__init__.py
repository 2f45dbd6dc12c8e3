"""The training stages, one module per training command, each a Trainer with its objective.

pretrain (`folio train`), sft, grpo and ppo (`folio rl`), reward, dpo, and
prefs (`folio prefs make`, the pairs the reward model and DPO learn from);
`preference` holds what reward and dpo share.
"""
