"""Building blocks shared by the plugin's models.

``PWLayer`` and ``MoEAdaptor``: UniSRec's parametric whitening and mixture-of-experts adaptor (Hou et al., KDD 2022,
Eq. 2-4): x~ = (x - b) W1 per expert, v = sum_k g_k x~(k), g = softmax(x W2 + delta), delta = N(0, 1) *
softplus(x W3) while training only.

``ModelPatch``: PeterRec's model patch (Yuan et al., SIGIR 2020, Eq. 9), x + up(relu(down(x))) with a k -> k/ratio
bottleneck; ``delta`` is the branch without the shortcut, for parallel insertion.

``LRULayer`` (with ``lru_parallel_scan``): the linear recurrent unit of LRURec. ``VectorQuantizer``: MetaRec's
multi-head cosine vector quantization onto another table.
"""

import math

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
        self.experts = nn.ModuleList(
            [PWLayer(input_size, output_size, dropout) for _ in range(n_exps)]
        )
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
        expert_outputs = torch.stack(
            [expert(x) for expert in self.experts], dim=-2
        )  # [..., G, d]
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
    to nothing (parallel insertion) and fine-tuning starts from the pretrained function.
    """

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


def lru_parallel_scan(u_real, u_imag, magnitude, phase):
    """h_t = lambda * h_{t-1} + u_t (h_{-1} = 0) over [B, L, d] for a diagonal complex lambda = magnitude *
    exp(i * phase) [d], as ``ceil(log2 L)`` rounds of whole-sequence updates (Hillis-Steele scan): after the round with
    shift s, h_t holds the sum of lambda^(t-j) u_j over the last 2s positions j, because h_t += lambda^s h_(t-s)
    joins two adjacent windows. Complex numbers are kept as (real, imaginary) pairs so every op has a real
    double-backward (the meta-gradients differentiate through this)."""
    h_real, h_imag = u_real, u_imag
    length = u_real.shape[1]
    shift = 1
    while shift < length:
        scale = magnitude.pow(shift)
        a_real, a_imag = scale * torch.cos(phase * shift), scale * torch.sin(
            phase * shift
        )  # lambda^shift
        prev_real = F.pad(h_real[:, :-shift], (0, 0, shift, 0))
        prev_imag = F.pad(h_imag[:, :-shift], (0, 0, shift, 0))
        h_real, h_imag = (
            h_real + a_real * prev_real - a_imag * prev_imag,
            h_imag + a_real * prev_imag + a_imag * prev_real,
        )
        shift *= 2
    return h_real, h_imag


class LRULayer(nn.Module):
    """Linear recurrent unit (Orvieto et al., ICML 2023; LRURec, Yue et al., WSDM 2024): h_t = lambda h_(t-1) +
    gamma (B x_t), y_t = C [Re h_t; Im h_t], lambda = exp(-exp(nu) + i exp(theta)) diagonal and stable by
    construction, |lambda| drawn uniformly on the ring [r_min, r_max], gamma = sqrt(1 - |lambda|^2) normalises the
    state. Causal: position t reads positions <= t only."""

    def __init__(self, hidden_size, r_min=0.8, r_max=0.99, max_phase=2 * math.pi):
        super().__init__()
        self.in_proj = nn.Linear(
            hidden_size, 2 * hidden_size
        )  # real and imaginary parts of B x
        self.out_proj = nn.Linear(2 * hidden_size, hidden_size)  # C over [Re h; Im h]
        u1, u2 = torch.rand(hidden_size), torch.rand(hidden_size)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = torch.log(max_phase * u2)
        gamma_log = torch.log(torch.sqrt(1 - torch.exp(-torch.exp(nu_log)) ** 2))
        self.params_log = nn.Parameter(torch.stack([nu_log, theta_log, gamma_log]))

    def eigenvalues(self):
        """(|lambda|, arg lambda, gamma) per state dimension."""
        nu_log, theta_log, gamma_log = self.params_log
        return torch.exp(-torch.exp(nu_log)), torch.exp(theta_log), torch.exp(gamma_log)

    def forward(self, x):
        magnitude, phase, gamma = self.eigenvalues()
        u_real, u_imag = (gamma.repeat(2) * self.in_proj(x)).chunk(2, dim=-1)
        h_real, h_imag = lru_parallel_scan(u_real, u_imag, magnitude, phase)
        return self.out_proj(torch.cat([h_real, h_imag], dim=-1))


class _StraightThrough(torch.autograd.Function):
    """Value: the codewords, exactly (z_e + (q - z_e).detach() rounds); gradient: passed to z_e unchanged."""

    @staticmethod
    def forward(ctx, z_e, codewords):
        return codewords.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def first_max_index(scores, block=64):
    """``scores.argmax(-1)`` computed through block maxima: torch's CPU argmax compares one element at a time,
    amax is vectorized (4-5x less time for MetaRec's [heads, rows, codewords] scores). The first block holding the
    maximum holds its first occurrence, so ties and NaN resolve as argmax resolves them.
    """
    size = scores.shape[-1]
    whole = size // block * block
    if whole == 0:
        return scores.argmax(-1)
    block_max = scores[..., :whole].unflatten(-1, (whole // block, block)).amax(-1)
    if whole < size:
        block_max = torch.cat(
            [block_max, scores[..., whole:].amax(-1, keepdim=True)], -1
        )
    start = block_max.argmax(-1) * block
    # the last block may be short: its clamped indices repeat its last element, after its first occurrence
    inside = (start.unsqueeze(-1) + torch.arange(block, device=scores.device)).clamp(
        max=size - 1
    )
    return start + scores.gather(-1, inside).argmax(-1)


class VectorQuantizer(nn.Module):
    """Multi-head vector quantization onto a given codebook (MetaRec, Eq. 2-3): z_e [N, H*D] and the codebook
    [K, H*D] split into ``heads`` parts; each part of z_e is replaced by the codebook part of highest cosine
    similarity in the same head. The output carries the straight-through gradient (its value is the codeword, its
    gradient goes to z_e); ``quantized`` keeps the gradient path to the codebook for the VQ loss. No parameters:
    the codebook is another module's table (MetaRec: the target item embeddings)."""

    # bytes of similarity scores per chunk: on CPU the [heads, rows, K] block must stay in cache for the argmax
    # (Instruments' 9,922 codewords x 4 heads: 1.4-1.7x faster than 256 rows a chunk); on a GPU, few launches
    SCORE_BYTES = {"cpu": 4 << 20, "cuda": 1 << 30}

    def __init__(self, heads, chunk_size=None):
        super().__init__()
        self.heads = int(heads)
        # rows per chunk; None: as many as SCORE_BYTES allows for the codebook's size and device. Any chunking
        # gives the same codes.
        self.chunk_size = chunk_size

    def chunk_rows(self, codebook):
        if self.chunk_size:
            return self.chunk_size
        budget = self.SCORE_BYTES.get(codebook.device.type, self.SCORE_BYTES["cpu"])
        return max(
            1,
            budget
            // (codebook.element_size() * self.heads * max(1, codebook.shape[0])),
        )

    def codes(self, z_e, codebook):
        """[N, H] index of the nearest codeword per head (no gradient: argmax)."""
        heads = self.heads
        with torch.no_grad():
            # the codebook normalized once per call, laid out [H, D, K] so that each head is one contiguous
            # matrix product whose rows the argmax reads in order
            book = (
                F.normalize(codebook.reshape(codebook.shape[0], heads, -1), dim=-1)
                .permute(1, 2, 0)
                .contiguous()
            )
            codes = []
            for chunk in z_e.split(self.chunk_rows(codebook)):
                query = F.normalize(chunk.reshape(chunk.shape[0], heads, -1), dim=-1)
                codes.append(
                    first_max_index(torch.bmm(query.transpose(0, 1), book)).t()
                )
            return (
                torch.cat(codes)
                if codes
                else torch.zeros(0, heads, dtype=torch.long, device=z_e.device)
            )

    def forward(self, z_e, codebook, codes=None):
        """(z_q with straight-through gradient, quantized with the codebook gradient, codes [N, H]). ``codes``:
        reuse these instead of searching (their codewords are read from ``codebook`` as it is now).
        """
        if z_e.shape[-1] % self.heads:
            raise ValueError(
                f"hidden size {z_e.shape[-1]} is not divisible by {self.heads} VQ heads"
            )
        if codes is None:
            codes = self.codes(z_e, codebook)
        book = codebook.reshape(codebook.shape[0], self.heads, -1)
        quantized = book[codes, torch.arange(self.heads, device=codes.device)].reshape(
            z_e.shape
        )
        return _StraightThrough.apply(z_e, quantized.detach()), quantized, codes
