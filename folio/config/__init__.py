"""Configuration: the torch-free schema of every run, its presets and its flags.

`run` holds the run config (model, data, training) and turns TOML presets
(`presets/*.toml`) and `--section.field` flags into it; `sft`, `rl` and `prefs`
hold the settings of the stages after pretraining. Nothing here imports torch,
so `folio --help` stays fast.
"""
