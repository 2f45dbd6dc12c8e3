"""Evaluation: loss on a dataset split (`loss`), task pass@k (`tasks`), and the hidden gold
rule with the KL to a reference (`gold`)."""
