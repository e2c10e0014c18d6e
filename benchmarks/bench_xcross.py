"""X-Cross on one target, in one run and in this order: a PromptLoRA adapter per source domain; on the target the
zero-shot sources, Pooler+Scorer of the best source, a new LoRA, X-Cross and X-Cross's untrained starting
point; the learning curve of X-Cross and LoRA over training-set sizes (several random subsets each); X-Cross's
ablations. Every row: Hit@1/3/10 and MRR@10 on 30 popularity-sampled candidates, trainable parameters, seconds
per epoch.

    python benchmarks/bench_xcross.py --target=Tools --sources=Sports,Electronics [--sizes=50,100,250,500,1000]
        [--subsets=3] [--first_subset=0] [--parts=baselines,xcross,curve,ablations] [--key=value ...]

``--key=value`` pairs go to every run. ``--parts`` runs only some row groups after the source adapters (which
every part needs): ``baselines`` (zero-shot sources, Pooler+Scorer, new LoRA), ``xcross`` (X-Cross and its
starting point), ``curve``, ``ablations``. Rows are appended to ``--out`` as they finish (rows already there are
skipped); results are kept in ``<out>.json``, the source adapters in ``saved/<out file name>/`` or ``--adapters``
(adapters found there are tested on their own domains and reused, not retrained).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import append_row, fit_and_measure, start_table  # noqa: E402

METRICS = ["hit@1", "hit@3", "hit@10", "mrr@10"]
ABLATIONS = [
    ("X-Cross -Layers (alpha=beta=0)", {"xcross_alpha": 0.0, "xcross_beta": 0.0}),
    ("X-Cross -Interactions (beta=0)", {"xcross_beta": 0.0}),
    ("X-Cross -Experts (alpha=0)", {"xcross_alpha": 0.0}),
]
PARTS = ["baselines", "xcross", "curve", "ablations"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="Tools")
    parser.add_argument("--sources", default="Sports,Electronics")
    parser.add_argument(
        "--sizes",
        default="50,100,250,500,1000",
        help="training-set sizes of the learning curve",
    )
    parser.add_argument(
        "--subsets", type=int, default=3, help="random subsets per size"
    )
    parser.add_argument(
        "--first_subset",
        type=int,
        default=0,
        help="seed of the first subset (subsets first_subset .. first_subset + subsets - 1)",
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="row groups to run, of " + ",".join(PARTS),
    )
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--adapters",
        default=None,
        help="folder of source adapters PromptLoRA-<source> (default saved/<out file name>/); "
        "one already there is tested on its domain, not retrained",
    )
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from recbole_transfer.utils import atomic_write_text
    from recbole_transfer.config import parse_cli_overrides

    common = parse_cli_overrides(overrides)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(
            f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})"
        )
    sources = [s for s in args.sources.split(",") if s]
    out = args.out or os.path.join("results", f"bench_xcross_{args.target}.md")
    start_table(
        out,
        common,
        [
            "run",
            "dataset",
            "train examples",
            "trainable / total",
            "epochs",
            *METRICS,
            "s/epoch",
        ],
    )
    state_file = out + ".json"
    state = (
        json.load(open(state_file, encoding="utf-8"))
        if os.path.isfile(state_file)
        else {}
    )

    def save_state():
        atomic_write_text(state_file, json.dumps(state, indent=1))

    all_examples = int(common.get("max_train_examples") or 0) or "all"

    def row_key(label, dataset, examples=all_examples):
        return f"| {label} | {dataset} | {examples} |"

    def row(label, model, dataset, settings, examples=all_examples):
        key = row_key(label, dataset, examples)
        if key in state:
            return state[key]
        result = fit_and_measure(model, dataset, dict(common, **settings))
        trained = result["epochs"] > 0  # a zero-shot row trains nothing
        seconds = f"{result['epoch_seconds']:.1f}" if trained else ""
        line = (
            f"{key} {result['trainable'] if trained else 0:,} / {result['total']:,} | {result['epochs']} | "
            + " | ".join(f"{result['test'][m]:.4f}" for m in METRICS)
            + f" | {seconds} |"
        )
        append_row(out, line)
        state[key] = {"valid": result["best_valid"], "test": result["test"]}
        save_state()
        return state[key]

    # one adapter folder per results table: a table with other settings (pooling, lr) trains its own, unless
    # --adapters shares one trained with the same settings (another target from the same sources)
    adapter_root = args.adapters or os.path.join(
        "saved", os.path.splitext(os.path.basename(out))[0]
    )
    adapters = {}
    for source in sources:  # one adapter per source domain, tested on its own domain
        adapters[source] = folder = os.path.join(adapter_root, f"PromptLoRA-{source}")
        trained_here = row_key(f"PromptLoRA on {source}", source) in state
        if trained_here and not os.path.isdir(folder):
            raise SystemExit(
                f"{state_file} lists the {source} adapter but {folder} is gone: "
                f"remove its rows from {state_file} to retrain it"
            )
        if not trained_here and os.path.isdir(folder):
            row(
                f"PromptLoRA on {source} (from {folder})",
                "PromptLoRA",
                source,
                {"epochs": 0, "init_adapter": folder},
            )
        else:
            row(
                f"PromptLoRA on {source}", "PromptLoRA", source, {"adapter_dir": folder}
            )

    xcross = {"source_datasets": sources, "source_adapter_dir": adapter_root}
    if "baselines" in parts:
        zero_shot = {
            s: row(
                f"zero-shot {s} adapter",
                "PromptLoRA",
                args.target,
                {"epochs": 0, "init_adapter": adapters[s]},
            )
            for s in sources
        }
        best = max(
            sources, key=lambda s: zero_shot[s]["valid"].get("mrr@10", 0.0)
        )  # chosen on validation
        row(
            f"Pooler+Scorer of {best} (best zero-shot on valid)",
            "PromptLoRA",
            args.target,
            {"init_adapter": adapters[best], "xc_train_part": "head"},
        )
        row("new LoRA on the target", "PromptLoRA", args.target, {})
    if "xcross" in parts:
        row("X-Cross", "XCross", args.target, xcross)
        # its starting point: integrators at zero, the mean of the sources' states, the first source's head
        row("X-Cross before training", "XCross", args.target, dict(xcross, epochs=0))
    if "curve" in parts:  # the learning curve before the ablations
        for size in [int(s) for s in args.sizes.split(",") if s]:
            for subset in range(args.first_subset, args.first_subset + args.subsets):
                limit = {"max_train_examples": size, "train_subset_seed": subset}
                row(
                    f"X-Cross, subset {subset}",
                    "XCross",
                    args.target,
                    dict(xcross, **limit),
                    examples=size,
                )
                row(
                    f"new LoRA, subset {subset}",
                    "PromptLoRA",
                    args.target,
                    limit,
                    examples=size,
                )
    if "ablations" in parts:
        for label, settings in ABLATIONS:
            row(label, "XCross", args.target, dict(xcross, **settings))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
