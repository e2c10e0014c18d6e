"""Each patch in recbole_transfer/compat.py, tested through the behaviour it fixes."""

import os

import numpy as np
import torch

from recbole_transfer import compat, utils
from recbole_transfer.config import Config
from recbole_transfer.quick_start import build, run, run_recbole_transfer

from conftest import FAST


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
        port="29531",
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
