"""UniSRec on one target, in one run: stock SASRec, UniSRec from scratch, and inductive / transductive fine-tuning
from a pretrained checkpoint (same split, full ranking).

    python benchmarks/bench_unisrec.py --dataset=Scientific --pretrained=pretrained/UniSRec-Electronics,Sports,Toys,Tools.pth \
        [--sasrec="hidden_size=64"] [--key=value ...]
    python benchmarks/bench_unisrec.py --dataset=Scientific --sources=Electronics,Sports,Toys,Tools [--key=value ...]

The pretrained checkpoint is ``--pretrained``, or, with ``--sources``, the output of UniSRec's recipe stage
``pretrain`` (``recbole_transfer.recipe``: UniSRec pretraining on the sources merged, with the ``--key=value``
pairs, e.g. ``--pretrain_epochs``), run once and then reused from the stage cache ``<checkpoint_dir>/stages/``.
``--key=value`` pairs go to every run (e.g. ``--epochs=30 --stopping_step=3``); ``--sasrec`` adds SASRec-only
keys (space-separated key=value). Rows are appended to ``--out`` as they finish; rows already there are skipped.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    TABLE_HEADER,
    fit_and_measure,
    input_stages,
    machine,
    markdown_row,
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="Scientific")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--pretrained", help="a pretrained UniSRec checkpoint")
    given.add_argument(
        "--sources",
        help="comma-separated source datasets: pretrain on them first (the recipe's cached pretrain stage)",
    )
    parser.add_argument(
        "--sasrec",
        default="",
        help="SASRec-only overrides, e.g. 'train_batch_size=256'",
    )
    parser.add_argument(
        "--runs",
        default="SASRec,UniSRec scratch,UniSRec inductive_ft,UniSRec transductive_ft",
    )
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from recbole_transfer.config import parse_cli_overrides

    common = parse_cli_overrides(overrides)
    sasrec = dict(pair.split("=", 1) for pair in args.sasrec.split())
    pretrained = args.pretrained
    if args.sources:
        _, feeds = input_stages(
            "UniSRec",
            args.dataset,
            config_dict=dict(
                common,
                source_datasets=args.sources,
                train_stage="inductive_ft",
                pretrained_path=None,
            ),
        )
        pretrained = feeds["pretrained_path"]
    runs = {
        "SASRec": ("SASRec", dict(common, **sasrec)),
        "UniSRec scratch": (
            "UniSRec",
            dict(common, train_stage="transductive_ft", pretrained_path=None),
        ),
        "UniSRec inductive_ft": (
            "UniSRec",
            dict(common, train_stage="inductive_ft", pretrained_path=pretrained),
        ),
        "UniSRec transductive_ft": (
            "UniSRec",
            dict(common, train_stage="transductive_ft", pretrained_path=pretrained),
        ),
    }
    out = args.out or os.path.join("results", f"bench_unisrec_{args.dataset}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if not os.path.isfile(out):
        with open(out, "w", encoding="utf-8") as f:
            f.write(
                f"<!-- {machine()}; common: {json.dumps(common)}; SASRec: {json.dumps(sasrec)}; "
                f"pretrained: {pretrained} -->\n" + TABLE_HEADER
            )
    with open(out, encoding="utf-8") as f:
        done = f.read()
    for label in args.runs.split(","):
        if f"| {label} | {args.dataset} |" in done:
            print(f"skip {label}: already in {out}")
            continue
        model, config_dict = runs[label]
        row = markdown_row(
            label, args.dataset, fit_and_measure(model, args.dataset, config_dict)
        )
        print(row, flush=True)
        with open(out, "a", encoding="utf-8") as f:
            f.write(row + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
