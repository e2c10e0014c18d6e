"""Pretraining trainer: trains for ``pretrain_epochs`` without evaluation, keeps a resumable checkpoint after every
epoch and a snapshot every ``save_step`` epochs (and after the last).

A resumed run continues exactly where the interrupted one stopped: the checkpoint carries the RNG states and the
train loader's shuffling generator (``PluginTrainer``), so the next step sees the same batch, dropout and
augmentation.
"""

import os

from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_transfer.compat import plugin_trainer


class PretrainTrainer(plugin_trainer(Trainer)):
    evaluates = (
        False  # quick_start fits without a validation loader and skips the test pass
    )

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epochs = config["pretrain_epochs"]
        self.save_step = config["save_step"]
        self.snapshots = []

    def snapshot_file(self, epoch):
        name = (
            f"{self.config['model']}-{self.config['dataset']}-pretrain-{epoch + 1}.pth"
        )
        return os.path.join(self.checkpoint_dir, name)

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
