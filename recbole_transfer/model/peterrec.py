"""PeterRec: pretraining of a dilated-convolution sequence encoder.

Reference:
    Fajie Yuan, Xiangnan He, Alexandros Karatzoglou, Liguang Zhang. "Parameter-Efficient Transfer from Sequential
    Behaviors for User Modeling and Recommendation." SIGIR 2020.

Backbone: residual blocks of two dilated convolutions (kernel ``kernel_size``, dilations d and 2d), each followed by
LayerNorm and ReLU (Eq. 3-4), in two kinds:
    causal      (NextItNet) left padding only, so position t sees positions <= t; autoregressive pretraining (Eq. 1):
                the hidden state at the newest item predicts the next item;
    non-causal  (GRec-style) symmetric padding; masked-item pretraining (Eq. 2): ``mask_ratio`` of the items are
                replaced by a mask token and predicted; ranking appends a mask token after the history.
Histories are right-aligned (newest item last) so the last position is always the newest item.
``ResidualBlock`` also takes the model patches (``layers.ModelPatch``) in the paper's insertion modes (Eq. 11).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_transfer.errors import UserInputError
from recbole_transfer.model.layers import ModelPatch

INSERTIONS = ("none", "serial_b", "serial_c", "parallel_d", "parallel_e")


class DilatedConv(nn.Module):
    """A 1-D dilated convolution over [B, L, C]; causal = left padding only (no position sees a later one)."""

    def __init__(self, channels, kernel_size, dilation, causal):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        span = (kernel_size - 1) * dilation
        self.padding = (span, 0) if causal else (span // 2, span - span // 2)

    def forward(self, x):
        return self.conv(F.pad(x.transpose(1, 2), self.padding)).transpose(1, 2)


class ResidualBlock(nn.Module):
    """x + relu(LN2(conv2(relu(LN1(conv1(x)))))) with dilations (d, 2d), and model patches per ``insertion``:

    serial_b    a patch after each convolution, before its LayerNorm (Fig. 3b);
    serial_c    one patch on the block's residual branch, before the shortcut (Fig. 3c);
    parallel_d  a patch beside each convolution, added before its LayerNorm (Fig. 3d);
    parallel_e  a patch beside each convolution + LayerNorm + ReLU, added after the activation (Fig. 3e).

    Parallel patches add their bottleneck branch only (``ModelPatch.delta``): with the paper's shortcut inside the
    parallel patch, the block would add its input to the convolution output and no longer compute the pretrained
    function when the patch starts near zero."""

    def __init__(self, channels, kernel_size, dilation, causal, insertion="none", patch_ratio=8, eps=1e-8):
        super().__init__()
        if insertion not in INSERTIONS:
            raise UserInputError(f"patch_insertion must be one of {', '.join(INSERTIONS)}; got '{insertion}'")
        self.insertion = insertion
        self.conv1 = DilatedConv(channels, kernel_size, dilation, causal)
        self.conv2 = DilatedConv(channels, kernel_size, 2 * dilation, causal)
        self.ln1 = nn.LayerNorm(channels, eps=eps)
        self.ln2 = nn.LayerNorm(channels, eps=eps)
        n_patches = {"none": 0, "serial_c": 1}.get(insertion, 2)
        self.patches = nn.ModuleList(ModelPatch(channels, patch_ratio) for _ in range(n_patches))

    def forward(self, x):
        mode = self.insertion
        if mode == "serial_b":
            h = F.relu(self.ln1(self.patches[0](self.conv1(x))))
            h = F.relu(self.ln2(self.patches[1](self.conv2(h))))
        elif mode == "parallel_d":
            h = F.relu(self.ln1(self.conv1(x) + self.patches[0].delta(x)))
            h = F.relu(self.ln2(self.conv2(h) + self.patches[1].delta(h)))
        elif mode == "parallel_e":
            h = F.relu(self.ln1(self.conv1(x))) + self.patches[0].delta(x)
            h = F.relu(self.ln2(self.conv2(h))) + self.patches[1].delta(h)
        else:
            h = F.relu(self.ln1(self.conv1(x)))
            h = F.relu(self.ln2(self.conv2(h)))
            if mode == "serial_c":
                h = self.patches[0](h)
        return x + h


def right_align(item_seq, item_seq_len):
    """RecBole's left-aligned histories [i1 .. in 0 .. 0] -> right-aligned [0 .. 0 i1 .. in]."""
    length = item_seq.shape[1]
    index = torch.arange(length, device=item_seq.device).unsqueeze(0) - (length - item_seq_len).unsqueeze(1)
    return torch.where(index >= 0, item_seq.gather(1, index.clamp(min=0)), torch.zeros_like(item_seq))


class PeterRec(SequentialRecommender):
    STAGES = ("pretrain",)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.train_stage = config["train_stage"]
        if self.train_stage not in self.STAGES:
            raise UserInputError(f"train_stage must be one of {', '.join(self.STAGES)}; got '{self.train_stage}'")
        self.hidden_size = config["hidden_size"]
        self.causal = bool(config["causal"])
        self.mask_ratio = config["mask_ratio"]
        self.initializer_range = config["initializer_range"]
        self.mask_token = self.n_items  # non-causal only: one row after the items

        # define layers
        self.item_embedding = nn.Embedding(self.n_items + (0 if self.causal else 1), self.hidden_size, padding_idx=0)
        self.blocks = nn.ModuleList(
            ResidualBlock(self.hidden_size, config["kernel_size"], dilation, self.causal,
                          insertion=config["patch_insertion"], patch_ratio=config["patch_ratio"])
            for dilation in config["dilations"]
        )
        self.output = nn.Linear(self.hidden_size, self.n_items)  # the pretraining softmax layer

        # init weights
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # the patches' linear layers keep their own near-identity start
        if isinstance(module, (nn.Embedding, nn.Conv1d)) or module is self.output:
            module.weight.data.normal_(0.0, self.initializer_range)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def encode(self, item_seq):
        """Hidden states [B, L, hidden] of right-aligned item ids."""
        h = self.item_embedding(item_seq)
        for block in self.blocks:
            h = block(h)
        return h

    def _inputs(self, interaction, last=None):
        """Right-aligned history; non-causal: shifted left by one with ``last`` (the target or the mask token)
        in the final position."""
        seq = right_align(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        if self.causal:
            return seq
        last = torch.full_like(seq[:, :1], self.mask_token) if last is None else last.unsqueeze(1)
        return torch.cat([seq[:, 1:], last], dim=1)

    def calculate_loss(self, interaction):
        target = interaction[self.POS_ITEM_ID]
        if self.causal:
            return F.cross_entropy(self.output(self.encode(self._inputs(interaction))[:, -1]), target)
        seq = self._inputs(interaction, last=target)
        real = seq > 0
        masked = (torch.rand(seq.shape, device=seq.device) < self.mask_ratio) & real
        masked[:, -1] |= ~masked.any(1)  # every row predicts at least one item
        hidden = self.encode(seq.masked_fill(masked, self.mask_token))
        return F.cross_entropy(self.output(hidden[masked]), seq[masked])

    def _sequence_output(self, interaction):
        return self.encode(self._inputs(interaction))[:, -1]

    def predict(self, interaction):
        scores = self.output(self._sequence_output(interaction))
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction):
        return self.output(self._sequence_output(interaction))
