"""PeterRec on one target task, in one run: pretraining (causal and non-causal) on the task's source, then every
fine-tuning mode x patch insertion, with the trainable-parameter share.

    python benchmarks/bench_peterrec.py --task=beauty_to_electronics --dataset=ABE_Electronics [--key=value ...]
    python benchmarks/bench_peterrec.py --task=ml100k_gender --dataset=ml-100k [--kinds=causal] [--key=value ...]

``--task`` names a file in properties/task/. ``--key=value`` pairs go to every run (pretraining included);
``--pretrain_epochs`` caps the pretraining runs only.
Rows are appended to ``--out`` as they finish (rows already there are skipped); pretraining checkpoints are kept
in ``<out>.json``.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import append_row, fit_and_measure, has_row, start_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (finetune_mode, patch_insertion): the paper's comparisons; parallel_e is its ablation
RUNS = [
    ("peterrec", "serial_c"),
    ("peterrec", "parallel_d"),
    ("peterrec", "parallel_e"),
    ("fine_all", "none"),
    ("fine_cls", "none"),
    ("fine_last", "none"),
    ("peter_zero", "serial_c"),
    ("peter_zero", "parallel_d"),
]
ITEM_METRICS = ["recall@10", "ndcg@10", "recall@50"]
PROFILE_METRICS = ["accuracy", "macro_f1", "labelcs_accuracy", "labelcs_macro_f1"]


def read_task(task):
    import yaml

    with open(
        os.path.join(ROOT, "properties", "task", f"{task}.yaml"), encoding="utf-8"
    ) as f:
        return yaml.safe_load(f)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", required=True)
    parser.add_argument(
        "--dataset", required=True, help="the dataset that gives the labels"
    )
    parser.add_argument("--kinds", default="causal,noncausal")
    parser.add_argument(
        "--pretrain_epochs",
        type=int,
        default=None,
        help="pretraining epochs (default: --epochs)",
    )
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, ROOT)
    from recbole_transfer.config import parse_cli_overrides

    common = parse_cli_overrides(overrides)
    task = read_task(args.task)
    task_file = os.path.join(ROOT, "properties", "task", f"{args.task}.yaml")
    metrics = PROFILE_METRICS if task["target_task"] == "profile" else ITEM_METRICS
    out = args.out or os.path.join("results", f"bench_peterrec_{args.task}.md")
    start_table(
        out,
        common,
        [
            "run",
            "kind",
            "mode",
            "insertion",
            "trainable / total (share)",
            "epochs",
            *metrics,
            "s/epoch",
        ],
    )
    state_file = out + ".json"
    state = (
        json.load(open(state_file, encoding="utf-8"))
        if os.path.isfile(state_file)
        else {}
    )

    for kind in args.kinds.split(","):
        causal = kind == "causal"
        key = f"pretrain {kind}"
        if (
            key not in state
        ):  # pretraining on the source, evaluated on its next (masked) item
            pretrain = dict(common, causal=causal)
            if args.pretrain_epochs is not None:
                pretrain["epochs"] = args.pretrain_epochs
            result = fit_and_measure("PeterRec", task["source_datasets"][0], pretrain)
            state[key] = {
                "checkpoint": result["checkpoint"],
                "test": result["test"],
                "epoch_seconds": result["epoch_seconds"],
            }
            with open(state_file, "w", encoding="utf-8") as f:
                json.dump(state, f, indent=1)
        print(f"{key}: {state[key]}", flush=True)
        for mode, insertion in RUNS:
            label = f"| {args.task} | {kind} | {mode} | {insertion} |"
            if has_row(out, label):
                print(f"skip {label}")
                continue
            config = dict(
                common,
                causal=causal,
                finetune_mode=mode,
                patch_insertion=insertion,
                pretrained_path=state[key]["checkpoint"],
            )
            result = fit_and_measure(
                "PeterRec", args.dataset, config, config_files=[task_file]
            )
            share = 100.0 * result["trainable"] / result["total"]
            line = (
                f"{label} {result['trainable']:,} / {result['total']:,} ({share:.2f}%) | {result['epochs']} | "
                + " | ".join(f"{result['test'][m]:.4f}" for m in metrics)
                + f" | {result['epoch_seconds']:.1f} |"
            )
            append_row(out, line)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
