"""The defaults of `folio sft` that its flags show, in a module without torch.

folio/stages/sft.py uses them; `folio sft --help` reads them from here, so the
help answers without loading the trainer.
"""

VAL_FRACTION = 0.05
"""Share of the conversations held out for validation when no validation file is given."""
MIX_FRACTION = 0.1
"""Share of each training batch's rows taken from pretraining text when --mix-data is given."""
EVAL_PROMPTS = 64
"""Validation prompts answered greedily at each eval for pass@1 (0: none)."""
