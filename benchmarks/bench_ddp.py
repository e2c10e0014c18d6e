"""One model trained with 1 and with N processes (RecBole's DDP; gloo on CPU): metrics and wall time side by side.

    python benchmarks/bench_ddp.py --model=SASRec --dataset=Scientific --nprocs=1,2 [--key=value ...]

``--key=value`` pairs go to every run; pass ``--stopping_step`` >= ``--epochs`` so every run trains the same number
of epochs. ``train_batch_size`` is the global batch in both (each of N ranks takes 1/N of it).
Rows are appended to ``--out`` (default results/bench_ddp_<model>_<dataset>.md).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import METRICS, append_row, start_table  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--dataset", default="Scientific")
    parser.add_argument("--nprocs", default="1,2")
    parser.add_argument("--port", default="29600")
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    from recbole_transfer.config import parse_cli_overrides
    from recbole_transfer.quick_start import run

    common = parse_cli_overrides(overrides)
    out = args.out or os.path.join(
        "results", f"bench_ddp_{args.model}_{args.dataset}.md"
    )
    start_table(
        out,
        common,
        [
            "model",
            "processes",
            *[f"valid {m}" for m in METRICS],
            *[f"test {m}" for m in METRICS],
            "wall (min)",
        ],
    )
    sys.argv = sys.argv[:1]
    for nproc in (int(n) for n in args.nprocs.split(",")):
        start = time.time()
        result = run(
            args.model,
            args.dataset,
            config_dict=dict(common),
            nproc=nproc,
            port=args.port,
        )
        minutes = (time.time() - start) / 60
        valid, test = result["best_valid_result"], result["test_result"]
        append_row(
            out,
            f"| {args.model} | {nproc} | "
            + " | ".join(f"{valid[m]:.4f}" for m in METRICS)
            + " | "
            + " | ".join(f"{test[m]:.4f}" for m in METRICS)
            + f" | {minutes:.1f} |",
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
