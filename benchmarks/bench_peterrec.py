"""PeterRec on one target task, in one run: pretraining (causal and non-causal) on the task's source, then every
fine-tuning mode x patch insertion, with the trainable-parameter share.

    python benchmarks/bench_peterrec.py --task=beauty_to_electronics --dataset=ABE_Electronics [--key=value ...]
    python benchmarks/bench_peterrec.py --task=ml100k_gender --dataset=ml-100k [--kinds=causal] [--key=value ...]
    python benchmarks/bench_peterrec.py --task=ml100k_gender --dataset=ml-100k --kinds=causal --seeds=2020,...,2029 \
        --runs=peterrec:serial_c,fine_all:none,fine_cls:none,peter_zero:serial_c [--key=value ...]
    python benchmarks/bench_peterrec.py ... --runs=peterrec:parallel_d,peterrec:parallel_d:parallel_shortcut=True

A run is ``mode:insertion``, optionally followed by ``:key=value`` pairs that only that row sets (e.g. the paper's
parallel shortcut or ``user_state=sum``); the row's mode cell names them.

``--task`` names a file in properties/task/. Pretraining is PeterRec's recipe stage ``pretrain``
(``recbole_transfer.recipe``: PeterRec on the task's source, causal or not), run once per kind and then reused from
the stage cache ``<checkpoint_dir>/stages/``; its checkpoint is every fine-tuning row's pretrained_path.
``--key=value`` pairs go to every run (pretraining included); ``--pretrain_epochs`` caps the pretraining stage only.
Rows are appended to ``--out`` as they finish (rows already there are skipped; a kind whose rows are all there
does not touch its pretraining). The pretraining's own test metrics are not printed (the stage cache keeps its
checkpoint and minutes only).

With ``--seeds`` every row runs once per seed (the fine-tuning seed, which also draws a profile task's random user
split; pretraining stays one run) into ``<out>`` with a seed column, and the summary ``<out minus .md>_summary.md``
gives each row's mean ± one standard error over seeds and its paired difference (same seed, same split) from
LabelCS and from the first row of ``--runs``.

``--compare=a.md,b.md`` prints, for the rows two ``--seeds`` tables share, each one's mean ± SE and their difference
paired by seed (e.g. the item tasks' two protocols, ``source_history`` before_target and whole); nothing runs.
``--recent_popularity=7,14,30,60`` (item tasks) ranks the target items by their training interactions in the given
numbers of days before each ranked row, on the task's own split and masks, beside the popularity over the whole
training split: references that know the time and nothing of the user; nothing trains.
"""

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    append_row,
    fit_and_measure,
    has_row,
    input_stages,
    mean_se,
    mean_se_cell,
    read_seed_table,
    stage_minutes,
    start_table,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (finetune_mode, patch_insertion): the paper's comparisons; parallel_e is its ablation
RUNS = [
    ("peterrec", "serial_c"),
    ("peterrec", "parallel_d"),
    ("peterrec", "parallel_e"),
    ("fine_all", "none"),
    ("fine_cls", "none"),
    ("fine_last", "none"),
    ("peter_zero", "serial_c"),
    ("peter_zero", "parallel_d"),
]
ITEM_METRICS = ["recall@10", "ndcg@10", "recall@50"]
PROFILE_METRICS = ["accuracy", "macro_f1", "labelcs_accuracy", "labelcs_macro_f1"]


def read_task(task):
    import yaml

    with open(
        os.path.join(ROOT, "properties", "task", f"{task}.yaml"), encoding="utf-8"
    ) as f:
        return yaml.safe_load(f)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", required=True)
    parser.add_argument(
        "--dataset", required=True, help="the dataset that gives the labels"
    )
    parser.add_argument("--kinds", default="causal,noncausal")
    parser.add_argument(
        "--pretrain_epochs",
        type=int,
        default=None,
        help="pretraining epochs (default: --epochs)",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--seeds", default="", help="comma-separated: each row once per seed"
    )
    parser.add_argument(
        "--runs",
        default="",
        help="mode:insertion[:key=value...],... (default: every row of RUNS)",
    )
    parser.add_argument(
        "--recent_popularity",
        default="",
        help="days,...: item tasks only, the popularity references (window chosen on validation); nothing trains",
    )
    parser.add_argument(
        "--compare",
        default="",
        help="first.md,second.md: two --seeds tables (e.g. two protocols), paired by seed; nothing runs",
    )
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, ROOT)
    from recbole_transfer.config import parse_cli_overrides

    common = parse_cli_overrides(overrides)
    task = read_task(args.task)
    task_file = os.path.join(ROOT, "properties", "task", f"{args.task}.yaml")
    metrics = PROFILE_METRICS if task["target_task"] == "profile" else ITEM_METRICS
    if args.compare:
        first, second = args.compare.split(",")
        compare_tables(
            first, second, [m for m in metrics if not m.startswith("labelcs")]
        )
        return
    if args.recent_popularity:
        recent_popularity(
            args.task,
            task_file,
            args.dataset,
            common,
            [int(d) for d in args.recent_popularity.split(",")],
            args.out,
        )
        return
    seeds = [int(x) for x in args.seeds.split(",") if x]
    specs = [parse_run(r) for r in args.runs.split(",") if r] or [
        (mode, insertion, {}) for mode, insertion in RUNS
    ]
    runs = [(run_label(mode, keys), insertion) for mode, insertion, keys in specs]
    suffix = "_seeds" if seeds else ""
    out = args.out or os.path.join("results", f"bench_peterrec_{args.task}{suffix}.md")
    start_table(
        out,
        common,
        [
            "run",
            "kind",
            "mode",
            "insertion",
            *(["seed"] if seeds else []),
            "trainable / total (share)",
            "epochs",
            *metrics,
            "s/epoch",
        ],
    )

    for kind in args.kinds.split(","):
        causal = kind == "causal"
        labels = [
            (
                mode,
                insertion,
                keys,
                seed,
                f"| {args.task} | {kind} | {run_label(mode, keys)} | {insertion} |",
            )
            for seed in seeds or [None]
            for mode, insertion, keys in specs
        ]
        if seeds:
            labels = [
                (mode, insertion, keys, seed, f"{label} {seed} |")
                for mode, insertion, keys, seed, label in labels
            ]
        if all(has_row(out, label) for *_, label in labels):
            print(f"skip {kind}: every row already in {out}")
            continue
        # the recipe's pretraining on the task's source (the task file's keys stay with fine-tuning)
        scoped = (
            {"pretrain": {"epochs": args.pretrain_epochs}}
            if args.pretrain_epochs is not None
            else None
        )
        stages, feeds = input_stages(
            "PeterRec",
            args.dataset,
            config_file_list=[task_file],
            config_dict=dict(common, causal=causal, pretrained_path=None),
            scoped=scoped,
        )
        pretrained = feeds["pretrained_path"]
        print(
            f"pretrain {kind}: {pretrained} ({stage_minutes(stages[0])} min)",
            flush=True,
        )
        for mode, insertion, keys, seed, label in labels:
            if has_row(out, label):
                print(f"skip {label}")
                continue
            config = dict(
                common,
                **keys,
                causal=causal,
                finetune_mode=mode,
                patch_insertion=insertion,
                pretrained_path=pretrained,
                **({"seed": seed} if seed is not None else {}),
            )
            result = fit_and_measure(
                "PeterRec", args.dataset, config, config_files=[task_file]
            )
            share = 100.0 * result["trainable"] / result["total"]
            line = (
                f"{label} {result['trainable']:,} / {result['total']:,} ({share:.2f}%) | {result['epochs']} | "
                + " | ".join(f"{result['test'][m]:.4f}" for m in metrics)
                + f" | {result['epoch_seconds']:.1f} |"
            )
            append_row(out, line)
    if seeds:
        summarize_seeds(out, metrics, runs)
    print(f"wrote {out}")


def recent_popularity(task, task_file, dataset, common, windows_days, out=None):
    """Non-personal references on an item task's own RecBole split and full-ranking masks: items ranked by their
    training interactions (all users) in the ``d`` days before the ranked row's time, for each window, and over
    the whole training split. Nothing after the ranked row's time is counted. Ties go to the more popular item
    overall, then the lower item id. Per-user Recall@10, NDCG@10 and Recall@50 with one standard error; the window
    is chosen on validation NDCG@10."""
    import numpy as np
    from recbole.data import data_preparation

    from recbole_transfer.config import Config
    from recbole_transfer.quick_start import create_dataset

    config = Config(
        model="PeterRec",
        dataset=dataset,
        config_file_list=[task_file],
        config_dict=dict(common, pretrained_path=None),
    )
    train, valid, test = data_preparation(config, create_dataset(config))
    uid, iid, time = (
        config["USER_ID_FIELD"],
        config["ITEM_ID_FIELD"],
        config["TIME_FIELD"],
    )
    rows = train._dataset.inter_feat
    order = np.argsort(rows[time].numpy(), kind="stable")
    items, times = rows[iid].numpy()[order], rows[time].numpy()[order]
    n_items = train._dataset.item_num
    overall = np.bincount(items, minlength=n_items).astype(float)
    tie_break = overall / (overall.max() + 1) + (n_items - np.arange(n_items)) / (
        n_items * (overall.max() + 1) ** 2
    )

    def evaluate(loader, window):
        ranked = loader._dataset.inter_feat
        hits10, hits50, gains = [], [], []
        for user, item, at in zip(
            ranked[uid].tolist(), ranked[iid].tolist(), ranked[time].tolist()
        ):
            if window is None:
                scores = overall + tie_break
            else:
                lo, hi = np.searchsorted(times, [at - window * 86400, at], "left")
                scores = np.bincount(items[lo:hi], minlength=n_items) + tie_break
            scores[0] = -np.inf  # the padding id
            history = loader.uid2history_item[user]
            if history is not None:
                scores[history.numpy()] = -np.inf
            rank = int((scores > scores[item]).sum())
            hits10.append(rank < 10)
            hits50.append(rank < 50)
            gains.append(1 / math.log2(rank + 2) if rank < 10 else 0.0)
        return {
            "recall@10": mean_se(hits10),
            "ndcg@10": mean_se(gains),
            "recall@50": mean_se(hits50),
        }

    results = {
        window: (evaluate(valid, window), evaluate(test, window))
        for window in [None, *windows_days]
    }
    chosen = max(windows_days, key=lambda w: results[w][0]["ndcg@10"][0])
    lines = [
        f"<!-- {task}: popularity references on {dataset}'s split; one standard error over ranked users -->",
        "| reference | valid N@10 | test R@10 | test N@10 | test R@50 |",
        "|---|---|---|---|---|",
    ]
    for window, (v, t) in results.items():
        name = (
            "popularity over the training split"
            if window is None
            else f"popularity of the {window} days before the row"
            + (" (chosen on valid)" if window == chosen else "")
        )
        cells = [v["ndcg@10"], t["recall@10"], t["ndcg@10"], t["recall@50"]]
        lines.append(
            f"| {name} | " + " | ".join(f"{m:.4f} ± {e:.4f}" for m, e in cells) + " |"
        )
    print("\n".join(lines))
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def parse_run(spec):
    """'mode:insertion[:key=value...]' -> (mode, insertion, {key: value}), values read as the CLI reads them."""
    from recbole_transfer.config import parse_cli_overrides

    mode, insertion, *pairs = spec.split(":")
    return mode, insertion, parse_cli_overrides([f"--{pair}" for pair in pairs])


def run_label(mode, keys):
    return " ".join([mode, *(f"{k}={v}" for k, v in keys.items())])


def read_seeds(path, metrics):
    """{(kind, mode, insertion): {seed: {metric: value}}} from a ``--seeds`` table."""
    return read_seed_table(path, (1, 2, 3), 4, 7, metrics)


def compare_tables(first, second, metrics):
    """Per row of both ``--seeds`` tables: each one's mean ± SE and the paired (same seed) difference second −
    first, absolute and relative to the first's mean."""
    a, b = read_seeds(first, metrics), read_seeds(second, metrics)
    name_a, name_b = (os.path.basename(p)[: -len(".md")] for p in (first, second))
    common = len(os.path.commonprefix([name_a, name_b]))
    name_a, name_b = name_a[common:] or name_a, name_b[common:] or name_b
    rows = [
        f"<!-- mean ± one SE over seeds; differences {name_b} − {name_a}, paired by seed -->",
        "| kind | mode | insertion | seeds | metric | "
        + f"{name_a} | {name_b} | difference | relative |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in [k for k in a if k in b]:
        seeds = sorted(set(a[key]) & set(b[key]))
        if not seeds:
            continue
        for m in metrics:
            before, after = [a[key][s][m] for s in seeds], [b[key][s][m] for s in seeds]
            diff, diff_se = mean_se([y - x for x, y in zip(before, after)])
            mean_a = mean_se(before)[0]
            relative = f"{100 * diff / mean_a:+.1f}%" if mean_a else "–"
            se = "–" if math.isnan(diff_se) else f"{diff_se:.4f}"
            rows.append(
                f"| {' | '.join(key)} | {len(seeds)} | {m} | {mean_se_cell(before)} | {mean_se_cell(after)} | "
                f"{diff:+.4f} ± {se} | {relative} |"
            )
    print("\n".join(rows))
    return rows


def summarize_seeds(out, metrics, runs):
    """Mean ± SE over seeds per (kind, mode, insertion), and paired differences from the first run and, for
    profile tasks, from LabelCS."""
    table = read_seeds(out, metrics)
    shown = [m for m in metrics if not m.startswith("labelcs")]
    labelcs = len(shown) < len(
        metrics
    )  # profile tasks record each split's majority baseline
    baselines = (["LabelCS"] if labelcs else []) + [runs[0][0]]
    rows = [
        f"<!-- from {os.path.basename(out)}: mean ± one SE over seeds; differences paired by seed -->",
        "| kind | mode | insertion | seeds | "
        + " | ".join(shown)
        + "".join(f" | {m} − {b}" for b in baselines for m in shown)
        + " |",
        "|---|---|---|---|" + "---|" * (1 + len(baselines)) * len(shown),
    ]
    for (kind, mode, insertion), by_seed in sorted(table.items()):
        first = table.get((kind, *runs[0]), {})
        cells = [mean_se_cell([v[m] for v in by_seed.values()]) for m in shown]
        if labelcs:
            cells += [
                mean_se_cell([v[m] - v[f"labelcs_{m}"] for v in by_seed.values()])
                for m in shown
            ]
        paired = [s for s in by_seed if s in first]
        cells += [
            (
                mean_se_cell([by_seed[s][m] - first[s][m] for s in paired])
                if paired
                else "–"
            )
            for m in shown
        ]
        rows.append(
            f"| {kind} | {mode} | {insertion} | {len(by_seed)} | "
            + " | ".join(cells)
            + " |"
        )
    if labelcs:  # LabelCS depends on the split only: any row's seeds give it
        splits = next(iter(table.values()), {}).values()
        rows.append(
            f"| LabelCS (majority of each split's training labels) | – | – | {len(splits)} | "
            + " | ".join(
                mean_se_cell([v[f"labelcs_{m}"] for v in splits]) for m in shown
            )
            + " |"
            + " – |" * 2 * len(shown)
        )
    path = out[: -len(".md")] + "_summary.md"
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
