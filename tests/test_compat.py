"""Each patch in recbole_transfer/compat.py, tested through the behaviour it fixes."""

import os

import numpy as np
import pytest
import torch

from recbole_transfer import compat, utils
from recbole_transfer.errors import UserInputError
from recbole_transfer.config import Config
from recbole_transfer.quick_start import build, run, run_recbole_transfer

from conftest import FAST, free_port


def _tiny(tiny_root, tmp_path, **extra):
    return dict(
        FAST, data_path=str(tiny_root), checkpoint_dir=str(tmp_path / "saved"), **extra
    )


def test_numpy_aliases_set_at_import():
    # RecBole uses np.float etc.; numpy >= 1.24 removed them, so the plugin restores them at import time.
    assert np.float is np.float64 and np.int is np.int_ and np.bool is np.bool_


def test_numpy2_removed_names_restored(monkeypatch):
    # RecBole's Config.__init__ reads np.float_/np.complex_/np.unicode_; numpy 2 has none of them
    for name in ("float_", "complex_", "unicode_"):
        monkeypatch.delattr(np, name, raising=False)
    compat.set_numpy_aliases()
    assert (
        np.float_ is np.float64
        and np.complex_ is np.complex128
        and np.unicode_ is np.str_
    )
    Config(model="SASRec", dataset="ml-100k", config_dict={"show_progress": False})


def test_trainers_started_in_the_same_second_write_different_checkpoints(
    tiny_root, tmp_path, monkeypatch
):
    """RecBole names checkpoints by the second; two trainers of that second must not share (and so load) one file."""
    import recbole.trainer.trainer as recbole_trainer

    monkeypatch.setattr(
        recbole_trainer, "get_local_time", lambda: "Dec-05-2026_02-17-33"
    )
    files = [
        build("SASRec", "Scientific", config_dict=_tiny(tiny_root, tmp_path))[
            2
        ].saved_model_file
        for _ in range(2)
    ]
    assert files[0] != files[1]
    for file in files:
        assert os.path.dirname(file) == str(tmp_path / "saved")
        assert os.path.basename(file).startswith("SASRec-Dec-05-2026_02-17-33-")
        assert file.endswith(".pth")


def test_checkpoint_loads_safely_and_resumes(tiny_root, tmp_path):
    config, model, trainer, (train, valid, test) = build(
        "SASRec", "Scientific", config_dict=_tiny(tiny_root, tmp_path)
    )
    trainer.fit(train, valid, saved=True, show_progress=False)
    checkpoint = utils.load_checkpoint(trainer.saved_model_file)  # weights_only=True
    assert (
        isinstance(checkpoint["config"], dict)
        and checkpoint["config"]["model"] == "SASRec"
    )
    assert checkpoint["epoch"] in (0, 1)
    assert not [f for f in os.listdir(tmp_path / "saved") if f.startswith(".tmp-")]
    # RecBole's own reload paths use torch.load's safe default and must work unchanged
    result = trainer.evaluate(test, load_best_model=True)
    assert set(result) == {"recall@10", "recall@50", "ndcg@10", "ndcg@50"}
    _, _, fresh, _ = build(
        "SASRec", "Scientific", config_dict=_tiny(tiny_root, tmp_path)
    )
    fresh.resume_checkpoint(trainer.saved_model_file)
    assert fresh.start_epoch == checkpoint["epoch"] + 1
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(fresh.model.state_dict()[key], value)


def test_pickled_config_is_what_breaks_safe_loading(tiny_root, tmp_path):
    # RecBole's own checkpoints pickle the Config object; torch's default safe loader refuses them, which is why the
    # plugin writes plain values instead
    import pickle

    import pytest

    config = Config("SASRec", "Scientific", config_dict=_tiny(tiny_root, tmp_path))
    torch.save({"config": config}, tmp_path / "recbole_style.pth")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "recbole_style.pth")
    torch.save({"config": compat.plain_config(config)}, tmp_path / "plugin_style.pth")
    assert torch.load(tmp_path / "plugin_style.pth")["config"]["model"] == "SASRec"


def test_collector_handles_non_accuracy_metrics(tiny_root, tmp_path):
    extra = {
        "metrics": ["Recall", "NDCG", "ItemCoverage", "GiniIndex", "AveragePopularity"],
        "topk": [10],
    }
    result = run_recbole_transfer(
        "SASRec",
        "Scientific",
        config_dict=_tiny(tiny_root, tmp_path, epochs=1, **extra),
    )
    test = result["test_result"]
    assert 0.0 < test["itemcoverage@10"] <= 1.0 and 0.0 <= test["giniindex@10"] <= 1.0


def test_same_seed_same_metrics(tiny_root, tmp_path):
    first = run_recbole_transfer(
        "SASRec", "Scientific", config_dict=_tiny(tiny_root, tmp_path / "a")
    )
    second = run_recbole_transfer(
        "SASRec", "Scientific", config_dict=_tiny(tiny_root, tmp_path / "b")
    )
    assert first["test_result"] == second["test_result"]
    assert first["best_valid_result"] == second["best_valid_result"]


def test_trainers_run_without_the_anomaly_mode_sine_turns_on(tiny_root, tmp_path):
    import recbole.model.sequential_recommender  # noqa: F401 (imports SINE)

    torch.autograd.set_detect_anomaly(True)  # what that import does the first time
    try:
        _, _, trainer, _ = build(
            "SASRec", "Scientific", config_dict=_tiny(tiny_root, tmp_path)
        )
        assert isinstance(trainer, compat.PluginTrainer)
        assert not torch.is_anomaly_enabled()
    finally:
        torch.autograd.set_detect_anomaly(False)


def test_cpu_device_init_single_process(tiny_root, tmp_path):
    config = Config("SASRec", "Scientific", config_dict=_tiny(tiny_root, tmp_path))
    assert config["device"] == torch.device("cpu") and config["single_spec"] is True


def test_two_process_gloo_ddp_runs_on_cpu(tiny_root, tmp_path):
    # RecBole hard-codes NCCL/cuda and device_ids=[rank]; on CPU the plugin uses gloo and device_ids=None, and
    # waits at a barrier before every rank reloads the best checkpoint.
    from recbole.trainer.trainer import Trainer

    assert Trainer.evaluate.__wrapped__ is not None
    result = run(
        "SASRec",
        "Scientific",
        config_dict=_tiny(tiny_root, tmp_path, epochs=1),
        nproc=2,
        port=free_port(),
    )
    assert result is not None
    assert set(result["test_result"]) == {
        "recall@10",
        "recall@50",
        "ndcg@10",
        "ndcg@50",
    }
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())
    assert os.path.isfile(result["checkpoint"])


def test_atomic_save_leaves_a_normally_readable_file(tmp_path):
    from recbole_transfer.utils import atomic_torch_save

    path = tmp_path / "sub" / "x.pth"
    atomic_torch_save({"w": torch.ones(2)}, str(path))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert os.listdir(tmp_path / "sub") == ["x.pth"]  # no temporary file left behind


def test_importing_the_plugin_leaves_recbole_as_shipped(
    tiny_root, tmp_path, monkeypatch
):
    """RecBole's own classes are untouched: its run_recbole writes RecBole's checkpoint format (the pickled
    Config), which its own load_data_and_model reads back."""
    import functools

    import recbole.utils.utils
    from recbole.config import Config as RecBoleConfig
    from recbole.evaluator.collector import Collector
    from recbole.quick_start import load_data_and_model, run_recbole
    from recbole.trainer import AbstractTrainer, Trainer

    import recbole_transfer  # noqa: F401  (importing it is what is tested)

    for owner, name in [
        (Trainer, "_save_checkpoint"),
        (Trainer, "evaluate"),
        (AbstractTrainer, "__init__"),
        (Collector, "get_data_struct"),
    ]:
        assert getattr(owner, name).__module__.startswith("recbole."), (owner, name)
    assert recbole.utils.utils.ensure_dir.__module__ == "recbole.utils.utils"
    # RecBole 1.2.1 was written for torch < 2.6, whose torch.load unpickles by default
    monkeypatch.setattr(
        torch, "load", functools.partial(torch.load, weights_only=False)
    )
    settings = dict(
        FAST,
        epochs=1,
        data_path=str(tiny_root),
        checkpoint_dir=str(tmp_path / "saved"),
        train_neg_sample_args=None,
        load_col={"inter": ["user_id", "item_id", "timestamp"]},
    )
    run_recbole(model="SASRec", dataset="Scientific", config_dict=settings)
    (checkpoint,) = os.listdir(tmp_path / "saved")
    config, model, *_ = load_data_and_model(str(tmp_path / "saved" / checkpoint))
    assert isinstance(config, RecBoleConfig) and type(model).__name__ == "SASRec"


def test_plugin_runs_stock_trainers_with_its_fixes():
    from recbole.trainer import KGTrainer, Trainer

    from recbole_transfer import registry

    trainer = registry.get_trainer_class("SASRec", None)
    assert issubclass(trainer, Trainer) and issubclass(trainer, compat.PluginTrainer)
    assert registry.get_trainer_class("SASRec", None) is trainer  # one class, made once
    assert issubclass(compat.plugin_trainer(KGTrainer), KGTrainer)


class _RunsCode:
    """A pickle that would call a function when loaded (what a weights-only loader must refuse)."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def _bad_checkpoints(folder):
    good = folder / "good.pth"
    torch.save(
        {"config": {"model": "SASRec"}, "state_dict": {"w": torch.ones(3)}}, good
    )
    truncated = folder / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    text = folder / "notes.pth"
    text.write_text("epoch 3, looked fine\n", encoding="utf-8")
    code = folder / "code.pth"
    torch.save({"config": {}, "state_dict": {}, "hook": _RunsCode()}, code)
    foreign = folder / "foreign.pth"
    torch.save({"w": torch.ones(3)}, foreign)
    return {
        truncated: "is truncated or damaged",
        text: "is not a torch checkpoint",
        code: "holds Python objects, not only tensors and plain values: refused (loading it could run code)",
        foreign: "is not a checkpoint written by recbole_transfer (no state_dict and config)",
        folder / "missing.pth": "not found",
    }


def test_one_loader_names_the_file_and_the_problem(tmp_path, capsys):
    for path, problem in _bad_checkpoints(tmp_path).items():
        with pytest.raises(utils.CheckpointError) as err:
            utils.load_checkpoint(str(path), what="pretrained_path")
        assert str(err.value) == f"pretrained_path '{path}' {problem}"
    assert "this ran while loading" not in capsys.readouterr().out
    assert (
        utils.load_checkpoint(str(tmp_path / "good.pth"))["config"]["model"] == "SASRec"
    )


def test_cli_bad_checkpoint_is_one_line_exit_2(tiny_root, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    bad = _bad_checkpoints(tmp_path)
    code = next(path for path in bad if path.name == "code.pth")
    settings = _tiny(tiny_root, tmp_path, epochs=1)
    args = [f"--{key}={value}" for key, value in settings.items()]
    for key, model in [
        ("resume_checkpoint", "SASRec"),
        ("pretrained_path", "PeterRec"),
    ]:
        cmd = [
            sys.executable,
            str(REPO / "run_recbole_transfer.py"),
            f"--model={model}",
        ]
        cmd += ["--dataset=Scientific", f"--{key}={code}", *args]
        if model == "PeterRec":
            cmd += ["--train_stage=finetune", "--source_datasets=[Scientific]"]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        assert proc.returncode == 2, proc.stderr[-1500:]
        assert proc.stderr.strip().splitlines()[-1] == (
            f"error: {key} '{code}' holds Python objects, not only tensors and plain values: refused "
            "(loading it could run code)"
        )


def test_load_data_and_model_gives_back_the_trained_model(tiny_root, tmp_path):
    from recbole.utils.case_study import full_sort_topk

    from recbole_transfer.quick_start import load_data_and_model

    config, model, trainer, (train, valid, test) = build(
        "SASRec", "Scientific", config_dict=_tiny(tiny_root, tmp_path, epochs=1)
    )
    trainer.fit(train, valid, saved=True, show_progress=False)
    trainer.evaluate(
        test, load_best_model=True
    )  # the trainer's model is now the saved one
    loaded_config, loaded, dataset, _, _, loaded_test = load_data_and_model(
        trainer.saved_model_file
    )
    assert type(loaded).__name__ == "SASRec" and not loaded.training
    assert (
        loaded_config["dataset"] == "Scientific" and loaded_config["hidden_size"] == 16
    )
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    users = torch.arange(1, 21)
    model.eval()
    expected = full_sort_topk(users, model, test, k=10, device="cpu")
    got = full_sort_topk(users, loaded, loaded_test, k=10, device="cpu")
    assert torch.equal(got[1], expected[1])


def test_load_data_and_model_refuses_an_id_model_on_another_dataset(
    tiny_root, tmp_path
):
    from recbole_transfer.quick_start import load_data_and_model

    config, model, trainer, (train, valid, test) = build(
        "SASRec", "Scientific", config_dict=_tiny(tiny_root, tmp_path, epochs=1)
    )
    trainer.fit(train, valid, saved=True, show_progress=False)
    with pytest.raises(UserInputError) as err:
        load_data_and_model(trainer.saved_model_file, dataset="Tools")
    assert str(err.value) == (
        "a SASRec checkpoint only scores the items it was trained on (Scientific); "
        "a text model (UniSRec) recommends for another dataset"
    )
