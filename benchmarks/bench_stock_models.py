"""Stock RecBole models through the plugin pipeline: full-ranking metrics and seconds per training epoch.

    python benchmarks/bench_stock_models.py --dataset=Scientific --models=SASRec,BERT4Rec [--key=value ...]

Extra ``--key=value`` pairs go to every model's config (e.g. ``--hidden_size=300 --epochs=50``).
Prints one markdown row per model and writes them to ``--out`` (default results/bench_stock_<dataset>.md).
"""
import argparse
import os
import platform
import sys
import time
from datetime import date

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="Scientific")
    parser.add_argument("--models", default="SASRec,BERT4Rec")
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()

    from recbole_transfer.config import parse_cli_overrides
    from recbole_transfer.quick_start import build

    config_dict = parse_cli_overrides(overrides)
    sys.argv = sys.argv[:1]
    out = args.out or os.path.join("results", f"bench_stock_{args.dataset}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    rows = []
    for model_name in args.models.split(","):
        config, model, trainer, (train, valid, test) = build(model_name, args.dataset, config_dict=dict(config_dict))
        epoch_times = []
        train_epoch = trainer._train_epoch

        def timed_train_epoch(*a, **k):
            t0 = time.time()
            loss = train_epoch(*a, **k)
            epoch_times.append(time.time() - t0)
            return loss

        trainer._train_epoch = timed_train_epoch
        start = time.time()
        trainer.fit(train, valid, saved=True, show_progress=False)
        fit_seconds = time.time() - start
        epochs = len(epoch_times)
        epoch_seconds = sum(epoch_times) / max(epochs, 1)
        test_result = trainer.evaluate(test, load_best_model=True)
        row = (
            f"| {model_name} | {args.dataset} | {config['hidden_size']} | {epochs} | "
            + " | ".join(f"{test_result[k]:.4f}" for k in ["recall@10", "ndcg@10", "recall@50", "ndcg@50"])
            + f" | {epoch_seconds:.1f} | {fit_seconds / 60:.1f} |"
        )
        print(row, flush=True)
        rows.append(row)
    header = (
        f"<!-- {date.today()} {platform.node()} {os.cpu_count()} cores; overrides: {config_dict} -->\n"
        "| model | dataset | hidden | epochs run | R@10 | N@10 | R@50 | N@50 | s/epoch (train) | total fit (min) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    with open(out, "w", encoding="utf-8") as f:
        f.write(header + "\n".join(rows) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
