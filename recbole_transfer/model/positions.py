"""The all-positions loss (``train_positions: all``, rows from ``data.positions``) and stock SASRec with it.

A causal model's hidden state at position t of an all-positions row is its sequence vector for the prefix ending
at t, so one pass scores every prefix of the row: cross-entropy over all items at every real position (target > 0),
averaged over the real positions of the batch, is the mean of RecBole's per-prefix losses for the same prefixes.

A model takes part by declaring ``all_positions = True`` in its own class body (a subclass does not inherit it:
it must say its loss is causal too) and by reading ``target_list_field`` rows in ``calculate_loss``.
"""

import torch.nn.functional as F
from recbole.model.sequential_recommender import SASRec

from recbole_transfer.data.positions import target_list_field
from recbole_transfer.errors import UserInputError


def supports_all_positions(model_class):
    return bool(vars(model_class).get("all_positions", False))


def all_positions_cross_entropy(hidden, targets, score):
    """Mean cross-entropy over the real positions of ``hidden`` [B, L, d] (``targets`` [B, L], 0 = padding);
    ``score`` maps selected hidden states [N, d] to logits over all items [N, n_items]. Only the real positions
    are scored."""
    real = targets > 0
    return F.cross_entropy(score(hidden[real]), targets[real])


class AllPositionsSASRec(SASRec):
    """RecBole's SASRec (same parameters, checkpoints and predictions) that also trains on all-positions rows.
    The encoder is causal (unidirectional attention over right-padded histories); the hidden states of every
    position come from SASRec's own ``forward`` with the last-position gather left out.
    """

    all_positions = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if self.loss_type != "CE":
            raise UserInputError(
                f"train_positions=all trains SASRec with loss_type CE; got '{self.loss_type}'"
            )
        self.TARGET_ITEM_SEQ = target_list_field(config)
        self._every_position = False

    def gather_indexes(self, output, gather_index):
        # SASRec.forward ends in gather_indexes(output, item_seq_len - 1): keep every position when asked
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
