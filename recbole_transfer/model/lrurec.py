"""LRURec: a sequential recommender of linear recurrent units, trained with cross-entropy over all items.

Reference:
    Zhenrui Yue, Yueqi Wang, Zhankui He, Huimin Zeng, Julian McAuley, Dong Wang. "Linear Recurrent Units for
    Sequential Recommendation." WSDM 2024.

Item embedding -> dropout -> LayerNorm -> ``n_layers`` blocks of [LRU layer (``layers.LRULayer``, parallel scan of
depth log2 L) -> dropout -> residual -> LayerNorm -> FFN d -> 4d -> d (GELU) -> dropout -> residual -> LayerNorm].
The hidden state at the newest item scores every item through the tied item table (+ a per-item bias).
The recurrence is causal, so RecBole's right-padded histories need no mask: padding comes after the newest item;
for the same reason ``train_positions: all`` trains on every position of a history in one pass (``model.positions``).

As the official code (model/lru.py of the LRURec repository): the LRU state has ``lru_state_multiplier`` x d = 2d
complex dimensions (B: d -> 2d complex, C: 2d complex -> d), and dropout comes before the embedding LayerNorm.
``lru_state_multiplier: 1`` and ``embedding_dropout_first: False`` give the earlier variant (a state of d, dropout
after the LayerNorm).
"""

import torch
import torch.nn as nn
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_transfer.data.positions import target_list_field
from recbole_transfer.model.layers import LRULayer
from recbole_transfer.model.positions import all_positions_cross_entropy


def lru_layer(hidden_size, state_size, r_min, r_max, max_phase):
    """``layers.LRULayer`` with a state of ``state_size`` complex dimensions between inputs and outputs of
    ``hidden_size`` (the layer's own projections are square: state = hidden)."""
    layer = LRULayer(state_size, r_min, r_max, max_phase)
    if state_size != hidden_size:
        layer.in_proj = nn.Linear(hidden_size, 2 * state_size)  # Re and Im of B x
        layer.out_proj = nn.Linear(2 * state_size, hidden_size)  # C over [Re h; Im h]
    return layer


class LRUBlock(nn.Module):
    def __init__(
        self, hidden_size, dropout, r_min, r_max, max_phase, state_size, eps=1e-12
    ):
        super().__init__()
        self.lru = lru_layer(hidden_size, state_size, r_min, r_max, max_phase)
        self.lru_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * hidden_size, hidden_size),
        )
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = self.lru_norm(x + self.dropout(self.lru(x)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class LRURec(SequentialRecommender):
    all_positions = (
        True  # causal: trains on all positions of a history with train_positions=all
    )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.hidden_size = config["hidden_size"]
        self.n_layers = config["n_layers"]
        self.dropout_prob = config["dropout_prob"]
        self.initializer_range = config["initializer_range"]
        # unset (a config from before these keys): the official layout
        multiplier = config["lru_state_multiplier"]
        self.state_size = (
            2 if multiplier is None else int(multiplier)
        ) * self.hidden_size
        dropout_first = config["embedding_dropout_first"]
        self.embedding_dropout_first = dropout_first is None or bool(dropout_first)
        if self.state_size < 1:
            raise ValueError(
                f"lru_state_multiplier must be at least 1; got {multiplier}"
            )
        if config["loss_type"] != "CE":
            raise ValueError(
                f"LRURec trains with loss_type CE only; got '{config['loss_type']}'"
            )

        # define layers and loss
        self.item_embedding = nn.Embedding(
            self.n_items, self.hidden_size, padding_idx=0
        )
        self.output_bias = nn.Parameter(torch.zeros(self.n_items))
        self.embedding_norm = nn.LayerNorm(self.hidden_size, eps=1e-12)
        self.embedding_dropout = nn.Dropout(self.dropout_prob)
        self.blocks = nn.ModuleList(
            LRUBlock(
                self.hidden_size,
                self.dropout_prob,
                config["lru_r_min"],
                config["lru_r_max"],
                config["lru_max_phase"],
                self.state_size,
            )
            for _ in range(self.n_layers)
        )
        self.loss_fct = nn.CrossEntropyLoss()
        self.TARGET_ITEM_SEQ = target_list_field(config)

        # parameters initialization (the LRU eigenvalues keep their ring initialisation)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(
                module.weight,
                std=self.initializer_range,
                a=-2 * self.initializer_range,
                b=2 * self.initializer_range,
            )
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def embed(self, item_emb):
        """The blocks' input from item vectors [B, L, d]: LayerNorm(dropout(x)) (or dropout(LayerNorm(x)))."""
        if self.embedding_dropout_first:
            return self.embedding_norm(self.embedding_dropout(item_emb))
        return self.embedding_dropout(self.embedding_norm(item_emb))

    def hidden_states(self, item_emb):
        """[B, L, d] from item vectors [B, L, d]: the sequence vector of every prefix (the recurrence is causal)."""
        x = self.embed(item_emb)
        for block in self.blocks:
            x = block(x)
        return x

    def encode(self, item_emb, item_seq_len):
        """Sequence vectors [B, d] from item vectors [B, L, d]: the hidden state at each newest item."""
        return self.gather_indexes(self.hidden_states(item_emb), item_seq_len - 1)

    def forward(self, item_seq, item_seq_len):
        return self.encode(self.item_embedding(item_seq), item_seq_len)

    def scores(self, seq_output, table, bias):
        return seq_output @ table.t() + bias

    def calculate_loss(self, interaction):
        if (
            self.TARGET_ITEM_SEQ in interaction
        ):  # train_positions=all: every position of each row
            hidden = self.hidden_states(self.item_embedding(interaction[self.ITEM_SEQ]))
            return all_positions_cross_entropy(
                hidden,
                interaction[self.TARGET_ITEM_SEQ],
                lambda h: self.scores(h, self.item_embedding.weight, self.output_bias),
            )
        seq_output = self.forward(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        )
        logits = self.scores(seq_output, self.item_embedding.weight, self.output_bias)
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        seq_output = self.forward(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        )
        items = interaction[self.ITEM_ID]
        return (seq_output * self.item_embedding(items)).sum(-1) + self.output_bias[
            items
        ]

    def full_sort_predict(self, interaction):
        seq_output = self.forward(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        )
        return self.scores(seq_output, self.item_embedding.weight, self.output_bias)
