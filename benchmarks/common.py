"""Shared by the benchmark scripts: results tables, the measured run (``recbole_transfer.measure``) and a model's
input stages (``recbole_transfer.recipe``), each in a fresh process."""

import json
import math
import os
import platform
import queue
import statistics
import sys
import threading
import time
from datetime import date

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_transfer.measure import (  # noqa: E402  (the scripts import them here)
    SAMPLED_METRICS,
    RunFailed,
    fit_and_measure,
    in_fresh_process,
    resumable_in,
)

__all__ = [
    "SAMPLED_METRICS",
    "fit_and_measure",
    "resumable_in",
    "METRICS",
    "machine",
    "start_table",
    "has_row",
    "append_row",
    "markdown_row",
    "TABLE_HEADER",
    "input_stages",
    "stage_output",
    "stage_minutes",
    "Study",
    "mean_se",
    "mean_se_cell",
    "read_seed_table",
]
METRICS = ["recall@10", "ndcg@10", "recall@50", "ndcg@50"]


def machine():
    # the thread limit changes CPU seconds as much as the load does (2 threads: 1.24x one on SASRec, Games)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return (
        f"{date.today()} {platform.node()} {platform.machine()} {os.cpu_count()} cores"
        f", OMP_NUM_THREADS {threads}"
    )


def start_table(out, common, columns):
    """Create the markdown file ``out`` (machine, date and shared settings as a comment, then the header of
    ``columns``) unless it exists: benchmarks append rows and skip those already there.
    """
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    if not os.path.isfile(out):
        with open(out, "w", encoding="utf-8") as f:
            f.write(
                f"<!-- {machine()}; common: {json.dumps(common)} -->\n| "
                + " | ".join(columns)
                + " |\n|"
                + "---|" * len(columns)
                + "\n"
            )


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
        f"{result['epochs']} | "
        + " | ".join(f"{t[k]:.4f}" for k in METRICS)
        + f" | {result['epoch_seconds']:.1f} | {result['fit_minutes']:.1f} | {result['peak_rss_gib']:.2f} |"
    )


TABLE_HEADER = (
    "| run | dataset | hidden | trainable / total params | epochs run | R@10 | N@10 | R@50 | N@50 "
    "| s/epoch (train, median) | total fit (min) | peak RSS (GiB) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _input_stages_here(*args):
    from recbole_transfer.recipe import run_input_stages

    stages, feeds = run_input_stages(*args)
    return {"stages": stages, "feeds": feeds}


def input_stages(model, dataset, config_file_list=None, config_dict=None, scoped=None):
    """The stages ``model``'s inputs come from (its recipe), run or reused from their cache in
    ``<checkpoint_dir>/stages/`` by ``recbole_transfer.recipe.run_input_stages`` in a fresh process (so this one
    holds no model or device memory). Returns ``(stages, feeds)``: each stage with its ``output``, and the model's
    keys set to those outputs."""
    args = (model, dataset, config_file_list, dict(config_dict or {}), scoped)
    try:
        result = in_fresh_process(_input_stages_here, *args)
    except RunFailed as err:
        raise RuntimeError(f"the input stages of {model} on {dataset} failed: {err}")
    return result["stages"], result["feeds"]


def stage_output(stages, name):
    """The finished output of the stage called ``name`` (a folder or a checkpoint file)."""
    for stage in stages:
        if stage["name"] == name:
            return stage["output"]
    raise KeyError(f"no stage {name} among {[s['name'] for s in stages]}")


def stage_minutes(stage):
    """How long the stage took to train, from its cache record (None if unknown)."""
    from recbole_transfer.recipe import STAGE_INFO

    try:
        with open(os.path.join(stage["folder"], STAGE_INFO), encoding="utf-8") as f:
            return json.load(f).get("minutes")
    except (OSError, ValueError):
        return None


def mean_se(values):
    """Mean and one standard error (sample SD / sqrt n) of the values that are numbers; the SE is nan for one."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    if len(values) == 1:
        return values[0], math.nan
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def mean_se_cell(values):
    """'mean ± SE' to four decimals ('–' for the SE of one value)."""
    m, se = mean_se(values)
    return f"{m:.4f} ± " + ("–" if math.isnan(se) else f"{se:.4f}")


def read_seed_table(path, key_columns, seed_column, first_metric, metrics):
    """{key (the cells of ``key_columns``, a tuple): {seed: {metric: value}}} from a markdown table with a seed
    column; the metrics are the columns from ``first_metric`` on, in ``metrics`` order. Other lines are skipped.
    """
    table = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < first_metric + len(metrics):
                continue
            if not cells[seed_column].isdigit():
                continue
            values = cells[first_metric : first_metric + len(metrics)]
            key = tuple(cells[c] for c in key_columns)
            table.setdefault(key, {})[int(cells[seed_column])] = dict(
                zip(metrics, map(float, values))
            )
    return table


class Study:
    """A study's bookkeeping: runs in a priority queue for worker threads, time-stamped log lines, one JSON line per
    finished run in ``<out>.jsonl`` (``summarize(out)`` rebuilds the tables after each) and the ids found there,
    so that a study killed part-way skips its finished runs when started again."""

    def __init__(self, args, overrides, summarize):
        self.args = args
        self.overrides = overrides
        self.summarize = summarize
        self.work = os.path.abspath(args.work or f"{args.out}-work")
        self.lock = threading.Lock()
        self.jobs = queue.PriorityQueue()
        self.order = 0
        self.start = time.time()

    def log(self, message):
        print(f"[{time.time() - self.start:7.1f}s] {message}", flush=True)

    def append(self, path, line):
        with self.lock:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            self.summarize(self.args.out)

    def record(self, line):
        self.append(f"{self.args.out}.jsonl", line)

    def push(self, priority, job):
        with self.lock:
            self.order += 1
            self.jobs.put((priority, self.order, job))

    def done(self):
        path = f"{self.args.out}.jsonl"
        if not os.path.isfile(path):
            return set()
        with open(path, encoding="utf-8") as f:
            return {json.loads(line)["id"] for line in f if line.strip()}
