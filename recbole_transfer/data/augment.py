"""Sequence augmentations for contrastive pretraining, applied per training step on whole batches.

RecBole's ``data_preparation`` picks the train loader by model type and offers no hook for a custom collate, so the
augmented view is built from the batch tensors inside the step: vectorized, seeded by torch's RNG (per rank under
DDP), and identical in single-process and distributed runs.
"""

import torch


def item_drop(item_seq, item_seq_len, drop_ratio, generator=None):
    """Drop each item of each (left-aligned, zero-padded) sequence with probability ``drop_ratio``, keeping the
    order of the rest; a sequence that would lose every item is kept whole. Returns ``(new_seq, new_len)``.
    """
    batch, length = item_seq.shape
    positions = torch.arange(length, device=item_seq.device).unsqueeze(0)
    valid = positions < item_seq_len.unsqueeze(1)
    drop = (
        torch.rand(batch, length, device=item_seq.device, generator=generator)
        < drop_ratio
    ) & valid
    kept = valid & ~drop
    empty = kept.sum(dim=1) == 0
    kept[empty] = valid[empty]
    # stable compaction: kept items first in their original order, then padding
    order = torch.argsort((~kept).long() * length + positions, dim=1)
    new_seq = torch.gather(item_seq * kept.long(), 1, order)
    return new_seq, kept.sum(dim=1)
