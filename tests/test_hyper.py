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
