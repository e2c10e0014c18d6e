"""Wall time of each method's one-command recipe: the first run (every stage trains) and the second (every stage
comes from the cache), each a fresh process of the command line from one working directory.

    python benchmarks/bench_recipes.py [--workdir=results/tmp/recipes] [--out=results/bench_recipes.md] [--only=A,B]

The commands are the README's, with CPU-scale settings (fewer examples and epochs per stage, listed in the table);
the working directory's ``saved/stages`` is emptied first (unless ``--keep_cache``), so the first run trains every
stage; PLMInitBERT4Rec, run after PLMInitSASRec, reuses its PT and FT.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import append_row, start_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = ["--show_progress=False", "--log_flops=False"]
RECIPES = {
    "PLMInitSASRec": [
        "--model=PLMInitSASRec",
        "--dataset=Scientific",
        "--epochs=1",
        "--PT.max_train_examples=256",
        "--FT.max_train_examples=256",
    ],
    "PLMInitBERT4Rec": [
        "--model=PLMInitBERT4Rec",
        "--dataset=Scientific",
        "--epochs=1",
        "--PT.max_train_examples=256",
        "--FT.max_train_examples=256",
    ],
    "XCross": [
        "--model=XCross",
        "--dataset=Tools",
        "--epochs=1",
        # backward through the integrated layers of four sources holds ~13 GB at the default 8 x 30 prompts
        "--train_batch_size=2",
        "--max_train_examples=32",
        "--max_eval_users=10",
        "--xc_history_items=5",
        "--xc_max_length=128",
        "--source.epochs=1",
        "--source.max_train_examples=32",
        "--source.max_eval_users=10",
    ],
    "PeterRec": [
        "--model=PeterRec",
        "--dataset=ABE_Electronics",
        f"--config_files={os.path.join(ROOT, 'properties/task/beauty_to_electronics.yaml')}",
        "--epochs=2",
        "--pretrain.epochs=2",
    ],
    "UniSRec": [
        "--model=UniSRec",
        "--dataset=Scientific",
        "--pretrained_path=none",
        "--source_datasets=Tools,Toys",
        "--pretrain_epochs=1",
        "--epochs=1",
    ],
    "MetaRec": ["--model=MetaRec", "--dataset=Instruments", "--epochs=1"],
}


def timed(args, workdir, log):
    started = time.time()
    with open(log, "a", encoding="utf-8") as f:
        done = subprocess.run(
            [sys.executable, os.path.join(ROOT, "run_recbole_transfer.py"), *args],
            cwd=workdir,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {done.returncode}): see {log}")
    return time.time() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=os.path.join("results", "tmp", "recipes"))
    parser.add_argument("--out", default=os.path.join("results", "bench_recipes.md"))
    parser.add_argument("--only", default="", help="comma-separated recipe names")
    parser.add_argument(
        "--keep_cache",
        action="store_true",
        help="keep the stages cached by an earlier call (e.g. PLMInitBERT4Rec after PLMInitSASRec)",
    )
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir)
    if not args.keep_cache:
        shutil.rmtree(os.path.join(workdir, "saved", "stages"), ignore_errors=True)
    os.makedirs(workdir, exist_ok=True)
    start_table(
        args.out,
        {"settings": "per row"},
        ["recipe", "command", "first run (min)", "cached second run (min)", "stages"],
    )
    names = args.only.split(",") if args.only else list(RECIPES)
    for name in names:
        command = RECIPES[name] + QUIET
        log = os.path.join(workdir, f"{name}.log")
        first = timed(command, workdir, log)
        second = timed(command, workdir, log)
        with open(log, encoding="utf-8") as f:
            lines = f.read().splitlines()
        reused = sum("reusing cached stage" in line for line in lines)
        trained = sum(": done in " in line and "[stage " in line for line in lines)
        shown = " ".join(a for a in command if a not in QUIET).replace(ROOT + "/", "")
        append_row(
            args.out,
            f"| {name} | `{shown}` | {first / 60:.1f} | {second / 60:.1f} | "
            f"{trained} trained, {reused} reused |",
        )


if __name__ == "__main__":
    main()
