"""Trainers for language-model stages.

``BehaviorTuningTrainer``: trains a text encoder for ``epochs`` epochs without evaluation (the tuned encoder's use
is downstream, and a target's validation split must not steer FT), keeps the resumable checkpoint after every epoch
(``PretrainTrainer``) and exports the encoder folder after the last epoch.

``PromptLoRATrainer``: RecBole's training with early stopping; every new best-validation model is also exported
as a PromptLoRA folder (adapter + head, ``model.xcross``), so the folder always holds the best adapter.

``XCrossTrainer``: RecBole's training with the prompt models' evaluation (``PromptEvaluation``) and no export
(for ``XCross``'s entry in ``registry.py``).

``PromptEvaluation``: exactly tied candidate scores are ranked in a random (seeded) order. RecBole ranks a user's
candidates with ``torch.topk`` over item-id columns, and among equal scores that order is set by the columns, not
by chance: a positive keeps one place among its tied candidates, and on the first validation draw of the 20-user
Tools test fixture a model scoring every candidate alike measured MRR@10 .233 (chance there about .11). Over
the popularity sampler's fresh draws that averages out on the shipped data, and no positive's prompt tied a
negative's among the 200 evaluation users of the published tables, but a constant model now measures chance in
expectation by construction. A language model scores two candidates exactly alike when their prompts are
identical (titles equal after ``xc_title_tokens``) or when its head is degenerate.
"""

import os
import time

import torch
from recbole.trainer import Trainer
from recbole.utils import EvaluatorType, set_color

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


def break_ties(scores, generator):
    """``scores`` [users, items] reordered so that exactly equal scores of a row rank in random order and every
    strict order is kept: each finite score becomes minus its rank (0 = best) in that order; -inf (an item that
    is not a candidate, or is masked) stays -inf."""
    keys = torch.rand(scores.shape, generator=generator).to(scores.device)
    shuffle = keys.argsort(dim=1)  # a random order of the columns
    order = scores.gather(1, shuffle).argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    ranked = torch.empty_like(scores).scatter_(1, shuffle, -ranks.to(scores.dtype))
    return ranked.masked_fill(scores == float("-inf"), float("-inf"))


def positive_ranks(scores, positive_u, positive_i):
    """The rank (1 = first) of every positive (row ``positive_u``, item ``positive_i``) among its row's scores,
    counting the strictly higher ones (after ``break_ties`` no two finite scores of a row are equal).
    """
    positive = scores[positive_u, positive_i]
    return 1 + (scores[positive_u] > positive.unsqueeze(1)).sum(1)


class PromptEvaluation:
    """Mixin for a RecBole ``Trainer``: ranking evaluation with ties broken at random (``break_ties``, generator
    seeded by ``seed``, drawn on through the run). After each ``evaluate``, ``last_ranks`` holds the rank of every
    evaluated positive (one per user with leave-one-out splits), in evaluation order: per-user metrics, e.g. the
    standard error of MRR@10."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.tie_generator = torch.Generator().manual_seed(int(config["seed"]))
        self.last_ranks = None
        self._ranks = []

    def evaluate(self, *args, **kwargs):
        self._ranks = []
        result = super().evaluate(*args, **kwargs)
        self.last_ranks = (
            torch.cat(self._ranks).tolist() if self._ranks else None
        )  # the best model's, when the trainer evaluates it
        return result

    def _ranked(self, result):
        interaction, scores, positive_u, positive_i = result
        if self.config["eval_type"] == EvaluatorType.RANKING:
            scores = break_ties(scores, self.tie_generator)
            self._ranks.append(positive_ranks(scores, positive_u, positive_i).cpu())
        return interaction, scores, positive_u, positive_i

    def _neg_sample_batch_eval(self, batched_data):
        return self._ranked(super()._neg_sample_batch_eval(batched_data))

    def _full_sort_batch_eval(self, batched_data):
        return self._ranked(super()._full_sort_batch_eval(batched_data))


class XCrossTrainer(PromptEvaluation, plugin_trainer(Trainer)):
    """``XCross``'s trainer: ties broken at random in evaluation, as ``PromptLoRATrainer``."""


class PromptLoRATrainer(PromptEvaluation, plugin_trainer(Trainer)):
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
