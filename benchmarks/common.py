"""Shared by the benchmark scripts: train one configuration in a fresh process and measure it.

Each row runs in its own spawned process so its peak resident memory (ru_maxrss) is its own.
"""
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from datetime import date

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METRICS = ["recall@10", "ndcg@10", "recall@50", "ndcg@50"]


SAMPLED_METRICS = ["hit@5", "hit@10", "ndcg@5", "ndcg@10"]


def _sampled_test(model, dataset, config_dict, net, trainer_class, mode):
    """The trained ``net`` on the same test users, ranked against sampled negatives (``mode``, e.g. uni100)."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_transfer.config import Config
    from recbole_transfer.quick_start import create_dataset

    eval_args = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                 "mode": {"valid": "full", "test": mode}}
    config = Config(model=model, dataset=dataset, config_dict=dict(
        config_dict, eval_args=eval_args, metrics=["Hit", "NDCG"], topk=[5, 10], valid_metric="NDCG@10"))
    init_seed(config["seed"], config["reproducibility"])  # the same negatives for every model
    _, _, test = data_preparation(config, create_dataset(config))
    result = trainer_class(config, net).evaluate(test, load_best_model=False)
    return {k: float(result[k]) for k in SAMPLED_METRICS}


def _fit(model, dataset, config_dict, queue, sampled=None, config_files=None):
    sys.argv = sys.argv[:1]
    from recbole_transfer.quick_start import build

    config, net, trainer, (train, valid, test) = build(model, dataset, config_file_list=config_files,
                                                       config_dict=dict(config_dict))
    epoch_times = []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        start = time.time()
        loss = train_epoch(*args, **kwargs)
        epoch_times.append(time.time() - start)
        return loss

    trainer._train_epoch = timed_train_epoch
    start = time.time()
    _, best_valid = trainer.fit(train, valid, saved=True, show_progress=False)
    if config["epochs"] == 0:  # zero-shot: the loaded model's validation result, for choosing among models
        best_valid = trainer.evaluate(valid, load_best_model=False)
    fit_seconds = time.time() - start
    # epochs=0: nothing trained and no checkpoint (zero-shot evaluation of a loaded model)
    test_result = trainer.evaluate(test, load_best_model=config["epochs"] > 0)
    sampled_result = _sampled_test(model, dataset, config_dict, net, type(trainer), sampled) if sampled else None
    queue.put({
        "test": {k: float(v) for k, v in test_result.items()},
        "sampled": sampled_result,
        "epochs": len(epoch_times),
        "epoch_seconds": statistics.median(epoch_times) if epoch_times else float("nan"),
        "fit_minutes": fit_seconds / 60,
        "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in net.parameters()),
        "hidden": config["hidden_size"],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "checkpoint": trainer.saved_model_file if config["epochs"] > 0 else None,
        "best_valid": {k: float(v) for k, v in (best_valid or {}).items()},
        # trainers with their own update loop (MetaTrainer) time each iteration
        "iteration_seconds": statistics.median(trainer.iteration_seconds)
        if getattr(trainer, "iteration_seconds", None) else None,
    })


def fit_and_measure(model, dataset, config_dict, sampled=None, config_files=None):
    """Train ``model`` on ``dataset`` with early stopping in a fresh process; test metrics and costs.
    ``sampled`` (e.g. "uni100") also ranks the best model's test users against sampled negatives."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=_fit, args=(model, dataset, config_dict, queue, sampled, config_files))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or queue.empty():
        raise RuntimeError(f"{model} on {dataset} failed (exit code {proc.exitcode})")
    return queue.get()


def machine():
    return f"{date.today()} {platform.node()} {platform.machine()} {os.cpu_count()} cores"


def start_table(out, common, columns):
    """Create the markdown file ``out`` (machine, date and shared settings as a comment, then the header of
    ``columns``) unless it exists: benchmarks append rows and skip those already there."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    if not os.path.isfile(out):
        with open(out, "w", encoding="utf-8") as f:
            f.write(f"<!-- {machine()}; common: {json.dumps(common)} -->\n| " + " | ".join(columns) + " |\n|"
                    + "---|" * len(columns) + "\n")


def has_row(out, prefix):
    with open(out, encoding="utf-8") as f:
        return prefix in f.read()


def append_row(out, line):
    print(line, flush=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def markdown_row(label, dataset, result):
    t = result["test"]
    return (
        f"| {label} | {dataset} | {result['hidden']} | {result['trainable']:,} / {result['total']:,} | "
        f"{result['epochs']} | " + " | ".join(f"{t[k]:.4f}" for k in METRICS)
        + f" | {result['epoch_seconds']:.1f} | {result['fit_minutes']:.1f} | {result['peak_rss_gib']:.2f} |"
    )


TABLE_HEADER = (
    "| run | dataset | hidden | trainable / total params | epochs run | R@10 | N@10 | R@50 | N@50 "
    "| s/epoch (train, median) | total fit (min) | peak RSS (GiB) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)
