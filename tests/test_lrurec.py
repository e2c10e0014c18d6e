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
