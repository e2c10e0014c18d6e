"""run_recbole_transfer.py end to end, and its one-line errors."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import FAST, REPO

import run_recbole_transfer


def _args(tiny_root, tmp_path, **extra):
    values = dict(
        FAST, data_path=str(tiny_root), checkpoint_dir=str(tmp_path / "saved"), **extra
    )
    return [f"--{key}={value}" for key, value in values.items()]


@pytest.mark.parametrize("model", ["SASRec", "BERT4Rec", "GRU4Rec", "NextItNet"])
def test_stock_models_run_through_the_plugin_path(model, tiny_root, tmp_path):
    from recbole_transfer.quick_start import run_recbole_transfer

    extra = {"epochs": 1}
    if model == "NextItNet":
        extra.update(embedding_size=16, block_num=1, dilations=[1, 2])
    if model == "GRU4Rec":
        extra.update(embedding_size=16)
    config_dict = dict(
        FAST, data_path=str(tiny_root), checkpoint_dir=str(tmp_path / "saved"), **extra
    )
    result = run_recbole_transfer(model, "Scientific", config_dict=config_dict)
    assert set(result["test_result"]) == {
        "recall@10",
        "recall@50",
        "ndcg@10",
        "ndcg@50",
    }
    assert os.path.isfile(result["checkpoint"])


def test_cli_trains_prints_metrics_and_saves_checkpoint(tiny_root, tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "run_recbole_transfer.py"),
        "--model=SASRec",
        "--dataset=Scientific",
    ]
    cmd += _args(tiny_root, tmp_path, epochs=1, state="INFO")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "best valid" in output and "test result" in output and "ndcg@10" in output
    assert [
        f
        for f in os.listdir(tmp_path / "saved")
        if f.startswith("SASRec-") and f.endswith(".pth")
    ]
    assert os.path.isdir(tmp_path / "log_tensorboard")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--model=SASRek", "--dataset=Scientific"],
            "error: unknown model 'SASRek'; close matches: SASRec",
        ),
        (
            ["--model=SASRec", "--dataset=Scientifc"],
            "error: unknown dataset 'Scientifc': no ",
        ),
        (
            ["--model=SASRec", "--dataset=Scientific", "--epochs"],
            "error: malformed command-line argument '--epochs': expected --key=value",
        ),
    ],
)
def test_cli_bad_input_is_one_line(argv, expected, capsys):
    assert run_recbole_transfer.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(expected)
    assert "\n" not in err


def test_plugin_models_resolve_before_recbole(tiny_root, tmp_path, text_cache):
    """A registered plugin model gets its own dataset and trainer classes through the same runner."""
    import recbole
    import torch
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer

    from recbole_transfer import registry
    from recbole_transfer.data.dataset import TextSequentialDataset
    from recbole_transfer.quick_start import run_recbole_transfer

    seen = {}

    class TextProbeSASRec(SASRec):
        def __init__(self, config, dataset):
            super().__init__(config, dataset)
            seen["plm_shape"] = tuple(dataset.plm_embedding.shape)
            seen["item_num"] = dataset.item_num

    class ProbeTrainer(Trainer):
        def _train_epoch(self, *args, **kwargs):
            seen["trainer"] = type(self).__name__
            return super()._train_epoch(*args, **kwargs)

    registry.register(
        "TextProbeSASRec", TextProbeSASRec, TextSequentialDataset, ProbeTrainer
    )
    try:
        assert registry.resolve_model_name("textprobesasrec") == "TextProbeSASRec"
        config_dict = dict(
            FAST,
            data_path=str(tiny_root),
            checkpoint_dir=str(tmp_path / "saved"),
            epochs=1,
            text_cache_dir=text_cache,
        )
        # a plugin model ships its own yaml; this probe borrows SASRec's
        sasrec_yaml = os.path.join(
            os.path.dirname(recbole.__file__), "properties", "model", "SASRec.yaml"
        )
        result = run_recbole_transfer(
            "TextProbeSASRec",
            "Scientific",
            config_file_list=[sasrec_yaml],
            config_dict=config_dict,
        )
    finally:
        registry._PLUGIN_MODELS.pop("TextProbeSASRec")
    assert seen["plm_shape"] == (seen["item_num"], 384)
    assert seen["trainer"] == "ProbeTrainer"
    assert (
        torch.load(result["checkpoint"], weights_only=True)["config"]["model"]
        == "TextProbeSASRec"
    )


@pytest.fixture(scope="module")
def ml100k_cut(tmp_path_factory):
    """RecBole's own ml-100k with the interactions of its first 60 users (ids 1..60); .item and .user whole."""
    from recbole_transfer.data.folders import recbole_example_data

    source = os.path.join(recbole_example_data(), "ml-100k")
    root = tmp_path_factory.mktemp("ml100k")
    folder = root / "ml-100k"
    folder.mkdir()
    for suffix in ("item", "user"):
        shutil.copy(os.path.join(source, f"ml-100k.{suffix}"), folder)
    with open(os.path.join(source, "ml-100k.inter"), encoding="utf-8") as fin:
        lines = fin.readlines()
    kept = [line for line in lines[1:] if int(line.split("\t", 1)[0]) <= 60]
    (folder / "ml-100k.inter").write_text(lines[0] + "".join(kept), encoding="utf-8")
    return root


# each model type with RecBole's own defaults, the sequential one with the plugin's
MODEL_TYPES = {
    "BPR": {"recall@10", "mrr@10", "ndcg@10", "hit@10", "precision@10"},
    "LightGCN": {"recall@10", "mrr@10", "ndcg@10", "hit@10", "precision@10"},
    "ItemKNN": {"recall@10", "mrr@10", "ndcg@10", "hit@10", "precision@10"},
    "FM": {"auc", "logloss"},
    "SASRec": {"recall@10", "recall@50", "ndcg@10", "ndcg@50"},
}


@pytest.mark.parametrize("model", list(MODEL_TYPES))
def test_every_model_type_runs_one_epoch_on_ml100k_through_the_cli(
    model, ml100k_cut, tmp_path
):
    from recbole_transfer.quick_start import run_recbole_transfer

    args = [f"--model={model}", "--dataset=ml-100k", f"--data_path={ml100k_cut}"]
    args += [f"--checkpoint_dir={tmp_path / 'saved'}", "--epochs=1"]
    args += ["--show_progress=False", "--log_flops=False", "--state=WARNING"]
    if (
        model == "SASRec"
    ):  # ml-100k histories are long: a small model keeps the epoch short
        args += ["--hidden_size=16", "--inner_size=32", "--n_layers=1", "--n_heads=1"]
        args += ["--MAX_ITEM_LIST_LENGTH=20"]
    results = []
    real_run = run_recbole_transfer

    def recording_run(*a, **k):
        results.append(real_run(*a, **k))
        return results[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            "recbole_transfer.quick_start.run_recbole_transfer", recording_run
        )
        assert run_recbole_transfer_cli(args) == 0
    assert set(results[0]["test_result"]) == MODEL_TYPES[model]


def run_recbole_transfer_cli(args):
    return run_recbole_transfer.main(args)


def test_a_stock_model_that_cannot_run_is_one_line_exit_2(ml100k_cut, tmp_path):
    # KGAT needs a knowledge graph (and the dgl package): neither is here
    cmd = [sys.executable, str(REPO / "run_recbole_transfer.py"), "--model=KGAT"]
    cmd += ["--dataset=ml-100k", f"--data_path={ml100k_cut}", "--epochs=1"]
    cmd += ["--state=WARNING"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: RecBole's KGAT cannot run on ml-100k here: ")
    ), proc.stderr[-1500:]


def test_help_lists_models_and_datasets(capsys):
    with pytest.raises(SystemExit) as done:
        run_recbole_transfer.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "plugin: BehaviorTuning, LRURec, MetaRec" in out
    for family in ("general", "sequential", "context-aware", "knowledge-aware"):
        assert f"RecBole {family}: " in out
    assert "BPR" in out and "SASRec" in out
    assert "Scientific" in out and "ml-100k" in out


def test_unknown_model_without_close_match_names_what_exists(capsys):
    assert run_recbole_transfer.main(["--model=Qqqqqqqq", "--dataset=Scientific"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "error: unknown model 'Qqqqqqqq'; plugin models: BehaviorTuning"
    )
    assert err.endswith(
        "or any RecBole model (python run_recbole_transfer.py --help lists them)"
    )
    assert len(err.splitlines()) == 1
