"""Config layering, registry lookup and one-line errors for bad input."""

import sys

import pytest

from recbole_transfer import registry
from recbole_transfer.config import Config, ConfigError, parse_cli_overrides
from recbole_transfer.data.folders import UnknownDatasetError
from recbole_transfer.registry import UnknownModelError

from conftest import DATASET_DIR, FAST, cut_users


def test_plugin_yaml_layers_and_priorities(tmp_path, monkeypatch):
    user_file = tmp_path / "user.yaml"
    user_file.write_text("epochs: 7\nlearning_rate: 0.01\ntrain_batch_size: 128\n")
    monkeypatch.setattr(sys, "argv", ["run", "--train_batch_size=64"])
    config = Config(
        model="SASRec",
        dataset="Scientific",
        config_file_list=[str(user_file)],
        config_dict={"learning_rate": 0.005, "train_batch_size": 99},
    )
    # properties/overall.yaml (plugin) over RecBole's defaults
    assert config["topk"] == [10, 50] and config["valid_metric"] == "NDCG@10"
    assert (
        config["eval_args"]["split"] == {"LS": "valid_and_test"}
        and config["eval_args"]["order"] == "TO"
    )
    # properties/dataset/Scientific.yaml
    assert config["load_col"] == {"inter": ["user_id", "item_id", "timestamp"]}
    # RecBole's model yaml still applies to stock models
    assert config["hidden_size"] == 64
    # user file < config_dict < command line
    assert config["epochs"] == 7
    assert config["learning_rate"] == 0.005
    assert config["train_batch_size"] == 64
    assert config["data_path"] == str(DATASET_DIR / "Scientific")


def test_model_names_resolve_case_insensitively():
    assert registry.resolve_model_name("sasrec") == "SASRec"
    assert registry.resolve_model_name("BERT4REC") == "BERT4Rec"
    for name in [
        "SASRec",
        "BERT4Rec",
        "GRU4Rec",
        "NextItNet",
        "FDSA",
        "LightSANs",
        "BPR",
    ]:
        assert name in registry.recbole_model_names()


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError) as err:
        Config(model="SASRek", dataset="Scientific")
    message = str(err.value)
    assert message.startswith("unknown model 'SASRek'; close matches: SASRec")
    assert "\n" not in message


def test_unknown_dataset_lists_available():
    with pytest.raises(UnknownDatasetError) as err:
        Config(model="SASRec", dataset="Scientifc")
    message = str(err.value)
    assert message.startswith("unknown dataset 'Scientifc': no ")
    assert "available: " in message and "Scientific" in message and "ml-100k" in message
    assert "\n" not in message


@pytest.mark.parametrize("arg", ["--epochs", "epochs=3", "--=3", "--ep och=3"])
def test_malformed_key_value(arg):
    with pytest.raises(ConfigError) as err:
        parse_cli_overrides([arg])
    assert (
        str(err.value)
        == f"malformed command-line argument '{arg}': expected --key=value"
    )


def test_malformed_key_value_through_config(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run", "--epochs"])
    with pytest.raises(
        ConfigError,
        match=r"^malformed command-line argument '--epochs': expected --key=value$",
    ):
        Config(model="SASRec", dataset="Scientific")


def test_missing_config_file():
    with pytest.raises(ConfigError, match=r"^config file 'nope.yaml' not found$"):
        Config(model="SASRec", dataset="Scientific", config_file_list=["nope.yaml"])


def test_cli_values_keep_second_equals_sign():
    assert parse_cli_overrides(["--note=a=b", "--epochs=3"]) == {
        "note": "a=b",
        "epochs": "3",
    }


def test_datasets_in_the_working_directory_come_before_the_shipped_ones(tmp_path):
    # conftest runs each test in tmp_path: a ./dataset there (as prepare writes it) is found without data_path
    cut_users("Scientific", 30, tmp_path / "dataset")
    (tmp_path / "dataset" / "Scientific" / "Scientific.inter").rename(
        tmp_path / "dataset" / "Scientific" / "Mine.inter"
    )
    (tmp_path / "dataset" / "Scientific").rename(tmp_path / "dataset" / "Mine")
    (tmp_path / "properties" / "dataset").mkdir(parents=True)
    (tmp_path / "properties" / "dataset" / "Mine.yaml").write_text(
        "load_col:\n  inter: [user_id, item_id, timestamp]\nMAX_ITEM_LIST_LENGTH: 7\n",
        encoding="utf-8",
    )
    config = Config("SASRec", "Mine", config_dict=dict(FAST))
    assert config["data_path"] == str(tmp_path / "dataset" / "Mine")
    assert config["MAX_ITEM_LIST_LENGTH"] == 7  # its own yaml was read
    shipped = Config("SASRec", "Scientific", config_dict=dict(FAST))
    assert shipped["data_path"] == str(
        DATASET_DIR / "Scientific"
    )  # not in ./dataset: shipped
