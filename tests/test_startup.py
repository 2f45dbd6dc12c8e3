"""Start-up: help and bad-argument errors answer without importing torch.

Importing torch costs a second or more; `folio --help`, `folio CMD --help`
and every error a bad argument causes (unknown command or flag, bad value,
missing required flag) must not pay it. The checks run in interpreters of
their own, since this test process has torch loaded already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from folio.cli import COMMANDS
from folio.data.corpora import load_corpus
from folio.data.prepare import prepare_dataset

ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )


# Calls the CLI as `folio ARGV` would for each ARGV in turn, then reports its exit status and
# whether torch was loaded. Once loaded, torch stays: the first command to import it is reported,
# and every one after it too, so sharing the interpreter hides none.
PROBE = """
import json, sys
from folio.cli import main
for argv in json.loads(sys.argv[1]):
    print(SEP, flush=True)
    print(SEP, file=sys.stderr, flush=True)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    sys.stderr.flush()
    print(json.dumps({"code": code, "torch": "torch" in sys.modules}), flush=True)
""".replace("SEP", repr("--- folio probe ---"))


def _probe(*argvs: list[str]) -> list[tuple[int, bool, str, str]]:
    """(exit status, torch imported?, stdout before the report, stderr) of each `folio ARGV`,
    run one after another in one interpreter."""
    r = _python("-c", PROBE, json.dumps(argvs))
    assert r.returncode == 0, r.stderr
    outs = r.stdout.split("--- folio probe ---\n")[1:]
    errs = r.stderr.split("--- folio probe ---\n")[1:]
    assert len(outs) == len(errs) == len(argvs), r.stdout + r.stderr
    results = []
    for out, err in zip(outs, errs, strict=True):
        *lines, report = out.rstrip("\n").split("\n")
        result = json.loads(report)
        results.append((result["code"], result["torch"], "\n".join(lines), err))
    return results


def test_module_help_imports_no_torch() -> None:
    r = _python("-X", "importtime", "-m", "folio", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: folio")
    imported = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line]
    assert "folio.cli" in imported  # the probe sees the CLI's imports
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]


def test_every_command_help_imports_no_torch() -> None:
    script = (
        "import sys\nfrom folio.cli import COMMANDS, main\n"
        "for name in [*COMMANDS, 'bench train', 'bench sample', 'eval tasks']:\n"
        "    try:\n        main([*name.split(), '--help'])\n"
        "    except SystemExit as e:\n        assert e.code == 0, (name, e.code)\n"
        "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    r = _python("-c", script)
    assert r.returncode == 0, r.stderr
    for name in COMMANDS:
        assert f"usage: folio {name}" in r.stdout
    assert r.stderr.strip().splitlines()[-1] == "TORCH False"


BAD_ARGUMENTS = [
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    (["train", "--data", "d", "--out", "o", "--bogus"], "unrecognized arguments: --bogus"),
    (["sample"], "the following arguments are required: --checkpoint"),
    (["bench", "sample", "--paths", "int3"], "invalid choice: 'int3'"),
    (["train", "--data", "d", "--out", "o", "--preset", "nope"], "unknown preset 'nope'"),
    (
        ["train", "--data", "d", "--out", "o", "--preset", "tiny", "--train.dtype", "fp8"],
        "dtype must be one of",
    ),
    (
        ["sft", "--init-from", "run:r", "--data", "d", "--out", "o", "--model.n_layer", "2"],
        "model.n_layer: the model's shape comes from --init-from",
    ),
    (
        ["dpo", "--init-from", "run:r", "--data", "d", "--out", "o", "--prefs.beta", "-1"],
        "beta must be positive",
    ),
]


@pytest.fixture(scope="module")
def bad_argument_results() -> dict[str, tuple[int, bool, str, str]]:
    """Every case below, probed in one interpreter (each start-up costs about 0.3 s)."""
    argvs = [argv for argv, _ in BAD_ARGUMENTS]
    return {json.dumps(a): r for a, r in zip(argvs, _probe(*argvs), strict=True)}


@pytest.mark.parametrize(
    "argv, message",
    BAD_ARGUMENTS,
    ids=["command", "flag", "required", "choice", "preset", "value", "sft-model", "dpo-value"],
)
def test_bad_argument_is_one_line_without_torch(
    argv: list[str], message: str, bad_argument_results: dict
) -> None:
    code, torch_loaded, _, err = bad_argument_results[json.dumps(argv)]
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("folio") and ": error: " in last and message in last, err
    assert not torch_loaded


def test_public_api_still_imports() -> None:
    import folio
    from folio import GPT, GPTConfig
    from folio.models import GPT as ModelsGPT

    assert GPT is ModelsGPT
    assert GPT(GPTConfig(vocab_size=5, n_layer=1, n_head=1, n_embd=8, block_size=4))
    with pytest.raises(AttributeError):
        folio.NoSuchThing  # noqa: B018


# Trains with Muon (a checkpoint is the optimizer's state_dict), then loads that state
# into a fresh MuonAdamW, in one fresh interpreter; reports whether torch._dynamo was loaded.
MUON_PROBE = """
import json, sys
from folio.cli import main
data, out = sys.argv[1], sys.argv[2]
code = main(["train", "--data", data, "--out", out, "--preset", "tiny", "--quiet",
             "--threads", "1", "--set", "train.optimizer=muon", "--set", "train.plot=false",
             "--set", "train.max_iters=3"])
after_training = "torch._dynamo" in sys.modules
import torch
from folio.train.optim import MuonAdamW
w = torch.nn.Parameter(torch.ones(4, 4))
opt = MuonAdamW([{"params": [w], "muon": True}], lr=0.1)
w.grad = torch.eye(4)
opt.step()
opt.zero_grad()
again = MuonAdamW([{"params": [w], "muon": True}], lr=0.1)
again.load_state_dict(opt.state_dict())
print(json.dumps({"code": code, "after_training": after_training,
                  "after_loading": "torch._dynamo" in sys.modules,
                  "grad": w.grad is None, "loaded": "momentum_buffer" in again.state[w]}))
"""


def test_muon_training_does_not_import_dynamo(tmp_path: Path) -> None:
    # torch.optim.Optimizer's methods import torch._dynamo (about 1.3 s) on first use;
    # MuonAdamW sidesteps them, which the short speedrun presets count on.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 200, encoding="utf-8")
    prepare_dataset(load_corpus([str(corpus)]), tmp_path / "ds")  # here: not what is measured
    r = _python("-c", MUON_PROBE, str(tmp_path / "ds"), str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.rstrip("\n").split("\n")[-1])
    assert report == {
        "code": 0,
        "after_training": False,
        "after_loading": False,
        "grad": True,
        "loaded": True,
    }, r.stdout + r.stderr
    assert (tmp_path / "run" / "checkpoints" / "step-00000003").is_dir()
