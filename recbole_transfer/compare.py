"""Compare plugin and stock RecBole models on one dataset: the same split, seed and overrides for every model.

    python -m recbole_transfer.compare --dataset=Scientific --models=SASRec,BERT4Rec,GRU4Rec,LRURec,UniSRec [--key=value ...]

A model may carry its own yaml, whose keys win over the shared settings for that model: ``PLMInitSASRec@my_ft.yaml``
(its row is labelled ``PLMInitSASRec@my_ft``). Each model trains in its own process (early stopping on the validation split, the best checkpoint tested).
Writes ``<out>/<dataset>.csv`` (one row per model: test metrics, trainable / total parameters, epochs, seconds per
training epoch, fit minutes, peak memory), ``<out>/<dataset>.md`` and ``<out>/<dataset>.png`` (a bar per model and
metric). Resumable: models already in the csv are not re-run; the csv remembers the overrides it was made with and
refuses to mix rows made with other ones. A model that fails is reported in one line and the others still run.
"""

import argparse
import csv
import json
import os
import sys
from datetime import date

import pandas as pd

from recbole_transfer.utils import atomic_write, atomic_write_text
from recbole_transfer.errors import UserInputError, report

FIXED_COLUMNS = [
    "model",
    "trainable",
    "total",
    "trainable_share",
    "epochs",
    "seconds_per_epoch",
    "fit_minutes",
    "peak_rss_gib",
]


def read_rows(csv_path):
    """``(settings, rows)`` of an existing comparison csv (settings = the overrides line), else ``(None, [])``."""
    if not os.path.isfile(csv_path):
        return None, []
    with open(csv_path, encoding="utf-8", newline="") as f:
        first = f.readline()
        if not first.startswith("# settings: "):
            raise UserInputError(
                f"{csv_path} is not a comparison table (no '# settings:' line)"
            )
        return json.loads(first[len("# settings: ") :]), list(csv.DictReader(f))


def row_from_result(result):
    row = {
        "model": result["model"],
        "trainable": result["trainable"],
        "total": result["total"],
        "trainable_share": round(result["trainable"] / max(result["total"], 1), 4),
        "epochs": result["epochs"],
        "seconds_per_epoch": round(result["epoch_seconds"], 2),
        "fit_minutes": round(result["fit_minutes"], 2),
        "peak_rss_gib": round(result["peak_rss_gib"], 2),
    }
    row.update({metric: round(value, 4) for metric, value in result["test"].items()})
    return row


def metric_columns(rows):
    columns = []
    for row in rows:
        columns += [k for k in row if k not in FIXED_COLUMNS and k not in columns]
    return columns


def write_csv(csv_path, settings, rows):

    table = pd.DataFrame(rows, columns=FIXED_COLUMNS + metric_columns(rows))
    settings_line = f"# settings: {json.dumps(settings, sort_keys=True)}\n"
    atomic_write_text(
        csv_path, settings_line + table.to_csv(index=False, lineterminator="\n")
    )


def write_markdown(md_path, dataset, settings, rows):
    metrics = metric_columns(rows)
    header = [
        "model",
        *metrics,
        "trainable / total params",
        "epochs",
        "s/epoch",
        "fit (min)",
    ]
    lines = [
        f"# {dataset}: model comparison",
        "",
        f"{date.today()}; the same split and seed for every model; test split, best validation checkpoint; "
        f"overrides: `{json.dumps(settings, sort_keys=True)}`.",
        "",
    ]
    cells_by_row = []
    for row in rows:
        share = 100.0 * float(row["trainable_share"])
        cells = [
            row["model"],
            *(
                f"{float(row[m]):.4f}" if row.get(m) not in (None, "") else ""
                for m in metrics
            ),
            f"{int(row['trainable']):,} / {int(row['total']):,} ({share:.1f}%)",
            str(row["epochs"]),
            f"{float(row['seconds_per_epoch']):.1f}",
            f"{float(row['fit_minutes']):.1f}",
        ]
        cells_by_row.append(cells)
    table = pd.DataFrame(cells_by_row, columns=header).to_markdown(
        index=False, disable_numparse=True
    )
    atomic_write_text(md_path, "\n".join(lines + [table]) + "\n")


def write_plot(png_path, dataset, rows):
    """Grouped bars: one group per metric, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = metric_columns(rows)
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics) + 0.3 * len(rows)), 4))
    for i, row in enumerate(rows):
        values = [
            float(row[m]) if row.get(m) not in (None, "") else 0.0 for m in metrics
        ]
        ax.bar(
            [j + i * width for j in range(len(metrics))],
            values,
            width,
            label=row["model"],
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics)
    ax.set_ylabel("test")
    ax.set_title(f"{dataset}: model comparison")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    atomic_write(
        png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=120), suffix=".png"
    )
    plt.close(fig)


def read_yaml(path):
    """A yaml file's keys with RecBole's value parsing (1e-4 is a float)."""
    import yaml
    from recbole.config import Config as RecBoleConfig

    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=RecBoleConfig._build_yaml_loader(None)) or {}


def parse_entry(entry, registry):
    """``'Model'`` or ``'Model@file.yaml'`` -> ``(row label, canonical model name, yaml file or None)``."""
    model, _, model_file = entry.strip().partition("@")
    name = registry.resolve_model_name(model)
    if not model_file:
        return name, name, None
    if not os.path.isfile(model_file):
        raise UserInputError(f"config file '{model_file}' of '{entry}' not found")
    return (
        f"{name}@{os.path.splitext(os.path.basename(model_file))[0]}",
        name,
        model_file,
    )


def compare(
    dataset, models, config_dict=None, config_files=None, out="results", runner=None
):
    """Run each of ``models`` not yet in ``<out>/<dataset>.csv`` and rewrite the three outputs after each.
    Returns ``(rows, failures)``; ``runner`` (default ``measure.fit_and_measure``) trains and measures one model.
    """
    from recbole_transfer import registry
    from recbole_transfer.measure import RunFailed, fit_and_measure

    runner = runner or fit_and_measure
    settings = dict(config_dict or {})
    if config_files:
        settings["config_files"] = list(config_files)
    os.makedirs(out, exist_ok=True)
    paths = {ext: os.path.join(out, f"{dataset}.{ext}") for ext in ("csv", "md", "png")}
    existing_settings, rows = read_rows(paths["csv"])
    if existing_settings is not None and existing_settings != settings:
        raise UserInputError(
            f"{paths['csv']} was made with other overrides ({json.dumps(existing_settings)}); "
            "use another --out or remove it"
        )
    entries = [
        parse_entry(m, registry) for m in models
    ]  # unknown names and files fail before anything runs
    failures = []
    for label, name, model_file in entries:
        if any(row["model"] == label for row in rows):
            print(f"skip {label}: already in {paths['csv']}", flush=True)
            continue
        settings_here = dict(
            config_dict or {}, **(read_yaml(model_file) if model_file else {})
        )
        try:
            result = runner(name, dataset, settings_here, config_files=config_files)
        except RunFailed as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            failures.append(label)
            continue
        rows.append(row_from_result(dict(result, model=label)))
        write_csv(paths["csv"], settings, rows)
        write_markdown(paths["md"], dataset, settings, rows)
        write_plot(paths["png"], dataset, rows)
        print(
            f"{label}: "
            + ", ".join(f"{k}={v}" for k, v in rows[-1].items() if k != "model"),
            flush=True,
        )
    return rows, failures


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", "-d", required=True)
    parser.add_argument(
        "--models",
        "-m",
        required=True,
        help="comma-separated plugin and/or stock RecBole models",
    )
    parser.add_argument(
        "--config_files",
        default=None,
        help="yaml files for every model, separated by spaces or commas",
    )
    parser.add_argument(
        "--out", default="results", help="folder of <dataset>.csv / .md / .png"
    )
    args, overrides = parser.parse_known_args(argv)
    from recbole_transfer.config import parse_cli_overrides

    config_files = (
        args.config_files.replace(",", " ").split() if args.config_files else None
    )
    try:
        models = [m for m in args.models.split(",") if m.strip()]
        if not models:
            raise UserInputError("--models is empty")
        rows, failures = compare(
            args.dataset, models, parse_cli_overrides(overrides), config_files, args.out
        )
    except UserInputError as err:
        return report(err)
    print(
        f"wrote {os.path.join(args.out, args.dataset)}.csv/.md/.png ({len(rows)} models)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
