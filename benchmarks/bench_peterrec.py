"""PeterRec on one target task, in one run: pretraining (causal and non-causal) on the task's source, then every
fine-tuning mode x patch insertion, with the trainable-parameter share.

    python benchmarks/bench_peterrec.py --task=beauty_to_electronics --dataset=ABE_Electronics [--key=value ...]
    python benchmarks/bench_peterrec.py --task=ml100k_gender --dataset=ml-100k [--kinds=causal] [--key=value ...]

``--task`` names a file in properties/task/. Pretraining is PeterRec's recipe stage ``pretrain``
(``recbole_transfer.recipe``: PeterRec on the task's source, causal or not), run once per kind and then reused from
the stage cache ``<checkpoint_dir>/stages/``; its checkpoint is every fine-tuning row's pretrained_path.
``--key=value`` pairs go to every run (pretraining included); ``--pretrain_epochs`` caps the pretraining stage only.
Rows are appended to ``--out`` as they finish (rows already there are skipped; a kind whose rows are all there
does not touch its pretraining). The pretraining's own test metrics are not printed (the stage cache keeps its
checkpoint and minutes only).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    append_row,
    fit_and_measure,
    has_row,
    input_stages,
    stage_minutes,
    start_table,
)

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

    for kind in args.kinds.split(","):
        causal = kind == "causal"
        labels = [
            (mode, insertion, f"| {args.task} | {kind} | {mode} | {insertion} |")
            for mode, insertion in RUNS
        ]
        if all(has_row(out, label) for _, _, label in labels):
            print(f"skip {kind}: every row already in {out}")
            continue
        # the recipe's pretraining on the task's source (the task file's keys stay with fine-tuning)
        scoped = (
            {"pretrain": {"epochs": args.pretrain_epochs}}
            if args.pretrain_epochs is not None
            else None
        )
        stages, feeds = input_stages(
            "PeterRec",
            args.dataset,
            config_file_list=[task_file],
            config_dict=dict(common, causal=causal, pretrained_path=None),
            scoped=scoped,
        )
        pretrained = feeds["pretrained_path"]
        print(
            f"pretrain {kind}: {pretrained} ({stage_minutes(stages[0])} min)",
            flush=True,
        )
        for mode, insertion, label in labels:
            if has_row(out, label):
                print(f"skip {label}")
                continue
            config = dict(
                common,
                causal=causal,
                finetune_mode=mode,
                patch_insertion=insertion,
                pretrained_path=pretrained,
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
