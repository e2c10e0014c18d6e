"""Exact resume (``resumable``): a run interrupted between epochs and resumed from its latest checkpoint trains
the epochs the uninterrupted run trained, step for step; a finished run resumes straight to its test.
"""

import os

import pytest
import torch

from conftest import FAST, METAREC_SMALL

from recbole_transfer.quick_start import build, run_recbole_transfer
from recbole_transfer.utils import CheckpointError, load_checkpoint

EPOCHS = 3
SETTINGS = {
    # dropout, the loader's shuffling and (BPR) numpy's negative sampling all draw from the RNGs
    "SASRec": dict(FAST, epochs=EPOCHS, stopping_step=10),
    "BPR": dict(FAST, epochs=EPOCHS, stopping_step=10),
    # one row per user history (the benchmarks' all-positions runs)
    "SASRec-all": dict(FAST, epochs=EPOCHS, stopping_step=10, train_positions="all"),
    # MetaRec also draws its source domains and rows from the trainer's own generator; its default form
    "MetaRec": dict(
        METAREC_SMALL,
        epochs=EPOCHS,
        stopping_step=10,
        vq_heads=2,
        inner_steps=1,
        train_positions="all",
    ),
}


def _trainer(model, root, folder, **extra):
    config_dict = dict(SETTINGS[model], data_path=str(root), checkpoint_dir=str(folder))
    config_dict.update({"resumable": True, **extra})
    _, _, trainer, data = build(
        model.split("-")[0], "Scientific", config_dict=config_dict
    )
    return trainer, data


def _interrupt_before(trainer, epoch):
    """The process stops at the start of ``epoch`` (after the previous epoch's validation)."""
    train_epoch = trainer._train_epoch

    def interrupted(data, epoch_idx, *args, **kwargs):
        if epoch_idx == epoch:
            raise KeyboardInterrupt
        return train_epoch(data, epoch_idx, *args, **kwargs)

    trainer._train_epoch = interrupted


@pytest.mark.parametrize("model", ["SASRec", "SASRec-all", "BPR", "MetaRec"])
def test_a_resumed_run_trains_what_the_uninterrupted_run_trained(
    model, tiny_root, metarec_root, tmp_path
):
    root = metarec_root if model == "MetaRec" else tiny_root
    straight, (train, valid, test) = _trainer(model, root, tmp_path / "straight")
    straight.fit(train, valid, saved=True, show_progress=False)
    trained = {k: v.clone() for k, v in straight.model.state_dict().items()}
    straight_test = straight.evaluate(
        test, load_best_model=True
    )  # loads the best epoch's weights

    stopped, (train, valid, _) = _trainer(model, root, tmp_path / "stopped")
    _interrupt_before(stopped, 2)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(train, valid, saved=True, show_progress=False)
    latest = stopped.latest_checkpoint_file()
    assert load_checkpoint(latest)["epoch"] == 1

    resumed, (train, valid, test) = _trainer(model, root, tmp_path / "resumed")
    resumed.resume_checkpoint(latest)
    assert resumed.start_epoch == 2
    assert (
        resumed.saved_model_file == stopped.saved_model_file
    )  # the run's own best file
    resumed.fit(train, valid, saved=True, show_progress=False)
    assert list(resumed.train_loss_dict) == [2]
    assert resumed.train_loss_dict[2] == straight.train_loss_dict[2]
    for name, value in trained.items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert resumed.best_valid_score == straight.best_valid_score
    assert resumed.best_valid_result == straight.best_valid_result
    assert resumed.evaluate(test, load_best_model=True) == straight_test


def test_without_the_saved_rng_the_resumed_epoch_differs(tiny_root, tmp_path):
    # what the test above guards against: RecBole's own resume (weights, optimizer, counters; RNGs from the seed)
    straight, (train, valid, _) = _trainer("SASRec", tiny_root, tmp_path / "straight")
    straight.fit(train, valid, saved=True, show_progress=False)
    stopped, (train, valid, _) = _trainer("SASRec", tiny_root, tmp_path / "stopped")
    _interrupt_before(stopped, 2)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(train, valid, saved=True, show_progress=False)
    resumed, (train, valid, _) = _trainer("SASRec", tiny_root, tmp_path / "resumed")
    resumed.resume_checkpoint(stopped.latest_checkpoint_file())
    resumed._pending_rng = None
    resumed.fit(train, valid, saved=True, show_progress=False)
    assert resumed.train_loss_dict[2] != straight.train_loss_dict[2]


def test_a_finished_run_resumes_straight_to_its_test(tiny_root, tmp_path):
    settings = dict(
        SETTINGS["SASRec"],
        data_path=str(tiny_root),
        checkpoint_dir=str(tmp_path / "saved"),
        resumable=True,
    )
    first = run_recbole_transfer("SASRec", "Scientific", config_dict=settings)
    best = first["checkpoint"]
    latest = best[: -len(".pth")] + "-latest.pth"
    assert load_checkpoint(latest)["finished"] is True
    best_weights = load_checkpoint(best)["state_dict"]
    written = os.stat(best).st_mtime_ns
    again = run_recbole_transfer(
        "SASRec", "Scientific", config_dict=dict(settings, resume_checkpoint=latest)
    )
    assert again["checkpoint"] == best
    assert again["test_result"] == first["test_result"]
    assert again["best_valid_result"] == first["best_valid_result"]
    assert os.stat(best).st_mtime_ns == written  # not written again
    for name, value in load_checkpoint(best)["state_dict"].items():
        assert torch.equal(value, best_weights[name]), name


def test_resuming_a_run_whose_best_checkpoint_is_gone_is_one_line(tiny_root, tmp_path):
    trainer, (train, valid, _) = _trainer("SASRec", tiny_root, tmp_path / "saved")
    _interrupt_before(trainer, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(train, valid, saved=True, show_progress=False)
    os.remove(trainer.saved_model_file)
    fresh, _ = _trainer("SASRec", tiny_root, tmp_path / "saved")
    latest = trainer.latest_checkpoint_file()
    with pytest.raises(CheckpointError) as err:
        fresh.resume_checkpoint(latest)
    assert str(err.value) == (
        f"resume_checkpoint '{latest}' continues a run whose best checkpoint "
        f"'{trainer.saved_model_file}' is missing"
    )


def test_no_latest_file_unless_resumable(tiny_root, tmp_path):
    trainer, (train, valid, _) = _trainer(
        "SASRec", tiny_root, tmp_path / "saved", resumable=False
    )
    trainer.fit(train, valid, saved=True, show_progress=False)
    assert os.listdir(tmp_path / "saved") == [
        os.path.basename(trainer.saved_model_file)
    ]
