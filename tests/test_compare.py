"""The comparison command: every model on the same split and seed, three outputs, resumable."""

import csv
import json

import pytest

from recbole_transfer.compare import compare, main
from recbole_transfer.errors import UserInputError
from recbole_transfer.measure import RunFailed

from conftest import FAST


def _settings(tiny_root, tmp_path):
    return dict(
        FAST, epochs=1, data_path=str(tiny_root), checkpoint_dir=str(tmp_path / "saved")
    )


def _read_csv(path):
    with open(path, encoding="utf-8") as f:
        settings = json.loads(f.readline()[len("# settings: ") :])
        return settings, list(csv.DictReader(f))


def _markdown_rows(markdown):
    """The cells of a markdown table's header and body rows (the separator row left out)."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|") and not set(line) <= set("|-: ")
    ]


def test_compare_runs_each_model_once_and_writes_three_outputs(tiny_root, tmp_path):
    out = tmp_path / "results"
    settings = _settings(tiny_root, tmp_path)
    rows, failures = compare(
        "Scientific", ["sasrec", "GRU4Rec"], settings, out=str(out)
    )
    assert failures == [] and [r["model"] for r in rows] == ["SASRec", "GRU4Rec"]
    saved_settings, table = _read_csv(out / "Scientific.csv")
    assert saved_settings == json.loads(json.dumps(settings))
    for row in table:
        assert 0.0 <= float(row["ndcg@10"]) <= 1.0 and float(row["recall@50"]) >= float(
            row["recall@10"]
        )
        assert (
            int(row["trainable"]) == int(row["total"]) > 0 and int(row["epochs"]) == 1
        )
        assert float(row["seconds_per_epoch"]) > 0
    markdown = (out / "Scientific.md").read_text()
    assert [cells[0] for cells in _markdown_rows(markdown)] == [
        "model",
        "SASRec",
        "GRU4Rec",
    ]
    assert (out / "Scientific.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def must_not_run(model, *args, **kwargs):
        if model != "NextItNet":
            raise AssertionError(f"{model} ran again")
        return dict(
            rows[0],
            model=model,
            test={k: 0.5 for k in ("recall@10", "recall@50", "ndcg@10", "ndcg@50")},
            trainable=10,
            total=20,
            epochs=3,
            epoch_seconds=1.0,
            fit_minutes=0.1,
            peak_rss_gib=1.0,
        )

    # finished rows are skipped; only the new model runs and is appended
    rows, _ = compare(
        "Scientific",
        ["SASRec", "GRU4Rec", "NextItNet"],
        settings,
        out=str(out),
        runner=must_not_run,
    )
    _, table = _read_csv(out / "Scientific.csv")
    assert [r["model"] for r in table] == ["SASRec", "GRU4Rec", "NextItNet"]
    assert table[2]["trainable_share"] == "0.5" and ["NextItNet", "0.5000"] in [
        cells[:2] for cells in _markdown_rows((out / "Scientific.md").read_text())
    ]


def test_compare_refuses_other_overrides_and_keeps_going_after_a_failure(tmp_path):
    out = str(tmp_path / "results")

    def runner(model, dataset, config_dict, config_files=None):
        if model == "BERT4Rec":
            raise RunFailed("BERT4Rec on Scientific failed: ValueError: boom")
        return {
            "model": model,
            "test": {"ndcg@10": 0.1},
            "trainable": 1,
            "total": 1,
            "epochs": 1,
            "epoch_seconds": 1.0,
            "fit_minutes": 0.0,
            "peak_rss_gib": 0.1,
        }

    rows, failures = compare(
        "Scientific", ["BERT4Rec", "SASRec"], {"epochs": 1}, out=out, runner=runner
    )
    assert failures == ["BERT4Rec"] and [r["model"] for r in rows] == ["SASRec"]
    with pytest.raises(UserInputError) as err:
        compare("Scientific", ["SASRec"], {"epochs": 2}, out=out, runner=runner)
    assert str(err.value) == (
        f'{out}/Scientific.csv was made with other overrides ({{"epochs": 1}}); '
        "use another --out or remove it"
    )


def test_compare_cli_unknown_model_is_one_line_error(tmp_path, capsys):
    assert (
        main(["--dataset=Scientific", "--models=SASRec,SASRek", f"--out={tmp_path}"])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith("error: unknown model 'SASRek'; close matches: SASRec")
        and err.count("\n") == 1
    )
    assert not list(tmp_path.iterdir())


def test_a_model_may_carry_its_own_yaml(tmp_path):
    own = tmp_path / "wide.yaml"
    own.write_text("hidden_size: 128\nlearning_rate: 1e-4\n")
    seen = []

    def runner(model, dataset, config_dict, config_files=None):
        seen.append((model, config_dict, config_files))
        return {
            "model": model,
            "test": {"ndcg@10": 0.1},
            "trainable": 1,
            "total": 1,
            "epochs": 1,
            "epoch_seconds": 1.0,
            "fit_minutes": 0.0,
            "peak_rss_gib": 0.1,
        }

    rows, _ = compare(
        "Scientific",
        ["SASRec", f"sasrec@{own}"],
        {"hidden_size": "64", "epochs": "3"},
        config_files=["base.yaml"],
        out=str(tmp_path / "out"),
        runner=runner,
    )
    assert [r["model"] for r in rows] == ["SASRec", "SASRec@wide"]
    # the model's own keys win over the shared ones, which it keeps otherwise
    assert seen == [
        ("SASRec", {"hidden_size": "64", "epochs": "3"}, ["base.yaml"]),
        (
            "SASRec",
            {"hidden_size": 128, "epochs": "3", "learning_rate": 1e-4},
            ["base.yaml"],
        ),
    ]
    with pytest.raises(UserInputError) as err:
        compare(
            "Scientific",
            ["SASRec@missing.yaml"],
            {},
            out=str(tmp_path / "out2"),
            runner=runner,
        )
    assert (
        str(err.value)
        == "config file 'missing.yaml' of 'SASRec@missing.yaml' not found"
    )
