"""One model on one dataset trained in both forms: RecBole's one row per prefix (``train_positions=last``) and one row
per user history with the loss at every position (``train_positions=all``). Seconds per training epoch, peak memory
of the run's process and test metrics, each form in a fresh process.

    python benchmarks/bench_all_positions.py --dataset=Scientific --model=SASRec [--key=value ...]

Extra ``--key=value`` pairs go to both runs (e.g. ``--epochs=1`` for a smoke run, ``--gpu_id=0``).
Prints one markdown row per form and writes them to ``--out`` (default
results/bench_all_positions_<dataset>_<model>.md).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import fit_and_measure, machine  # noqa: E402

HEADER = (
    "| form | model | dataset | epochs run | s / epoch | peak RSS GiB | R@10 | N@10 | R@50 | N@50 |\n"
    "|---|---|---|---|---|---|---|---|---|---|\n"
)


def row(form, model, dataset, result):
    t = result["test"]
    return (
        f"| {form} | {model} | {dataset} | {result['epochs']} | {result['epoch_seconds']:.2f} | "
        f"{result['peak_rss_gib']:.2f} | {t['recall@10']:.4f} | {t['ndcg@10']:.4f} | "
        f"{t['recall@50']:.4f} | {t['ndcg@50']:.4f} |"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="Scientific")
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--forms", default="last,all")
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from recbole_transfer.config import parse_cli_overrides

    config_dict = parse_cli_overrides(overrides)
    out = args.out or os.path.join(
        "results", f"bench_all_positions_{args.dataset}_{args.model}.md"
    )
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    rows = []
    for form in args.forms.split(","):
        result = fit_and_measure(
            args.model, args.dataset, dict(config_dict, train_positions=form)
        )
        rows.append(row(form, args.model, args.dataset, result))
        print(rows[-1], flush=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(
            f"<!-- {machine()}; overrides: {json.dumps(config_dict)} -->\n"
            + HEADER
            + "\n".join(rows)
            + "\n"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
