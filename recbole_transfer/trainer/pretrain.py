"""Pretraining trainer: trains for ``pretrain_epochs`` without evaluation, keeps a resumable checkpoint after every
epoch and a snapshot every ``save_step`` epochs (and after the last).

A resumed run continues exactly where the interrupted one stopped: the checkpoint carries torch's RNG state and
the train loader's shuffling generator, so the next step sees the same batch, dropout and augmentation.
"""

import os

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_transfer.compat import plugin_trainer
from recbole_transfer.utils import load_checkpoint


class PretrainTrainer(plugin_trainer(Trainer)):
    evaluates = (
        False  # quick_start fits without a validation loader and skips the test pass
    )

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epochs = config["pretrain_epochs"]
        self.save_step = config["save_step"]
        self._train_loader = None
        self._pending_rng = None
        self.snapshots = []

    def snapshot_file(self, epoch):
        name = (
            f"{self.config['model']}-{self.config['dataset']}-pretrain-{epoch + 1}.pth"
        )
        return os.path.join(self.checkpoint_dir, name)

    def extra_checkpoint_state(self):
        state = {"rng_torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["rng_cuda"] = (
                torch.cuda.get_rng_state(self.device)
                if self.device.type == "cuda"
                else None
            )
        if self._train_loader is not None:
            state["rng_loader"] = self._train_loader.generator.get_state()
        return state

    def resume_checkpoint(self, resume_file):
        super().resume_checkpoint(resume_file)
        checkpoint = load_checkpoint(resume_file)
        self._pending_rng = {
            k: v for k, v in checkpoint.items() if k.startswith("rng_")
        }

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._train_loader = train_data
        if self._pending_rng:
            torch.set_rng_state(self._pending_rng["rng_torch"])
            if self._pending_rng.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(self._pending_rng["rng_cuda"], self.device)
            if "rng_loader" in self._pending_rng:
                train_data.generator.set_state(self._pending_rng["rng_loader"])
            self._pending_rng = None
        return super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress
        )

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        super()._save_checkpoint(
            epoch, verbose=False, **kwargs
        )  # the resumable latest state
        if (epoch + 1) % self.save_step == 0 or epoch + 1 == self.epochs:
            snapshot = self.snapshot_file(epoch)
            super()._save_checkpoint(epoch, verbose=False, saved_model_file=snapshot)
            self.snapshots.append(snapshot)
            if verbose:
                self.logger.info(
                    set_color("Saving pretrained snapshot", "blue") + f": {snapshot}"
                )
