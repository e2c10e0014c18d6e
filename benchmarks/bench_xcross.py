"""X-Cross on one target, in one run and in this order: a PromptLoRA adapter per source domain; on the target the
zero-shot sources, Pooler+Scorer of the best source, a new LoRA, X-Cross and X-Cross's untrained starting
point; the learning curve of X-Cross and LoRA over training-set sizes (several random subsets each); X-Cross's
ablations. Every row: Hit@1/3/10 and MRR@10 on 30 popularity-sampled candidates, trainable parameters, seconds
per epoch.

    python benchmarks/bench_xcross.py --target=Tools --sources=Sports,Electronics [--sizes=50,100,250,500,1000]
        [--subsets=3] [--first_subset=0] [--parts=baselines,lora,xcross,start,curve,ablations]
        [--xcross_lrs=1e-4,3e-4] [--validate=all|choices] [--source_examples=N] [--source_eval_users=N]
        [--key=value ...]

``--key=value`` pairs go to every run; ``--source_examples`` and ``--source_eval_users`` set the sources'
``max_train_examples`` and ``max_eval_users`` apart from the target's (fix ``--source_eval_users`` when runs of one
table differ in ``max_eval_users``: the source stages are keyed by it, and each run would otherwise train its own).
``--parts`` runs only some row groups after the source adapters: ``baselines`` (zero-shot sources, Pooler+Scorer),
``zeroshot`` (only the zero-shot rows of ``--sources``), ``lora`` (a new LoRA on the target), ``xcross`` (X-Cross),
``start`` (X-Cross's untrained starting point), ``curve`` (``--curve_models`` of ``xcross,lora``), ``ablations``
(``--ablations``, of ``Layers,Interactions,Experts``). A part that needs no source (``lora``, a LoRA-only curve)
skips the source adapters. Rows are appended to ``--out`` as they finish (rows already
there are skipped); results are kept in ``<out>.json``, into which each row is merged when it finishes, so runs of
other parts can share one ``--out`` at the same time. The source adapters are XCross's recipe stages (as
``run_recbole_transfer.py --model=XCross`` runs them: one PromptLoRA per source with the run's ``--key=value`` pairs,
cached under ``saved/stages/`` by their settings and reused by any table with the same ones); each is then tested
on its own domain.

``--xcross_lrs``: X-Cross is trained once per learning rate (a row each) and the one with the best validation
MRR@10 is the X-Cross of the ablations and the learning curve (the test split never chooses; a run without the
``xcross`` part reads those rows from ``<out>.json``). ``--validate=choices`` validates only the rows a choice is
made on (the zero-shot sources, the X-Cross learning rates); every other row trains its epochs without validation
and tests the last epoch's model (``eval_step=0``; X-Cross's untrained start is only tested), which halves the cost
of evaluating a language model per (user, candidate) prompt. Each row records its test users' ranks in
``<out>.json``; the ``SE`` column is one standard error of MRR@10 over those users, sqrt(var / n) of the per-user
reciprocal ranks.

    python benchmarks/bench_xcross.py --report=results/bench_xcross_Tools.md.json

``--report``: a table's rows from its ``.json`` with X-Cross's paired differences of MRR@10 (per user, the same test
users in every row) against the other rows, and X-Cross minus new LoRA at each learning-curve size.

    python benchmarks/bench_xcross.py --diagnose --dataset=Sports [--shuffled_targets] [--key=value ...]

``--diagnose``: is PromptLoRA's training path learning (docs/RESULTS.md, "X-Cross / PromptLoRA training:
diagnosis")? One PromptLoRA run on ``--dataset`` printing, before training and after every epoch, the training
loss per batch (train mode: dropout on, fresh negatives), the eval-mode multiple-choice loss of the validation
users' (history, target) pairs against fixed popularity negatives (``held-out``) and valid MRR@10; before them the
references: chance, a constant-score model's valid MRR@10, and a content-similarity scorer (cosine between the
mean of the history items' and the candidate's mean-pooled title vectors) on the training task and on
validation. ``--shuffled_targets`` trains on the targets permuted across training rows (control).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    append_row,
    fit_and_measure,
    input_stages,
    mean_se,
    stage_minutes,
    start_table,
)

METRICS = ["hit@1", "hit@3", "hit@10", "mrr@10"]
VALIDATE = ("all", "choices")
ABLATIONS = [
    ("X-Cross -Layers (alpha=beta=0)", {"xcross_alpha": 0.0, "xcross_beta": 0.0}),
    ("X-Cross -Interactions (beta=0)", {"xcross_beta": 0.0}),
    ("X-Cross -Experts (alpha=0)", {"xcross_alpha": 0.0}),
]
PARTS = ["baselines", "zeroshot", "lora", "xcross", "start", "curve", "ablations"]


def diagnose(dataset, overrides, shuffled_targets=False):
    import math
    import time

    import torch
    import torch.nn.functional as F

    from recbole_transfer import plm
    from recbole_transfer.model.xcross import popularity_negatives
    from recbole_transfer.quick_start import build

    config_dict = dict(
        dict(show_progress=False, log_flops=False, state="WARNING"), **overrides
    )
    config, model, trainer, (train, valid, _) = build(
        "PromptLoRA", dataset, config_dict=config_dict
    )
    rows, k = train._dataset.inter_feat, model.n_negatives
    history = model.history_items
    print(
        f"{dataset}: {len(rows)} training rows, {model.n_negatives} negatives, chance loss "
        f"ln({k + 1}) = {math.log(k + 1):.4f}; chance MRR@10 on 30 candidates "
        f"{sum(1 / r for r in range(1, 11)) / 30:.4f}",
        flush=True,
    )

    def evaluate(predict):
        saved, model.predict = model.predict, predict
        try:
            return trainer.evaluate(valid, load_best_model=False)["mrr@10"]
        finally:
            model.predict = saved

    # references: a constant-score model and a content-similarity scorer
    constant = evaluate(
        lambda interaction: torch.zeros(len(interaction[model.ITEM_ID]))
    )
    tokenizer, encoder = plm.load_plm(config["plm_name"])
    vectors = F.normalize(
        plm.encode_texts(
            list(train._dataset.item_texts),
            tokenizer,
            encoder,
            pooling="mean",
            show_progress=False,
        ),
        dim=-1,
    )

    def similarity(seq, lengths, candidates):
        shown = torch.stack(
            [
                vectors[s[max(0, n - history) : n]].mean(0)
                for s, n in zip(seq, lengths.tolist())
            ]
        )
        return (vectors[candidates] * shown.unsqueeze(1)).sum(-1)

    negatives = popularity_negatives(
        rows["item_id"], model.item_counts, k, torch.Generator().manual_seed(0)
    )
    scores = similarity(
        rows["item_id_list"],
        rows["item_length"],
        torch.cat([rows["item_id"].unsqueeze(1), negatives], 1),
    )
    ranks = 1 + (scores[:, 1:] > scores[:, :1]).sum(1)
    target = torch.zeros(len(rows), dtype=torch.long)
    losses = {t: F.cross_entropy(t * scores, target).item() for t in (1, 2, 5, 10, 20)}
    best = min(losses, key=losses.get)
    cosine_valid = evaluate(
        lambda i: similarity(
            i[model.ITEM_SEQ], i[model.ITEM_SEQ_LEN], i[model.ITEM_ID].unsqueeze(1)
        ).squeeze(1)
    )
    print(
        f"constant scores: valid MRR@10 {constant:.4f}\n"
        f"content similarity: training task MRR {float((1.0 / ranks).mean()):.4f} "
        f"(chance {sum(1 / r for r in range(1, k + 2)) / (k + 1):.4f}), best loss "
        f"{losses[best]:.4f} (x{best}); valid MRR@10 {cosine_valid:.4f}",
        flush=True,
    )

    if shuffled_targets:  # the control: every row's target is another row's
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
        rows["item_id"] = rows["item_id"][order]
    held = valid._dataset.inter_feat
    held_negatives = popularity_negatives(
        held["item_id"], model.item_counts, k, torch.Generator().manual_seed(123)
    )

    def held_out_loss():
        model.eval()
        with torch.no_grad():
            candidates = torch.cat([held["item_id"].unsqueeze(1), held_negatives], 1)
            scores = model.score_prompts(
                model.prompt_tokens(
                    held["item_id_list"], held["item_length"], candidates
                )
            ).view(len(candidates), -1)
        return F.cross_entropy(
            scores, torch.zeros(len(candidates), dtype=torch.long)
        ).item()

    print(
        f"epoch 0 (untrained): held-out loss {held_out_loss():.4f} valid MRR@10 "
        f"{trainer.evaluate(valid, load_best_model=False)['mrr@10']:.4f}",
        flush=True,
    )
    for epoch in range(int(config["epochs"])):
        started = time.time()
        total = trainer._train_epoch(train, epoch)
        seconds = time.time() - started
        print(
            f"epoch {epoch + 1}: training loss per batch {total / len(train):.4f} ({seconds:.0f} s) "
            f"held-out loss {held_out_loss():.4f} valid MRR@10 "
            f"{trainer.evaluate(valid, load_best_model=False)['mrr@10']:.4f}",
            flush=True,
        )


def reciprocal_ranks(ranks, cutoff=10):
    """Per-user reciprocal rank at ``cutoff`` (0 beyond it) of the positives' ranks."""
    return [1.0 / r if r <= cutoff else 0.0 for r in ranks]


def standard_error(values):
    """One standard error of the mean, sqrt(var / n) with the sample variance (n - 1); nan below two values."""
    return mean_se(values)[1]


def paired(state, key, reference):
    """Mean per-user difference of RR@10 between two rows of ``state`` and its standard error (the rows rank the
    same test users in the same order), or None where a row lacks its ranks."""
    a, b = state[key].get("test_ranks"), state[reference].get("test_ranks")
    if not a or not b or len(a) != len(b):
        return None
    differences = [x - y for x, y in zip(reciprocal_ranks(a), reciprocal_ranks(b))]
    return sum(differences) / len(differences), standard_error(differences)


def source_stage_settings(common, source_examples=None, source_eval_users=None):
    """The settings of the source adapters' stages: every run's keys but X-Cross's own, with ``max_train_examples``
    and ``max_eval_users`` of their own where given. A stage is keyed by all of its settings, ``max_eval_users``
    included (it picks the best-validation epoch), so runs with different target ``max_eval_users`` share one
    source adapter only when ``source_eval_users`` fixes it."""
    settings = {k: v for k, v in common.items() if not k.startswith("xcross_")}
    if source_examples is not None:
        settings["max_train_examples"] = source_examples
    if source_eval_users is not None:
        settings["max_eval_users"] = source_eval_users
    return settings


def report(state_file):
    """The rows of ``<out>.json`` as one markdown table (SE: one standard error of MRR@10 over the test users) and
    X-Cross's paired differences of MRR@10 against the other rows."""
    with open(state_file, encoding="utf-8") as f:
        state = json.load(f)

    def cells(key):
        label, dataset, examples = [c.strip() for c in key.strip("|").split("|")]
        r = state[key]
        valid = r["valid"].get("mrr@10")
        seconds = r.get("epoch_seconds")
        return (
            f"| {label} | {dataset} | {examples} | {r.get('trainable', 0):,} / {r.get('total', 0):,} | "
            f"{r.get('epochs', '')} | "
            + " | ".join(f"{r['test'][m]:.4f}" for m in METRICS)
            + f" | {r.get('mrr@10_se', float('nan')):.4f} | {'' if valid is None else f'{valid:.4f}'} | "
            + f"{'' if not seconds else f'{seconds:.0f}'} |"
        )

    lines = [
        "| run | evaluated on | train examples | trainable / total | epochs | Hit@1 | Hit@3 | Hit@10 | MRR@10 "
        "| SE | valid MRR@10 | s/epoch |",
        "|---" * 12 + "|",
    ]
    lines += [cells(key) for key in state]
    # X-Cross: the learning-rate row with the best validation MRR@10
    tried = [k for k in state if k.startswith("| X-Cross, lr ")]
    if tried:
        chosen = max(tried, key=lambda k: state[k]["valid"].get("mrr@10", 0.0))
        lines += [
            "",
            f"X-Cross = {chosen.split('|')[1].strip()} (best valid MRR@10)",
            "",
        ]
        lines += [
            "| X-Cross minus | MRR@10 difference | SE (paired over users) |",
            "|---|---|---|",
        ]
        for key in state:
            if key == chosen or " on Sports" in key or " on Electronics" in key:
                continue
            if "subset" in key:
                continue
            result = paired(state, chosen, key)
            if result:
                lines.append(
                    f"| {key.split('|')[1].strip()} | {result[0]:+.4f} | {result[1]:.4f} |"
                )
    curve = {}
    for key in state:
        label, _, examples = [c.strip() for c in key.strip("|").split("|")]
        if ", subset " in label:
            model, subset = label.split(", subset ")
            curve.setdefault((examples, subset), {})[model] = key
    if curve:
        lines += [
            "",
            "| train examples | subset | X-Cross minus new LoRA | SE (paired) |",
            "|---|---|---|---|",
        ]
        for (examples, subset), keys in curve.items():
            if len(keys) == 2:
                result = paired(state, keys["X-Cross"], keys["new LoRA"])
                if result:
                    lines.append(
                        f"| {examples} | {subset} | {result[0]:+.4f} | {result[1]:.4f} |"
                    )
    print("\n".join(lines))


def main():
    if any(a.split("=")[0] == "--report" for a in sys.argv[1:]):
        parser = argparse.ArgumentParser()
        parser.add_argument("--report", required=True, help="<out>.json of a table")
        report(parser.parse_args().report)
        return
    if "--diagnose" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--diagnose", action="store_true")
        parser.add_argument("--dataset", default="Sports")
        parser.add_argument("--shuffled_targets", action="store_true")
        args, overrides = parser.parse_known_args()
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from recbole_transfer.config import parse_cli_overrides

        sys.argv = sys.argv[:1]  # RecBole's Config reads the command line
        diagnose(args.dataset, parse_cli_overrides(overrides), args.shuffled_targets)
        return
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
    parser.add_argument(
        "--xcross_lrs",
        default=None,
        help="learning rates of X-Cross, chosen among on valid MRR@10 (default: learning_rate of the run)",
    )
    parser.add_argument(
        "--validate",
        default="all",
        choices=VALIDATE,
        help="all: every row validates every eval_step; choices: only the rows a choice is made on",
    )
    parser.add_argument(
        "--curve_models",
        default="xcross,lora",
        help="the models of the learning curve, of xcross,lora",
    )
    parser.add_argument(
        "--ablations",
        default="Layers,Interactions,Experts",
        help="which ablations the ablations part runs (names after the minus sign)",
    )
    parser.add_argument(
        "--source_examples",
        type=int,
        default=None,
        help="max_train_examples of the source adapters (default: that of the run)",
    )
    parser.add_argument(
        "--source_eval_users",
        type=int,
        default=None,
        help="max_eval_users of the source adapters (default: that of the run)",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--adapters", default=None, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.adapters:
        raise SystemExit(
            "--adapters: the source adapters are XCross's cached recipe stages (saved/stages/), reused by any run "
            "with the same settings; drop the option"
        )
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
            "SE",
            "valid mrr@10",
            "s/epoch",
        ],
    )
    state_file = out + ".json"
    state = (
        json.load(open(state_file, encoding="utf-8"))
        if os.path.isfile(state_file)
        else {}
    )

    def load_state():  # rows another run of this table (another --parts) has written since
        if os.path.isfile(state_file):
            with open(state_file, encoding="utf-8") as f:
                state.update(json.load(f))

    def save_state():
        own = dict(state)
        load_state()
        state.update(own)
        atomic_write_text(state_file, json.dumps(state, indent=1))

    all_examples = int(common.get("max_train_examples") or 0) or "all"

    def row_key(label, dataset, examples=all_examples):
        return f"| {label} | {dataset} | {examples} |"

    def row(
        label, model, dataset, settings, examples=all_examples, choice=False, stage=None
    ):
        """One table row; ``choice``: a choice is made on its validation result (always validated); ``stage``: the
        recipe stage that trained the model this row tests (its training time is the stage's).
        """
        key = row_key(label, dataset, examples)
        load_state()
        if key in state:
            return state[key]
        settings = dict(common, **settings)
        if args.validate == "choices" and not choice:
            settings["eval_step"] = 0  # train without validation, test the last epoch
        result = fit_and_measure(model, dataset, settings)
        if stage:
            result["fit_minutes"] = stage_minutes(stage)
        trained = (
            result["epochs"] > 0 or stage is not None
        )  # zero-shot rows train nothing
        seconds = f"{result['epoch_seconds']:.1f}" if result["epochs"] > 0 else ""
        epochs = f"stage, {result['fit_minutes']} min" if stage else result["epochs"]
        ranks = result.get("test_ranks")
        se = standard_error(reciprocal_ranks(ranks)) if ranks else float("nan")
        valid = result["best_valid"].get("mrr@10")
        line = (
            f"{key} {result['trainable'] if trained else 0:,} / {result['total']:,} | {epochs} | "
            + " | ".join(f"{result['test'][m]:.4f}" for m in METRICS)
            + f" | {se:.4f} | {'' if valid is None else f'{valid:.4f}'} | {seconds} |"
        )
        append_row(out, line)
        state[key] = {
            "valid": result["best_valid"],
            "test": result["test"],
            "test_ranks": ranks,
            "mrr@10_se": se,
            "trainable": result["trainable"] if trained else 0,
            "total": result["total"],
            "epochs": epochs,
            "epoch_seconds": result["epoch_seconds"] if result["epochs"] > 0 else None,
            "fit_minutes": result["fit_minutes"],
        }
        save_state()
        return state[key]

    # the source adapters are the recipe's stages of XCross (one PromptLoRA per source, cached under
    # saved/stages/ by their settings, so tables with the same settings share them); each is tested on its domain
    source_settings = source_stage_settings(
        common, args.source_examples, args.source_eval_users
    )
    source_examples = args.source_examples or all_examples
    curve_models = args.curve_models.split(",")
    needs_sources = (
        not parts
        or bool(set(parts) - {"lora", "curve"})
        or ("curve" in parts and "xcross" in curve_models)
    )
    adapters, feeds = {}, {}
    if needs_sources:
        stages, feeds = input_stages(
            "XCross",
            args.target,
            config_dict=dict(common, source_datasets=sources),
            scoped={"source": source_settings},
        )
        named = {stage["name"]: stage for stage in stages}
        for source in sources:
            stage = named[f"source {source}"]
            adapters[source] = stage["output"]
            row(
                f"PromptLoRA on {source}",
                "PromptLoRA",
                source,
                dict(source_settings, epochs=0, init_adapter=stage["output"]),
                examples=source_examples,
                stage=stage,
            )

    xcross = dict(source_datasets=sources, **feeds)
    if "zeroshot" in parts and "baselines" not in parts:
        for (
            s
        ) in (
            sources
        ):  # only the zero-shot rows (--sources may name some of the sources)
            row(
                f"zero-shot {s} adapter",
                "PromptLoRA",
                args.target,
                {"epochs": 0, "init_adapter": adapters[s]},
                choice=True,
            )
    if "baselines" in parts:
        zero_shot = {
            s: row(
                f"zero-shot {s} adapter",
                "PromptLoRA",
                args.target,
                {"epochs": 0, "init_adapter": adapters[s]},
                choice=True,
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
    if "lora" in parts:
        row("new LoRA on the target", "PromptLoRA", args.target, {})
    if args.xcross_lrs:  # the integrators' step size, chosen on validation
        lrs = [float(lr) for lr in args.xcross_lrs.split(",") if lr]
        if "xcross" in parts:
            tried = {
                lr: row(
                    f"X-Cross, lr {lr:g}",
                    "XCross",
                    args.target,
                    dict(xcross, learning_rate=lr),
                    choice=True,
                )
                for lr in lrs
            }
        else:  # the choice of an earlier run with --parts=xcross
            keys = {lr: row_key(f"X-Cross, lr {lr:g}", args.target) for lr in lrs}
            missing = [f"{lr:g}" for lr, key in keys.items() if key not in state]
            if missing:
                raise SystemExit(
                    f"--xcross_lrs: no X-Cross row for lr {', '.join(missing)} in {state_file}: "
                    "run --parts=xcross first"
                )
            tried = {lr: state[key] for lr, key in keys.items()}
        chosen = max(lrs, key=lambda lr: tried[lr]["valid"].get("mrr@10", 0.0))
        print(f"X-Cross learning rate chosen on valid MRR@10: {chosen:g}", flush=True)
        xcross = dict(xcross, learning_rate=chosen)
    elif "xcross" in parts:
        row("X-Cross", "XCross", args.target, xcross)
    if "start" in parts:
        # its starting point: integrators at zero, the mean of the sources' states, the first source's head
        row("X-Cross before training", "XCross", args.target, dict(xcross, epochs=0))
    if "curve" in parts:  # the learning curve before the ablations
        for size in [int(s) for s in args.sizes.split(",") if s]:
            for subset in range(args.first_subset, args.first_subset + args.subsets):
                limit = {"max_train_examples": size, "train_subset_seed": subset}
                if "xcross" in curve_models:
                    row(
                        f"X-Cross, subset {subset}",
                        "XCross",
                        args.target,
                        dict(xcross, **limit),
                        examples=size,
                    )
                if "lora" in curve_models:
                    row(
                        f"new LoRA, subset {subset}",
                        "PromptLoRA",
                        args.target,
                        limit,
                        examples=size,
                    )
    if "ablations" in parts:
        chosen_ablations = args.ablations.split(",")
        for label, settings in ABLATIONS:
            if label.split(" -")[1].split(" ")[0] in chosen_ablations:
                row(label, "XCross", args.target, dict(xcross, **settings))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
