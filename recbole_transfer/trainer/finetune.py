"""Fine-tuning trainers.

``TargetTaskTrainer``: item targets use RecBole's evaluation (full ranking over the target items); profile targets
(one label per user) report accuracy and macro-F1, and the same two for LabelCS, the majority label of the training
split, as the floor a model must beat. ``valid_metric`` for profiles: accuracy or macro_f1. With several processes
the ranks' predictions are gathered, so every rank computes both over all evaluated users.
"""

from collections import OrderedDict

import torch
from recbole.trainer import Trainer

from recbole_transfer.compat import plugin_trainer, restore_other_parameter
from recbole_transfer.utils import load_checkpoint


def accuracy_and_macro_f1(predicted, label):
    """Share of correct predictions and the unweighted mean of per-class F1 over the classes present in either
    (scikit-learn's macro F1; a class that is only predicted scores 0)."""
    from sklearn.metrics import accuracy_score, f1_score

    label, predicted = label.cpu().numpy(), predicted.cpu().numpy()
    macro_f1 = f1_score(label, predicted, average="macro", zero_division=0)
    return float(accuracy_score(label, predicted)), float(macro_f1)


class TargetTaskTrainer(plugin_trainer(Trainer)):
    @staticmethod
    def _gather_over_ranks(users, predicted, labels):
        """Every rank's predictions, each user once: the distributed sampler repeats a few users so that all
        ranks get equally many, which would count them twice."""
        import torch.distributed as dist

        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (users, predicted, labels))
        users, predicted, labels = (torch.cat(column) for column in zip(*parts))
        order = torch.argsort(users, stable=True)
        users, predicted, labels = users[order], predicted[order], labels[order]
        first = torch.ones_like(users, dtype=torch.bool)
        first[1:] = users[1:] != users[:-1]
        return users[first], predicted[first], labels[first]

    def __init__(self, config, model):
        super().__init__(config, model)
        self.is_profile = config["target_task"] == "profile"

    @torch.no_grad()
    def evaluate(
        self, eval_data, load_best_model=True, model_file=None, show_progress=False
    ):
        if not self.is_profile:
            return super().evaluate(
                eval_data, load_best_model, model_file, show_progress
            )
        if not eval_data:
            return None
        if load_best_model:
            checkpoint = load_checkpoint(
                model_file or self.saved_model_file, map_location=self.device
            )
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(
                restore_other_parameter(checkpoint.get("other_parameter"))
            )
        self.model.eval()
        item_field = self.config["ITEM_ID_FIELD"]
        user_field = self.config["USER_ID_FIELD"]
        users, predicted, labels = [], [], []
        for batch in eval_data:
            interaction = batch[0].to(self.device)
            users.append(interaction[user_field].cpu())
            predicted.append(self.model.full_sort_predict(interaction).argmax(1).cpu())
            labels.append(interaction[item_field].cpu())
        users, predicted, labels = (
            torch.cat(users),
            torch.cat(predicted),
            torch.cat(labels),
        )
        if not self.config["single_spec"]:
            users, predicted, labels = self._gather_over_ranks(users, predicted, labels)
        majority = self.model.majority_label
        accuracy, macro_f1 = accuracy_and_macro_f1(predicted, labels)
        base_accuracy, base_f1 = accuracy_and_macro_f1(
            torch.full_like(labels, majority), labels
        )
        return OrderedDict(
            accuracy=round(accuracy, 4),
            macro_f1=round(macro_f1, 4),
            labelcs_accuracy=round(base_accuracy, 4),
            labelcs_macro_f1=round(base_f1, 4),
        )
