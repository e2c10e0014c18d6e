"""Where datasets live: ``<data_path>/<D>/<D>.inter`` (+ side files), or RecBole's own copy of its example data."""

import copy
import os

from recbole_transfer.errors import UserInputError

# datasets RecBole itself ships (read from the installed package, never copied)
RECBOLE_BUILTIN_DATASETS = ("ml-100k",)


class UnknownDatasetError(UserInputError):
    pass


def recbole_example_data():
    """The folder inside the installed recbole package that holds its example datasets (ml-100k)."""
    import recbole

    return os.path.join(os.path.dirname(recbole.__file__), "dataset_example")


def has_dataset(data_path, name):
    return os.path.isfile(os.path.join(data_path, name, f"{name}.inter"))


def available_datasets(data_path):
    """Names of the datasets under ``data_path`` (folders ``<D>`` holding ``<D>.inter``)."""
    if not os.path.isdir(data_path):
        return []
    return sorted(
        name for name in os.listdir(data_path) if has_dataset(data_path, name)
    )


def unknown_dataset(name, data_path):
    """The one-line error for a dataset that is neither under ``data_path`` nor one of RecBole's examples."""
    known = available_datasets(data_path) + list(RECBOLE_BUILTIN_DATASETS)
    return UnknownDatasetError(
        f"unknown dataset '{name}': no {os.path.join(data_path, name, name + '.inter')}; "
        f"available: {', '.join(known)}"
    )


def dataset_folder(name, data_path):
    """Where dataset ``name`` lives: ``<data_path>/<name>``, or RecBole's copy for its built-in example datasets."""
    folder = os.path.join(data_path, name)
    if name in RECBOLE_BUILTIN_DATASETS and not has_dataset(data_path, name):
        folder = os.path.join(recbole_example_data(), name)
    return folder


def config_for_dataset(config, name):
    """A copy of a final ``config`` that reads dataset ``name`` with the same settings (fields, filters, sequence
    length): for datasets a model loads beside its own (e.g. MetaRec's sources)."""
    data_root = config["data_root"]
    folder = dataset_folder(name, data_root)
    if not os.path.isfile(os.path.join(folder, f"{name}.inter")):
        raise unknown_dataset(name, data_root)
    other = copy.copy(config)
    other.dataset = name
    other.final_config_dict = dict(
        config.final_config_dict, dataset=name, data_path=folder
    )
    return other
