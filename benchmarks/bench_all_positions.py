r"""Both training forms side by side: RecBole's one row per prefix (``train_positions=last``) and one row per user
history with the loss at every position (``train_positions=all``). Per model, dataset and form over several seeds:
seconds per epoch, peak memory (process RSS; on CUDA the peak tensor memory), epochs and wall time to the best
validation score, test metrics (mean ± one standard error); and the cost (seconds per epoch, peak memory) at
several shares of one dataset's users, to show how each form's cost grows with the data.

    python benchmarks/bench_all_positions.py --models=SASRec,UniSRec,LRURec,MetaRec --datasets=Scientific,Games \
        --seeds=2020,2021,2022 --user_fractions=0.25,0.5,1.0 --size_dataset=Games --size_epochs=2 \
        --jobs=10 --minutes=4 --out=results/all_positions [--key=value ...]
    python benchmarks/bench_all_positions.py --summarize --out=results/all_positions
    python benchmarks/bench_all_positions.py --dataset=Scientific --model=SASRec [--key=value ...]   # one pair

``--all_batch_size=N`` gives the all form its own ``train_batch_size``: its rows are whole histories, each with
several targets, so the same batch size means fewer optimizer steps per epoch than the prefix form's (the training
log prints the targets per row; docs/RESULTS.md measures the effect). Extra ``--key=value`` pairs go to every run
(e.g. ``--gpu_id=0 --epochs=40 --stopping_step=5``; ``--epochs=1`` for a smoke run). Runs are queued by priority: the quality runs on the first dataset (every model and both forms, seed by
seed, so an interrupted study still has complete seed pairs), then the size rows (``--user_fractions`` of
``--size_dataset``'s users, ``--size_epochs`` epochs each, the first seed), then the quality runs on the other
datasets. ``--jobs`` runs at a time, each in a fresh process; none starts after ``--minutes`` from the start.

A user fraction below 1 keeps that share of the users (drawn with a fixed seed, ``--subset_seed``) with all their
interactions, written as atomic files to ``<work>/data/<D>_u<percent>`` (real rows only) and read through
``data_path``; the other shipped datasets are linked beside it (MetaRec's sources). ``--quality_fraction`` (default
1) does the same for the quality runs: for smoke tests only.

UniSRec is fine-tuning (``train_stage=transductive_ft``) from the shipped checkpoint pretrained without the dataset;
a dataset without item text skips it with one logged line. Every finished run is appended at once as one JSON line
to ``<out>.jsonl`` (finished runs are not run again); failed and skipped runs go to ``<out>-failed.jsonl``;
``<out>.md`` is rebuilt after every run and by ``--summarize``. Every run keeps its latest state
(``resumable``) in ``<work>/runs/<run>``: a run interrupted with the study (the machine stopped, the study
killed) continues from its last finished epoch when the study runs again, its seconds counting the work done
in both processes (the row's ``resumed`` says how often).
"""

import argparse
import json
import math
import os
import queue
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    RunFailed,
    Study,
    fit_and_measure,
    machine,
    mean_se,
    resumable_in,
)

METRICS = ["recall@10", "ndcg@10", "recall@50", "ndcg@50"]


# --- data -------------------------------------------------------------------------------------------------------
def subset_name(dataset, fraction):
    return dataset if fraction >= 1 else f"{dataset}_u{round(100 * fraction):g}"


def write_subset(dataset, fraction, data_dir, seed):
    """``fraction`` of ``dataset``'s users (drawn with ``seed``) and all their interactions, as the dataset
    ``<dataset>_u<percent>`` under ``data_dir`` (with the texts of its items when it has item text). Returns the
    name."""
    import numpy as np

    from recbole_transfer.config import DATASET_DIR

    name = subset_name(dataset, fraction)
    folder = os.path.join(data_dir, name)
    target = os.path.join(folder, f"{name}.inter")
    if os.path.isfile(target):
        return name
    os.makedirs(folder, exist_ok=True)
    header, lines = read_atomic(os.path.join(DATASET_DIR, dataset, f"{dataset}.inter"))
    user, item = (column(header, field) for field in ("user_id", "item_id"))
    users = sorted({line.split("\t")[user] for line in lines})
    keep = set(
        np.random.default_rng(seed)
        .choice(users, size=max(1, round(fraction * len(users))), replace=False)
        .tolist()
    )
    rows = [line for line in lines if line.split("\t")[user] in keep]
    text = os.path.join(DATASET_DIR, dataset, f"{dataset}.text")
    if os.path.isfile(text):  # written first: the .inter file marks a complete subset
        items = {line.split("\t")[item].rstrip("\n") for line in rows}
        text_header, texts = read_atomic(text)
        at = column(text_header, "item_id")
        write_atomic(
            os.path.join(folder, f"{name}.text"),
            text_header,
            [line for line in texts if line.split("\t")[at].rstrip("\n") in items],
        )
    write_atomic(target, header, rows)
    return name


def read_atomic(path):
    with open(path, encoding="utf-8") as f:
        return f.readline(), f.readlines()


def write_atomic(path, header, lines):
    from recbole_transfer.utils import atomic_write_text

    atomic_write_text(path, header + "".join(lines))


def column(header, field):
    return [c.split(":")[0] for c in header.rstrip("\n").split("\t")].index(field)


def link_shipped(data_dir):
    """The shipped datasets linked into ``data_dir`` (a subset's MetaRec sources are read from its data_path)."""
    from recbole_transfer.config import DATASET_DIR
    from recbole_transfer.data.folders import available_datasets

    os.makedirs(data_dir, exist_ok=True)
    for name in available_datasets(DATASET_DIR):
        link = os.path.join(data_dir, name)
        if not os.path.exists(link):
            os.symlink(os.path.join(DATASET_DIR, name), link)


def dataset_settings(dataset):
    """The keys of ``dataset``'s shipped yaml (a subset has none of its own)."""
    import yaml

    from recbole_transfer.config import PROPERTIES_DIR

    path = os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return {
            k: v for k, v in (yaml.safe_load(f) or {}).items() if k != "domain_group"
        }


def model_settings(model, dataset, fraction):
    """Per-model keys; a string instead when ``model`` cannot run on ``dataset`` (the reason)."""
    from recbole_transfer.config import (
        DATASET_DIR,
        PRETRAINED_DIR,
        default_source_datasets,
    )

    if model == "UniSRec":
        from recbole_transfer.model.unisrec import shipped_checkpoint

        if not os.path.isfile(os.path.join(DATASET_DIR, dataset, f"{dataset}.text")):
            return (
                f"UniSRec fine-tuning needs item text; {dataset} has no {dataset}.text"
            )
        return dict(
            train_stage="transductive_ft",
            pretrained_path=os.path.join(PRETRAINED_DIR, shipped_checkpoint([dataset])),
        )
    if (
        model == "MetaRec" and fraction < 1
    ):  # a subset belongs to no family: its parent's sources
        return dict(
            source_datasets=default_source_datasets([dataset], "all", DATASET_DIR)
        )
    return {}


# --- the study --------------------------------------------------------------------------------------------------
class PositionsStudy(Study):
    def __init__(self, args, overrides):
        super().__init__(args, overrides, summarize)

    def job(self, kind, model, dataset, fraction, form, seed, epochs=None):
        # the all form's own train_batch_size (rows are whole histories there), where one is given
        batch = self.args.all_batch_size if form == "all" else None
        name = f"{kind}-{model}-{subset_name(dataset, fraction)}-{form}-{seed}"
        return dict(
            id=name + (f"-b{batch}" if batch else ""),
            kind=kind,
            model=model,
            dataset=dataset,
            fraction=fraction,
            form=form,
            batch=batch,
            seed=seed,
            epochs=epochs,
        )

    def queue_all(self):
        args = self.args
        models = args.models.split(",")
        datasets = [d for d in args.datasets.split(",") if d]  # none: size rows only
        seeds = [int(s) for s in args.seeds.split(",")]
        forms = args.forms.split(",")
        fractions = [float(f) for f in args.user_fractions.split(",") if f]
        planned = []
        for d, dataset in enumerate(datasets):
            for s, seed in enumerate(seeds):
                for m, model in enumerate(models):
                    for f, form in enumerate(forms):
                        rank = (0 if d == 0 else 2, d, s, m, f)
                        planned.append(
                            (
                                rank,
                                self.job(
                                    "quality",
                                    model,
                                    dataset,
                                    args.quality_fraction,
                                    form,
                                    seed,
                                ),
                            )
                        )
        for p, fraction in enumerate(fractions):
            for m, model in enumerate(models):
                for f, form in enumerate(forms):
                    job = self.job(
                        "size",
                        model,
                        args.size_dataset,
                        fraction,
                        form,
                        seeds[0],
                        epochs=args.size_epochs,
                    )
                    planned.append(((1, 0, p, m, f), job))
        done = self.done()
        for rank, job in planned:
            if job["id"] in done:
                continue
            reason = model_settings(job["model"], job["dataset"], job["fraction"])
            if isinstance(reason, str):
                self.skip(job, reason)
                continue
            self.push(rank, job)
        self.log(
            f"{self.order} runs queued, {len(done)} already in {self.args.out}.jsonl"
        )

    def skip(self, job, reason):
        self.log(f"skip {job['id']}: {reason}")
        self.append(f"{self.args.out}-failed.jsonl", dict(job, skipped=reason))

    def run_job(self, job):
        fraction = job["fraction"]
        # the dataset's and the model's keys, then the command line's, then the run's own
        settings = dict(show_progress=False, log_flops=False)
        dataset = job["dataset"]
        if fraction < 1:
            data_dir = os.path.join(self.work, "data")
            with self.lock:
                link_shipped(data_dir)
                dataset = write_subset(
                    job["dataset"], fraction, data_dir, self.args.subset_seed
                )
            settings.update(dataset_settings(job["dataset"]), data_path=data_dir)
        settings.update(model_settings(job["model"], job["dataset"], fraction))
        settings.update(self.overrides)
        settings.update(
            train_positions=job["form"],
            seed=job["seed"],
            **resumable_in(os.path.join(self.work, "runs", job["id"])),
        )
        if job["epochs"] is not None:
            settings["epochs"] = job["epochs"]
        if job.get("batch"):
            settings["train_batch_size"] = job["batch"]
        latest = settings.get("resume_checkpoint")
        self.log(f"start {job['id']}" + (f" (resuming {latest})" if latest else ""))
        began = time.time()
        try:
            result = fit_and_measure(job["model"], dataset, settings)
        except RunFailed as err:
            self.log(f"failed {job['id']}: {err}")
            self.append(f"{self.args.out}-failed.jsonl", dict(job, error=str(err)))
            return
        line = dict(
            job,
            subset=dataset,
            epochs_run=result["epochs"],
            best_epoch=result.get("best_epoch"),
            epoch_seconds=result["epoch_seconds"],
            seconds_to_best=result.get("seconds_to_best"),
            fit_minutes=result["fit_minutes"],
            minutes=(time.time() - began) / 60,
            peak_rss_gib=result["peak_rss_gib"],
            resumed=result["resumed"],
            peak_gpu_gib=result.get("peak_gpu_gib"),
            valid=result["best_valid"],
            best_valid_score=result["best_valid_score"],
            test={k: result["test"].get(k) for k in METRICS},
            trainable=result["trainable"],
            overrides=self.overrides,
            machine=machine(),
        )
        self.record(line)
        self.log(
            f"done {job['id']}: {result['epochs']} epochs, {result['epoch_seconds']:.2f} s/epoch, "
            f"best epoch {line['best_epoch']}, test ndcg@10 {result['test'].get('ndcg@10', math.nan):.4f}"
        )

    def worker(self):
        deadline = self.start + 60 * self.args.minutes if self.args.minutes else None
        while True:
            if deadline is not None and time.time() >= deadline:
                return
            try:
                _, _, job = self.jobs.get_nowait()
            except queue.Empty:
                return
            try:
                self.run_job(job)
            except (
                Exception
            ) as err:  # this study's own bookkeeping failed: note it, go on
                self.log(f"failed {job['id']}: {type(err).__name__}: {err}")
                self.append(
                    f"{self.args.out}-failed.jsonl",
                    dict(job, error=f"{type(err).__name__}: {err}"),
                )

    def run(self):
        self.log(f"{machine()}; overrides {json.dumps(self.overrides)}")
        self.queue_all()
        with ThreadPoolExecutor(self.args.jobs) as pool:
            for _ in range(self.args.jobs):
                pool.submit(self.worker)
        self.log(f"finished; {self.jobs.qsize()} queued runs not started")


# --- summary ----------------------------------------------------------------------------------------------------
def cell(values, digits=4):
    m, se = mean_se(values)
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f} ± " + ("–" if math.isnan(se) else f"{se:.{digits}f}")


def plain(values, digits=2):
    m, _ = mean_se(values)
    return "–" if math.isnan(m) else f"{m:.{digits}f}"


def ratio(a, b):
    a, b = mean_se(a)[0], mean_se(b)[0]
    return "–" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}×"


def read_lines(path):
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def form_label(line):
    """The form, with the all form's own batch size where the study gave one."""
    batch = line.get("batch")
    return f"{line['form']}, batch {batch}" if batch else line["form"]


def grouped(lines, key):
    groups = {}
    for line in lines:
        groups.setdefault(key(line), []).append(line)
    return groups


def quality_table(lines):
    rows = [
        "## Quality: both forms to early stopping",
        "",
        "Cost columns (s / epoch: the median epoch of a run; peak memory; epochs run) are means over seeds; the "
        "others mean ± one standard error (– with one seed).",
        "",
        "| model | dataset | form | seeds | s / epoch | peak RSS GiB | peak GPU GiB | epochs run | epochs to best "
        "| minutes to best | valid N@10 | test N@10 | test R@10 | test N@50 | test R@50 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = grouped(lines, lambda r: (r["model"], r["subset"], form_label(r)))
    for (model, dataset, form), runs in groups.items():
        rows.append(
            f"| {model} | {dataset} | {form} | {len(runs)} | "
            + " | ".join(
                [
                    plain([r["epoch_seconds"] for r in runs]),
                    plain([r["peak_rss_gib"] for r in runs]),
                    plain([r["peak_gpu_gib"] for r in runs]),
                    plain([r["epochs_run"] for r in runs], 1),
                    cell([r["best_epoch"] for r in runs], 1),
                    cell(
                        [
                            r["seconds_to_best"] / 60
                            for r in runs
                            if r["seconds_to_best"] is not None
                        ],
                        2,
                    ),
                    cell([r["valid"].get("ndcg@10") for r in runs]),
                    cell([r["test"]["ndcg@10"] for r in runs]),
                    cell([r["test"]["recall@10"] for r in runs]),
                    cell([r["test"]["ndcg@50"] for r in runs]),
                    cell([r["test"]["recall@50"] for r in runs]),
                ]
            )
            + " |"
        )
    rows += [
        "",
        "## all / last per model and dataset",
        "",
        "Speed-ups are last ÷ all (> 1: all is faster); memory saved is 1 − all ÷ last; the test N@10 difference is "
        "all − last paired by seed (seeds with both forms).",
        "",
        "| model | dataset | all form | seed pairs | speed-up per epoch | speed-up to best | RSS saved "
        "| GPU memory saved | test N@10 all − last |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, dataset, form in groups:
        if form == "last":
            continue
        last = groups.get((model, dataset, "last"), [])
        every = groups[(model, dataset, form)]
        by_seed = {r["seed"]: r for r in last}
        pairs = [(by_seed[r["seed"]], r) for r in every if r["seed"] in by_seed]

        def saved(field):
            a = mean_se([r[field] for r in every])[0]
            b = mean_se([r[field] for r in last])[0]
            return (
                "–" if math.isnan(a) or math.isnan(b) or b == 0 else f"{1 - a / b:.0%}"
            )

        rows.append(
            f"| {model} | {dataset} | {form} | {len(pairs)} | "
            + ratio(
                [r["epoch_seconds"] for r in last], [r["epoch_seconds"] for r in every]
            )
            + " | "
            + ratio(
                [r["seconds_to_best"] for r in last],
                [r["seconds_to_best"] for r in every],
            )
            + f" | {saved('peak_rss_gib')} | {saved('peak_gpu_gib')} | "
            + cell([b["test"]["ndcg@10"] - a["test"]["ndcg@10"] for a, b in pairs])
            + " |"
        )
    return rows


def size_table(lines):
    rows = [
        "## Cost against dataset size",
        "",
        "Shares of the users with all their interactions; the size rows' short runs (and the full dataset's quality "
        "runs where no size row has it). Mean over runs.",
        "",
        "| model | dataset | users | form | runs | s / epoch | peak RSS GiB | peak GPU GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = grouped(lines, lambda r: (r["model"], r["fraction"], form_label(r)))
    for (model, fraction, form), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "last")
    ):
        rows.append(
            f"| {model} | {runs[0]['subset']} | {fraction:.0%} | {form} | {len(runs)} | "
            f"{plain([r['epoch_seconds'] for r in runs])} | {plain([r['peak_rss_gib'] for r in runs])} | "
            f"{plain([r['peak_gpu_gib'] for r in runs])} |"
        )
    return rows


def summarize(out):
    lines = read_lines(f"{out}.jsonl")
    finished = {r["id"] for r in lines}
    failed = {  # the latest word on each run that has not finished since
        r["id"]: r for r in read_lines(f"{out}-failed.jsonl") if r["id"] not in finished
    }.values()
    if not lines and not failed:
        return
    quality = [r for r in lines if r["kind"] == "quality"]
    sized = [r for r in lines if r["kind"] == "size"]
    size_datasets = {r["dataset"] for r in sized}
    size_keys = {(r["model"], r["fraction"], form_label(r)) for r in sized}
    sized += [  # the full size dataset's quality runs stand in for a missing 100% size row
        r
        for r in quality
        if r["dataset"] in size_datasets
        and r["fraction"] >= 1
        and (r["model"], r["fraction"], form_label(r)) not in size_keys
    ]
    machines = sorted({r["machine"] for r in lines})
    overrides = sorted({json.dumps(r["overrides"]) for r in lines})
    rows = [
        f"<!-- rebuilt from {os.path.basename(out)}.jsonl: {len(lines)} runs; {'; '.join(machines)}; "
        f"overrides: {' / '.join(overrides)} -->",
        "",
    ]
    if quality:
        rows += quality_table(quality) + [""]
    if sized:
        rows += size_table(sized) + [""]
    if failed:
        rows += ["## Not run", ""] + [
            f"- {r['id']}: {r.get('skipped') or r.get('error')}" for r in failed
        ]
    path = f"{out}.md"
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="SASRec")
    parser.add_argument(
        "--datasets",
        default="Scientific",
        help="datasets of the quality runs (empty: size rows only)",
    )
    parser.add_argument("--model", default=None, help="one model (same as --models)")
    parser.add_argument(
        "--dataset", default=None, help="one dataset (same as --datasets)"
    )
    parser.add_argument("--seeds", default="2020")
    parser.add_argument("--forms", default="last,all")
    parser.add_argument(
        "--all_batch_size",
        type=int,
        default=None,
        help="train_batch_size of the all form only (its rows are whole histories; default: the runs' own)",
    )
    parser.add_argument(
        "--user_fractions",
        default="",
        help="size rows: shares of --size_dataset's users, e.g. 0.25,0.5,1.0 (none by default)",
    )
    parser.add_argument("--size_dataset", default="Games")
    parser.add_argument(
        "--size_epochs", type=int, default=2, help="epochs of each size row"
    )
    parser.add_argument(
        "--quality_fraction",
        type=float,
        default=1.0,
        help="share of users in the quality runs (smoke tests only)",
    )
    parser.add_argument(
        "--subset_seed", type=int, default=0, help="seed of the user draws"
    )
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument(
        "--minutes",
        type=float,
        default=0,
        help="no run starts after this many minutes (0: no limit)",
    )
    parser.add_argument(
        "--work", default=None, help="subsets and checkpoints (default <out>-work)"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--summarize", action="store_true", help="only rebuild <out>.md"
    )
    args, rest = parser.parse_known_args()
    args.models = args.model or args.models
    args.datasets = args.dataset or args.datasets
    if args.out is None:
        args.out = os.path.join(
            "results",
            f"bench_all_positions_{args.datasets.replace(',', '-') or args.size_dataset}_"
            f"{args.models.replace(',', '-')}",
        )
    if args.out.endswith(".md"):
        args.out = args.out[: -len(".md")]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from recbole_transfer.config import parse_cli_overrides

    overrides = parse_cli_overrides(rest)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if not args.summarize:
        PositionsStudy(args, overrides).run()
    summarize(args.out)
    if os.path.isfile(f"{args.out}.md"):
        print(f"wrote {args.out}.md")


if __name__ == "__main__":
    main()
