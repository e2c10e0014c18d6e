"""The measured run (``recbole_transfer.measure``): the epoch of the best validation score, the time to it and the
peak device memory beside the older fields."""

import types

import torch

from conftest import FAST

from recbole_transfer.measure import (
    _best_validation,
    fit_and_measure,
    latest_checkpoint,
)
from recbole_transfer.utils import load_checkpoint


def run_settings(tiny_root, tmp_path, **settings):
    """A fast run on the tiny Scientific fixture, checkpoints under ``tmp_path``."""
    return dict(
        FAST,
        data_path=str(tiny_root),
        checkpoint_dir=str(tmp_path / "saved"),
        **settings,
    )


def test_best_validation_is_the_checkpoint_early_stopping_kept():
    # RecBole keeps a score equal to the best, so of two equal best scores the later model is the one tested
    validations = [(1, 0.1, 2.0), (2, 0.3, 4.0), (3, 0.3, 6.0), (4, 0.2, 8.0)]
    assert _best_validation(validations, types.SimpleNamespace()) == (3, 0.3, 6.0)
    smaller = types.SimpleNamespace(valid_metric_bigger=False)
    assert _best_validation(validations, smaller) == (1, 0.1, 2.0)
    ties_below = [(1, 0.2, 2.0), (2, 0.1, 4.0), (3, 0.1, 6.0)]
    assert _best_validation(ties_below, smaller) == (3, 0.1, 6.0)
    assert _best_validation([], smaller) is None


def test_fit_and_measure_reports_the_best_epoch(tiny_root, tmp_path):
    settings = run_settings(tiny_root, tmp_path, epochs=3)
    result = fit_and_measure("SASRec", "Scientific", settings)
    assert result["epochs"] == 3
    assert 1 <= result["best_epoch"] <= 3
    assert 0 < result["seconds_to_best"] <= 60 * result["fit_minutes"]
    if not torch.cuda.is_available():
        assert result["peak_gpu_gib"] is None
    # the older fields are unchanged
    assert result["best_valid"]["ndcg@10"] == result["best_valid_score"]


def test_an_untrained_run_validates_only_where_a_choice_is_made(tiny_root, tmp_path):
    settings = run_settings(tiny_root, tmp_path, epochs=0)
    chosen_on = fit_and_measure("SASRec", "Scientific", settings)
    assert chosen_on["epochs"] == 0
    assert set(chosen_on["best_valid"]) >= {"ndcg@10", "recall@10"}
    # eval_step 0 (no validation, as for a row nothing is chosen on): the same test, no validation
    tested_only = fit_and_measure("SASRec", "Scientific", dict(settings, eval_step=0))
    assert tested_only["best_valid"] == {}
    assert tested_only["test"] == chosen_on["test"]


def test_a_resumed_measured_run_continues_the_first_ones_figures(tiny_root, tmp_path):
    settings = run_settings(tiny_root, tmp_path, epochs=2, resumable=True)
    first = fit_and_measure("SASRec", "Scientific", settings)
    latest = latest_checkpoint(str(tmp_path / "saved"))
    assert latest == first["checkpoint"][: -len(".pth")] + "-latest.pth"
    # the run had finished: resumed, it trains nothing more and reports the first process's epochs and times
    again = fit_and_measure(
        "SASRec", "Scientific", dict(settings, resume_checkpoint=latest)
    )
    assert (first["resumed"], again["resumed"]) == (0, 1)
    for key in (
        "epochs",
        "best_epoch",
        "seconds_to_best",
        "epoch_seconds",
        "fit_minutes",
        "test",
    ):
        assert again[key] == first[key], key
    # the first process's peak while it trained travels with the latest state
    carried = load_checkpoint(latest)["run_record"]["peak_rss_gib"]
    assert 0 < carried <= again["peak_rss_gib"]
