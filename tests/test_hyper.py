"""Hyper-parameter sweeps: hyperopt through RecBole's HyperTuning, ray tune with ASHA, the .hyper files and the CLI."""

import glob
import json
import math
import os

import pytest

from recbole_transfer.config import Config
from recbole_transfer.errors import UserInputError
from recbole_transfer.hyper import config_values, ray_space, read_space, run_hyper

from conftest import FAST, REPO

import run_recbole_transfer

LEARNING_RATES = (0.01, 0.001)


def _hyper_file(tmp_path, text="learning_rate choice [0.01,0.001]\n"):
    path = tmp_path / "lr.hyper"
    path.write_text(text)
    return str(path)


def _tiny(tiny_root, tmp_path, **extra):
    return dict(
        FAST, data_path=str(tiny_root), checkpoint_dir=str(tmp_path / "saved"), **extra
    )


def test_hyperopt_sweep_returns_the_best_trial_and_writes_both_files(
    tiny_root, tmp_path
):
    output = tmp_path / "results" / "hyper_SASRec"
    summary = run_hyper(
        "SASRec",
        "Scientific",
        _hyper_file(tmp_path),
        tool="hyperopt",
        algo="exhaustive",
        config_dict=_tiny(tiny_root, tmp_path, epochs=1),
        output=str(output),
    )
    trials = summary["trials"]
    assert sorted(trial["params"]["learning_rate"] for trial in trials) == sorted(
        LEARNING_RATES
    )
    scores = [trial["best_valid_score"] for trial in trials]
    best = trials[scores.index(max(scores))]
    # the actual value, not hyperopt's index into the choice list
    assert (
        summary["best_params"] == best["params"]
        and summary["best_params"]["learning_rate"] in LEARNING_RATES
    )
    assert summary["best_valid_score"] == max(scores) and math.isfinite(
        summary["best_valid_score"]
    )
    assert (
        summary["best_test_result"] == best["test_result"]
        and "ndcg@10" in summary["best_test_result"]
    )

    saved = json.loads(output.with_suffix(".json").read_text())
    assert saved["best_params"] == summary["best_params"] and len(saved["trials"]) == 2
    table = output.with_suffix(".md").read_text()
    assert f"`learning_rate={summary['best_params']['learning_rate']}`" in table
    assert "<!-- python run_recbole_transfer.py --model=SASRec" in table
    assert (
        len([line for line in table.splitlines() if line.startswith("| ")]) == 3
    )  # header + one row per trial
    assert not [name for name in os.listdir(output.parent) if name.startswith(".tmp-")]


def _recording(monkeypatch, cut=None):
    """Record the learning rate of every trial that starts and (learning rate, epoch) of every epoch it trains; with
    ``cut=(n, epoch)`` the n-th trial (1-based) is interrupted at the start of that epoch.
    """
    from recbole.trainer import Trainer

    import recbole_transfer.quick_start as quick_start

    trials, epochs = [], []
    real_objective, real_epoch = quick_start.objective_function, Trainer._train_epoch

    def objective(config_dict, config_file_list=None, saved=True):
        trials.append(config_dict["learning_rate"])
        return real_objective(config_dict, config_file_list, saved)

    def train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if cut == (len(trials), epoch_idx):
            raise KeyboardInterrupt
        epochs.append((trials[-1], epoch_idx))
        return real_epoch(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(quick_start, "objective_function", objective)
    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    return trials, epochs


def test_interrupted_sweep_continues_where_it_stopped(tiny_root, tmp_path, monkeypatch):
    def sweep(output):
        return run_hyper(
            "SASRec",
            "Scientific",
            _hyper_file(tmp_path),
            config_dict=_tiny(tiny_root, tmp_path, epochs=2),
            output=str(output),
        )

    whole = tmp_path / "whole" / "hyper"
    trials, _ = _recording(monkeypatch)
    reference = sweep(whole)
    assert sorted(trials) == sorted(LEARNING_RATES)
    assert not os.path.exists(f"{whole}-work")

    # the second trial stops after its first epoch
    output = tmp_path / "cut" / "hyper"
    trials, epochs = _recording(monkeypatch, cut=(2, 1))
    with pytest.raises(KeyboardInterrupt):
        sweep(output)
    first, second = trials
    assert epochs == [(first, 0), (first, 1), (second, 0)]
    assert not output.with_suffix(".json").exists()
    assert len(glob.glob(f"{output}-work/*/result.json")) == 1

    trials, epochs = _recording(monkeypatch)
    resumed = sweep(output)
    # the finished trial is read back and the interrupted one trains its last epoch only, as it would have
    assert trials == [second] and epochs == [(second, 1)]
    by_rate = {trial["params"]["learning_rate"]: trial for trial in resumed["trials"]}
    for trial in reference["trials"]:
        assert by_rate[trial["params"]["learning_rate"]] == trial
    assert resumed["best_params"] == reference["best_params"]
    # the work folder is gone; each trial's best model is where a sweep's models go
    assert not os.path.exists(f"{output}-work")
    models = glob.glob(str(tmp_path / "saved" / "SASRec-*.pth"))
    assert len(models) == 4 and not [m for m in models if m.endswith("-latest.pth")]


def test_the_same_sweep_draws_the_same_trials_in_the_same_order(
    tiny_root, tmp_path, monkeypatch
):
    # unseeded, hyperopt would draw 3 of these 10 rates in one of 720 orders: a rerun of an interrupted random
    # sweep would train other points than the ones it finished
    hyper_file = _hyper_file(
        tmp_path,
        "learning_rate choice ["
        + ",".join(f"0.00{i}" for i in range(1, 10))
        + ",0.01]\n",
    )
    monkeypatch.delenv("HYPEROPT_FMIN_SEED", raising=False)
    trials, _ = _recording(monkeypatch)
    for run in range(2):
        run_hyper(
            "SASRec",
            "Scientific",
            hyper_file,
            algo="random",
            max_evals=3,
            config_dict=_tiny(tiny_root, tmp_path, epochs=1),
            output=str(tmp_path / f"run{run}" / "hyper"),
        )
    assert len(trials) == 6 and trials[:3] == trials[3:]
    assert "HYPEROPT_FMIN_SEED" not in os.environ


def test_interrupted_sweep_with_other_settings_is_one_clear_error(
    tiny_root, tmp_path, monkeypatch
):
    output = tmp_path / "hyper"
    trials, _ = _recording(monkeypatch, cut=(1, 0))
    settings = _tiny(tiny_root, tmp_path, epochs=1)
    with pytest.raises(KeyboardInterrupt):
        run_hyper(
            "SASRec",
            "Scientific",
            _hyper_file(tmp_path),
            config_dict=settings,
            output=str(output),
        )
    assert len(trials) == 1
    with pytest.raises(UserInputError) as error:
        run_hyper(
            "SASRec",
            "Scientific",
            _hyper_file(tmp_path),
            config_dict=dict(settings, epochs=2),
            output=str(output),
        )
    assert str(error.value) == (
        f"'{output}-work' holds an interrupted sweep with other settings: delete it to start this one, "
        f"or choose another --hyper_output"
    )


def test_ray_sweep_reports_the_metric_in_every_final_result(tiny_root, tmp_path):
    import ray

    output = tmp_path / "hyper_SASRec_ray"
    try:
        summary = run_hyper(
            "SASRec",
            "Scientific",
            _hyper_file(tmp_path),
            tool="ray",
            max_evals=2,
            config_dict=_tiny(tiny_root, tmp_path, epochs=2),
            output=str(output),
            cpus_per_trial=1,
            gpus_per_trial=0,
        )
    finally:
        ray.shutdown()
    assert summary["best_params"]["learning_rate"] in LEARNING_RATES
    assert (
        math.isfinite(summary["best_valid_score"])
        and "ndcg@10" in summary["best_test_result"]
    )
    assert len(summary["trials"]) == 2 and output.with_suffix(".md").is_file()
    # RecBole's own objective reports once and returns a second, metric-less result; ours ends on the metric
    results = glob.glob(
        str(tmp_path / "hyper_SASRec_ray_ray" / "*" / "*" / "result.json")
    )
    assert len(results) == 2
    for path in results:
        final = json.loads(open(path).read().splitlines()[-1])
        assert math.isfinite(final["ndcg@10"])
        if "test/ndcg@10" in final:
            assert final["ndcg@10"] == final["best_valid_score"]


def test_ray_space_takes_loguniform_bounds_out_of_logs():
    space = [
        ("learning_rate", "loguniform", [math.log(1e-4), math.log(1e-2)]),
        ("dropout_prob", "uniform", [0.1, 0.5]),
        ("n_layers", "quniform", [1, 3, 1]),
        ("hidden_size", "choice", [32, 64]),
    ]
    converted = ray_space(space)
    assert converted["learning_rate"].lower == pytest.approx(1e-4)
    assert converted["learning_rate"].upper == pytest.approx(1e-2)
    assert all(
        1e-4 <= value <= 1e-2 for value in converted["learning_rate"].sample(size=50)
    )
    assert (converted["dropout_prob"].lower, converted["dropout_prob"].upper) == (
        0.1,
        0.5,
    )
    assert converted["hidden_size"].categories == [32, 64]
    sample = config_values(
        space, {name: domain.sample() for name, domain in converted.items()}
    )
    assert isinstance(sample["n_layers"], int) and sample["n_layers"] in (1, 2, 3)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("learning_rate choice\n", "malformed line 1 of "),
        ("learning_rate choice [0.01]\ndropout normal 0,1\n", "malformed line 2 of "),
        ("learning_rate uniform 0.1\n", "malformed line 1 of "),
        (
            "learning_rate choice [0.01]\nlearning_rate choice [0.1]\n",
            "parameter 'learning_rate' given twice",
        ),
    ],
)
def test_bad_hyper_file_is_one_clear_error(text, expected, tmp_path):
    with pytest.raises(UserInputError, match=expected):
        read_space(_hyper_file(tmp_path, text))


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(tool="optuna"), "unknown tool 'optuna': use hyperopt or ray"),
        (dict(algo="grid"), "unknown algo 'grid': use exhaustive, random, bayes"),
        (dict(tool="ray", algo="bayes"), "--tool=ray samples the space at random"),
    ],
)
def test_bad_tool_or_algo_is_one_clear_error(kwargs, expected, tmp_path):
    with pytest.raises(UserInputError, match=expected):
        run_hyper("SASRec", "Scientific", _hyper_file(tmp_path), **kwargs)


def test_exhaustive_search_refuses_continuous_parameters(tmp_path):
    hyper_file = _hyper_file(tmp_path, "learning_rate loguniform -9.2,-4.6\n")
    with pytest.raises(
        UserInputError, match="exhaustive search needs 'choice' parameters only"
    ):
        run_hyper("SASRec", "Scientific", hyper_file)


def test_cli_missing_hyper_file_is_one_line(capsys):
    argv = ["--model=SASRec", "--dataset=Scientific", "--hyper=missing.hyper"]
    assert run_recbole_transfer.main(argv) == 2
    assert capsys.readouterr().err == "error: hyper file 'missing.hyper' not found\n"


@pytest.mark.parametrize(
    "hyper_file",
    sorted(glob.glob(str(REPO / "properties" / "hyper" / "*.hyper"))),
    ids=os.path.basename,
)
def test_shipped_hyper_files_use_real_keys(hyper_file):
    model = os.path.basename(hyper_file)[: -len(".hyper")]
    # learning_rate.hyper is for any model: RecBole's own key, checked against a stock model
    if model == "learning_rate":
        model = "SASRec"
    space = read_space(hyper_file)
    config = Config(model, "Scientific")
    assert [name for name, _, _ in space if name not in config.final_config_dict] == []
    assert {kind for _, kind, _ in space} == {
        "choice"
    }  # the default exhaustive search runs them as they are
