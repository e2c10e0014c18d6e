"""The all-positions loss (``train_positions: all``, rows from ``data.positions``) and stock SASRec and GRU4Rec
with it.

A causal model's hidden state at position t of an all-positions row is its sequence vector for the prefix ending
at t, so one pass scores every prefix of the row: cross-entropy over all items at every real position (target > 0),
averaged over the real positions of the batch, is the mean of RecBole's per-prefix losses for the same prefixes.

A model takes part by declaring ``all_positions`` in its own class body (a subclass does not inherit it: it must
say its loss is causal too) and by reading ``target_list_field`` rows in ``calculate_loss``. ``all_positions`` is
True, a one-line reason why the model cannot train that way, or ``{train_stage: True or reason}``.
"""

import torch.nn.functional as F
from recbole.model.sequential_recommender import GRU4Rec, SASRec

from recbole_transfer.data.positions import target_list_field, train_positions
from recbole_transfer.errors import UserInputError


def all_positions_refusal(model_class, train_stage=None):
    """None when ``model_class`` trains on all positions (in ``train_stage``); else why not: its declared reason,
    or '' when it declares nothing (not implemented yet)."""
    declared = vars(model_class).get("all_positions", False)
    if isinstance(declared, dict):
        declared = declared.get(train_stage, False)
    if declared is True:
        return None
    return declared or ""


def all_positions_cross_entropy(hidden, targets, score):
    """Mean cross-entropy over the real positions of ``hidden`` [B, L, d] (``targets`` [B, L], 0 = padding);
    ``score`` maps selected hidden states [N, d] to logits over all items [N, n_items]. Only the real positions
    are scored."""
    real = targets > 0
    return F.cross_entropy(score(hidden[real]), targets[real])


class EveryPositionOutput:
    """Mixin for a RecBole model whose ``forward`` ends in ``gather_indexes(output, item_seq_len - 1)`` over causal
    per-position outputs and whose CE logits are ``output @ item_embedding.weight.T`` (SASRec, GRU4Rec): the
    all-positions loss from the model's own ``forward`` with the last-position gather left out. Same parameters,
    checkpoints and predictions as the stock model; with ``train_positions: last`` it trains as the stock model.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if train_positions(config) == "all" and self.loss_type != "CE":
            raise UserInputError(
                f"train_positions=all trains {config['model']} with loss_type CE; got '{self.loss_type}'"
            )
        self.TARGET_ITEM_SEQ = target_list_field(config)
        self._every_position = False

    def gather_indexes(self, output, gather_index):
        # forward ends in gather_indexes(output, item_seq_len - 1): keep every position when asked
        if self._every_position:
            return output
        return super().gather_indexes(output, gather_index)

    def hidden_states(self, item_seq, item_seq_len):
        """[B, L, d]: the sequence vector of every prefix of each row."""
        self._every_position = True
        try:
            return self.forward(item_seq, item_seq_len)
        finally:
            self._every_position = False

    def calculate_loss(self, interaction):
        if self.TARGET_ITEM_SEQ not in interaction:
            return super().calculate_loss(interaction)
        hidden = self.hidden_states(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        )
        table = self.item_embedding.weight
        return all_positions_cross_entropy(
            hidden, interaction[self.TARGET_ITEM_SEQ], lambda h: h @ table.t()
        )


class AllPositionsSASRec(EveryPositionOutput, SASRec):
    """RecBole's SASRec that also trains on all-positions rows: its attention is unidirectional over right-padded
    histories, so position t sees the items up to t only."""

    all_positions = True


class AllPositionsGRU4Rec(EveryPositionOutput, GRU4Rec):
    """RecBole's GRU4Rec that also trains on all-positions rows: the GRU reads left to right, so its output at
    position t depends on the items up to t only."""

    all_positions = True
