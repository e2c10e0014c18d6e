r"""Does UniSRec's pretraining transfer? Pretrained vs from-scratch vs stock SASRec on several targets, the target
gain against pretraining epochs (a curve) and against the source domains (one vs all: the paper's Figure 2), each
over several seeds, inside wall-clock budgets so the whole study fits one machine lease.

    python benchmarks/bench_unisrec_transfer.py --targets=Scientific,Tools,Toys --single_sources=Tools,Electronics \
        --seeds=2020,2021,2022 --jobs=12 --pretrain_minutes=4 --finetune_minutes=8 \
        --out=results/unisrec_transfer [--key=value ...]
    python benchmarks/bench_unisrec_transfer.py --targets=Scientific --checkpoints="shipped=pretrained/X.pth;..." \
        [--modes=transductive,inductive] [--no-sasrec] --out=results/unisrec_given
    python benchmarks/bench_unisrec_transfer.py --summarize --out=results/unisrec_transfer

1. Item text: the matrices of every domain below (plain, and word-dropped for the pretraining sources) are
   encoded once, one domain at a time, into the text cache the runs read (merged datasets read the same files).
2. Pretraining (the CLI's ``--train_stage=pretrain``, one process per source set, all at once): per target on
   every shipped dataset with item text except the target ("all"); for the first target also on each of
   ``--single_sources``. A snapshot every ``--save_step`` epochs; a run ends after ``--pretrain_epochs`` or
   ``--pretrain_minutes`` from the start, whichever comes first (then the snapshots written by then are its points).
3. Fine-tuning (``--jobs`` fresh processes at a time, in priority order; none starts after ``--finetune_minutes``
   from the start): SASRec and UniSRec from scratch, while pretraining runs unless ``--no-overlap``; then per target
   its last "all" snapshot (transductive, then inductive), the first target's single-source snapshots (at the
   "all" snapshot's epochs where they have them), its earlier "all" snapshots (the curve, transductive) and, with
   ``--unfrozen``, inductive fine-tuning with the Transformer trained too. Every run takes the ``--key=value`` pairs; one run per seed in
   ``--seeds``. Overlap keeps the accelerator busy but takes CPU cores from the pretraining processes' data loading.

With ``--checkpoints`` nothing is pretrained: every target is fine-tuned from each given checkpoint (and from
scratch), e.g. to compare shipped checkpoints on the same seeds and machine.

Every finished run is one JSON line in ``<out>.jsonl`` (its settings, best validation and test metrics, epochs,
costs); ``<out>.md`` (mean ± one standard error over seeds) and ``<out>.png`` are rebuilt from it after every run
and by ``--summarize``. Each target's last "all" snapshot is exported (``recbole_transfer.pretrained``) as
``<out>-<target>.pth``; the pretraining logs' epoch losses go to ``<out>-pretrain.json``.
"""

import argparse
import json
import math
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    RunFailed,
    Study,
    fit_and_measure,
    in_fresh_process,
    machine,
    mean_se,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO, "run_recbole_transfer.py")
SHOWN = ["ndcg@10", "recall@10", "ndcg@50", "recall@50"]


def encode_here(dataset, word_drop, overrides):
    """The item-text matrices UniSRec reads for ``dataset`` (plain; word-dropped too with ``word_drop``), written
    to the text cache."""
    from recbole_transfer.config import Config
    from recbole_transfer.quick_start import create_dataset

    config = Config(
        "UniSRec",
        dataset,
        config_dict=dict(
            dict(show_progress=False), **overrides, train_stage="pretrain"
        ),
    )
    data = create_dataset(config)
    data.encode_item_texts()
    if word_drop:
        data.encode_item_texts(word_drop_ratio=config["word_drop_ratio"])
    return {"dataset": dataset}


def text_domains(target):
    from recbole_transfer.config import default_source_datasets, shipped_dir

    return default_source_datasets([target], "text", shipped_dir("dataset"))


def snapshot_epochs(folder, dataset):
    """{epoch: path} of the complete pretraining snapshots in ``folder``."""
    pattern = re.compile(re.escape(f"UniSRec-{dataset}-pretrain-") + r"(\d+)\.pth$")
    found = {}
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        match = pattern.match(name)
        if match:
            found[int(match.group(1))] = os.path.join(folder, name)
    return dict(sorted(found.items()))


def readable(path):
    from recbole_transfer.utils import load_checkpoint

    try:
        load_checkpoint(path)
        return True
    except Exception:  # a snapshot cut short by the deadline
        return False


def epoch_losses(log_path):
    """Training loss per epoch from a pretraining run's output (RecBole's 'train loss' lines)."""
    losses = []
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = re.sub(
                r"\x1b\[[0-9;]*m", "", line
            )  # RecBole colours its console lines
            match = re.search(
                r"epoch (\d+) training \[time: ([\d.]+)s, train loss: ([\d.]+)\]", line
            )
            if match:
                losses.append(
                    {
                        "epoch": int(match.group(1)) + 1,
                        "seconds": float(match.group(2)),
                        "loss": float(match.group(3)),
                    }
                )
    return losses


def curve_points(epochs, count):
    """Up to ``count`` snapshot epochs spread geometrically below the last one (which is always a point)."""
    if not epochs:
        return []
    last = epochs[-1]
    picked = {last}
    for k in range(1, count):
        wanted = last / 2**k
        picked.add(min(epochs, key=lambda e: abs(math.log(e / wanted))))
    return sorted(picked)


class TransferStudy(Study):
    def __init__(self, args, overrides):
        super().__init__(args, overrides, summarize)
        self.pretraining_done = threading.Event()

    # --- stages -----------------------------------------------------------------------------------------------
    def encode(self, pretrain_sets, targets):
        """Each domain once (a merged dataset reads its domains' matrices from the same cache)."""
        sources = list(dict.fromkeys(d for s in pretrain_sets for d in s.split(",")))

        def encode_one(dataset):
            word_drop = dataset in sources
            self.log(
                f"encode {dataset} ({'plain, word-dropped' if word_drop else 'plain'})"
            )
            in_fresh_process(encode_here, dataset, word_drop, self.overrides)

        with ThreadPoolExecutor(self.args.encode_jobs) as pool:
            list(
                pool.map(encode_one, sources + [t for t in targets if t not in sources])
            )

    def pretrain(self, pretrain_sets):
        """Start one pretraining process per source set; returns {dataset: (process, folder, log path)}."""
        running = {}
        for dataset in pretrain_sets:
            folder = os.path.join(self.work, "pretrain", dataset)
            os.makedirs(folder, exist_ok=True)
            log_path = os.path.join(folder, "output.log")
            command = [
                sys.executable,
                CLI,
                "--model=UniSRec",
                f"--dataset={dataset}",
                "--train_stage=pretrain",
                f"--pretrain_epochs={self.args.pretrain_epochs}",
                f"--save_step={self.args.save_step}",
                f"--checkpoint_dir={folder}",
                "--show_progress=False",
                "--log_flops=False",
            ] + [f"--{k}={v}" for k, v in self.overrides.items()]
            with open(log_path, "w", encoding="utf-8") as log:
                process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            running[dataset] = (process, folder, log_path)
            self.log(f"pretrain {dataset}: pid {process.pid}")
        return running

    def stop_pretraining(self, running):
        deadline = self.start + 60 * self.args.pretrain_minutes
        while time.time() < deadline and any(
            p.poll() is None for p, _, _ in running.values()
        ):
            time.sleep(2)
        for dataset, (process, _, _) in running.items():
            if process.poll() is None:
                self.log(f"pretrain {dataset}: budget spent, stopping it")
                os.killpg(process.pid, signal.SIGTERM)
        for dataset, (process, _, log_path) in running.items():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        snapshots, logs = {}, {}
        for dataset, (process, folder, log_path) in running.items():
            found = snapshot_epochs(folder, dataset)
            while found and not readable(found[max(found)]):
                found.pop(max(found))
            snapshots[dataset] = found
            logs[dataset] = {
                "returncode": process.returncode,
                "snapshots": sorted(found),
                "epochs": epoch_losses(log_path),
            }
            self.log(f"pretrain {dataset}: snapshots at epochs {sorted(found)}")
            if process.returncode not in (0, -signal.SIGTERM) and not found:
                with open(log_path, encoding="utf-8", errors="replace") as f:
                    self.log(f"pretrain {dataset} failed:\n{f.read()[-3000:]}")
        with open(f"{self.args.out}-pretrain.json", "w", encoding="utf-8") as f:
            json.dump(logs, f, indent=1)
        return snapshots

    def run_job(self, job):
        settings = dict(self.overrides, **job["settings"], seed=job["seed"])
        settings["checkpoint_dir"] = os.path.join(self.work, "runs", job["id"])
        settings.setdefault("show_progress", False)
        settings.setdefault("log_flops", False)
        started = time.time()
        try:
            result = fit_and_measure(job["model"], job["target"], settings)
        except RunFailed as err:
            self.log(f"{job['id']} failed: {err}")
            return
        line = {k: v for k, v in job.items() if k != "settings"}
        line.update(
            minutes=(time.time() - started) / 60,
            valid=result["best_valid"],
            test=result["test"],
            epochs=result["epochs"],
            epoch_seconds=result["epoch_seconds"],
            trainable=result["trainable"],
            total=result["total"],
            overrides=self.overrides,
            machine=machine(),
        )
        self.record(line)
        self.log(
            f"{job['id']}: valid ndcg@10 {result['best_valid'].get('ndcg@10', float('nan')):.4f}, "
            f"test ndcg@10 {result['test']['ndcg@10']:.4f} ({line['minutes']:.1f} min)"
        )

    def worker(self):
        deadline = self.start + 60 * self.args.finetune_minutes
        while time.time() < deadline:
            try:
                _, _, job = self.jobs.get(timeout=2)
            except queue.Empty:
                if self.pretraining_done.is_set():
                    return
                continue
            if time.time() >= deadline:
                return
            self.run_job(job)

    # --- the study --------------------------------------------------------------------------------------------
    def job(self, target, kind, seed, model="UniSRec", **fields):
        settings = fields.pop("settings", {})
        epoch = fields.get("pretrain_epochs")
        name = "-".join(
            str(x)
            for x in (target, kind, fields.get("mode", ""), epoch or "", seed)
            if x != ""
        )
        return dict(
            id=name,
            target=target,
            kind=kind,
            seed=seed,
            model=model,
            settings=settings,
            **fields,
        )

    def run(self):
        args = self.args
        targets = args.targets.split(",")
        seeds = [int(s) for s in args.seeds.split(",")]
        singles = [s for s in args.single_sources.split(",") if s]
        all_sets = {t: args.all_sources or ",".join(text_domains(t)) for t in targets}
        pretrain_sets = list(dict.fromkeys(list(all_sets.values()) + singles))
        done = self.done()
        given = [pair.split("=", 1) for pair in args.checkpoints.split(";") if pair]
        if given:  # fine-tune from these checkpoints; nothing is pretrained
            pretrain_sets = []
        self.log(f"{machine()}; targets {targets}; pretraining sets {pretrain_sets}")
        self.encode(pretrain_sets, targets)
        running = self.pretrain(pretrain_sets)

        def push(priority, job):
            if job["id"] in done or (job["kind"] == "scratch" and not args.scratch):
                return
            self.push(priority, job)

        for s, seed in enumerate(seeds):
            for t, target in enumerate(targets):
                push(
                    (10, s, t),
                    self.job(
                        target,
                        "scratch",
                        seed,
                        mode="transductive",
                        settings=dict(
                            train_stage="transductive_ft", pretrained_path=None
                        ),
                    ),
                )
                if args.sasrec:
                    push((50, s, t), self.job(target, "SASRec", seed, model="SASRec"))
                for label, path in given:
                    for mode in args.modes.split(","):
                        push(
                            (5, s, t),
                            self.job(
                                target,
                                label,
                                seed,
                                mode=mode,
                                sources=path,
                                settings=dict(
                                    train_stage=f"{mode}_ft", pretrained_path=path
                                ),
                            ),
                        )
        workers = [threading.Thread(target=self.worker) for _ in range(args.jobs)]
        if args.overlap:
            for w in workers:
                w.start()
        snapshots = self.stop_pretraining(running)
        for t, target in enumerate(targets):
            found = snapshots.get(all_sets[target], {})
            if not found:
                continue
            last = max(found)
            from recbole_transfer.pretrained import export

            export(found[last], f"{args.out}-{target}.pth")
            epochs = [last] + (
                [e for e in curve_points(sorted(found), args.curve_points) if e != last]
                if t == 0
                else []
            )
            for s, seed in enumerate(seeds):
                for e in epochs:
                    for mode, rank, extra in (
                        ("transductive", 1, {}),
                        ("inductive", 2, {}),
                        ("inductive_unfrozen", 25, dict(freeze_encoder=False)),
                    ):
                        if mode != "transductive" and e != last:
                            continue
                        if mode == "inductive_unfrozen" and not (
                            args.unfrozen and t == 0
                        ):
                            continue
                        push(
                            (rank if e == last else 20, s, t, -e),
                            self.job(
                                target,
                                "all",
                                seed,
                                mode=mode,
                                pretrain_epochs=e,
                                sources=all_sets[target],
                                settings=dict(
                                    extra,
                                    train_stage=f"{mode.split('_')[0]}_ft",
                                    pretrained_path=found[e],
                                ),
                            ),
                        )
        first = targets[0]
        first_all = snapshots.get(all_sets[first], {})
        for source in singles:
            found = snapshots.get(source, {})
            if found:
                # the same pretraining epochs as the first target's "all" checkpoint where the source has them
                last = (
                    max(first_all) if max(first_all, default=0) in found else max(found)
                )
                for s, seed in enumerate(seeds):
                    push(
                        (15, s, source),
                        self.job(
                            first,
                            f"single:{source}",
                            seed,
                            mode="transductive",
                            pretrain_epochs=last,
                            sources=source,
                            settings=dict(
                                train_stage="transductive_ft",
                                pretrained_path=found[last],
                            ),
                        ),
                    )
        if (
            not args.overlap
        ):  # every run queued first, so that the workers take them in priority order
            for w in workers:
                w.start()
        self.pretraining_done.set()
        for w in workers:
            w.join()
        left = self.jobs.qsize()
        self.log(f"finished; {left} queued runs not started (budget spent)")


# --- summary ----------------------------------------------------------------------------------------------------
def groups(lines):
    grouped = {}
    for line in lines:
        key = (
            line["target"],
            line["kind"],
            line.get("mode", ""),
            line.get("pretrain_epochs") or 0,
        )
        grouped.setdefault(key, []).append(line)
    return grouped


def summarize(out):
    path = f"{out}.jsonl"
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    rows = [
        f"<!-- rebuilt from {os.path.basename(path)}: {len(lines)} runs; mean ± one standard error over seeds -->",
        "| target | run | sources | mode | pretrain epochs | seeds | valid N@10 | test N@10 | test R@10 | "
        "test N@50 | test R@50 | epochs run | trainable / total |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (target, kind, mode, epoch), runs in sorted(groups(lines).items()):

        def cell(values):
            m, se = mean_se(values)
            return f"{m:.4f} ± {se:.4f}" if not math.isnan(se) else f"{m:.4f}"

        rows.append(
            f"| {target} | {kind} | {runs[0].get('sources', '')} | {mode} | {epoch or ''} | {len(runs)} | "
            + cell([r["valid"].get("ndcg@10", float("nan")) for r in runs])
            + " | "
            + " | ".join(cell([r["test"][k] for r in runs]) for k in SHOWN)
            + f" | {statistics.mean(r['epochs'] for r in runs):.0f} | "
            f"{runs[0]['trainable']:,} / {runs[0]['total']:,} |"
        )
    with open(f"{out}.md", "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")


def plot(out):
    """Figure, one panel per target: valid (blue) and test (orange) NDCG@10 of transductive fine-tuning against
    pretraining epochs (0 = from scratch), mean ± SE; single-source runs as triangles, stock SASRec dotted.
    Then the source comparison (``plot_sources``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(f"{out}.jsonl", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    grouped = groups(lines)
    targets = list(dict.fromkeys(line["target"] for line in lines))
    figure, axes = plt.subplots(
        1, len(targets), figsize=(5 * len(targets), 4), squeeze=False
    )
    for ax, target in zip(axes[0], targets):
        for split, style, color in (("valid", "o-", "C0"), ("test", "s--", "C1")):
            xs, ys, es = [], [], []
            for (t, kind, mode, epoch), runs in sorted(
                grouped.items(), key=lambda kv: kv[0][3]
            ):
                if (
                    t == target
                    and mode == "transductive"
                    and kind in ("scratch", "all")
                ):
                    m, se = mean_se([r[split]["ndcg@10"] for r in runs])
                    xs.append(epoch)
                    ys.append(m)
                    es.append(0 if math.isnan(se) else se)
            if xs:
                ax.errorbar(
                    xs,
                    ys,
                    yerr=es,
                    fmt=style,
                    color=color,
                    capsize=3,
                    label=f"{split}: 0 = scratch, >0 = all sources",
                )
            for (t, kind, mode, epoch), runs in grouped.items():
                if t == target and kind.startswith("single:"):
                    m, se = mean_se([r[split]["ndcg@10"] for r in runs])
                    ax.errorbar(
                        [epoch],
                        [m],
                        yerr=[0 if math.isnan(se) else se],
                        fmt="^",
                        color=color,
                        capsize=3,
                        label=f"{split}: {kind}",
                    )
            for (t, kind, mode, epoch), runs in grouped.items():
                if t == target and kind == "SASRec":
                    m, _ = mean_se([r[split]["ndcg@10"] for r in runs])
                    ax.axhline(
                        m,
                        linestyle=":",
                        linewidth=1,
                        color=color,
                        label=f"{split}: stock SASRec",
                    )
        ax.set_title(f"UniSRec on {target} (transductive FT)")
        ax.set_xlabel("pretraining epochs")
        ax.set_ylabel("NDCG@10")
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(f"{out}.png", dpi=110)
    plt.close(figure)
    plot_sources(grouped, out, plt)


def plot_sources(grouped, out, plt):
    """The paper's Figure 2, per target with single-source runs: test NDCG@10 (mean ± SE) of transductive
    fine-tuning after no pretraining, pretraining on each single source, and on all sources at the singles' epochs.
    Written to ``<out>-sources.png``."""
    panels = []
    for target in dict.fromkeys(
        t for t, kind, _, _ in grouped if kind.startswith("single:")
    ):
        singles = {
            (kind, epoch): runs
            for (t, kind, mode, epoch), runs in grouped.items()
            if t == target and kind.startswith("single:") and mode == "transductive"
        }
        epoch = max(e for _, e in singles)
        bars = [("none", grouped.get((target, "scratch", "transductive", 0), []))]
        bars += sorted(
            (
                (kind.split(":", 1)[1], runs)
                for (kind, e), runs in singles.items()
                if e == epoch
            ),
            key=lambda bar: statistics.mean(r["test"]["ndcg@10"] for r in bar[1]),
        )
        bars.append(("all", grouped.get((target, "all", "transductive", epoch), [])))
        panels.append((target, epoch, [(label, runs) for label, runs in bars if runs]))
    if not panels:
        return
    figure, axes = plt.subplots(
        1, len(panels), figsize=(5 * len(panels), 4), squeeze=False
    )
    for ax, (target, epoch, bars) in zip(axes[0], panels):
        stats = [mean_se([r["test"]["ndcg@10"] for r in runs]) for _, runs in bars]
        ax.bar(
            range(len(bars)),
            [m for m, _ in stats],
            yerr=[0 if math.isnan(se) else se for _, se in stats],
            capsize=4,
            color=["C7"] + ["C0"] * (len(bars) - 2) + ["C3"],
        )
        ax.set_xticks(range(len(bars)), [label for label, _ in bars])
        low = min(m for m, _ in stats)
        ax.set_ylim(low * 0.95, max(m for m, _ in stats) * 1.02)
        ax.set_title(f"{target}: sources, {epoch} pretraining epochs")
        ax.set_ylabel("test NDCG@10 (mean ± SE)")
    figure.tight_layout()
    figure.savefig(f"{out}-sources.png", dpi=110)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default="Scientific,Tools,Toys")
    parser.add_argument(
        "--all_sources",
        default="",
        help="the 'all' source set (default: every shipped dataset with item text except the target)",
    )
    parser.add_argument("--single_sources", default="Tools,Electronics")
    parser.add_argument("--seeds", default="2020,2021,2022")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--pretrain_epochs", type=int, default=300)
    parser.add_argument("--save_step", type=int, default=5)
    parser.add_argument("--pretrain_minutes", type=float, default=60)
    parser.add_argument("--finetune_minutes", type=float, default=240)
    parser.add_argument("--curve_points", type=int, default=4)
    parser.add_argument(
        "--checkpoints",
        default="",
        help="label=path;...: fine-tune from these checkpoints (modes in --modes), no pretraining",
    )
    parser.add_argument("--modes", default="transductive")
    parser.add_argument(
        "--encode_jobs",
        type=int,
        default=1,
        help="domains encoded at once (each in its own process)",
    )
    parser.add_argument(
        "--unfrozen",
        action="store_true",
        help="also inductive fine-tuning with the Transformer unfrozen (freeze_encoder=False)",
    )
    for flag, meaning in (
        ("sasrec", "stock SASRec rows"),
        ("scratch", "UniSRec-from-scratch rows"),
        ("overlap", "start fine-tuning while pretraining runs"),
    ):  # each on by default; --no-<flag> turns it off
        parser.add_argument(
            f"--{flag}",
            action=argparse.BooleanOptionalAction,
            default=True,
            help=meaning,
        )
    parser.add_argument(
        "--work", default=None, help="checkpoints and logs (default <out>-work)"
    )
    parser.add_argument("--out", default="results/unisrec_transfer")
    parser.add_argument(
        "--summarize", action="store_true", help="only rebuild <out>.md and <out>.png"
    )
    args, rest = parser.parse_known_args()
    sys.path.insert(0, REPO)
    from recbole_transfer.config import parse_cli_overrides

    overrides = parse_cli_overrides(rest)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if not args.summarize:
        TransferStudy(args, overrides).run()
    summarize(args.out)
    if os.path.isfile(f"{args.out}.jsonl"):
        plot(args.out)


if __name__ == "__main__":
    main()
