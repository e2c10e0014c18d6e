"""MetaRec: vector quantization, meta-gradients, gradient rescaling, the trainer and its switches."""

import pytest
import torch
import torch.nn.functional as F

from conftest import FAST, METAREC_SOURCES

from recbole_transfer.errors import UserInputError
from recbole_transfer.model.layers import VectorQuantizer
from recbole_transfer.trainer.meta import (
    adapt,
    domain_loss,
    meta_gradient,
    rescaling_weights,
)

SOURCES = METAREC_SOURCES
SMALL = dict(
    FAST,
    hidden_size=16,
    n_layers=1,
    MAX_ITEM_LIST_LENGTH=10,
    source_datasets=SOURCES,
    vq_heads=4,
    meta_tasks=2,
    source_batch_size=32,
    train_batch_size=64,
    epochs=1,
)


@pytest.fixture(scope="module")
def data_root(metarec_root):
    return metarec_root


def _build(data_root, tmp_path, **extra):
    from recbole_transfer.quick_start import build

    return build(
        "MetaRec",
        "Scientific",
        config_dict=dict(
            SMALL,
            data_path=str(data_root),
            checkpoint_dir=str(tmp_path / "saved"),
            **extra,
        ),
    )


def test_vq_rows_are_codebook_rows_per_head_and_gradients_reach_z_e():
    torch.manual_seed(0)
    z_e = torch.randn(50, 12, requires_grad=True)
    codebook = torch.randn(30, 12, requires_grad=True)
    z_q, quantized, codes = VectorQuantizer(3)(z_e, codebook)
    assert codes.shape == (50, 3)
    heads_q, heads_book, heads_e = (
        z_q.view(50, 3, 4),
        codebook.view(30, 3, 4),
        z_e.view(50, 3, 4),
    )
    for row in range(50):
        for head in range(3):
            assert torch.equal(heads_q[row, head], heads_book[codes[row, head], head])
            cosine = F.cosine_similarity(
                heads_e[row, head].unsqueeze(0), heads_book[:, head], dim=1
            )
            assert codes[row, head] == cosine.argmax()
    weights = torch.randn(50, 12)
    (z_q * weights).sum().backward()
    torch.testing.assert_close(
        z_e.grad, weights
    )  # straight-through: dz_q/dz_e = identity
    assert codebook.grad is None  # the codewords learn from L_vq only
    VectorQuantizer.loss(z_e, quantized).backward()
    assert codebook.grad is not None and codebook.grad.abs().sum() > 0


def test_rescaling_weights_sum_to_one_per_parameter_tensor():
    torch.manual_seed(0)
    grads = [{"a": torch.randn(4, 3), "b": torch.randn(5)} for _ in range(3)]
    steps = [{"a": torch.randn(4, 3), "b": torch.randn(5)} for _ in range(3)]
    steps[1]["a"] = grads[1]["a"] * 2  # cosine 1: the largest weight for tensor a
    weights = rescaling_weights(grads, steps, tau=0.5)
    for name in ("a", "b"):
        assert weights[name].shape == (3,)
        torch.testing.assert_close(weights[name].sum(), torch.tensor(1.0))
        assert bool((weights[name] > 0).all())
    assert weights["a"].argmax() == 1
    assert not torch.allclose(
        weights["a"], weights["b"]
    )  # per tensor, not one weight per task
    flat = rescaling_weights(grads, steps, tau=0.5, rescale=False)
    torch.testing.assert_close(flat["a"], torch.full((3,), 1 / 3))


def _double_model(data_root, tmp_path):
    # no VQ: its straight-through gradient is by design not the derivative of the quantized function
    _, model, trainer, (train, _, _) = _build(
        data_root, tmp_path, dropout_prob=0.0, hidden_size=8, vq_heads=0
    )
    model.double()
    model.train()
    target = next(iter(train))[:8]
    source = train._dataset.sources[0].interaction[torch.arange(8)]
    return model, trainer, target, source


def test_second_order_meta_gradient_matches_finite_differences(data_root, tmp_path):
    model, trainer, target, source = _double_model(data_root, tmp_path)
    params = dict(model.named_parameters())
    shared, source_names = trainer.shared_names, model.source_parameter_names(1)
    grads, *_ = meta_gradient(
        model, params, shared, source_names, source, 1, target, steps=2, lr=0.5
    )
    first_order, *_ = meta_gradient(
        model,
        params,
        shared,
        source_names,
        source,
        1,
        target,
        steps=2,
        lr=0.5,
        first_order=True,
    )

    def outer_loss(shift):
        moved = {n: p.detach() + shift.get(n, 0) for n, p in params.items()}
        moved = {n: p.requires_grad_() for n, p in moved.items()}
        phi, _ = adapt(
            model,
            moved,
            shared + source_names,
            source,
            1,
            steps=2,
            lr=0.5,
            first_order=True,
        )
        return domain_loss(model, phi, target, 0).item()

    generator = torch.Generator().manual_seed(1)
    direction = {
        n: torch.randn(params[n].shape, generator=generator, dtype=torch.float64)
        for n in shared
    }
    eps = 1e-6
    numeric = (
        outer_loss({n: eps * d for n, d in direction.items()})
        - outer_loss({n: -eps * d for n, d in direction.items()})
    ) / (2 * eps)
    analytic = sum((grads[n] * direction[n]).sum() for n in shared).item()
    approx = sum((first_order[n] * direction[n]).sum() for n in shared).item()
    assert abs(analytic - numeric) < 1e-6 * max(1.0, abs(numeric))
    assert abs(approx - numeric) > 100 * abs(
        analytic - numeric
    )  # the second-order terms are really there


def test_one_task_without_rescaling_is_plain_maml(data_root, tmp_path, monkeypatch):
    _, model, trainer, (train, _, _) = _build(
        data_root,
        tmp_path,
        dropout_prob=0.0,
        meta_tasks=1,
        gradient_rescaling=False,
        learner="sgd",
        learning_rate=0.05,
        inner_lr=0.3,
        weight_decay=0.0,
    )
    target = next(iter(train))
    source = train._dataset.sources[1].interaction[torch.arange(16)]
    monkeypatch.setattr(trainer, "_sample_domains", lambda n: [2])
    monkeypatch.setattr(trainer, "_source_batch", lambda domain_source: source)

    # MAML by hand: phi = theta - alpha grad L_src(theta); theta' = theta - beta d L_tgt(phi) / d theta
    theta = {
        n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()
    }
    inner_names = [
        n
        for n in theta
        if not n.startswith("source_item_embedding.0")
        and not n.startswith("source_output_bias.0")
    ]
    wrapper_loss = lambda p, batch, domain: domain_loss(model, p, batch, domain)
    inner = torch.autograd.grad(
        wrapper_loss(theta, source, 2),
        [theta[n] for n in inner_names],
        create_graph=True,
        allow_unused=True,
    )
    phi = dict(theta)
    phi.update(
        {n: theta[n] - 0.3 * g for n, g in zip(inner_names, inner) if g is not None}
    )
    shared = [n for n in theta if not n.startswith("source_")]
    meta = torch.autograd.grad(
        wrapper_loss(phi, target, 0), [theta[n] for n in shared], allow_unused=True
    )
    expected = {
        n: theta[n].detach() - 0.05 * (0 if g is None else g)
        for n, g in zip(shared, meta)
    }
    source_table_before = model.source_item_embedding[1].weight.detach().clone()
    untouched_before = model.source_item_embedding[0].weight.detach().clone()

    trainer.meta_step([target], [2], train._dataset.sources)
    after = dict(model.named_parameters())
    for name in shared:
        torch.testing.assert_close(
            after[name].detach(), expected[name], rtol=1e-5, atol=1e-7
        )
    assert not torch.equal(
        model.source_item_embedding[1].weight, source_table_before
    )  # trained on its own loss
    assert torch.equal(
        model.source_item_embedding[0].weight, untouched_before
    )  # not sampled: untouched


def test_metarec_trains_and_evaluates_end_to_end(data_root, tmp_path):
    from recbole_transfer.quick_start import run_recbole_transfer

    result = run_recbole_transfer(
        "MetaRec",
        "Scientific",
        config_dict=dict(
            SMALL,
            data_path=str(data_root),
            checkpoint_dir=str(tmp_path / "saved"),
            metrics=["Recall", "NDCG", "MRR"],
            topk=[10],
        ),
    )
    assert set(result["test_result"]) == {"recall@10", "ndcg@10", "mrr@10"}


@pytest.mark.parametrize(
    "switches",
    [dict(transfer="joint"), dict(vq_heads=0), dict(vq_heads=1, first_order=True)],
)
def test_ablation_switches_train(data_root, tmp_path, switches):
    _, model, trainer, (train, _, _) = _build(data_root, tmp_path, **switches)
    assert (model.quantizer is None) == (switches.get("vq_heads") == 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = trainer._train_epoch(train, 0)
    assert loss > 0 and len(trainer.iteration_seconds) == len(train) // 2
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert "item_embedding.weight" in moved and "blocks.0.lru.params_log" in moved


def test_source_tables_and_parameter_counts(data_root, tmp_path):
    _, model, trainer, (train, _, _) = _build(data_root, tmp_path)
    sources = train._dataset.sources
    assert [s.name for s in sources] == SOURCES
    for index, source in enumerate(sources):
        assert model.source_item_embedding[index].weight.shape == (source.n_items, 16)
        assert int(source.interaction["item_id"].max()) < source.n_items
    source_params = sum(
        s.n_items * 17 for s in sources
    )  # table (16) + output bias (1) per item
    total = sum(p.numel() for p in model.parameters())
    shared = sum(
        p.numel() for n, p in model.named_parameters() if n in trainer.shared_names
    )
    assert total - shared == source_params
    # each parameter has exactly one optimizer: RecBole's the shared ones, the source optimizer the source tables
    in_main = {
        id(p) for group in trainer.optimizer.param_groups for p in group["params"]
    }
    in_source = {
        id(p)
        for group in trainer.source_optimizer.param_groups
        for p in group["params"]
    }
    named = dict(model.named_parameters())
    assert in_main == {id(named[n]) for n in trainer.shared_names}
    assert in_source == {id(p) for n, p in named.items() if n.startswith("source_")}


def test_bad_source_settings_are_one_line_errors(data_root, tmp_path):
    from recbole_transfer.data.folders import UnknownDatasetError

    with pytest.raises(
        UserInputError,
        match="^source_datasets must not include the target dataset 'Scientific'$",
    ):
        _build(data_root, tmp_path, source_datasets=["Pantry", "Scientific"])
    with pytest.raises(UnknownDatasetError, match="^unknown dataset 'Pantri'"):
        _build(data_root, tmp_path, source_datasets=["Pantri"])
    with pytest.raises(
        ValueError, match="^hidden_size 16 is not divisible by vq_heads 3$"
    ):
        _build(data_root, tmp_path, vq_heads=3)
    with pytest.raises(
        UserInputError, match="^transfer must be one of meta, joint; got 'mixed'$"
    ):
        _build(data_root, tmp_path, transfer="mixed")
