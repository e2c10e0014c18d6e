"""Stock RecBole models through the plugin pipeline: full-ranking metrics and seconds per training epoch.

    python benchmarks/bench_stock_models.py --dataset=Scientific --models=SASRec,BERT4Rec [--key=value ...]

Extra ``--key=value`` pairs go to every model's config (e.g. ``--hidden_size=300 --epochs=50``).
Prints one markdown row per model and writes them to ``--out`` (default results/bench_stock_<dataset>.md).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import TABLE_HEADER, fit_and_measure, machine, markdown_row  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="Scientific")
    parser.add_argument("--models", default="SASRec,BERT4Rec")
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from recbole_transfer.config import parse_cli_overrides

    config_dict = parse_cli_overrides(overrides)
    out = args.out or os.path.join("results", f"bench_stock_{args.dataset}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    rows = []
    for model_name in args.models.split(","):
        row = markdown_row(
            model_name,
            args.dataset,
            fit_and_measure(model_name, args.dataset, config_dict),
        )
        print(row, flush=True)
        rows.append(row)
    with open(out, "w", encoding="utf-8") as f:
        f.write(
            f"<!-- {machine()}; overrides: {json.dumps(config_dict)} -->\n"
            + TABLE_HEADER
            + "\n".join(rows)
            + "\n"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
