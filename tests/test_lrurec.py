"""LRURec: the parallel scan, causality, and the model as a plain RecBole baseline."""

import pytest
import torch

from conftest import FAST

from recbole_transfer.model.layers import LRULayer, lru_parallel_scan


def sequential_recurrence(u, lam):
    """h_t = lam * h_(t-1) + u_t, one position at a time (complex [B, L, d], lam [d])."""
    h = torch.zeros_like(u[:, 0])
    states = []
    for t in range(u.shape[1]):
        h = lam * h + u[:, t]
        states.append(h)
    return torch.stack(states, dim=1)


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33])
def test_parallel_scan_equals_sequential_recurrence(length):
    generator = torch.Generator().manual_seed(length)
    u_real, u_imag = torch.randn(
        2, 3, length, 5, generator=generator, dtype=torch.float64
    )
    magnitude = 0.8 + 0.19 * torch.rand(5, generator=generator, dtype=torch.float64)
    phase = 6.28 * torch.rand(5, generator=generator, dtype=torch.float64)
    h_real, h_imag = lru_parallel_scan(u_real, u_imag, magnitude, phase)
    expected = sequential_recurrence(
        torch.complex(u_real, u_imag), torch.polar(magnitude, phase)
    )
    torch.testing.assert_close(h_real, expected.real, rtol=0, atol=1e-12)
    torch.testing.assert_close(h_imag, expected.imag, rtol=0, atol=1e-12)


def test_lru_layer_is_causal_and_stable():
    torch.manual_seed(0)
    layer = LRULayer(8, r_min=0.8, r_max=0.99)
    magnitude, _, _ = layer.eigenvalues()
    assert bool(((magnitude >= 0.8 - 1e-6) & (magnitude <= 0.99 + 1e-6)).all())
    x = torch.randn(2, 12, 8)
    changed = x.clone()
    changed[:, 6] += 1.0
    with torch.no_grad():
        before, after = layer(x), layer(changed)
    assert torch.equal(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_lrurec_runs_as_a_plain_baseline_and_same_seed_gives_same_metrics(
    tiny_root, tmp_path
):
    from recbole_transfer.quick_start import run_recbole_transfer

    config = dict(
        FAST,
        data_path=str(tiny_root),
        checkpoint_dir=str(tmp_path / "saved"),
        dropout_prob=0.1,
    )
    first = run_recbole_transfer("LRURec", "Scientific", config_dict=config)
    second = run_recbole_transfer("LRURec", "Scientific", config_dict=config)
    assert set(first["test_result"]) == {"recall@10", "recall@50", "ndcg@10", "ndcg@50"}
    assert first["test_result"] == second["test_result"]


def test_lrurec_training_lowers_the_loss(tiny_root, tmp_path):
    from recbole_transfer.quick_start import build

    _, model, trainer, (train, _, _) = build(
        "LRURec",
        "Scientific",
        config_dict=dict(
            FAST,
            data_path=str(tiny_root),
            checkpoint_dir=str(tmp_path / "saved"),
            dropout_prob=0.0,
        ),
    )
    batch = next(iter(train))
    with torch.no_grad():
        before = model.calculate_loss(batch).item()
    for _ in range(30):
        trainer.optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        trainer.optimizer.step()
    with torch.no_grad():
        assert model.calculate_loss(batch).item() < before - 0.5


def _lrurec(tiny_root, tmp_path, **extra):
    from recbole_transfer.quick_start import build

    _, model, _, _ = build(
        "LRURec",
        "Scientific",
        config_dict=dict(
            FAST,
            data_path=str(tiny_root),
            checkpoint_dir=str(tmp_path / "saved"),
            **extra,
        ),
    )
    return model


@pytest.mark.parametrize("multiplier", [2, 1])
def test_lru_state_is_2d_complex_as_the_official_code(tiny_root, tmp_path, multiplier):
    # official model/lru.py: B maps d real inputs to 2d complex states, C maps them back to d (1: earlier variant)
    extra = {} if multiplier == 2 else {"lru_state_multiplier": 1}
    model = _lrurec(tiny_root, tmp_path, **extra)
    d, state = 16, 16 * multiplier
    lru = model.blocks[0].lru
    assert lru.params_log.shape == (3, state)
    assert lru.in_proj.weight.shape == (2 * state, d)
    assert lru.out_proj.weight.shape == (d, 2 * state)
    x = torch.randn(2, 12, d)
    changed = x.clone()
    changed[:, 6] += 1.0
    with torch.no_grad():
        before, after = lru(x), lru(changed)
    assert before.shape == x.shape
    assert torch.equal(before[:, :6], after[:, :6])  # still causal
    assert not torch.allclose(before[:, 6:], after[:, 6:])


@pytest.mark.parametrize("dropout_first", [True, False])
def test_embedding_dropout_order(tiny_root, tmp_path, dropout_first):
    model = _lrurec(
        tiny_root, tmp_path, dropout_prob=0.5, embedding_dropout_first=dropout_first
    )
    model.train()
    x = torch.randn(3, 5, 16)
    torch.manual_seed(7)
    out = model.embed(x)
    torch.manual_seed(7)
    if dropout_first:  # the official order: LayerNorm(dropout(E x))
        expected = model.embedding_norm(torch.nn.functional.dropout(x, 0.5))
    else:
        expected = torch.nn.functional.dropout(model.embedding_norm(x), 0.5)
    torch.testing.assert_close(out, expected)
    if dropout_first:  # after the LayerNorm, dropped positions are no longer zero
        assert not bool((out == 0).any())
