"""The whole assistant pipeline in one command: `folio recipe assistant`.

The video's closing chapter, run end to end at laptop scale: pretrain a small
base model (or reuse one), fine-tune it on conversations (SFT), raise its task
score with RL on verifiable rewards (GRPO), make ranked preference pairs,
train a reward model on them, optimise against it with PPO, and learn from the
same pairs directly with DPO. Every stage is a `folio` command run as its own
process (the same command a user would type; its output goes to
OUT/logs/STAGE.log), and every stage is measured on held-out data:

- task stages (base, SFT, GRPO, PPO, DPO): `folio eval tasks` on the test
  conversations (greedy pass@1, pass@k at temperature 1, end-of-turn rate);
- the reward model: `folio eval prefs`, pairwise accuracy on held-out pairs;
- the chat models against the hidden gold rule (SFT, PPO, DPO): `folio eval
  gold`, with the KL to the SFT model measured on the same replies; GRPO's
  KL is its run's last held-out estimate (on task prompts).

It is resumable: a finished step leaves OUT/stages/STEP.json and is skipped
on a rerun; a training step that was stopped part-way resumes exactly with
`--resume`. The scales are fixed recipes (`SCALES`): `laptop` (the figures in
BENCHMARKS.md, minutes on 2 cores) and `tiny` (seconds: what the tests run).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from folio.errors import FolioError
from folio.fsutil import atomic_write_json, read_json
from folio.recipes.runner import Step, Stopped, Supervisor, finished, last_eval

TABLE_KEYS = (
    "pass_at_1", "pass_at_k", "end_rate", "rm_accuracy", "gold_score", "kl", "seconds",
)  # fmt: skip
"""The figures of a stage's row, in the table's order (None where one does not apply)."""
GOLD_KEYS = ("gold_word", "gold_length", "gold_end", "reply_chars")
"""The gold rule's three tests (shares of replies passing) and the replies' mean length: why a
stage's gold score moved."""

STAGES = ("base", "sft", "grpo", "sft-longer", "reward", "ppo", "dpo")
"""The table's rows. sft-longer is GRPO's control: the SFT run continued on its labelled tasks for
as many steps as GRPO takes, so GRPO's gain is read against what more SFT would have given."""

SETTINGS_FILE = "recipe.json"
"""OUT's record of the scale, tokenizer and base a recipe run was made with."""


@dataclass(frozen=True)
class Scale:
    """The flags of every step at one scale: what `folio recipe assistant --scale` picks."""

    description: str
    base: tuple[str, ...]
    """`folio train` flags of the base model (a --base run skips it)."""
    tasks: tuple[str, ...]
    """`folio tasks make` flags (tasks, counts, seed)."""
    sft: tuple[str, ...]
    grpo: tuple[str, ...]
    sft_longer: tuple[str, ...]
    """`folio sft` flags of GRPO's control, continued from the SFT run."""
    prefs: tuple[str, ...]
    """`folio prefs make` flags."""
    reward: tuple[str, ...]
    ppo: tuple[str, ...]
    dpo: tuple[str, ...]
    eval_tasks: tuple[str, ...]
    """`folio eval tasks` flags (k, reply limit, seed)."""
    gold: tuple[str, ...]
    """`folio eval gold` flags (prompts, samples per prompt, seed)."""
    eval_base: tuple[str, ...] = ()
    """Flags added to the base model's `folio eval tasks` (after eval_tasks, so they win)."""
    flip: float = 0.1
    """The share of preference labels flipped (so the reward model's ceiling is 1 - flip)."""
    grpo_tasks: str = "reverse,add,count"
    """`folio rl --algo grpo --tasks`: the tasks whose checkers are GRPO's reward."""

    @property
    def k(self) -> int:
        """The k of the pass@k column: `folio eval tasks --k` as this scale runs it."""
        flags = list(self.eval_tasks)
        return int(flags[flags.index("--k") + 1]) if "--k" in flags else 8


def _flags(text: str) -> tuple[str, ...]:
    return tuple(text.split())


NO_START_EVAL = " --set train.eval_at_start=false"
"""The laptop scale's stages skip the eval before their first step: the step-0 figures are the
model they start from, which the table measures on its own; 5 to 15 s a stage."""

LAST_EVAL_ONLY = " --train.eval_interval 100" + NO_START_EVAL
"""GRPO's in-run eval, at its last step only: the table reads its KL there."""

NO_PLOT = " --set train.plot=false"
"""The tiny scale's runs skip their loss plots: a second of drawing each, for figures that
mean nothing."""

SCALES: dict[str, Scale] = {
    "laptop": Scale(
        description="a 1.3M-parameter character model; about 22 minutes on 2 CPU cores",
        base=_flags(
            "--preset demo --model.n_embd 160 --batch-size 16 --max-iters 800 "
            "--set train.max_time=0 --set train.schedule_clock=steps --eval-interval 200 "
            "--dtype float32"
        ),
        tasks=_flags("--tasks reverse,add,count,line --n 2000 --n-test 500 --seed 0"),
        sft=_flags("--preset sft --dtype float32 --mix-fraction 0.1 --max-iters 1000"),
        # GRPO where it has room (add and count: pass@8 well above pass@1; reverse has little),
        # 32 prompts a rollout learned from once, in two steps of 128 replies, at 3e-5: chosen
        # on a development set (disjoint from the test set); 1e-4 unlearned add, and the
        # preset's 16 prompts learned from twice gained a third as much
        grpo=_flags(
            "--max-iters 100 --train.learning_rate 3e-5 --rl.prompts_per_rollout 32 "
            "--rl.epochs 1 --rl.minibatches 2 --rl.max_new_tokens 48" + LAST_EVAL_ONLY
        ),
        sft_longer=_flags(
            "--preset sft --dtype float32 --mix-fraction 0.1 --max-iters 100 "
            "--train.lr_schedule constant --train.learning_rate 1e-4 --train.warmup_iters 0"
        ),
        # 2,000 prompts: with 600 the reward model overfit, its held-out accuracy falling from
        # 0.77 at step 100 to 0.73 at 300. Every two of a prompt's 4 replies whose scores
        # differ make a pair (about 8,000): 2 to 3 points of accuracy over best-against-worst.
        prefs=_flags("--n 2000 --n-test 200 --replies 4 --seed 0 --pairs all"),
        reward=_flags("--max-iters 200" + NO_START_EVAL),
        ppo=_flags(
            "--max-iters 100 --rl.max_new_tokens 64 --rl.kl_coef 0.2 --rl.ptx_coef 0.5 "
            "--rl.prompt_pool 2000" + NO_START_EVAL
        ),
        dpo=_flags("--prefs.ptx_coef 0.5 --train.eval_interval 100" + NO_START_EVAL),
        eval_tasks=_flags("--k 8 --max-new-tokens 48 --seed 0"),
        # the base never ends a reply: its 8 samples of 48 tokens a prompt cost 35 s to say 0
        eval_base=_flags("--k 0"),
        gold=_flags("--n 200 --samples 4 --seed 0"),
        grpo_tasks="add,count",
    ),
    "tiny": Scale(
        description="a model of a few thousand parameters and a few steps per stage: about a "
        "minute on 2 cores, most of it each step's start-up (its figures mean nothing, and its "
        "runs draw no loss plots)",
        base=_flags(
            "--preset tiny --model.block_size 128 --max-iters 4 --eval-interval 4 "
            "--set train.eval_iters=1 --set train.max_time=0 --dtype float32" + NO_PLOT
        ),
        tasks=_flags("--tasks reverse,add,line --n 12 --n-test 4 --seed 0"),
        sft=_flags(
            "--preset sft --dtype float32 --max-iters 3 --batch-size 4 "
            "--train.eval_interval 3 --train.eval_iters 1 --eval-prompts 2" + NO_PLOT
        ),
        grpo=_flags(
            "--max-iters 2 --train.eval_interval 2 --rl.prompts_per_rollout 2 --rl.group_size 2 "
            "--rl.minibatches 1 --rl.epochs 1 --rl.max_new_tokens 4 --rl.eval_prompts 2 "
            "--rl.prompt_pool 8" + NO_PLOT
        ),
        sft_longer=_flags(
            "--preset sft --dtype float32 --max-iters 2 --batch-size 4 --train.eval_interval 2 "
            "--train.eval_iters 1 --eval-prompts 2" + NO_PLOT
        ),
        prefs=_flags("--n 6 --n-test 4 --replies 3 --seed 0 --max-new-tokens 8"),
        reward=_flags(
            "--max-iters 2 --batch-size 2 --train.eval_interval 2 --train.eval_iters 1" + NO_PLOT
        ),
        ppo=_flags(
            "--max-iters 2 --train.eval_interval 2 --rl.prompts_per_rollout 2 --rl.group_size 2 "
            "--rl.minibatches 1 --rl.epochs 1 --rl.max_new_tokens 4 --rl.eval_prompts 2 "
            "--rl.prompt_pool 8 --rl.ptx_coef 0.5" + NO_PLOT
        ),
        dpo=_flags(
            "--max-iters 2 --batch-size 2 --train.eval_interval 2 --train.eval_iters 1 "
            "--prefs.gold_prompts 2 --prefs.max_new_tokens 4 --prefs.ptx_coef 0.5" + NO_PLOT
        ),
        eval_tasks=_flags("--k 2 --max-new-tokens 6 --seed 0"),
        gold=_flags("--n 3 --samples 2 --seed 0 --max-new-tokens 6"),
        grpo_tasks="reverse,add",
    ),
}


@dataclass
class Recipe:
    """The steps of `folio recipe assistant` in OUT, and their records."""

    out: Path
    scale: Scale
    base: Path | None = None
    """An existing base run to start from instead of pretraining one."""
    tokenizer: str = "char"
    """The base's tokenizer when the recipe pretrains it: char, or a byte-level BPE."""
    bpe_vocab: int = 1024
    seed: int | None = None
    """train.seed of every training step (None: each preset's)."""
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
    supervisor: Supervisor = field(default_factory=lambda: Supervisor())

    @property
    def prepare(self) -> list[str]:
        """`folio prepare` flags of the tokenizer."""
        if self.tokenizer == "char":
            return ["--tokenizer", "char"]
        return ["--tokenizer", "bpe", "--vocab-size", str(self.bpe_vocab)]

    def steps(self) -> list[Step]:
        """Every step in order; a later step reads what an earlier one wrote."""
        o, s = self.out, self.scale
        base = str(self.base or o / "base")
        data, tasks, prefs = str(o / "data"), str(o / "tasks"), str(o / "prefs")
        test = str(o / "tasks" / "test.jsonl")
        sft = f"run:{o / 'sft'}"
        out: list[Step] = []
        seed = ["--seed", str(self.seed)] if self.seed is not None else []
        if self.base is None:
            prepare = ["prepare", "shakespeare", "--out", data, *self.prepare]
            out.append(Step("data", prepare, stage="base", json=False))
            out.append(Step("base", ["train", "--data", data, *s.base, *seed], o / "base", "base"))
        out.append(Step("tasks", ["tasks", "make", *s.tasks, "--out", tasks], stage="sft"))
        eval_base = ["eval", "tasks", "--checkpoint", base, "--data", test, "--extend-vocab"]
        out.append(Step("eval-base", [*eval_base, *s.eval_tasks, *s.eval_base], stage="base"))
        # SFT keeps the base's Shakespeare by mixing some in (only a pretrained-here base's)
        mix = ["--mix-data", data] if self.base is None else []
        sft_args = ["sft", "--init-from", f"run:{base}", "--data", tasks, *mix, *s.sft, *seed]
        out.append(Step("sft", sft_args, o / "sft", "sft"))
        out += [self._eval_tasks("sft", test), self._gold("sft")]
        grpo = ["rl", "--algo", "grpo", "--init-from", sft, "--tasks", s.grpo_tasks, *s.grpo, *seed]
        out += [Step("grpo", grpo, o / "grpo", "grpo"), self._eval_tasks("grpo", test)]
        # GRPO's control: as many more steps of SFT on the labelled tasks
        more = ["sft", "--init-from", sft, "--data", tasks, *mix, *s.sft_longer, *seed]
        out += [Step("sft-longer", more, o / "sft-longer", "sft-longer")]
        out.append(self._eval_tasks("sft-longer", test))
        # the preference stages: pairs ranked by the hidden rule, a reward model, PPO and DPO
        make = ["prefs", "make", "--checkpoint", sft, *s.prefs, "--flip", str(s.flip)]
        out.append(Step("prefs", [*make, "--out", prefs], stage="reward"))
        reward = ["reward", "--init-from", sft, "--data", prefs, *s.reward, *seed]
        out.append(Step("reward", reward, o / "reward", "reward"))
        eval_rm = ["eval", "prefs", "--checkpoint", str(o / "reward"), "--data", prefs]
        out.append(Step("eval-reward", eval_rm, stage="reward"))
        ppo = ["rl", "--algo", "ppo", "--init-from", sft, "--reward-model", f"run:{o / 'reward'}"]
        # PPO-ptx: the task conversations' SFT loss rides along, so PPO keeps the tasks
        ppo += ["--ptx-data", tasks]
        out.append(Step("ppo", [*ppo, *s.ppo, *seed], o / "ppo", "ppo"))
        out += [self._eval_tasks("ppo", test), self._gold("ppo")]
        dpo = ["dpo", "--init-from", sft, "--data", prefs, "--ptx-data", tasks, *s.dpo, *seed]
        out.append(Step("dpo", dpo, o / "dpo", "dpo"))
        out += [self._eval_tasks("dpo", test), self._gold("dpo")]
        return out

    def _eval_tasks(self, stage: str, test: Path) -> Step:
        args = ["eval", "tasks", "--checkpoint", str(self.out / stage), "--data", str(test)]
        return Step(f"eval-{stage}", [*args, *self.scale.eval_tasks], stage=stage)

    def _gold(self, stage: str) -> Step:
        args = ["eval", "gold", "--checkpoint", str(self.out / stage)]
        args += ["--reference", f"run:{self.out / 'sft'}", *self.scale.gold]
        return Step(f"gold-{stage}", args, stage=stage)

    # ------------------------------------------------------------------ running

    def record_path(self, step: Step) -> Path:
        """Where a finished step's record is kept (its presence means: done)."""
        return self.out / "stages" / f"{step.name}.json"

    def command(self, step: Step) -> list[str]:
        """The step's argv after `folio`: --json always, --quiet and --out for training, and
        --resume when its run directory holds a checkpoint already (a stopped run)."""
        args = [*step.args, "--json"] if step.json else list(step.args)
        if step.run is not None:
            args += ["--quiet", "--out", str(step.run)]
            if (step.run / "latest.json").exists():
                args.append("--resume")
            elif step.run.is_dir() and any(step.run.iterdir()):
                # stopped before its first checkpoint: start over, the old files moved aside
                args.append("--restart")
        return args

    def run_step(self, step: Step) -> dict[str, Any]:
        """Run one step unless its record exists; return the record."""
        path = self.record_path(step)
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
        if step.run is not None and finished(step.run):
            # stopped after the run finished but before its record was written
            result: dict[str, Any] = {"recovered": True}
            seconds = 0.0
        else:
            argv = self.command(step)
            self.log(f"[{time.strftime('%H:%M:%S')}] {step.name}: folio {' '.join(argv)}")
            start = time.perf_counter()
            log = self.out / "logs" / f"{step.name}.log"
            result = self.supervisor.run(argv, log, step.json, step.name)
            seconds = time.perf_counter() - start
            if result.get("stopped") in ("interrupted", "terminated"):  # not done: never recorded
                raise Stopped(self.supervisor.signum or signal.SIGTERM, step.name)
        record = {"step": step.name, "stage": step.stage, "command": "folio " + " ".join(
            step.args), "seconds": round(seconds, 3), "result": result}  # fmt: skip
        if step.run is not None:
            record["last_eval"] = last_eval(step.run)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
        return record

    def run(self) -> dict[str, Any]:
        """Every step (skipping the finished ones), then the table as one dict."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            _check_out(self.out)
            self._check_settings()
        except OSError as e:
            raise FolioError(f"--out {self.out}: {e.strerror or e}") from None
        records = {}
        with self.supervisor.installed():
            for step in self.steps():
                self.supervisor.check(step.name)
                records[step.name] = self.run_step(step)
        return self.table(records)

    def settings(self) -> dict[str, Any]:
        """What OUT/recipe.json records: the choices that decide every step."""
        scale = next((name for name, s in SCALES.items() if s == self.scale), "custom")
        return {
            "scale": scale,
            "tokenizer": self.tokenizer if self.base is None else None,
            "bpe_vocab": self.bpe_vocab if self.base is None and self.tokenizer != "char" else None,
            "seed": self.seed,
            "base": str(self.base.resolve()) if self.base is not None else None,
        }

    def _check_settings(self) -> None:
        """A rerun continues the recipe OUT holds: refuse another scale, tokenizer or base
        (its steps are done with the old ones, and their table would be returned as new)."""
        path, now = self.out / SETTINGS_FILE, self.settings()
        if path.exists():
            was = read_json(path, "recipe settings")
            changed = [k for k in now if isinstance(was, dict) and was.get(k) != now[k]]
            if changed:
                shown = ", ".join(f"{k} {was.get(k)!r}" for k in changed)
                raise FolioError(
                    f"--out {self.out}: holds a recipe run with {shown}, not {now[changed[0]]!r}; "
                    f"rerun it with the same choices, or give another --out"
                )
        else:
            atomic_write_json(path, now)

    def table(self, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """{"stages": [one row per stage]} from the steps' records."""

        def result(name: str) -> dict[str, Any]:
            return records.get(name, {}).get("result", {})

        rows = []
        for stage in STAGES:
            row: dict[str, Any] = {"stage": stage, "checkpoint": str(self._checkpoint(stage))}
            row |= dict.fromkeys(TABLE_KEYS) | dict.fromkeys(GOLD_KEYS)
            row |= {"tasks": None, "tasks_k": None}
            report = result(f"eval-{stage}")
            overall = report.get("overall")
            if overall:
                row["pass_at_1"] = overall["pass_at_1"]
                row["pass_at_k"] = overall.get("pass_at_k")
                row["end_rate"] = overall["end_rate"]
                row["tasks"] = {t: m["pass_at_1"] for t, m in report.get("tasks", {}).items()}
                # pass@k per task: the room GRPO has to turn samples into greedy answers
                row["tasks_k"] = {t: m.get("pass_at_k") for t, m in report.get("tasks", {}).items()}
            gold = result(f"gold-{stage}")
            if gold:
                row["gold_score"] = gold["gold_score"]
                row["kl"] = gold.get("kl")
                row |= {k: gold.get(k) for k in GOLD_KEYS}
            if stage == "grpo":
                row["kl"] = records.get("grpo", {}).get("last_eval", {}).get("kl")
            if stage == "reward":
                row["rm_accuracy"] = result("eval-reward").get("accuracy")
            # milliseconds: a tiny stage can take less than a tenth of a second
            row["seconds"] = round(
                sum(r["seconds"] for r in records.values() if r["stage"] == stage), 3
            )
            rows.append(row)
        return {
            "stages": rows,
            "k": self.scale.k,
            "flip": self.scale.flip,
            "rm_ceiling": 1.0 - self.scale.flip,
            "seconds": round(sum(r["seconds"] for r in records.values()), 3),
        }

    def _checkpoint(self, stage: str) -> Path:
        if stage == "base" and self.base is not None:
            return self.base
        return self.out / stage


_MOVED_ASIDE = re.compile(r"(base|sft|grpo|sft-longer|reward|ppo|dpo)\.old-[0-9]+")
"""A step's run directory that a restart moved aside (it stopped before its first checkpoint)."""


def _check_out(out: Path) -> None:
    """Refuse an OUT that holds something other than a recipe's (nothing a user has is lost)."""
    ours = {SETTINGS_FILE, "data", "base", "tasks", "sft", "grpo", "sft-longer", "prefs",
            "reward", "ppo", "dpo", "stages", "logs", "table.json", "table.md", "transcript.md",
            "ppo-kl0", "overoptimisation.png", "overoptimisation.json"}  # fmt: skip
    others = sorted(
        p.name for p in out.iterdir() if p.name not in ours and not _MOVED_ASIDE.match(p.name)
    )
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise FolioError(
            f"{out}: holds files that are not a recipe's ({shown}); give an empty or new "
            f"directory, or the OUT of an earlier `folio recipe assistant` to continue it"
        )


def _task_cell(p1: float | None, pk: float | None) -> str:
    if p1 is None:
        return "-"
    return f"{p1:.3f}" if pk is None else f"{p1:.3f} ({pk:.3f})"


def format_table(table: dict[str, Any]) -> str:
    """The table as Markdown: a row per stage, '-' where a figure does not apply."""
    names = {"pass_at_1": "pass@1", "pass_at_k": f"pass@{table.get('k', 'k')}",
             "end_rate": "end rate",
             "rm_accuracy": "RM accuracy", "gold_score": "gold score", "kl": "KL to SFT",
             "seconds": "seconds"}  # fmt: skip
    lines = [
        "| stage | " + " | ".join(names[k] for k in TABLE_KEYS) + " |",
        "|---" + "|---:" * len(TABLE_KEYS) + "|",
    ]
    for row in table["stages"]:
        cells = []
        for k in TABLE_KEYS:
            v = row[k]
            cells.append("-" if v is None else f"{v:.0f}" if k == "seconds" else f"{v:.3f}")
        lines.append(f"| {row['stage']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"flip rate {table['flip']:.2f} (RM accuracy ceiling {table['rm_ceiling']:.2f}); "
        f"{table['seconds']:.0f} s of steps in all"
    )
    tasks = [r for r in table["stages"] if r.get("tasks")]
    if tasks:
        names = list(dict.fromkeys(t for r in tasks for t in r["tasks"]))
        k = table.get("k", "k")
        lines += ["", f"per task: greedy pass@1 (pass@{k} at temperature 1):", ""]
        lines.append("| stage | " + " | ".join(names) + " |")
        lines.append("|---" + "|---:" * len(names) + "|")
        for r in tasks:
            cells = [_task_cell(r["tasks"].get(t), (r.get("tasks_k") or {}).get(t)) for t in names]
            lines.append(f"| {r['stage']} | " + " | ".join(cells) + " |")
    golds = [r for r in table["stages"] if r.get("gold_word") is not None]
    if golds:
        lines += ["", "the gold rule's tests, share of sampled replies passing:", ""]
        lines.append("| stage | names the word | 20-60 characters | ends | mean characters |")
        lines.append("|---|---:|---:|---:|---:|")
        for r in golds:
            cells = [f"{r[k]:.3f}" for k in GOLD_KEYS[:3]] + [f"{r['reply_chars']:.1f}"]
            lines.append(f"| {r['stage']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
