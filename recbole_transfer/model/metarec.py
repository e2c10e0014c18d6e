"""MetaRec: ID-only multi-source transfer for sequential recommendation through vector quantization onto the
target's item table and meta-learned (bi-level) updates with per-layer gradient rescaling.

Reference:
    Zhenrui Yue, Huimin Zeng, Yang Zhang, Julian McAuley, Dong Wang. "Transferable Sequential Recommendation via
    Vector Quantized Meta Learning." 2024.

The LRURec body (``model.lrurec``) is shared by every domain; each domain has its own item table. A source item's
vector z_e is quantized per head onto the TARGET item table reshaped into ``vq_heads`` heads (``layers.
VectorQuantizer``, Eq. 2), so sources speak in target-item codewords; the straight-through gradient trains z_e and
L_vq (Eq. 3, ``vq_loss``) trains the codewords. Target items are their own codewords (quantizing the codebook onto
itself is the identity), so the target path is plain LRURec and serving costs the same. Loss per domain: CE + L_vq
(Eq. 9).
Like LRURec it trains on all positions of a history with ``train_positions: all``: the target's training split and
every source (``data.dataset.MetaRecDataset``; a source: each user's whole history) hold all-positions rows, and each
domain's CE covers every real position (L_vq reads the same items: a row's inputs and its last target hold all of
its targets).

The bi-level updates live in ``trainer.meta.MetaTrainer``; data in ``data.dataset.MetaRecDataset``.
``vq_heads``: 0 = no VQ (ablation), 1 = single-head VQ (ablation), H = H heads.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_transfer.errors import UserInputError
from recbole_transfer.model.layers import VectorQuantizer
from recbole_transfer.model.lrurec import LRURec
from recbole_transfer.model.positions import all_positions_cross_entropy

TARGET_DOMAIN = (
    0  # domain index of the target; sources are 1..M in source_datasets order
)


def vq_loss(z_e, quantized):
    """L_vq (Eq. 3) = ||z_q - sg[z_e]||^2 + ||sg[z_q] - z_e||^2: squared norms over the hidden dimensions (not
    their mean: that would weigh L_vq 1/d of the paper's), averaged over the items. The first term pulls the chosen
    codewords to the items, the second keeps the items near their codewords."""
    return (
        (quantized - z_e.detach()).pow(2).sum(-1)
        + (quantized.detach() - z_e).pow(2).sum(-1)
    ).mean()


def _non_negative_int(config, key):
    value = int(config[key] or 0)
    if value < 0:
        raise UserInputError(f"{key} must be >= 0; got {value}")
    return value


class MetaRec(LRURec):
    all_positions = True  # the LRURec body is causal in every domain
    yaml_bases = ("LRURec",)
    default_sources = (
        "all"  # ID only: every dataset of the target's family can be a source
    )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.vq_heads = int(config["vq_heads"] or 0)
        self.vq_refresh_steps = _non_negative_int(config, "vq_refresh_steps")
        self.vq_chunk_rows = _non_negative_int(config, "vq_chunk_rows")
        sources = getattr(dataset, "sources", [])
        self.source_names = [source.name for source in sources]
        if self.vq_heads and self.hidden_size % self.vq_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by vq_heads {self.vq_heads}"
            )

        # define layers (one item table and output bias per source; the body is shared)
        self.source_item_embedding = nn.ModuleList(
            nn.Embedding(source.n_items, self.hidden_size, padding_idx=0)
            for source in sources
        )
        self.source_output_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(source.n_items)) for source in sources
        )
        self.quantizer = (
            VectorQuantizer(self.vq_heads, self.vq_chunk_rows or None)
            if self.vq_heads
            else None
        )

        # parameters initialization
        for table in self.source_item_embedding:
            self._init_weights(table)

        # vq_refresh_steps > 0: {domain: (iteration, codes)} of the last search; not state (recomputed on resume)
        self.iteration = 0
        self._codes = {}

    def start_iteration(self):
        """The trainer calls this before each training iteration: cached codes age by one."""
        self.iteration += 1

    def source_codes(self, domain, z_e):
        """[N, H] codes of source ``domain``'s items ``z_e``: searched now (``vq_refresh_steps`` 0, every
        forward), or reused while the last search is less than ``vq_refresh_steps`` iterations old.
        """
        codebook = self.item_embedding.weight[1:]
        if not self.vq_refresh_steps:
            return self.quantizer.codes(z_e, codebook)
        cached = self._codes.get(domain)
        if cached is None or self.iteration - cached[0] >= self.vq_refresh_steps:
            cached = (self.iteration, self.quantizer.codes(z_e, codebook))
            self._codes[domain] = cached
        return cached[1]

    def source_parameter_names(self, domain):
        """Names of the parameters only source ``domain`` (1-based) uses."""
        return [
            f"source_item_embedding.{domain - 1}.weight",
            f"source_output_bias.{domain - 1}",
        ]

    def is_source_parameter(self, name):
        return name.startswith("source_")

    def source_table(self, domain, item_seq, pos_items):
        """(item vectors the encoder reads and scores with [n, d], L_vq over the batch's items) of source
        ``domain``."""
        z_e = self.source_item_embedding[domain - 1].weight
        if self.quantizer is None:
            return z_e, z_e.new_zeros(())
        # row 0 is the padding item: neither quantized nor a codeword
        # every item is quantized, not only the batch's: the scores run over the whole source table
        z_q, quantized, _ = self.quantizer(
            z_e[1:],
            self.item_embedding.weight[1:],
            self.source_codes(domain, z_e[1:]),
        )
        used = torch.unique(torch.cat([item_seq.flatten(), pos_items]))
        used = used[used > 0] - 1
        return torch.cat([z_e[:1], z_q]), vq_loss(z_e[1:][used], quantized[used])

    def domain_loss(self, interaction, domain=TARGET_DOMAIN):
        """CE (+ L_vq for a source) of a batch of ``domain`` (0 = target, 1..M = ``source_datasets``)."""
        if domain == TARGET_DOMAIN:
            return self.calculate_loss(interaction)
        item_seq, pos_items = interaction[self.ITEM_SEQ], interaction[self.POS_ITEM_ID]
        table, vq_loss = self.source_table(domain, item_seq, pos_items)
        bias = self.source_output_bias[domain - 1]
        if self.TARGET_ITEM_SEQ in interaction:  # train_positions=all
            hidden = self.hidden_states(F.embedding(item_seq, table))
            return (
                all_positions_cross_entropy(
                    hidden,
                    interaction[self.TARGET_ITEM_SEQ],
                    lambda h: self.scores(h, table, bias),
                )
                + vq_loss
            )
        seq_output = self.encode(
            F.embedding(item_seq, table), interaction[self.ITEM_SEQ_LEN]
        )
        logits = self.scores(seq_output, table, bias)
        return self.loss_fct(logits, pos_items) + vq_loss
