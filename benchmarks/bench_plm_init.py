"""PLM-initialized SASRec / BERT4Rec on one target, in one run: stock models vs every init_type x embedding_mode,
full ranking and 100 sampled negatives (uni100), plus the behavior-tuning cost.

    python benchmarks/bench_plm_init.py --dataset=Scientific --sources=Electronics,Sports,Toys,Tools \\
        [--models=SASRec,BERT4Rec] [--tune="max_train_examples=8000"] [--key=value ...]

Behavior tuning comes first, from the PLM-init recipe (``recbole_transfer.recipe``): stage PT (BehaviorTuning on
``--sources``) and stage FT (PT tuned on the target's training split), each run once and then reused from the
stage cache ``<saved>/stages/`` (``--saved`` defaults to ``--checkpoint_dir``, else ``saved``); the PT and FT rows
start from their outputs. ``--tune`` adds tuning-only keys (space-separated key=value) to both stages, FT always
tuning on every training example (max_train_examples=0); ``--key=value`` pairs go to every model run (and the
stages' shared keys: seed, data_path, plm_name...). The tuning table ``bench_plm_init_tuning.md`` (next to
``--out``) gets one row per stage from its ``behavior_tuning.json``. Rows are appended to ``--out`` as they finish
(rows already there are skipped); the checkpoints of freeze runs are kept in ``<out>.json`` for the further-train
rows.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    METRICS,
    SAMPLED_METRICS,
    fit_and_measure,
    input_stages,
    machine,
    stage_output,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INITS = {"LF": "plm", "PT": "pretrain", "FT": "finetune"}
HEADER = (
    "| run | dataset | trainable / total params | epochs run | H@5 | H@10 | N@5 | N@10 | R@10 | N@10 | R@50 "
    "| s/epoch (train, median) | total fit (min) |\n"
    "| | | | | uni100 | uni100 | uni100 | uni100 | full | full | full | | |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def tuning_row(stage, folder):
    with open(os.path.join(folder, "behavior_tuning.json"), encoding="utf-8") as f:
        info = json.load(f)
    return (
        f"| {stage} | {','.join(info['datasets'])} | {info['plm_tuning']} | {info['epochs']} | "
        f"{info['train_examples_per_epoch']:,} | {info['tuning_seconds'] / 60:.1f} | {folder} |"
    )


def row(label, dataset, result):
    sampled, full = result["sampled"], result["test"]
    return (
        f"| {label} | {dataset} | {result['trainable']:,} / {result['total']:,} | {result['epochs']} | "
        + " | ".join(f"{sampled[k]:.4f}" for k in SAMPLED_METRICS)
        + " | "
        + " | ".join(f"{full[k]:.4f}" for k in METRICS[:3])
        + f" | {result['epoch_seconds']:.1f} | {result['fit_minutes']:.1f} |"
    )


def runs_for(model, pt, ft, common):
    """label -> (model name, config) for one backbone, in the order they must run (further-train rows get the
    FT freeze checkpoint when they run)."""
    hidden = common.get("hidden_size")
    runs = {
        f"{model} (stock RecBole, hidden {hidden or 64})": (
            model,
            dict(common, hidden_size=hidden or 64),
        )
    }
    if (
        not hidden
    ):  # at the encoder's width, random init is another run (at a set width it is the stock row)
        runs[f"{model} none (random, encoder width)"] = (
            f"PLMInit{model}",
            dict(common, init_type="none", embedding_mode="trainable"),
        )
    for short, init_type in INITS.items():
        path = {"PT": pt, "FT": ft}.get(short)
        for mode in ("freeze", "trainable"):
            runs[f"{model} {short} {mode}"] = (
                f"PLMInit{model}",
                dict(
                    common, init_type=init_type, init_plm_path=path, embedding_mode=mode
                ),
            )
    for mode in ("further_all", "further_emb"):
        runs[f"{model} FT {mode}"] = (
            f"PLMInit{model}",
            dict(common, embedding_mode=mode),
        )
    return runs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="Scientific")
    parser.add_argument("--sources", default="Electronics,Sports,Toys,Tools")
    parser.add_argument("--models", default="SASRec,BERT4Rec")
    parser.add_argument(
        "--tune",
        default="",
        help="tuning-only overrides, e.g. 'max_train_examples=8000'",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated labels to run (default: all)"
    )
    parser.add_argument(
        "--saved",
        default=None,
        help="checkpoint_dir of the tuning stages, cached in <saved>/stages/ (default: --checkpoint_dir, else saved)",
    )
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, ROOT)
    from recbole_transfer.config import parse_cli_overrides

    common = parse_cli_overrides(overrides)
    tune = dict(pair.split("=", 1) for pair in args.tune.split())
    out = args.out or os.path.join("results", f"bench_plm_init_{args.dataset}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    # the recipe of init_type=finetune: PT on the sources, then FT on the target (both backbones share them)
    stage_config = dict(common, init_type="finetune", source_datasets=args.sources)
    stage_config.pop("init_plm_path", None)
    if args.saved:
        stage_config["checkpoint_dir"] = args.saved
    stages, _ = input_stages(
        f"PLMInit{args.models.split(',')[0]}",
        args.dataset,
        config_dict=stage_config,
        scoped={"PT": tune, "FT": dict(tune, max_train_examples=0)},
    )
    pt, ft = stage_output(stages, "PT"), stage_output(stages, "FT")
    tuning_out = os.path.join(os.path.dirname(out), "bench_plm_init_tuning.md")
    if not os.path.isfile(tuning_out):
        with open(tuning_out, "w", encoding="utf-8") as f:
            f.write(
                f"<!-- {machine()} -->\n| stage | tuned on | tuning | epochs | examples/epoch | minutes | folder |\n"
                "|---|---|---|---|---|---|---|\n"
            )
    with open(tuning_out, encoding="utf-8") as f:
        tuned = f.read()
    with open(tuning_out, "a", encoding="utf-8") as f:
        for stage, folder in (("PT", pt), ("FT", ft)):
            line = tuning_row(stage, folder)
            if line not in tuned:
                f.write(line + "\n")

    if not os.path.isfile(out):
        with open(out, "w", encoding="utf-8") as f:
            f.write(
                f"<!-- {machine()}; common: {json.dumps(common)}; PT: {pt}; FT: {ft} -->\n"
                + HEADER
            )
    checkpoint_file = out + ".json"
    checkpoints = {}
    if os.path.isfile(checkpoint_file):
        with open(checkpoint_file, encoding="utf-8") as f:
            checkpoints = json.load(f)
    only = set(filter(None, args.only.split(",")))
    for model in args.models.split(","):
        for label, (model_name, config_dict) in runs_for(model, pt, ft, common).items():
            with open(out, encoding="utf-8") as f:
                if f"| {label} | {args.dataset} |" in f.read():
                    print(f"skip {label}: already in {out}")
                    continue
            if only and label not in only:
                continue
            if "further" in label:
                config_dict = dict(
                    config_dict, pretrained_path=checkpoints[f"{model} FT freeze"]
                )
            result = fit_and_measure(
                model_name, args.dataset, config_dict, sampled="uni100"
            )
            line = row(label, args.dataset, result)
            print(line, flush=True)
            with open(out, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            checkpoints[label] = result["checkpoint"]
            with open(checkpoint_file, "w", encoding="utf-8") as f:
                json.dump(checkpoints, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
