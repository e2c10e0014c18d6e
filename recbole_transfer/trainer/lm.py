"""Trainers for language-model stages.

``BehaviorTuningTrainer``: trains a text encoder for ``epochs`` epochs without evaluation (the tuned encoder's use
is downstream, and a target's validation split must not steer FT), keeps the resumable checkpoint after every epoch
(``PretrainTrainer``) and exports the encoder folder after the last epoch.

``PromptLoRATrainer``: RecBole's training with early stopping; every new best-validation model is also exported
as a PromptLoRA folder (adapter + head, ``model.xcross``), so the folder always holds the best adapter.
"""

import os
import time

from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_transfer.compat import PluginTrainer, plugin_trainer
from recbole_transfer.trainer.pretrain import PretrainTrainer
from recbole_transfer.utils import is_unset


class BehaviorTuningTrainer(PretrainTrainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.epochs = config["epochs"]
        self.save_step = self.epochs
        self._started = None

    def output_folder(self):
        """``tuned_plm_dir``, else ``<checkpoint_dir>/BehaviorTuning-<dataset>`` (+ ``-from-<start>`` when tuning
        an already tuned encoder further)."""
        if not is_unset(self.config["tuned_plm_dir"]):
            return str(self.config["tuned_plm_dir"])
        name = f"{self.config['model']}-{self.config['dataset']}"
        start = getattr(self.model, "init_plm_path", None)
        if start:
            name += "-from-" + os.path.basename(os.path.normpath(start))
        return os.path.join(self.checkpoint_dir, name)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self._started is None:
            self._started = time.time()
        return super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress
        )

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        PluginTrainer._save_checkpoint(
            self, epoch, verbose=False, **kwargs
        )  # the resumable latest state
        if epoch + 1 != self.epochs or not (
            self.config["single_spec"] or self.config["local_rank"] == 0
        ):
            return
        folder = self.model.export(
            self.output_folder(),
            {
                "epochs": int(self.epochs),
                "train_examples_per_epoch": (
                    len(self._train_loader.dataset) if self._train_loader else None
                ),
                "tuning_seconds": (
                    round(time.time() - self._started, 1) if self._started else None
                ),
            },
        )
        self.snapshots.append(folder)
        if verbose:
            self.logger.info(set_color("Saving tuned encoder", "blue") + f": {folder}")


class PromptLoRATrainer(plugin_trainer(Trainer)):
    def output_folder(self):
        """``adapter_dir``, else ``<checkpoint_dir>/PromptLoRA-<dataset>`` (+ ``-head`` for a head-only run)."""
        if not is_unset(self.config["adapter_dir"]):
            return str(self.config["adapter_dir"])
        suffix = "-head" if self.config["xc_train_part"] == "head" else ""
        return os.path.join(
            self.checkpoint_dir,
            f"{self.config['model']}-{self.config['dataset']}{suffix}",
        )

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        super()._save_checkpoint(epoch, verbose=verbose, **kwargs)
        if self.config["single_spec"] or self.config["local_rank"] == 0:
            folder = self.model.export(
                self.output_folder(),
                {
                    "dataset": self.config["dataset"],
                    "epoch": epoch + 1,
                    "best_valid_score": float(self.best_valid_score),
                },
            )
            if verbose:
                self.logger.info(set_color("Saving adapter", "blue") + f": {folder}")
