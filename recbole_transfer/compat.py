"""Every fix this plugin makes to RecBole / torch / numpy behaviour, in one place, each with its reason.

RecBole's own classes are left as shipped: the trainer fixes live in ``PluginTrainer`` (a mixin the plugin's
trainers and the stock trainers it runs are built on, see ``plugin_trainer``), the device fix in the plugin's
``Config``. What ``apply()`` changes process-wide restores what RecBole itself expects (numpy aliases) or only
quiets known warnings. Nothing else in the package modifies a third-party object.
"""

import functools
import itertools
import os
from contextlib import contextmanager

import numpy as np
import torch

from recbole_transfer.utils import CheckpointError, atomic_torch_save, load_checkpoint


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


def plain_other_parameter(values):
    """A model's ``other_parameter()`` with scipy sparse matrices and numpy arrays stored as tensors (e.g.
    ItemKNN's similarity matrix), so the checkpoint loads with ``weights_only=True``; ``restore_other_parameter``
    undoes it."""
    import scipy.sparse as sp

    def plain(value):
        if sp.issparse(value):
            matrix = value.tocsc() if value.format == "csc" else value.tocsr()
            return {
                "sparse_format": matrix.format,
                "data": torch.from_numpy(matrix.data),
                "indices": torch.from_numpy(matrix.indices),
                "indptr": torch.from_numpy(matrix.indptr),
                "shape": [int(n) for n in matrix.shape],
            }
        if isinstance(value, np.ndarray):
            return {"ndarray": torch.from_numpy(value)}
        return value

    return None if values is None else {key: plain(v) for key, v in values.items()}


def restore_other_parameter(values):
    import scipy.sparse as sp

    def restore(value):
        if isinstance(value, dict) and "sparse_format" in value:
            build = sp.csc_matrix if value["sparse_format"] == "csc" else sp.csr_matrix
            parts = (
                value["data"].numpy(),
                value["indices"].numpy(),
                value["indptr"].numpy(),
            )
            return build(parts, shape=tuple(value["shape"]))
        if isinstance(value, dict) and set(value) == {"ndarray"}:
            return value["ndarray"].numpy()
        return value

    return None if values is None else {key: restore(v) for key, v in values.items()}


def ddp_ignore_buffers(module, names):
    """Large frozen tables (e.g. item text vectors) are identical on every rank by construction; DDP would
    otherwise broadcast every buffer from rank 0 before each forward. torch's hook for this is a private static
    method of DistributedDataParallel."""
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        module, list(names)
    )


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
    """Process-wide settings that leave RecBole behaving as shipped (idempotent)."""
    set_numpy_aliases()
    silence_known_warnings()


# --- stock models --------------------------------------------------------------------------------------------------
@contextmanager
def building_stock_model():
    """RecBole 1.2.1's graph models (LightGCN, NGCF, NCL, GCMC, SpectralCF, KGIN, MCCLK) fill their adjacency
    matrix with ``dok_matrix._update``, which newer scipy (1.17 here) no longer has: give it back while the plugin
    builds a model, and take it away after, so RecBole outside the plugin's runs sees scipy as installed.
    """
    import scipy.sparse as sp

    if hasattr(sp.dok_matrix, "_update"):
        yield
        return

    def _update(self, data):
        self._dict.update(data)  # what the removed method did: set many entries at once

    sp.dok_matrix._update = _update
    try:
        yield
    finally:
        del sp.dok_matrix._update


# --- the plugin's trainers ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _collector_class():
    from recbole.evaluator.collector import Collector

    class PluginCollector(Collector):
        def get_data_struct(self):
            """``Collector.get_data_struct`` calls ``.cpu()`` on every collected value, but non-accuracy metrics
            (ItemCoverage, AveragePopularity, GiniIndex, ...) collect plain ints and Counters, which have no
            ``.cpu()``."""
            import copy

            for key, value in self.data_struct._data_dict.items():
                if isinstance(value, torch.Tensor):
                    self.data_struct._data_dict[key] = value.cpu()
            returned_struct = copy.deepcopy(self.data_struct)
            for key in [
                "rec.topk",
                "rec.meanrank",
                "rec.score",
                "rec.items",
                "data.label",
            ]:
                if key in self.data_struct:
                    del self.data_struct[key]
            return returned_struct

    return PluginCollector


_CHECKPOINTS_NAMED = itertools.count()


def _unique_checkpoint_file(path, config):
    """RecBole names a trainer's checkpoint ``<model>-<local time to the second>.pth``: two trainers started in the
    same second (two benchmark processes, or two in one process) write and then load each other's best weights,
    silently when their models have the same keys. The process id and a per-process count keep every name apart;
    under DDP every rank takes rank 0's name, since rank 0 writes the file that all ranks reload.
    """
    stem, ext = os.path.splitext(path)
    name = f"{stem}-{os.getpid()}-{next(_CHECKPOINTS_NAMED)}{ext}"
    if not config["single_spec"] and torch.distributed.is_initialized():
        shared = [name]
        torch.distributed.broadcast_object_list(shared, src=0)
        name = shared[0]
    return name


class PluginTrainer:
    """Mixin placed before a RecBole trainer class (``plugin_trainer``); each override says why it exists."""

    def __init__(self, config, model):
        # RecBole wraps the model in DDP with ``device_ids=[local_rank]``, only valid for CUDA modules; CPU (gloo)
        # DDP needs ``device_ids=None``: let RecBole skip its wrap, then wrap here.
        cpu_ddp = not config["single_spec"] and config["device"].type != "cuda"
        if cpu_ddp:
            config["single_spec"] = True
        try:
            super().__init__(config, model)
        finally:
            if cpu_ddp:
                config["single_spec"] = False
        if cpu_ddp:
            from torch.nn.parallel import DistributedDataParallel

            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.distributed_model = DistributedDataParallel(
                self.model, device_ids=None
            )
        if hasattr(self, "eval_collector"):
            self.eval_collector = _collector_class()(config)
        self.saved_model_file = _unique_checkpoint_file(self.saved_model_file, config)
        # RecBole 1.2.1's SINE module calls ``torch.autograd.set_detect_anomaly(True)`` when it is imported (any
        # import of recbole.model.sequential_recommender): every forward op then records its stack and every
        # backward op checks its output for NaN, a third of a MetaRec iteration on CPU. Nothing here relies on it.
        torch.autograd.set_detect_anomaly(False)
        self.resumable = bool(config["resumable"])
        self.run_record = None  # plain values a caller keeps with the latest state (e.g. a benchmark's timings)
        self._train_loader = None
        self._pending_rng = None
        self._resumed_finished = False

    def evaluate(
        self, eval_data, load_best_model=True, model_file=None, show_progress=False
    ):
        """Upstream race: under DDP rank 1 reloads the best checkpoint while rank 0 may still be writing it.
        Wait for every rank before the reload."""
        if load_best_model and not self.config["single_spec"]:
            import torch.distributed as dist

            dist.barrier()
        if load_best_model and eval_data:
            # RecBole's reload hands the stored other_parameter to the model as is; restore it first
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(
                restore_other_parameter(checkpoint.get("other_parameter"))
            )
            self.logger.info(f"Loading model parameters from {checkpoint_file}")
        return super().evaluate(
            eval_data,
            load_best_model=False,
            model_file=model_file,
            show_progress=show_progress,
        )

    def resume_checkpoint(self, resume_file):
        """RecBole's resume reads the file with a bare ``torch.load`` (a damaged, foreign or code-carrying file is a
        traceback), only warns when it holds another model, and hands other_parameter over as stored: the same
        steps through the project's loader, with one-line errors."""
        checkpoint = load_checkpoint(
            resume_file, map_location=self.device, what="resume_checkpoint"
        )
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            raise CheckpointError(
                f"resume_checkpoint '{resume_file}' holds a {checkpoint['config']['model']} checkpoint, "
                f"not {self.config['model']}"
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(
            restore_other_parameter(checkpoint.get("other_parameter"))
        )
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        # what an exact continuation needs (see ``fit``); a best-score checkpoint carries the RNG states only
        self._pending_rng = {
            k: v for k, v in checkpoint.items() if k.startswith("rng_")
        } or None
        if "best_valid_result" in checkpoint:
            self.best_valid_result = checkpoint["best_valid_result"]
        self.run_record = checkpoint.get("run_record")
        best_file = checkpoint.get("best_model_file")
        if best_file:
            validated = checkpoint.get("best_valid_result") is not None
            if validated and not os.path.isfile(best_file):
                raise CheckpointError(
                    f"resume_checkpoint '{resume_file}' continues a run whose best checkpoint '{best_file}' "
                    "is missing"
                )
            self.saved_model_file = best_file
        self._resumed_finished = bool(checkpoint.get("finished"))
        self.logger.info(
            f"Checkpoint loaded. Resume training from epoch {self.start_epoch}"
            + (
                " (training had finished: straight to the test)"
                if self._resumed_finished
                else ""
            )
        )

    # --- exact resume ---------------------------------------------------------------------------------------------
    def fit(
        self,
        train_data,
        valid_data=None,
        verbose=True,
        saved=True,
        show_progress=False,
        callback_fn=None,
    ):
        """RecBole's resume restarts the shuffling and every RNG from the seed, forgets the best validation result and
        can only start from the best-score checkpoint, so an interrupted run cannot go on as it would have. With
        ``resumable`` the trainer keeps ``latest_checkpoint_file()``: the state at the start of every epoch (model,
        optimizer, early-stopping counters, best result, the RNGs and the train loader's shuffling generator), and
        after the last epoch the same marked finished. A run resumed from it trains the epochs an uninterrupted run
        would have, step for step (one process; under DDP rank 0's RNG states are saved).
        """
        if self._resumed_finished:
            return self.best_valid_score, self.best_valid_result
        # a caller's own wrapper (e.g. a benchmark's timer) stays inside this one and is put back after
        own = self.__dict__.get("_train_epoch")
        train_epoch = self._train_epoch
        first_epoch = self.start_epoch
        trained = []

        def train_epoch_from_saved_state(data, epoch_idx, *args, **kwargs):
            self._train_loader = data
            if self._pending_rng is not None:
                self._set_rng_state(self._pending_rng)
                self._pending_rng = None
            elif self.resumable and saved and epoch_idx > first_epoch:
                self._save_latest(epoch_idx - 1)
            loss = train_epoch(data, epoch_idx, *args, **kwargs)
            trained.append(epoch_idx)
            return loss

        self._train_epoch = train_epoch_from_saved_state
        try:
            result = super().fit(
                train_data, valid_data, verbose, saved, show_progress, callback_fn
            )
        finally:
            if own is None:
                del self._train_epoch
            else:
                self._train_epoch = own
        if self.resumable and saved and trained:
            self._save_latest(trained[-1], finished=True)
        return result

    def latest_checkpoint_file(self):
        stem, ext = os.path.splitext(self.saved_model_file)
        return f"{stem}-latest{ext}"

    def _save_latest(self, epoch, finished=False):
        # this class's save, not a subclass's (whose own saves, e.g. snapshots and exports, belong to its epochs)
        PluginTrainer._save_checkpoint(
            self,
            epoch,
            verbose=False,
            saved_model_file=self.latest_checkpoint_file(),
            latest=dict(
                best_valid_result=(
                    None
                    if self.best_valid_result is None
                    else {k: float(v) for k, v in self.best_valid_result.items()}
                ),
                best_model_file=self.saved_model_file,
                run_record=self.run_record,
                finished=finished,
            ),
        )

    def _named_generators(self):
        """Every ``torch.Generator`` the run draws from besides the global RNG: the train loader's shuffling, and
        those held by the trainer and the model's modules (e.g. MetaRec's source draws, X-Cross's negatives).
        """
        if self._train_loader is not None and hasattr(self._train_loader, "generator"):
            yield "loader", self._train_loader.generator
        for name, value in vars(self).items():
            if isinstance(value, torch.Generator):
                yield f"trainer.{name}", value
        for module_name, module in self.model.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, torch.Generator):
                    yield ".".join(filter(None, ("model", module_name, name))), value

    def extra_checkpoint_state(self):
        import random

        numpy_state = np.random.get_state()
        state = {
            "rng_torch": torch.get_rng_state(),
            "rng_numpy": (
                torch.from_numpy(numpy_state[1].astype(np.int64)),
                *(v.item() if hasattr(v, "item") else v for v in numpy_state[2:]),
            ),
            "rng_python": random.getstate(),
            "rng_generators": {
                name: g.get_state() for name, g in self._named_generators()
            },
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state):
        import random

        torch.set_rng_state(state["rng_torch"])
        if state.get("rng_cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        if "rng_numpy" in state:
            keys, *rest = state["rng_numpy"]
            np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), *rest))
        if "rng_python" in state:
            version, internal, gauss = state["rng_python"]
            random.setstate((version, tuple(internal), gauss))
        generators = dict(state.get("rng_generators") or {})
        # the loader's generator under the key that older pretraining checkpoints use
        if "rng_loader" in state:
            generators.setdefault("loader", state["rng_loader"])
        for name, generator in self._named_generators():
            if name in generators:
                generator.set_state(generators[name])

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """torch >= 2.6 loads with ``weights_only=True`` by default, and RecBole pickles its Config object into every
        checkpoint, so its own ``evaluate(load_best_model=True)`` and ``resume_checkpoint`` fail. Saving only tensors
        and plain values makes the checkpoint loadable under the safe default (no ``weights_only=False`` needed).
        """
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        from recbole.utils import set_color

        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        latest = kwargs.pop("latest", None)
        best = self.best_valid_score
        state = {
            "config": plain_config(self.config),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(best),
            "state_dict": self.model.state_dict(),
            "other_parameter": plain_other_parameter(self.model.other_parameter()),
            "optimizer": self.optimizer.state_dict(),
        }
        # the RNG states: a run resumed from any of its checkpoints draws what the uninterrupted run drew next
        state.update(self.extra_checkpoint_state())
        state.update(latest or {})
        atomic_torch_save(state, saved_model_file)
        if verbose:
            self.logger.info(
                set_color("Saving current", "blue") + f": {saved_model_file}"
            )


_PLUGIN_TRAINERS = {}


def plugin_trainer(trainer_class):
    """``trainer_class`` with ``PluginTrainer``'s fixes (itself when it already has them, or when it is not a
    RecBole ``Trainer``, e.g. the decision-tree trainers, which save their own files); one class per input.
    """
    from recbole.trainer import Trainer

    if issubclass(trainer_class, PluginTrainer) or not issubclass(
        trainer_class, Trainer
    ):
        return trainer_class
    if trainer_class not in _PLUGIN_TRAINERS:
        _PLUGIN_TRAINERS[trainer_class] = type(
            trainer_class.__name__,
            (PluginTrainer, trainer_class),
            {"__module__": __name__},
        )
    return _PLUGIN_TRAINERS[trainer_class]
