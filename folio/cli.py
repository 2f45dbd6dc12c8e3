"""The `folio` command: a thin layer over functions a notebook can call too.

Every error a user can cause surfaces as a FolioError, printed here as one
line on stderr with exit status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from folio.errors import FolioError


def _fmt_help(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter


def cmd_prepare(args: argparse.Namespace) -> None:
    from folio.data.corpora import load_corpus
    from folio.data.prepare import prepare_dataset

    corpus = load_corpus(
        args.sources,
        errors=args.errors,
        input_path=args.input,
        allow_binary=args.allow_binary,
        stream=True,  # the user's files are read a block at a time: any size fits in memory
    )
    s = prepare_dataset(
        corpus,
        Path(args.out),
        val_fraction=args.val_fraction,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        tokenizer_dir=args.tokenizer_dir,
        progress=True,
    )
    print(f"corpus: {corpus.name} ({len(corpus.files)} file(s))")
    print(f"length of dataset in characters: {s.characters:,}")
    if s.tokenizer == "char":
        print(f"vocabulary ({s.vocab_size} characters): {s.vocab!r}")
    else:
        print(f"vocabulary ({s.vocab_size} {s.tokenizer} tokens), first merges: {s.vocab}")
    print(f"train tokens: {s.train_tokens:,}  val tokens: {s.val_tokens:,}  ({s.dtype})")
    print("excerpt:")
    print("  " + s.excerpt[:200].replace("\n", "\n  "))
    print(f"wrote {s.out_dir}")


def cmd_train(args: argparse.Namespace) -> None:
    from folio.train.config import build_run_config, config_overrides
    from folio.train.pretrain import train

    run = build_run_config(args.preset, config_overrides(args))
    result = train(
        run,
        args.data,
        args.out,
        resume=args.resume,
        progress=not args.quiet,
        init_from=args.init_from,
        force=args.force,
        restart=args.restart,
    )
    from folio.runtime import is_main

    if not is_main():  # under torchrun, rank 0 speaks for the job
        return
    summary = {
        "run_dir": str(result.run_dir),
        "step": result.step,
        "train_loss": result.train_loss,
        "val_loss": result.val_loss,
        "best_val_loss": result.best_val_loss,
        "seconds": round(result.seconds, 2),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "params": result.n_params,
        "stopped": result.stopped,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"done: step {result.step}, val loss {result.val_loss:.4f}, "
            f"{result.seconds:.1f} s, {result.tokens_per_s:,.0f} tokens/s -> {result.run_dir}"
        )


def cmd_eval(args: argparse.Namespace) -> None:
    from folio.checkpoint import load_checkpoint
    from folio.data.batches import Dataset
    from folio.eval import evaluate_split
    from folio.fsutil import read_json
    from folio.runtime import autocast, pick_device, resolve_dtype

    if args.checkpoint is None:
        raise FolioError("eval: --checkpoint is required (or use `folio eval tasks ...`)")
    device = pick_device(args.device)
    ck = load_checkpoint(args.checkpoint, args.which, device)
    data_dir = args.data
    if data_dir is None:
        run_json = Path(args.checkpoint) / "run.json"
        if not run_json.exists():
            raise FolioError(
                f"{args.checkpoint}: no run.json naming the dataset; pass --data DATA_DIR"
            )
        run_config = read_json(run_json, "run config")
        data_dir = run_config.get("data") if isinstance(run_config, dict) else None
        if not isinstance(data_dir, str):
            raise FolioError(f"{run_json}: names no dataset; pass --data DATA_DIR")
    ds = Dataset.open(data_dir)
    if ds.tokenizer.to_dict() != ck.tokenizer.to_dict():
        raise FolioError(
            f"{ck.path}: the checkpoint's tokenizer does not match the dataset {data_dir}"
        )
    dtype = resolve_dtype(args.dtype, device)
    block = ck.model_config.block_size
    out: dict[str, object] = {"checkpoint": str(ck.path), "step": ck.state.get("step")}
    for split in args.splits:
        r = evaluate_split(
            ck.model,
            ds.tokens(split),
            block,
            device,
            lambda: autocast(device, dtype),
            n_bytes=ds.meta.get(f"{split}_bytes"),
            batch_size=args.batch_size,
            max_batches=args.max_batches,
        )
        out[f"{split}_loss"] = r["loss"]
        out[f"{split}_perplexity"] = r["perplexity"]
        out[
            f"{split}_bits_per_char" if ck.tokenizer.kind == "char" else f"{split}_bits_per_token"
        ] = r["bits_per_token"]
        if "bits_per_byte" in r:
            out[f"{split}_bits_per_byte"] = r["bits_per_byte"]
        out[f"{split}_tokens"] = r["tokens"]
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


def cmd_sample(args: argparse.Namespace) -> None:
    import warnings

    from folio.checkpoint import load_checkpoint
    from folio.runtime import pick_device, resolve_dtype
    from folio.sample import Sampler, SamplingConfig

    device = pick_device(args.device)
    ck = load_checkpoint(args.checkpoint, args.which, device)
    cfg = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop or [],
        num_samples=args.num_samples,
    )
    dtype = resolve_dtype(args.dtype, device)
    sampler = Sampler(
        ck.model,
        ck.tokenizer,
        device=device,
        dtype=None if dtype.is_floating_point and dtype.itemsize == 4 else dtype,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.stream and cfg.num_samples == 1:
            sys.stdout.write(args.prompt)
            for pieces in sampler.stream(args.prompt, cfg):
                sys.stdout.write(pieces[0])
                sys.stdout.flush()
            sys.stdout.write("\n")
        else:
            for i, text in enumerate(sampler.generate(args.prompt, cfg)):
                if cfg.num_samples > 1:
                    print(f"--- sample {i + 1} ---")
                print(args.prompt + text)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def cmd_ladder(args: argparse.Namespace) -> None:
    from folio.ladder import markdown_table, rows_json, run_ladder

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    rows = run_ladder(
        args.data,
        args.out,
        scale_up=args.scale_up,
        seed=args.seed,
        max_iters=args.max_iters,
        log=log,
    )
    if args.json:
        print(rows_json(rows))
    else:
        print(markdown_table(rows))
        print(f"wrote {Path(args.out) / 'ladder.md'}, ladder.json and ladder.png")


def cmd_export(args: argparse.Namespace) -> None:
    from folio.hf import export_checkpoint_hf

    out = export_checkpoint_hf(args.checkpoint, args.out, args.which)
    print(f"wrote {out} (GPT2LMHeadModel.from_pretrained loads it)")


def _checkpoint_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--checkpoint", required=required, help="run directory or checkpoint directory")
    p.add_argument(
        "--which",
        choices=["latest", "best"],
        default="latest",
        help="which checkpoint of a run directory",
    )


def _precision_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="precision",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="folio",
        description="Folio: build, train, sample and evaluate a GPT from scratch.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pp = sub.add_parser("prepare", help="tokenize a corpus into a dataset directory")
    _fmt_help(pp)
    pp.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="'shakespeare', 'tinyshakespeare', or text files / directories / globs",
    )
    pp.add_argument("--out", required=True, help="dataset directory to write")
    pp.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of tokens (the end) kept for validation",
    )
    pp.add_argument("--input", default=None, help="local copy of tinyshakespeare's input.txt")
    pp.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="how to treat bytes that are not UTF-8",
    )
    pp.add_argument(
        "--allow-binary",
        action="store_true",
        help="read files that look binary (over 30%% control bytes in the first 64 KB)",
    )
    pp.add_argument(
        "--tokenizer",
        choices=["char", "bpe", "gpt2"],
        default="char",
        help="char: one token per character; bpe: byte-level BPE trained on the corpus; "
        "gpt2: GPT-2's own BPE from --tokenizer-dir",
    )
    pp.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        help="vocabulary size of a trained BPE tokenizer (at least 257)",
    )
    pp.add_argument(
        "--tokenizer-dir",
        default=None,
        help="directory holding GPT-2's vocab.json and merges.txt (for --tokenizer gpt2)",
    )
    pp.set_defaults(func=cmd_prepare)

    from folio.train.config import add_config_flags, list_presets

    pt = sub.add_parser("train", help="train a model on a prepared dataset")
    _fmt_help(pt)
    pt.add_argument("--data", required=True, help="dataset directory from `folio prepare`")
    pt.add_argument(
        "--preset",
        default="bigram",
        help=f"preset name ({', '.join(list_presets())}) or a TOML file",
    )
    pt.add_argument("--out", required=True, help="run directory (checkpoints, metrics, plot)")
    pt.add_argument(
        "--resume", action="store_true", help="continue from the run directory's latest checkpoint"
    )
    pt.add_argument(
        "--restart",
        action="store_true",
        help="start over in a run directory that already holds a run, moving the old one "
        "aside to RUN.old-N (never deleted)",
    )
    pt.add_argument(
        "--force",
        action="store_true",
        help="train even when the memory estimate exceeds the memory available",
    )
    pt.add_argument(
        "--init-from",
        default=None,
        metavar="hf:DIR",
        help="start from a local Hugging Face GPT-2 directory's weights; the model's shape "
        "comes from DIR and the preset's [model] section is ignored except dropout",
    )
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_config_flags(pt)
    pt.set_defaults(func=cmd_train)

    pe = sub.add_parser(
        "eval",
        help="loss, perplexity and bits per character of a checkpoint; "
        "`folio eval tasks` scores replies to task prompts",
    )
    _fmt_help(pe)
    _checkpoint_arguments(pe, required=False)  # required, but not before `folio eval tasks`
    pe.add_argument(
        "--data", default=None, help="dataset directory (default: the one the run trained on)"
    )
    pe.add_argument(
        "--splits",
        nargs="+",
        choices=["train", "val"],
        default=["train", "val"],
        help="splits to evaluate",
    )
    pe.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="stop after this many batches per split (default: the whole split)",
    )
    pe.add_argument("--batch-size", type=int, default=32, help="windows per batch")
    _precision_arguments(pe)
    pe.add_argument("--json", action="store_true", help="print one JSON object")
    pe.set_defaults(func=cmd_eval)
    from folio.commands import eval_tasks

    pe_modes = pe.add_subparsers(dest="eval_mode", metavar="[tasks]")
    pet = pe_modes.add_parser("tasks", help="pass@1, pass@k, end rate and reply length on tasks")
    eval_tasks.add_arguments(pet)
    pet.set_defaults(func=eval_tasks.run)

    ps = sub.add_parser("sample", help="generate text from a checkpoint")
    _fmt_help(ps)
    _checkpoint_arguments(ps)
    ps.add_argument("--prompt", default="", help="text to continue (empty: start from a newline)")
    ps.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate")
    ps.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    ps.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    ps.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]"
    )
    ps.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    ps.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="stop a sample when it produces TEXT (repeatable)",
    )
    ps.add_argument(
        "--num-samples", type=int, default=1, help="samples decoded together as a batch"
    )
    ps.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    _precision_arguments(ps)
    ps.set_defaults(func=cmd_sample)
    pb = sub.add_parser("bench", help="measure training or sampling speed")
    bsub = pb.add_subparsers(dest="bench", required=True, metavar="WHAT")
    from folio.bench import sample as bench_sample
    from folio.bench import train as bench

    pbt = bsub.add_parser("train", help="training tokens/s: baseline and fast modes side by side")
    _fmt_help(pbt)
    bench.add_train_arguments(pbt)
    pbt.set_defaults(func=bench.run_train)
    pbs = bsub.add_parser(
        "sample", help="sampling tokens/s: KV cache against re-running the context"
    )
    _fmt_help(pbs)
    pbs.add_argument("--preset", default="video", help="preset whose model is measured")
    bench_sample.add_arguments(pbs)
    pbs.set_defaults(func=bench_sample.run)

    pl = sub.add_parser("ladder", help="reproduce the video's build-up as one table of val losses")
    _fmt_help(pl)
    pl.add_argument(
        "--data", required=True, help="dataset directory (the video uses tinyshakespeare)"
    )
    pl.add_argument(
        "--out", required=True, help="directory for the rung runs, ladder.md/.json/.png"
    )
    pl.add_argument(
        "--scale-up", action="store_true", help="also train the video preset (hours on a CPU)"
    )
    pl.add_argument("--seed", type=int, default=1337, help="seed shared by every rung")
    pl.add_argument(
        "--max-iters", type=int, default=None, help="override every rung's iterations (quick look)"
    )
    pl.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    pl.set_defaults(func=cmd_ladder)

    px = sub.add_parser("export", help="write a checkpoint in another format (Hugging Face GPT-2)")
    _fmt_help(px)
    _checkpoint_arguments(px)
    px.add_argument(
        "--format", choices=["hf"], default="hf", help="hf: a GPT2LMHeadModel directory"
    )
    px.add_argument("--out", required=True, help="directory to write (must not exist, or be empty)")
    px.set_defaults(func=cmd_export)

    from folio.commands import tasks as tasks_command

    ptk = sub.add_parser("tasks", help="make conversations of tasks with checkable answers")
    tasks_command.add_arguments(ptk)
    ptk.set_defaults(func=tasks_command.run)

    from folio.commands import chat, serve

    for name, module, summary in (
        ("chat", chat, "talk to a checkpoint in the terminal"),
        ("serve", serve, "serve checkpoints over an OpenAI-compatible HTTP API, with a playground"),
    ):
        sp = sub.add_parser(name, help=summary, description=module.__doc__.splitlines()[0])
        _fmt_help(sp)
        module.add_arguments(sp)
        sp.set_defaults(func=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except FolioError as e:
        print(f"folio: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("folio: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
