"""Run under torchrun: several `folio train` commands, one after another, in one process group.

    torchrun --standalone --nproc-per-node=N tests/torchrun_runs.py '[[ARGV...], ...]'

Each rank joins the group once and runs every ARGV through `folio.cli.main`; Folio
trains in a group its caller made and leaves it for the caller to destroy. A
command that fails ends the rank with its exit status, as `python -m folio`
would, and torchrun then stops the others.
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from folio.cli import main


def run(commands: list[list[str]]) -> None:
    dist.init_process_group("gloo")
    try:
        for argv in commands:
            code = main(argv)
            if code:
                sys.exit(code)
            sys.stdout.flush()
            dist.barrier()  # every rank done with this run before the next begins
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
