"""One path for every model: plugin Config -> dataset -> RecBole data_preparation -> model -> trainer -> evaluation.

``run`` spawns ``nproc`` processes for RecBole's distributed training (NCCL on GPUs, gloo on CPU).
``objective_function`` is the hook RecBole's HyperTuning calls.
"""

import logging
import os
import sys
from contextlib import contextmanager
from logging import getLogger

import torch.distributed as dist
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation
from recbole.data.transform import construct_transform
from recbole.utils import get_environment, get_flops, init_logger, init_seed, set_color

from recbole_transfer import compat, registry
from recbole_transfer.config import Config
from recbole_transfer.data.positions import all_positions_dataset, train_positions
from recbole_transfer.errors import UserInputError
from recbole_transfer.utils import load_checkpoint


def create_dataset(config):
    """The model's plugin dataset class if it has one, else RecBole's choice for the model type; with
    ``train_positions: all`` that class (or RecBole's SequentialDataset) building all-positions training rows.
    """
    dataset_class = registry.get_dataset_class(config["model"], config["train_stage"])
    if train_positions(config) == "all":
        return all_positions_dataset(dataset_class)(config)
    if dataset_class is None:
        return recbole_create_dataset(config)
    return dataset_class(config)


class StockModelError(UserInputError):
    """A stock RecBole model that cannot run on this data or installation (e.g. a knowledge-graph model on a
    dataset without a graph, or a model whose optional package is missing)."""


@contextmanager
def stock_model_errors(config):
    """For stock RecBole models: any failure becomes one line naming the model, the dataset and the cause (plugin
    models keep their tracebacks: a failure there is the plugin's to fix)."""
    if registry.is_plugin_model(config["model"]):
        yield
        return
    try:
        yield
    except UserInputError:
        raise
    except Exception as err:
        cause = (str(err).strip().splitlines() or [""])[0]
        raise StockModelError(
            f"RecBole's {config['model']} cannot run on {config['dataset']} here: "
            f"{type(err).__name__}: {cause}"
        ) from err


def build(model=None, dataset=None, config_file_list=None, config_dict=None):
    """Config, data loaders, model and trainer, ready to fit (used by the runner, tuning and tests)."""
    config = Config(
        model=model,
        dataset=dataset,
        config_file_list=config_file_list,
        config_dict=config_dict,
    )
    with stock_model_errors(config):
        return _build(config)


def _build(config):
    init_seed(config["seed"], config["reproducibility"])
    # RecBole's ensure_dir checks then creates: DDP ranks starting together race on these folders
    for folder in (os.path.join("log", config["model"]), config["checkpoint_dir"]):
        os.makedirs(folder, exist_ok=True)
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    # before the data is read: a model that cannot train this way fails at once
    model_class = registry.get_model_class(
        config["model"], train_positions(config), config["train_stage"]
    )

    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    with compat.building_stock_model():
        model = model_class(config, train_data._dataset)
    model = model.to(config["device"])
    logger.info(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        set_color("Trainable parameters", "blue")
        + f": {trainable} / {total} ({100.0 * trainable / max(total, 1):.2f}%)"
    )
    if config["log_flops"]:
        flops = get_flops(
            model, data, config["device"], logger, construct_transform(config)
        )
        logger.info(set_color("FLOPs", "blue") + f": {flops}")

    trainer = registry.get_trainer_class(
        config["model"], config["MODEL_TYPE"], config["train_stage"]
    )(config, model)
    # every entry point (a run, a sweep's trial, a measured run) continues the checkpoint it is given
    if config["resume_checkpoint"]:
        trainer.resume_checkpoint(config["resume_checkpoint"])
    return config, model, trainer, (train_data, valid_data, test_data)


def run_recbole_transfer(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    queue=None,
):
    """Train with early stopping on the validation split, then test the best checkpoint.

    Returns ``{best_valid_score, valid_score_bigger, best_valid_result, test_result, checkpoint}``.
    """
    config, model, trainer, (train_data, valid_data, test_data) = build(
        model, dataset, config_file_list, config_dict
    )
    logger = getLogger()

    evaluates = getattr(trainer, "evaluates", True)  # pretraining stages train only
    with stock_model_errors(config):
        best_valid_score, best_valid_result = trainer.fit(
            train_data,
            valid_data if evaluates else None,
            saved=saved,
            show_progress=config["show_progress"],
        )
    # --epochs=0 (e.g. zero-shot evaluation of a loaded adapter): no checkpoint was written, test the model as is
    saved = saved and config["epochs"] > 0
    test_result = (
        trainer.evaluate(
            test_data, load_best_model=saved, show_progress=config["show_progress"]
        )
        if evaluates
        else None
    )

    logger.info(
        "The running environment of this training is as follows:\n"
        + get_environment(config).draw()
    )
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    if saved:
        logger.info(set_color("checkpoint", "yellow") + f": {trainer.saved_model_file}")

    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "checkpoint": trainer.saved_model_file if saved else None,
    }
    if saved and getattr(trainer, "snapshots", None):
        result["checkpoint"] = trainer.snapshots[-1]
    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def _run_rank(rank, model, dataset, config_file_list, config_dict, saved, queue):
    config_dict = dict(config_dict, local_rank=rank)
    run_recbole_transfer(
        model, dataset, config_file_list, config_dict, saved=saved, queue=queue
    )


def run(
    model,
    dataset,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port="5678",
    group_offset=0,
):
    """Single process, or ``nproc`` spawned ranks through torch.distributed (RecBole's DDP path)."""
    if nproc == 1 and world_size <= 0:
        return run_recbole_transfer(
            model, dataset, config_file_list, config_dict, saved=saved
        )
    import torch.multiprocessing as mp

    world_size = nproc if world_size == -1 else world_size
    config_dict = dict(
        config_dict or {},
        world_size=world_size,
        ip=ip,
        port=str(port),
        nproc=nproc,
        offset=group_offset,
    )
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(
        _run_rank,
        args=(model, dataset, config_file_list, config_dict, saved, queue),
        nprocs=nproc,
        join=True,
    )
    return None if queue.empty() else queue.get()


# what a Config derives while it is built: recomputed, never read back from a checkpoint
DERIVED_KEYS = (
    "data_path",
    "data_root",
    "device",
    "MODEL_TYPE",
    "MODEL_INPUT_TYPE",
    "eval_type",
    "single_spec",
    "local_rank",
    "world_size",
    "nproc",
    "offset",
    "ip",
    "port",
    "valid_neg_sample_args",
    "test_neg_sample_args",
)


def load_data_and_model(model_file, dataset=None, config_dict=None):
    """RecBole's ``load_data_and_model`` for checkpoints this pipeline writes (plugin or stock models; the file is
    read with ``weights_only=True`` only). Returns ``(config, model, dataset, train_data, valid_data, test_data)``
    with the model's trained weights, in eval mode. ``dataset`` reads another dataset with the same settings (a
    text model on a domain it was not trained on); ``config_dict`` overrides settings (e.g. ``data_path``).
    """
    checkpoint = load_checkpoint(model_file, what="checkpoint")
    saved = checkpoint["config"]
    model_class = registry.get_model_class(
        saved["model"], train_positions(saved), saved.get("train_stage")
    )
    other_domain = dataset is not None and dataset != saved["dataset"]
    if other_domain and not hasattr(model_class, "TRANSFERABLE"):
        raise UserInputError(
            f"a {saved['model']} checkpoint only scores the items it was trained on "
            f"({saved['dataset']}); a text model (UniSRec) recommends for another dataset"
        )
    settings = {k: v for k, v in saved.items() if k not in DERIVED_KEYS}
    negatives = settings.get("train_neg_sample_args")
    if isinstance(negatives, dict) and negatives.get("distribution") == "none":
        settings["train_neg_sample_args"] = None
    settings["data_path"] = saved.get("data_root") or os.path.dirname(
        saved["data_path"]
    )
    if (
        other_domain
    ):  # e.g. UniSRec: text only, the ID table belongs to the training domain
        settings.update(getattr(model_class, "other_domain_settings", {}))
    settings.update(config_dict or {})
    argv, sys.argv = (
        sys.argv,
        sys.argv[:1],
    )  # the checkpoint's settings, not this process's arguments
    try:
        config = Config(
            saved["model"], dataset or saved["dataset"], config_dict=settings
        )
    finally:
        sys.argv = argv
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    init_seed(config["seed"], config["reproducibility"])
    with compat.building_stock_model():
        model = model_class(config, train_data._dataset)
    state = checkpoint["state_dict"]
    if (
        other_domain
    ):  # only what does not depend on the items (e.g. UniSRec's encoder and adaptor)
        state = {
            k: v for k, v in state.items() if k.split(".")[0] in model.TRANSFERABLE
        }
    model.load_state_dict(state, strict=not other_domain)
    model.load_other_parameter(
        compat.restore_other_parameter(checkpoint.get("other_parameter"))
    )
    model = model.to(config["device"]).eval()
    return config, model, data, train_data, valid_data, test_data


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """RecBole HyperTuning objective: train once, return the validation score and both results."""
    config, model, trainer, (train_data, valid_data, test_data) = build(
        config_file_list=config_file_list, config_dict=config_dict
    )
    logging.basicConfig(level=logging.ERROR)
    # RecBole's objective trains silently; a trial can run for hours, so its epochs go to its log like a run's
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, verbose=True, saved=saved
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }
