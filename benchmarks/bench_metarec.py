"""MetaRec on one target, in one run: LRURec and SASRec on the target only, joint training on target + sources,
MetaRec and its ablations; full-ranking NDCG@10, Recall@10, MRR@10, seconds per epoch and per iteration (a
meta iteration and a joint step read the same batches, so their ratio is the price of the bi-level update).

    python benchmarks/bench_metarec.py --dataset=Scientific [--runs=lrurec,metarec,...] [--key=value ...]
    python benchmarks/bench_metarec.py --dataset=Instruments \\
        --source_datasets="['Pantry','Games','Electronics','Sports','Toys','Tools']"

``--key=value`` pairs go to every run. Rows are appended to ``--out`` as they finish (rows already there are
skipped); each row trains in ``<out minus .md>-work/<run>-<seed>`` (``resumable``), so a row that was interrupted
continues from its latest epoch when the same command runs again. ``--seeds=2020,2021,2022`` runs each row once
per seed into a table with a seed column and writes the summary ``<out minus .md>_summary.md``: mean ± one
standard error per row and the difference to LRURec on MetaRec's batches (``target``), paired by seed:

    python benchmarks/bench_metarec.py --dataset=Scientific --train_positions=all --MAX_ITEM_LIST_LENGTH=20 \
        --runs=target,pretrained,joint,metarec,control --seeds=2020,2021,2022 --out=results/metarec_seeds.md

Diagnosis of the meta path (``trainer.meta.diagnose``; dropout off unless ``--dropout_prob`` says otherwise): per
parameter group the inner-step size ||theta - phi|| / ||theta||, how far the meta-gradient is from the plain target
gradient, the rescaling weights and the codeword use per VQ head, over ``--iterations`` meta iterations from the
start of training; ``--grid`` repeats it (same data, same initial weights) for each combination of settings:

    python benchmarks/bench_metarec.py --diagnose --dataset=Scientific \\
        --source_datasets="['Tools','Toys','Sports']" --MAX_ITEM_LIST_LENGTH=20 \\
        [--iterations=6] [--grid="inner_lr=0.1,1,10 inner_steps=1,3"] [--checkpoint=saved/MetaRec-....pth]

Seconds per iteration of MetaRec and of joint training on the same batches, in one process, alternating
(``--timing=N`` iterations each, after one warm-up iteration), and the codeword search's share; ``--grid`` as above:

    python benchmarks/bench_metarec.py --timing=20 --dataset=Scientific [--grid="vq_refresh_steps=0,10"]

Seconds of one codeword search per source table (``VectorQuantizer.codes`` at the initial weights), with the
block-maximum argmax (``layers.first_max_index``) and with torch's argmax, alternating ``--search=N`` times; the codes
must be equal:

    python benchmarks/bench_metarec.py --search=5 --dataset=Instruments \\
        --source_datasets="['Pantry','Games','Electronics','Sports','Toys','Tools']"

How many source-item codes change from one iteration to the next (and over 5 and 10), and between inner steps,
while MetaRec trains (``--code_changes=N`` iterations):

    python benchmarks/bench_metarec.py --code_changes=30 --dataset=Scientific [--key=value ...]
"""

import argparse
import ast
import itertools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    append_row,
    fit_and_measure,
    has_row,
    mean_se_cell,
    read_seed_table,
    resumable_in,
    start_table,
)

# name -> (label, model, settings)
RUNS = {
    "lrurec": ("LRURec (target only)", "LRURec", {}),
    # the same target batches as MetaRec (meta_tasks x train_batch_size per step), no source read
    "target": (
        "LRURec on MetaRec's batches (target only)",
        "MetaRec",
        {"transfer": "target"},
    ),
    # the plainest transfer: the body trained on the sources alone, then on the target (item tables are per domain)
    "pretrained": (
        "source-pretrained body (2 source epochs, no VQ), then the target",
        "MetaRec",
        {"transfer": "target", "source_pretrain_epochs": 2, "vq_heads": 0},
    ),
    # MetaRec from the body of ``pretrained`` (no VQ in either, so that the two differ by the meta updates only)
    "pretrained_no_vq": (
        "MetaRec w/o VQ from the source-pretrained body (2 source epochs)",
        "MetaRec",
        {"source_pretrain_epochs": 2, "vq_heads": 0},
    ),
    "control": ("MetaRec, inner_lr 0 (control)", "MetaRec", {"inner_lr": 0.0}),
    # ten times the default inner step: the diagnosis's 30% meta-gradient change (3 steps)
    "large_inner": ("MetaRec, inner_lr 10", "MetaRec", {"inner_lr": 10.0}),
    "sasrec": ("SASRec (stock RecBole, target only)", "SASRec", {}),
    "joint": ("joint training (w/o meta transfer)", "MetaRec", {"transfer": "joint"}),
    "metarec": ("MetaRec", "MetaRec", {}),
    "first_order": ("MetaRec, first-order", "MetaRec", {"first_order": True}),
    # the only setting whose iteration costs what a joint step does (timing: 1.00x; the defaults 4.6x)
    "one_first_order_step": (
        "MetaRec, one first-order inner step",
        "MetaRec",
        {"inner_steps": 1, "first_order": True},
    ),
    # one codeword search per source and iteration, reused by its inner steps: 3x fewer searches, stale codes inside
    "refresh_codes": (
        "MetaRec, codes searched once per iteration (`vq_refresh_steps=1`)",
        "MetaRec",
        {"vq_refresh_steps": 1},
    ),
    "single_head": ("MetaRec w/o multi-head VQ", "MetaRec", {"vq_heads": 1}),
    "no_vq": ("MetaRec w/o VQ", "MetaRec", {"vq_heads": 0}),
    "no_rescaling": (
        "MetaRec w/o gradient rescaling",
        "MetaRec",
        {"gradient_rescaling": False},
    ),
}
METRICS = ["ndcg@10", "recall@10", "mrr@10"]
BASELINE = RUNS["target"][0]
PAPER_METRICS = {
    "metrics": ["Recall", "NDCG", "MRR"],
    "topk": [10],
    "valid_metric": "NDCG@10",
}


# the diagnosis and the timing run in this process, quietly; dropout off so that the meta and the plain
# gradients differ by the inner steps only
QUIET = {"show_progress": False, "log_flops": False, "state": "WARNING"}
DIAGNOSE = dict(QUIET, dropout_prob=0.0)


def parse_grid(text):
    """'inner_lr=0.1,1 inner_steps=1,3' -> one settings dict per combination (values as Python literals)."""
    axes = []
    for item in (text or "").split():
        key, _, values = item.partition("=")
        axes.append([(key, ast.literal_eval(v)) for v in values.split(",")])
    return [dict(point) for point in itertools.product(*axes)] if axes else [{}]


def rebuild(config, train_data, settings):
    """A fresh model and trainer on the already loaded data, with ``settings`` over ``config`` (same seed)."""
    from recbole.utils import init_seed

    from recbole_transfer import registry

    for key, value in settings.items():
        config[key] = value
    init_seed(config["seed"], config["reproducibility"])
    model = registry.get_model_class(config["model"])(config, train_data._dataset)
    model = model.to(config["device"])
    trainer_class = registry.get_trainer_class(
        config["model"], config["MODEL_TYPE"], config["train_stage"]
    )
    return model, trainer_class(config, model)


def span(values):
    low, high = f"{min(values):.2e}", f"{max(values):.2e}"
    return low if low == high else f"{low}-{high}"


def run_diagnosis(dataset, overrides, iterations, grid, checkpoint=None):
    from recbole_transfer.quick_start import build
    from recbole_transfer.trainer.meta import diagnose, diagnosis_report
    from recbole_transfer.utils import load_checkpoint

    config, _, _, (train, _, _) = build(
        "MetaRec", dataset, config_dict=dict(DIAGNOSE, **overrides)
    )
    state = checkpoint and load_checkpoint(checkpoint)["state_dict"]
    rows = []
    for settings in parse_grid(grid):
        model, trainer = rebuild(config, train, settings)
        if state:  # the trained weights (same target and sources), a fresh optimizer
            model.load_state_dict(state)
        records = diagnose(trainer, train, iterations)
        label = ", ".join(f"{k}={v}" for k, v in settings.items()) or "as configured"
        print(f"\n## {dataset}: {label}\n{diagnosis_report(records)}", flush=True)
        steps = [r["groups"]["all"]["step"] for r in records]
        diffs = [r["groups"]["all"]["diff"] for r in records]
        cosines = [r["groups"]["all"]["cos"] for r in records]
        source = [r["groups"]["all"]["source"] for r in records]
        rows.append(
            f"| {label} | {span(steps)} | {span(diffs)} | "
            f"{min(cosines):.4f} | {span(source)} | "
            f"{records[0]['loss_theta']:.3f} -> {records[-1]['loss_theta']:.3f} | "
            f"{statistics.mean(r['source_loss_theta'] - r['source_loss_phi'] for r in records):.4f} | "
            f"{statistics.mean(r['seconds'] for r in records):.2f} |"
        )
    print(
        f"\n## {dataset}: summary over {iterations} meta iterations (all shared weights; step = ||theta - phi|| "
        "/ ||theta||, grad diff = ||g_meta - g_plain|| / ||g_plain||, source grad = ||g_source|| / ||g_plain||: "
        "the source loss's gradient at theta, which a joint step adds)\n"
        "| settings | step | grad diff | min cos | source grad | target loss at theta, first -> last "
        "| source loss drop theta -> phi | s/iteration (diagnosed) |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows))


def run_timing(dataset, overrides, iterations, grid):
    """Median seconds per iteration of MetaRec and of joint training over the same target batches, the two
    alternating iteration by iteration (so that a change in the machine's load reaches both), and the seconds of
    the codeword search (``VectorQuantizer.codes``) inside each, per setting of ``grid``.
    """
    from recbole_transfer.quick_start import build

    config, _, _, (train, _, _) = build(
        "MetaRec", dataset, config_dict=dict(QUIET, **overrides)
    )
    rows = []
    for settings in parse_grid(grid):
        runs = {}
        for transfer in ("meta", "joint"):
            model, trainer = rebuild(config, train, dict(settings, transfer=transfer))
            step = trainer.step
            search_seconds = [0.0]
            if model.quantizer is not None:
                search = model.quantizer.codes

                def timed(z_e, book, search=search, total=search_seconds):
                    start = time.perf_counter()
                    codes = search(z_e, book)
                    total[0] += time.perf_counter() - start
                    return codes

                model.quantizer.codes = timed
            model.train()
            runs[transfer] = (trainer, step, search_seconds, [], [])
        sources, loader = train._dataset.sources, iter(train)
        for index in range(iterations + 1):
            batches = [next(loader) for _ in range(config["meta_tasks"])]
            for trainer, step, search_seconds, times, searches in runs.values():
                search_seconds[0] = 0.0
                start = time.perf_counter()
                step(
                    [b.to(trainer.device) for b in batches],
                    trainer._sample_domains(len(sources)),
                    sources,
                )
                if index:  # the first iteration warms up
                    times.append(time.perf_counter() - start)
                    searches.append(search_seconds[0])
        meta, joint = (
            (statistics.median(r[3]), statistics.mean(r[4])) for r in runs.values()
        )
        label = ", ".join(f"{k}={v}" for k, v in settings.items()) or "as configured"
        rows.append(
            f"| {label} | {meta[0]:.3f} | {joint[0]:.3f} | {meta[0] / joint[0]:.2f} | "
            f"{meta[1]:.3f} | {joint[1]:.3f} |"
        )
        print(rows[-1], flush=True)
    print(
        f"\n## {dataset}: s/iteration over {iterations} iterations (median), MetaRec and joint alternating\n"
        "| settings | MetaRec | joint | ratio | codeword search in MetaRec (mean) | in joint (mean) |\n"
        "|---|---|---|---|---|---|"
    )
    print("\n".join(rows))


def run_search_timing(dataset, overrides, repeats):
    """Median seconds of one search over each source table against the target's, with ``first_max_index`` and
    with torch's argmax in its place, alternating; the two must give the same codes."""
    import torch

    from recbole_transfer.model import layers
    from recbole_transfer.quick_start import build

    _, model, _, _ = build("MetaRec", dataset, config_dict=dict(QUIET, **overrides))
    if model.quantizer is None:
        raise SystemExit("--search needs vq_heads > 0")
    codebook = model.item_embedding.weight.detach()[1:]
    reductions = {
        "block maxima": layers.first_max_index,
        "torch argmax": lambda scores: scores.argmax(-1),
    }
    rows, totals = [], {name: 0.0 for name in reductions}
    for name, table in zip(model.source_names, model.source_item_embedding):
        z_e = table.weight.detach()[1:]
        seconds, codes = {n: [] for n in reductions}, {}
        for _ in range(repeats):
            for reduction, function in reductions.items():
                layers.first_max_index = function
                try:
                    start = time.perf_counter()
                    codes[reduction] = model.quantizer.codes(z_e, codebook)
                    seconds[reduction].append(time.perf_counter() - start)
                finally:
                    layers.first_max_index = reductions["block maxima"]
        if not torch.equal(*codes.values()):
            raise SystemExit(f"{name}: the two searches gave different codes")
        medians = {n: statistics.median(v) for n, v in seconds.items()}
        for n in totals:
            totals[n] += medians[n]
        rows.append(
            f"| {name} | {z_e.shape[0]:,} | {medians['torch argmax']:.3f} | "
            f"{medians['block maxima']:.3f} | {medians['torch argmax'] / medians['block maxima']:.2f} |"
        )
    rows.append(
        f"| all sources | {sum(t.weight.shape[0] - 1 for t in model.source_item_embedding):,} | "
        f"{totals['torch argmax']:.3f} | {totals['block maxima']:.3f} | "
        f"{totals['torch argmax'] / totals['block maxima']:.2f} |"
    )
    print(
        f"\n## {dataset}: one search against {codebook.shape[0]:,} codewords x {model.vq_heads} heads, "
        f"{model.quantizer.chunk_rows(codebook)} rows a block, median of {repeats} (s)\n"
        "| source | items | torch argmax | block maxima | ratio |\n|---|---|---|---|---|"
    )
    print("\n".join(rows))


def run_code_changes(dataset, overrides, iterations, grid):
    """Share of source-item codes that change between iterations and between inner steps
    (``trainer.meta.code_changes``)."""
    from recbole_transfer.quick_start import build
    from recbole_transfer.trainer.meta import code_changes

    config, _, _, (train, _, _) = build(
        "MetaRec", dataset, config_dict=dict(QUIET, **overrides)
    )
    for settings in parse_grid(grid):
        _, trainer = rebuild(config, train, settings)
        changes = code_changes(trainer, train, iterations)
        label = ", ".join(f"{k}={v}" for k, v in settings.items()) or "as configured"
        print(f"\n## {dataset}: {label}, {iterations} iterations")
        for lag, shares in changes["lags"].items():
            if shares:
                print(
                    f"codes changed over {lag} iteration(s): mean {statistics.mean(shares):.2%}, "
                    f"range {min(shares):.2%}-{max(shares):.2%} ({len(shares)} pairs)"
                )
        for step, share in enumerate(changes["inner"], start=1):
            print(
                f"codes changed from the pair's first forward to inner step {step + 1}: {share:.2%}"
            )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="Scientific", help="the target")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="print the diagnosis of the meta path (no results table)",
    )
    parser.add_argument(
        "--seeds", default=None, help="'2020,2021,2022': each row once per seed"
    )
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="--diagnose from a saved MetaRec model's weights instead of the initial ones",
    )
    parser.add_argument("--grid", default=None, help="'key=v1,v2 key2=...'")
    parser.add_argument("--timing", type=int, default=0, help="iterations to time")
    parser.add_argument(
        "--code_changes",
        type=int,
        default=0,
        help="iterations over which to count codeword changes",
    )
    parser.add_argument(
        "--search",
        type=int,
        default=0,
        help="repetitions of one codeword search per source, two argmax forms",
    )
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from recbole_transfer.config import parse_cli_overrides

    # RecBole's Config reads sys.argv: the overrides reach it through config_dict instead
    sys.argv = sys.argv[:1]
    if args.diagnose:
        run_diagnosis(
            args.dataset,
            parse_cli_overrides(overrides),
            args.iterations,
            args.grid,
            args.checkpoint,
        )
        return
    if args.timing:
        run_timing(args.dataset, parse_cli_overrides(overrides), args.timing, args.grid)
        return
    if args.search:
        run_search_timing(args.dataset, parse_cli_overrides(overrides), args.search)
        return
    if args.code_changes:
        run_code_changes(
            args.dataset, parse_cli_overrides(overrides), args.code_changes, args.grid
        )
        return
    common = dict(PAPER_METRICS, **parse_cli_overrides(overrides))
    out = args.out or os.path.join("results", f"bench_metarec_{args.dataset}.md")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
    start_table(
        out,
        common,
        [
            "run",
            "target",
            *(["seed"] if args.seeds else []),
            "params (total)",
            "epochs",
            "best epoch",
            *METRICS,
            "s/epoch",
            "s/iteration",
            "fit min",
        ],
    )
    for seed in seeds:
        for name in args.runs.split(","):
            label, model, settings = RUNS[name]
            row = f"| {label} | {args.dataset} |" + (
                "" if seed is None else f" {seed} |"
            )
            if has_row(out, row):
                print(f"skip {row}")
                continue
            config = dict(
                common, **settings, **({} if seed is None else {"seed": seed})
            )
            # each row's own folder: an interrupted row resumes from its latest state when the command runs again
            base = common.get("checkpoint_dir", f"{os.path.splitext(out)[0]}-work")
            config.update(resumable_in(os.path.join(base, f"{name}-{seed}")))
            if "resume_checkpoint" in config:
                print(f"resume {row} from {config['resume_checkpoint']}")
            result = fit_and_measure(model, args.dataset, config)
            iteration = result["iteration_seconds"]
            line = (
                f"{row} {result['total']:,} | {result['epochs']} | {result['best_epoch']} | "
                + " | ".join(f"{result['test'][m]:.4f}" for m in METRICS)
                + f" | {result['epoch_seconds']:.1f} | {'' if iteration is None else f'{iteration:.2f}'} "
                f"| {result['fit_minutes']:.1f} |"
            )
            append_row(out, line)
    if args.seeds:
        write_summary(out)
    print(f"wrote {out}")


def write_summary(path):
    # {run label: {seed: {metric: value}}}; the columns: run, target, seed, params, epochs, best epoch, metrics
    rows = {
        key[0]: by_seed
        for key, by_seed in read_seed_table(path, (0,), 2, 6, METRICS).items()
    }
    baseline = rows.get(BASELINE, {})

    lines = [
        f"Summary of {os.path.basename(path)}: mean ± one standard error over seeds; the difference to "
        f"'{BASELINE}' paired by seed (seeds both have).",
        "",
        "| run | seeds | "
        + " | ".join(METRICS)
        + " | "
        + " | ".join(f"{m} − LRURec (same batches)" for m in METRICS)
        + " |",
        "|---|---|" + "---|" * (2 * len(METRICS)),
    ]
    for label, by_seed in rows.items():
        paired = sorted(set(by_seed) & set(baseline))
        diffs = [
            (
                mean_se_cell([by_seed[s][m] - baseline[s][m] for s in paired])
                if paired and label != BASELINE
                else ""
            )
            for m in METRICS
        ]
        lines.append(
            f"| {label} | {len(by_seed)} | "
            + " | ".join(
                mean_se_cell([v[m] for v in by_seed.values()]) for m in METRICS
            )
            + " | "
            + " | ".join(diffs)
            + " |"
        )
    summary = (
        path[: -len(".md")] + "_summary.md"
        if path.endswith(".md")
        else path + "_summary.md"
    )
    with open(summary, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {summary}")


if __name__ == "__main__":
    main()
