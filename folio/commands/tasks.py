"""`folio tasks list` and `folio tasks make`: task conversations with checkable answers."""

from __future__ import annotations

import argparse
import json

from folio.commands.common import DefaultsOnceFormatter
from folio.data.material import SPEAKERS
from folio.data.tasks import DEFAULT_TASKS, TASKS, make_task_files

HELP = "make conversations of tasks with checkable answers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `list` and `make` subcommands of `folio tasks`."""
    parser.formatter_class = DefaultsOnceFormatter
    sub = parser.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    pl = sub.add_parser(
        "list",
        help="the tasks Folio can make, with their prompts",
        formatter_class=DefaultsOnceFormatter,
    )
    pl.add_argument("--json", action="store_true", help="print one JSON list")
    pm = sub.add_parser(
        "make",
        help="write train.jsonl and test.jsonl (disjoint prompts) to a directory",
        formatter_class=DefaultsOnceFormatter,
    )
    pm.add_argument(
        "--tasks",
        default=",".join(DEFAULT_TASKS),
        help="comma-separated task names (`folio tasks list`; default: %(default)s)",
    )
    pm.add_argument("--n", type=int, required=True, help="training examples per task (>= 1)")
    pm.add_argument("--n-test", type=int, default=500, help="test examples per task (>= 1)")
    pm.add_argument("--seed", type=int, default=0, help="seed, in [0, 2**63)")
    pm.add_argument("--out", required=True, help="directory to write (new, empty, or a tasks dir)")
    pm.add_argument(
        "--corpus",
        default="shakespeare",
        help="where words and speaker lines come from: shakespeare, tinyshakespeare or a "
        "text file of plays laid out as 'NAME:', lines, blank line",
    )
    pm.add_argument(
        "--speakers",
        type=int,
        default=SPEAKERS,
        help="the speaker task uses the lines of this many speakers (those with most lines)",
    )
    pm.add_argument("--force", action="store_true", help="replace a tasks directory edited by hand")
    pm.add_argument("--json", action="store_true", help="print the manifest as one JSON object")


def run(args: argparse.Namespace) -> None:
    """List the tasks, or make a tasks directory."""
    if args.tasks_command == "list":
        if args.json:
            print(json.dumps([{"name": t.name, "prompt": t.description} for t in TASKS]))
        else:
            for t in TASKS:
                print(f"{t.name:<8}  {t.description}")
        return
    manifest = make_task_files(
        args.tasks,
        args.out,
        n=args.n,
        seed=args.seed,
        n_test=args.n_test,
        corpus=args.corpus,
        n_speakers=args.speakers,
        force=args.force,
    )
    if args.json:
        print(json.dumps({"out": args.out, **manifest}))
        return
    n_tasks = len(manifest["tasks"])
    n_tested = n_tasks - len(manifest["demonstrations"])
    demos = manifest["demonstrations"]
    print(
        f"wrote {args.out}: train.jsonl ({args.n * n_tasks} conversations), "
        f"test.jsonl ({args.n_test * n_tested}), tasks: {', '.join(manifest['tasks'])}"
        + (f" ({', '.join(demos)}: demonstrations, train only)" if demos else "")
    )
