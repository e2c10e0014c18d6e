"""Every patch this plugin applies to RecBole / torch / numpy internals, in one place.

Each patch says why it exists. ``apply()`` is idempotent and runs when ``recbole_transfer`` is imported.
Nothing else in the package modifies a third-party object.
"""

import os

import numpy as np
import torch

from recbole_transfer.utils import atomic_torch_save

_APPLIED = False


# --- numpy --------------------------------------------------------------------------------------------------------
def set_numpy_aliases():
    """RecBole 1.2.1 still uses ``np.float``/``np.int``/... but only sets the aliases inside ``Config.__init__``;
    code that runs before a Config exists (dataset tools, tests) needs them at import time. ``Config.__init__``
    itself reads ``np.float_``/``np.complex_``/``np.unicode_``, which numpy 2 removed: GPU images that ship numpy 2
    (outside the ``numpy<2`` pin) fail there unless those names exist too."""
    for alias, target in {
        "float_": np.float64,
        "complex_": np.complex128,
        "unicode_": np.str_,
        "bool": np.bool_,
        "int": np.int_,
        "float": np.float64,
        "complex": np.complex128,
        "object": np.object_,
        "str": np.str_,
        "long": np.int_,
        "unicode": np.str_,
    }.items():
        if (
            vars(np).get(alias) is not target
        ):  # vars(): hasattr would trigger numpy's FutureWarning
            setattr(np, alias, target)


# --- safe checkpoints ---------------------------------------------------------------------------------------------
def plain_config(config):
    """A RecBole Config as a dict of plain Python values (loadable with ``torch.load(weights_only=True)``)."""
    source = (
        config.final_config_dict
        if hasattr(config, "final_config_dict")
        else dict(config)
    )

    def plain(value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return value.item()
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [plain(v) for v in value]
        return str(value)

    return {str(k): plain(v) for k, v in source.items()}


def _safe_save_checkpoint(self, epoch, verbose=True, **kwargs):
    """torch >= 2.6 loads with ``weights_only=True`` by default, and RecBole pickles its Config object into every
    checkpoint, so its own ``evaluate(load_best_model=True)`` and ``resume_checkpoint`` fail. Saving only tensors
    and plain values makes the checkpoint loadable under the safe default (no ``weights_only=False`` needed).
    """
    if not self.config["single_spec"] and self.config["local_rank"] != 0:
        return
    from recbole.utils import set_color

    saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
    best = self.best_valid_score
    state = {
        "config": plain_config(self.config),
        "epoch": int(epoch),
        "cur_step": int(self.cur_step),
        "best_valid_score": float(best),
        "state_dict": self.model.state_dict(),
        "other_parameter": self.model.other_parameter(),
        "optimizer": self.optimizer.state_dict(),
    }
    # plugin trainers add what their resume needs (e.g. RNG states) through this hook
    extra_state = getattr(self, "extra_checkpoint_state", None)
    if extra_state is not None:
        state.update(extra_state())
    atomic_torch_save(state, saved_model_file)
    if verbose:
        self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")


def ddp_ignore_buffers(module, names):
    """Large frozen tables (e.g. item text vectors) are identical on every rank by construction; DDP would
    otherwise broadcast every buffer from rank 0 before each forward. torch's hook for this is a private static
    method of DistributedDataParallel."""
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        module, list(names)
    )


# --- Collector ----------------------------------------------------------------------------------------------------
def _collector_get_data_struct(self):
    """``Collector.get_data_struct`` calls ``.cpu()`` on every collected value, but non-accuracy metrics
    (ItemCoverage, AveragePopularity, GiniIndex, ...) collect plain ints and Counters, which have no ``.cpu()``.
    """
    import copy

    for key, value in self.data_struct._data_dict.items():
        if isinstance(value, torch.Tensor):
            self.data_struct._data_dict[key] = value.cpu()
    returned_struct = copy.deepcopy(self.data_struct)
    for key in ["rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label"]:
        if key in self.data_struct:
            del self.data_struct[key]
    return returned_struct


# --- distributed training on CPU ----------------------------------------------------------------------------------
def init_device(config_dict):
    """RecBole's ``Config._init_device`` hard-codes NCCL and ``cuda:local_rank``; that cannot run on a CPU machine.
    Use NCCL/cuda where GPUs exist, gloo/CPU otherwise (one intra-op thread per rank so ranks do not oversubscribe).
    """
    import torch.distributed as dist

    gpu_id = config_dict.get("gpu_id", "")
    if isinstance(gpu_id, (tuple, list)):
        gpu_id = ",".join(map(str, gpu_id))
    gpu_id = str(gpu_id) if gpu_id is not None else ""
    config_dict["gpu_id"] = gpu_id
    use_cuda = (
        bool(config_dict.get("use_gpu", True))
        and len(gpu_id) > 0
        and torch.cuda.is_available()
    )
    if use_cuda:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id

    if "local_rank" not in config_dict:
        config_dict["single_spec"] = True
        config_dict["local_rank"] = 0
        config_dict["device"] = (
            torch.device("cuda") if use_cuda else torch.device("cpu")
        )
        return

    rank = config_dict["local_rank"]
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=rank + config_dict.get("offset", 0),
            world_size=config_dict["world_size"],
            init_method=f"tcp://{config_dict['ip']}:{config_dict['port']}",
        )
    if use_cuda:
        torch.cuda.set_device(rank)
        config_dict["device"] = torch.device("cuda", rank)
    else:
        torch.set_num_threads(1)
        config_dict["device"] = torch.device("cpu")
    config_dict["single_spec"] = False
    if rank != 0:
        config_dict["state"] = "error"
        config_dict["show_progress"] = False
        config_dict["verbose"] = False


def _abstract_trainer_init(self, config, model):
    """RecBole wraps the model in DDP with ``device_ids=[local_rank]``, which is only valid for CUDA modules;
    CPU (gloo) DDP needs ``device_ids=None``."""
    from torch.nn.parallel import DistributedDataParallel

    self.config = config
    self.model = model
    if not config["single_spec"]:
        self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        on_cuda = config["device"].type == "cuda"
        self.distributed_model = DistributedDataParallel(
            self.model, device_ids=[config["local_rank"]] if on_cuda else None
        )


def _wrap_evaluate(evaluate):
    """Upstream race: under DDP rank 1 reloads the best checkpoint while rank 0 may still be writing it.
    Wait for every rank before the reload."""

    def evaluate_after_barrier(
        self, eval_data, load_best_model=True, model_file=None, show_progress=False
    ):
        if load_best_model and not self.config["single_spec"]:
            import torch.distributed as dist

            dist.barrier()
        return evaluate(
            self,
            eval_data,
            load_best_model=load_best_model,
            model_file=model_file,
            show_progress=show_progress,
        )

    evaluate_after_barrier.__wrapped__ = evaluate
    return evaluate_after_barrier


def _ensure_dir(dir_path):
    """RecBole's ``ensure_dir`` checks then creates: two DDP ranks starting together race on ``./log`` and one
    crashes with FileExistsError."""
    os.makedirs(dir_path, exist_ok=True)


def silence_known_warnings():
    """RecBole 1.2.1 fills NaNs with chained ``inplace=True`` calls and builds ``torch.cuda.amp.GradScaler``; pandas
    2.x and torch warn on every run (FutureWarning, several lines each). With the pins (pandas < 3) the fill still
    works, so the warnings only bury the output and break one-line error messages."""
    import warnings

    warnings.filterwarnings(
        "ignore",
        message=r"A value is trying to be set on a copy of a DataFrame or Series "
        r"through chained assignment",
        category=FutureWarning,
    )
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated",
        category=FutureWarning,
    )
    # peft 0.21 reads transformers' deprecated ``is_gradient_checkpointing`` when it wraps a model (LoRA)
    warnings.filterwarnings(
        "ignore",
        message=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
    )


def apply():
    """Apply every patch once."""
    global _APPLIED
    set_numpy_aliases()
    silence_known_warnings()
    if _APPLIED:
        return
    import recbole.data.utils
    import recbole.utils
    import recbole.utils.logger
    import recbole.utils.utils
    from recbole.evaluator.collector import Collector
    from recbole.trainer import trainer as recbole_trainer

    for module in (
        recbole.utils,
        recbole.utils.utils,
        recbole.utils.logger,
        recbole.data.utils,
        recbole_trainer,
    ):
        if hasattr(module, "ensure_dir"):
            module.ensure_dir = _ensure_dir

    recbole_trainer.Trainer._save_checkpoint = _safe_save_checkpoint
    recbole_trainer.AbstractTrainer.__init__ = _abstract_trainer_init
    recbole_trainer.Trainer.evaluate = _wrap_evaluate(recbole_trainer.Trainer.evaluate)
    Collector.get_data_struct = _collector_get_data_struct
    _APPLIED = True
