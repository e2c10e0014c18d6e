"""Building blocks shared by the plugin's models.

``PWLayer`` and ``MoEAdaptor``: UniSRec's parametric whitening and mixture-of-experts adaptor (Hou et al., KDD 2022,
Eq. 2-4): x~ = (x - b) W1 per expert, v = sum_k g_k x~(k), g = softmax(x W2 + delta), delta = N(0, 1) *
softplus(x W3) while training only.

``ModelPatch``: PeterRec's model patch (Yuan et al., SIGIR 2020, Eq. 9), x + up(relu(down(x))) with a k -> k/ratio
bottleneck; ``delta`` is the branch without the shortcut, for parallel insertion.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class PWLayer(nn.Module):
    """Parametric whitening: a learned centre ``b`` and a projection ``W1`` (no bias after the projection)."""

    def __init__(self, input_size, output_size, dropout=0.0):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.bias = nn.Parameter(torch.zeros(input_size))
        self.lin = nn.Linear(input_size, output_size, bias=False)
        nn.init.normal_(self.lin.weight, mean=0.0, std=0.02)

    def forward(self, x):
        return self.lin(self.dropout(x) - self.bias)


class MoEAdaptor(nn.Module):
    """``n_exps`` whitening experts mixed by a (noisy, while training) softmax gate computed from the input."""

    NOISE_EPSILON = 1e-2  # floor of the gate-noise standard deviation

    def __init__(self, n_exps, input_size, output_size, dropout=0.0, noisy_gating=True):
        super().__init__()
        self.n_exps = n_exps
        self.noisy_gating = noisy_gating
        self.experts = nn.ModuleList([PWLayer(input_size, output_size, dropout) for _ in range(n_exps)])
        self.w_gate = nn.Parameter(torch.zeros(input_size, n_exps))
        self.w_noise = nn.Parameter(torch.zeros(input_size, n_exps))

    def gates(self, x):
        logits = x @ self.w_gate
        if self.noisy_gating and self.training:
            noise_std = F.softplus(x @ self.w_noise) + self.NOISE_EPSILON
            logits = logits + torch.randn_like(logits) * noise_std
        return F.softmax(logits, dim=-1)

    def forward(self, x):
        gates = self.gates(x)  # [..., G]
        expert_outputs = torch.stack([expert(x) for expert in self.experts], dim=-2)  # [..., G, d]
        return (gates.unsqueeze(-1) * expert_outputs).sum(dim=-2)


def length_buckets(item_seq_len, max_len):
    """Group the rows of a batch of left-aligned sequences by length into buckets of widths 1, 2, 4, ...,
    ``max_len``: yields ``(row_indices, width)``. Encoding each bucket at its own width gives the same outputs as
    encoding the padded batch (padding is masked) at a fraction of the cost: Amazon histories average ~5 items
    against a maximum of 50."""
    low = 0
    width = 1
    while low < max_len:
        high = min(width, max_len)
        rows = ((item_seq_len > low) & (item_seq_len <= high)).nonzero().flatten()
        if rows.numel():
            yield rows, high
        low, width = high, width * 2


class ModelPatch(nn.Module):
    """x + up(relu(down(x))) over the channel axis (a 1x1 convolution is a linear map per position).

    ``up`` starts near zero, so a freshly inserted patch is close to the identity (serial insertion) or adds close
    to nothing (parallel insertion) and fine-tuning starts from the pretrained function."""

    def __init__(self, channels, ratio=8, init_std=1e-3):
        super().__init__()
        bottleneck = max(1, channels // int(ratio))
        self.down = nn.Linear(channels, bottleneck)
        self.up = nn.Linear(bottleneck, channels)
        nn.init.normal_(self.up.weight, std=init_std)
        nn.init.zeros_(self.up.bias)

    def delta(self, x):
        return self.up(F.relu(self.down(x)))

    def forward(self, x):
        return x + self.delta(x)
