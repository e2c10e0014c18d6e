"""Config: RecBole's Config with the plugin's yaml layers, registry lookup and strict command-line parsing.

Priority (low -> high): RecBole defaults -> properties/overall.yaml -> properties/model/<M>.yaml (over the yamls
of the models M names in ``yaml_bases``) ->
properties/dataset/<D>.yaml -> user config files -> config_dict -> command line.
"""

import os
import sys

import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_transfer import compat, registry
from recbole_transfer.data.folders import (
    RECBOLE_BUILTIN_DATASETS,
    has_dataset,
    recbole_example_data,
    unknown_dataset,
)
from recbole_transfer.errors import UserInputError
from recbole_transfer.utils import dataset_names, is_unset

PACKAGE_ROOT = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(PACKAGE_ROOT)


def shipped_dir(name):
    """Where the shipped folder ``name`` (properties, dataset, pretrained) is: inside the package for a wheel
    install (setup.py copies it there), beside the package for a checkout or an editable install.
    """
    installed = os.path.join(PACKAGE_ROOT, "shipped", name)
    return installed if os.path.isdir(installed) else os.path.join(REPO_ROOT, name)


PROPERTIES_DIR = shipped_dir("properties")
DATASET_DIR = shipped_dir("dataset")
PRETRAINED_DIR = shipped_dir("pretrained")


def shipped_file(path):
    """``path`` when it exists from the working directory; else, for a relative path into the shipped folders
    (``properties/task/X.yaml``, ``properties/hyper/M.hyper``), the shipped file; else ``path`` unchanged.
    """
    if os.path.isfile(path) or os.path.isabs(path):
        return path
    shipped = os.path.join(os.path.dirname(PROPERTIES_DIR), path)
    return shipped if os.path.isfile(shipped) else path


# keys that one name (source_datasets) replaced
RENAMED_KEYS = {
    "source_dataset": "source_datasets",
    "xcross_sources": "source_datasets",
    "pretrain_datasets": "source_datasets",
}


class ConfigError(UserInputError):
    pass


def parse_cli_overrides(args):
    """``['--key=value', ...]`` -> ``{key: 'value'}``; anything else raises ConfigError with one clear line."""
    parsed = {}
    for arg in args:
        key, sep, value = (
            arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        )
        if (
            not sep
            or not key
            or not key.replace("_", "").replace(".", "").replace("-", "").isalnum()
        ):
            raise ConfigError(
                f"malformed command-line argument '{arg}': expected --key=value"
            )
        if key in parsed and parsed[key] != value:
            raise ConfigError(
                f"command-line key '{key}' given twice with different values"
            )
        parsed[key] = value
    return parsed


def shipped_domain_groups(properties_dir=PROPERTIES_DIR):
    """``{dataset: domain_group}`` read from the shipped dataset yamls that name one."""
    groups = {}
    folder = os.path.join(properties_dir, "dataset")
    for file in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if file.endswith(".yaml"):
            with open(os.path.join(folder, file), encoding="utf-8") as f:
                group = (yaml.safe_load(f) or {}).get("domain_group")
            if group:
                groups[file[: -len(".yaml")]] = str(group)
    return groups


def default_source_datasets(targets, kind, data_path):
    """The other datasets of the targets' shipped family that are present under ``data_path`` (``kind`` ``text``:
    only those with item text), by name; [] when the target belongs to no family."""
    groups = shipped_domain_groups()
    families = {groups.get(name) for name in targets} - {None}
    if len(families) != 1:
        return []
    family = families.pop()
    return [
        name
        for name, group in sorted(groups.items())
        if group == family
        and name not in targets
        and has_dataset(data_path, name)
        and (
            kind != "text"
            or os.path.isfile(os.path.join(data_path, name, f"{name}.text"))
        )
    ]


class Config(RecBoleConfig):
    """RecBole Config that knows the plugin's models, yaml files, datasets and CPU distributed training."""

    def __init__(
        self, model=None, dataset=None, config_file_list=None, config_dict=None
    ):
        compat.apply()
        super().__init__(
            model=model,
            dataset=dataset,
            config_file_list=config_file_list,
            config_dict=config_dict,
        )

    def _load_cmd_line(self):
        # RecBole silently ignores malformed arguments (and anything containing a second '='); we refuse them.
        if "ipykernel_launcher" in sys.argv[0]:
            return {}
        return self._convert_config_dict(parse_cli_overrides(sys.argv[1:]))

    def _load_config_files(self, file_list):
        file_list = [shipped_file(file) for file in file_list or []]
        for file in file_list:
            if not os.path.isfile(file):
                raise ConfigError(f"config file '{file}' not found")
        return super()._load_config_files(file_list)

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
        if model is None:
            raise ConfigError(
                "no model given: pass --model=NAME (a plugin or RecBole model)"
            )
        if dataset is None:
            raise ConfigError(
                "no dataset given: pass --dataset=NAME (one of dataset/ or ml-100k)"
            )
        for old, new in RENAMED_KEYS.items():
            if old in self.external_config_dict:
                raise ConfigError(
                    f"'{old}' was renamed: use {new} (a list, e.g. --{new}=\"['A','B']\")"
                )
        if isinstance(model, str):
            name = registry.resolve_model_name(model)
            return name, registry.get_model_class(name), dataset
        return model.__name__, model, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        self.internal_config_dict["data_path"] = DATASET_DIR
        self.internal_config_dict["pretrained_dir"] = PRETRAINED_DIR
        # the plugin's own yamls must be there (a broken install is an error, not other defaults); a stock model
        # has no yaml of its own, a dataset may have none
        required = [os.path.join(PROPERTIES_DIR, "overall.yaml")]
        plugin = registry.is_plugin_model(model)
        if plugin or model_class.type == ModelType.SEQUENTIAL:
            required.append(os.path.join(PROPERTIES_DIR, "sequential.yaml"))
        optional = []
        if plugin:
            # a model's yaml is read over the yamls of the models it extends (``yaml_bases``, e.g. MetaRec on LRURec);
            # the package's own models ship one, a model registered from outside may have none
            models = list(getattr(model_class, "yaml_bases", ())) + [model]
            files = [os.path.join(PROPERTIES_DIR, "model", f"{m}.yaml") for m in models]
            own = model_class.__module__.startswith("recbole_transfer.")
            (required if own else optional).extend(files)
        for file in required + [f for f in optional if os.path.isfile(f)]:
            if not os.path.isfile(file):
                raise ConfigError(
                    f"default settings {file} not found: reinstall recbole_transfer"
                )
            self._update_internal_config_dict(file)
        for name in dataset_names(dataset):
            # a dataset's own yaml in the working directory (written by prepare --write_yaml), else the shipped one
            local = os.path.join("properties", "dataset", f"{name}.yaml")
            file = (
                local
                if os.path.isfile(local)
                else os.path.join(PROPERTIES_DIR, "dataset", f"{name}.yaml")
            )
            if os.path.isfile(file):
                loaded = self._update_internal_config_dict(file) or {}
                self.parameters["Dataset"] += [
                    k for k in loaded if k not in self.parameters["Dataset"]
                ]

    def _set_default_parameters(self):
        # a model whose stages are of different RecBole types (e.g. sequential pretraining, general fine-tuning)
        stage_type = getattr(self.model_class, "stage_model_type", None)
        if stage_type is not None:
            self.final_config_dict["MODEL_TYPE"] = stage_type(
                self.final_config_dict.get("train_stage")
            )
        data_root = self._data_root()
        self.final_config_dict["data_path"] = data_root
        for name in dataset_names(self.dataset):
            if name in RECBOLE_BUILTIN_DATASETS:
                if not os.path.isfile(os.path.join(data_root, name, f"{name}.inter")):
                    data_root = self.final_config_dict["data_path"] = (
                        recbole_example_data()
                    )
                continue
            if not has_dataset(data_root, name):
                raise unknown_dataset(name, data_root)
        super()._set_default_parameters()
        self.final_config_dict["data_root"] = data_root
        self.final_config_dict["source_datasets"] = self._source_datasets(data_root)

    def _data_root(self):
        """``data_path`` when given (RecBole's key); else ``./dataset`` when it holds the datasets, else the
        shipped datasets."""
        if "data_path" in self.external_config_dict:
            return self.final_config_dict["data_path"]
        names = [
            n for n in dataset_names(self.dataset) if n not in RECBOLE_BUILTIN_DATASETS
        ]
        local = os.path.abspath("dataset")
        if names and all(has_dataset(local, name) for name in names):
            return local
        return DATASET_DIR

    def _source_datasets(self, data_root):
        """``source_datasets`` as a list of names. Unset, a model that declares ``default_sources`` (``all`` or
        ``text``) gets the other datasets of the target's shipped family (never the target itself).
        """
        value = self.final_config_dict.get("source_datasets")
        targets = dataset_names(self.dataset)
        if is_unset(value) or value == []:
            kind = getattr(self.model_class, "default_sources", None)
            return default_source_datasets(targets, kind, data_root) if kind else None
        return dataset_names(value)

    def _init_device(self):
        compat.init_device(self.final_config_dict)
