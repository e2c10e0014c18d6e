"""Config: RecBole's Config with the plugin's yaml layers, registry lookup and strict command-line parsing.

Priority (low -> high): RecBole defaults -> properties/overall.yaml -> properties/model/<M>.yaml (over the yamls
of the models M names in ``yaml_bases``) ->
properties/dataset/<D>.yaml -> user config files -> config_dict -> command line.
"""

import copy
import os
import sys

from recbole.config import Config as RecBoleConfig

from recbole_transfer import compat, registry
from recbole_transfer.errors import UserInputError

PACKAGE_ROOT = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(PACKAGE_ROOT)
PROPERTIES_DIR = os.path.join(REPO_ROOT, "properties")
DATASET_DIR = os.path.join(REPO_ROOT, "dataset")
# datasets RecBole itself ships (read from the installed package, never copied)
RECBOLE_BUILTIN_DATASETS = ("ml-100k",)


class ConfigError(UserInputError):
    pass


class UnknownDatasetError(UserInputError):
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


def is_unset(value):
    """Whether a path-like config value means "nothing" (None, '', none, null, ~)."""
    return value is None or str(value).strip().lower() in ("", "none", "~", "null")


def find_path(path, folder=False):
    """``path`` as given (relative to the working directory) or else relative to the repository; None if neither
    exists (as a folder when ``folder``, else as a file)."""
    exists = os.path.isdir if folder else os.path.isfile
    for candidate in (str(path), os.path.join(REPO_ROOT, str(path))):
        if exists(candidate):
            return candidate
    return None


def dataset_names(dataset):
    """``'A,B,C'`` -> ``['A', 'B', 'C']`` (several names mean a multi-domain merge)."""
    return [name.strip() for name in str(dataset).split(",") if name.strip()]


def recbole_example_data():
    """The folder inside the installed recbole package that holds its example datasets (ml-100k)."""
    import recbole

    return os.path.join(os.path.dirname(recbole.__file__), "dataset_example")


def dataset_folder(name, data_path=DATASET_DIR):
    """Where dataset ``name`` lives: ``<data_path>/<name>``, or RecBole's copy for its built-in example datasets."""
    folder = os.path.join(data_path, name)
    if name in RECBOLE_BUILTIN_DATASETS and not os.path.isfile(
        os.path.join(folder, f"{name}.inter")
    ):
        folder = os.path.join(recbole_example_data(), name)
    return folder


def config_for_dataset(config, name):
    """A copy of a final ``config`` that reads dataset ``name`` with the same settings (fields, filters, sequence
    length): for datasets a model loads beside its own (e.g. MetaRec's sources)."""
    data_root = config["data_root"]
    folder = dataset_folder(name, data_root)
    if not os.path.isfile(os.path.join(folder, f"{name}.inter")):
        known = available_datasets(data_root) + list(RECBOLE_BUILTIN_DATASETS)
        raise UnknownDatasetError(
            f"unknown dataset '{name}': no {os.path.join(folder, name + '.inter')}; "
            f"available: {', '.join(known)}"
        )
    other = copy.copy(config)
    other.dataset = name
    other.final_config_dict = dict(
        config.final_config_dict, dataset=name, data_path=folder
    )
    return other


def available_datasets(data_path=DATASET_DIR):
    if not os.path.isdir(data_path):
        return []
    return sorted(
        name
        for name in os.listdir(data_path)
        if os.path.isfile(os.path.join(data_path, name, f"{name}.inter"))
    )


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
        for file in file_list or []:
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
        if isinstance(model, str):
            name = registry.resolve_model_name(model)
            return name, registry.get_model_class(name), dataset
        return model.__name__, model, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        self.internal_config_dict["data_path"] = DATASET_DIR
        # a model's yaml is read over the yamls of the models it extends (``yaml_bases``, e.g. MetaRec on LRURec)
        models = list(getattr(model_class, "yaml_bases", ())) + [model]
        files = [os.path.join(PROPERTIES_DIR, "overall.yaml")]
        files += [
            os.path.join(PROPERTIES_DIR, "model", f"{name}.yaml") for name in models
        ]
        files += [
            os.path.join(PROPERTIES_DIR, "dataset", f"{name}.yaml")
            for name in dataset_names(dataset)
        ]
        for file in files:
            if os.path.isfile(file):
                loaded = self._update_internal_config_dict(file) or {}
                if os.path.basename(os.path.dirname(file)) == "dataset":
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
        data_root = self.final_config_dict["data_path"]
        for name in dataset_names(self.dataset):
            if name in RECBOLE_BUILTIN_DATASETS:
                if not os.path.isfile(os.path.join(data_root, name, f"{name}.inter")):
                    data_root = self.final_config_dict["data_path"] = (
                        recbole_example_data()
                    )
                continue
            if not os.path.isfile(os.path.join(data_root, name, f"{name}.inter")):
                known = available_datasets(data_root) + list(RECBOLE_BUILTIN_DATASETS)
                raise UnknownDatasetError(
                    f"unknown dataset '{name}': no {os.path.join(data_root, name, name + '.inter')}; "
                    f"available: {', '.join(known)}"
                )
        super()._set_default_parameters()
        self.final_config_dict["data_root"] = data_root

    def _init_device(self):
        compat.init_device(self.final_config_dict)
