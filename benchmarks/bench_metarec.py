"""MetaRec on one target, in one run: LRURec and SASRec on the target only, joint training on target + sources,
MetaRec and its ablations; full-ranking NDCG@10, Recall@10, MRR@10, seconds per epoch and per iteration (a
meta iteration and a joint step read the same batches, so their ratio is the price of the bi-level update).

    python benchmarks/bench_metarec.py --dataset=Scientific [--runs=lrurec,metarec,...] [--key=value ...]
    python benchmarks/bench_metarec.py --dataset=Instruments \\
        --source_datasets="['Pantry','Games','Electronics','Sports','Toys','Tools']"

``--key=value`` pairs go to every run. Rows are appended to ``--out`` as they finish (rows already there are
skipped).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import append_row, fit_and_measure, has_row, start_table  # noqa: E402

# name -> (label, model, settings)
RUNS = {
    "lrurec": ("LRURec (target only)", "LRURec", {}),
    "sasrec": ("SASRec (stock RecBole, target only)", "SASRec", {}),
    "joint": ("joint training (w/o meta transfer)", "MetaRec", {"transfer": "joint"}),
    "metarec": ("MetaRec", "MetaRec", {}),
    "first_order": ("MetaRec, first-order", "MetaRec", {"first_order": True}),
    "single_head": ("MetaRec w/o multi-head VQ", "MetaRec", {"vq_heads": 1}),
    "no_vq": ("MetaRec w/o VQ", "MetaRec", {"vq_heads": 0}),
    "no_rescaling": (
        "MetaRec w/o gradient rescaling",
        "MetaRec",
        {"gradient_rescaling": False},
    ),
}
METRICS = ["ndcg@10", "recall@10", "mrr@10"]
PAPER_METRICS = {
    "metrics": ["Recall", "NDCG", "MRR"],
    "topk": [10],
    "valid_metric": "NDCG@10",
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="Scientific", help="the target")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from recbole_transfer.config import parse_cli_overrides

    common = dict(PAPER_METRICS, **parse_cli_overrides(overrides))
    out = args.out or os.path.join("results", f"bench_metarec_{args.dataset}.md")
    start_table(
        out,
        common,
        [
            "run",
            "target",
            "params (total)",
            "epochs",
            *METRICS,
            "s/epoch",
            "s/iteration",
        ],
    )
    for name in args.runs.split(","):
        label, model, settings = RUNS[name]
        row = f"| {label} | {args.dataset} |"
        if has_row(out, row):
            print(f"skip {row}")
            continue
        result = fit_and_measure(model, args.dataset, dict(common, **settings))
        iteration = result["iteration_seconds"]
        line = (
            f"{row} {result['total']:,} | {result['epochs']} | "
            + " | ".join(f"{result['test'][m]:.4f}" for m in METRICS)
            + f" | {result['epoch_seconds']:.1f} | {'' if iteration is None else f'{iteration:.2f}'} |"
        )
        append_row(out, line)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
