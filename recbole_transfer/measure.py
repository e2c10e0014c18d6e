"""Train one configuration in a fresh process and measure it: test metrics, epochs, seconds per epoch, parameters,
peak memory. Used by the comparison command and the benchmark scripts.

Each run is its own spawned process, so its peak resident memory (ru_maxrss) and its RNG state are its own.
"""

import glob
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

SAMPLED_METRICS = ["hit@5", "hit@10", "ndcg@5", "ndcg@10"]


def _sampled_test(
    model, dataset, config_dict, net, trainer_class, mode, config_files=None
):
    """The trained ``net`` on the same test users, ranked against sampled negatives (``mode``, e.g. uni100)."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_transfer.config import Config
    from recbole_transfer.quick_start import create_dataset

    eval_args = {
        "split": {"LS": "valid_and_test"},
        "order": "TO",
        "group_by": "user",
        "mode": {"valid": "full", "test": mode},
    }
    config = Config(
        model=model,
        dataset=dataset,
        config_file_list=config_files,
        config_dict=dict(
            config_dict,
            eval_args=eval_args,
            metrics=["Hit", "NDCG"],
            topk=[5, 10],
            valid_metric="NDCG@10",
        ),
    )
    init_seed(
        config["seed"], config["reproducibility"]
    )  # the same negatives for every model
    _, _, test = data_preparation(config, create_dataset(config))
    result = trainer_class(config, net).evaluate(test, load_best_model=False)
    return {k: float(result[k]) for k in SAMPLED_METRICS}


def _die_with_parent():
    """Linux: end this run when the process that started it ends (killing a benchmark must not leave its current
    run training on)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _child(function, args, queue):
    _die_with_parent()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value pairs from sys.argv
    try:
        queue.put(function(*args))
    except Exception as err:  # the parent reports it and goes on with the next run
        queue.put({"error": f"{type(err).__name__}: {err}"})
        raise


def in_fresh_process(function, *args):
    """``function(*args)`` (a module-level function returning a dict) in a spawned process, so this one holds no
    model or device memory afterwards. Raises ``RunFailed`` with the child's error line when it fails.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=_child, args=(function, args, queue))
    proc.start()
    proc.join()
    result = None if queue.empty() else queue.get()
    if result is None or "error" in result:
        raise RunFailed(result["error"] if result else f"exit code {proc.exitcode}")
    return result


def _fit_here(model, dataset, config_dict, sampled, config_files):
    from recbole_transfer.quick_start import build

    config, net, trainer, (train, valid, test) = build(
        model, dataset, config_file_list=config_files, config_dict=dict(config_dict)
    )
    epoch_times = []
    # each validation: (epochs trained by then, its score, seconds from the fit's start to its end)
    validations = []
    # kept with a resumable run's latest checkpoint (``resumable``), so that a resumed run's figures continue the
    # interrupted one's: its seconds count training and validation, not the time between the two processes or
    # the interrupted epoch's lost work; the peak RSS is the larger of the two processes'
    record = dict(
        epoch_times=epoch_times,
        validations=validations,
        fit_seconds=0.0,
        peak_rss_gib=0.0,
        resumed=0,
    )
    if config["resume_checkpoint"]:  # build() has resumed the trainer
        earlier = trainer.run_record or {}
        epoch_times.extend(earlier.get("epoch_times", []))
        validations.extend(tuple(v) for v in earlier.get("validations", []))
        record.update(
            fit_seconds=earlier.get("fit_seconds", 0.0),
            peak_rss_gib=earlier.get("peak_rss_gib", 0.0),
            resumed=earlier.get("resumed", 0) + 1,
        )
    trainer.run_record = record
    train_epoch = trainer._train_epoch

    def progress():
        record["fit_seconds"] = time.time() - start
        record["peak_rss_gib"] = max(record["peak_rss_gib"], _rss_gib())

    def timed_train_epoch(*args, **kwargs):
        began = time.time()
        loss = train_epoch(*args, **kwargs)
        epoch_times.append(time.time() - began)
        progress()
        return loss

    valid_epoch = trainer._valid_epoch

    def timed_valid_epoch(*args, **kwargs):
        score, result = valid_epoch(*args, **kwargs)
        validations.append((len(epoch_times), float(score), time.time() - start))
        progress()
        return score, result

    trainer._train_epoch = timed_train_epoch
    trainer._valid_epoch = timed_valid_epoch
    start = time.time() - record["fit_seconds"]
    _, best_valid = trainer.fit(train, valid, saved=True, show_progress=False)
    if config["epochs"] == 0 and config["eval_step"] != 0:
        # zero-shot: the loaded model's validation result, for choosing among models (eval_step 0: no choice)
        best_valid = trainer.evaluate(valid, load_best_model=False)
    # to the end of the last epoch's training or validation (a resumed run's state was saved there); with nothing
    # trained (epochs=0), the zero-shot validation, if any
    fit_seconds = record["fit_seconds"] if epoch_times else time.time() - start
    peak_gpu_gib = _peak_gpu_gib(config)
    best = _best_validation(validations, trainer)
    # epochs=0: nothing trained and no checkpoint (zero-shot evaluation of a loaded model)
    test_result = trainer.evaluate(test, load_best_model=config["epochs"] > 0)
    # per-user ranks of the test positives, where the trainer records them (PromptEvaluation)
    test_ranks = getattr(trainer, "last_ranks", None)
    sampled_result = (
        _sampled_test(
            model, dataset, config_dict, net, type(trainer), sampled, config_files
        )
        if sampled
        else None
    )
    return {
        "model": config["model"],
        "test": {k: float(v) for k, v in test_result.items()},
        "sampled": sampled_result,
        "epochs": len(epoch_times),
        "epoch_seconds": (
            statistics.median(epoch_times) if epoch_times else float("nan")
        ),
        "fit_minutes": fit_seconds / 60,
        "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in net.parameters()),
        "hidden": config["hidden_size"],
        "peak_rss_gib": max(record["peak_rss_gib"], _rss_gib()),
        # how many times the run was resumed from its latest checkpoint (``resumable``)
        "resumed": record["resumed"],
        # peak tensor memory on the CUDA device during the fit (None on CPU)
        "peak_gpu_gib": peak_gpu_gib,
        # the epoch (1-based count of epochs trained) of the best validation score and the seconds from the fit's
        # start to the end of that validation (None when nothing was validated)
        "best_epoch": best[0] if best else None,
        "seconds_to_best": best[2] if best else None,
        "checkpoint": trainer.saved_model_file if config["epochs"] > 0 else None,
        "best_valid_score": (
            float(trainer.best_valid_score) if config["epochs"] > 0 else None
        ),
        "best_valid": {k: float(v) for k, v in (best_valid or {}).items()},
        "test_ranks": test_ranks,
        # trainers with their own update loop (MetaTrainer) time each iteration
        "iteration_seconds": (
            statistics.median(trainer.iteration_seconds)
            if getattr(trainer, "iteration_seconds", None)
            else None
        ),
    }


def _rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _peak_gpu_gib(config):
    import torch

    device = torch.device(config["device"])
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _best_validation(validations, trainer):
    """The validation whose model early stopping kept, or None.

    RecBole's ``early_stopping`` keeps a score equal to the best (``>=``), and scores are rounded to four decimals, so
    of several equal best scores the last one's model is the checkpoint; replaying it keeps the two in step.
    """
    from recbole.utils import early_stopping

    bigger = getattr(trainer, "valid_metric_bigger", True)
    best_score, kept = (-math.inf if bigger else math.inf), None
    for entry in validations:
        best_score, _, _, update = early_stopping(
            entry[1], best_score, 0, math.inf, bigger=bigger
        )
        if update:
            kept = entry
    return kept


def latest_checkpoint(folder):
    """The newest ``*-latest.pth`` (a ``resumable`` run's latest state) in ``folder``, or None."""
    found = glob.glob(os.path.join(glob.escape(folder), "*-latest.pth"))
    return max(found, key=os.path.getmtime) if found else None


def resumable_in(folder):
    """Settings for a run that trains in ``folder`` and keeps its latest state there (``resumable``); when the folder
    holds an interrupted run's latest state, the run continues from it."""
    settings = dict(checkpoint_dir=folder, resumable=True)
    latest = latest_checkpoint(folder)
    if latest:
        settings["resume_checkpoint"] = latest
    return settings


class RunFailed(RuntimeError):
    pass


def fit_and_measure(model, dataset, config_dict, sampled=None, config_files=None):
    """Train ``model`` on ``dataset`` with early stopping in a fresh process; test metrics and costs.
    ``sampled`` (e.g. "uni100") also ranks the best model's test users against sampled negatives.
    Raises ``RunFailed`` with the child's error line when the run fails."""
    try:
        return in_fresh_process(
            _fit_here, model, dataset, config_dict, sampled, config_files
        )
    except RunFailed as err:
        raise RunFailed(f"{model} on {dataset} failed: {err}") from None
