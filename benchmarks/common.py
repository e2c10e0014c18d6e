"""Shared by the benchmark scripts: results tables and the measured run (``recbole_transfer.measure``)."""

import json
import os
import platform
import sys
from datetime import date

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_transfer.measure import (
    SAMPLED_METRICS,
    fit_and_measure,
)  # noqa: E402  (the scripts import them here)

__all__ = [
    "SAMPLED_METRICS",
    "fit_and_measure",
    "METRICS",
    "machine",
    "start_table",
    "has_row",
    "append_row",
    "markdown_row",
    "TABLE_HEADER",
]
METRICS = ["recall@10", "ndcg@10", "recall@50", "ndcg@50"]


def machine():
    return (
        f"{date.today()} {platform.node()} {platform.machine()} {os.cpu_count()} cores"
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
