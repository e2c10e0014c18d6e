"""MetaRec: vector quantization, meta-gradients, gradient rescaling, the trainer and its switches."""

import os

import pytest
import torch
import torch.nn.functional as F

from conftest import METAREC_SMALL, METAREC_SOURCES

from recbole_transfer.errors import UserInputError
from recbole_transfer.model.layers import VectorQuantizer, first_max_index
from recbole_transfer.model.metarec import vq_loss
from recbole_transfer.trainer.meta import (
    _group_stats,
    adapt,
    code_changes,
    diagnose,
    domain_loss,
    meta_gradient,
    rescaling_weights,
)

SOURCES = METAREC_SOURCES
SMALL = METAREC_SMALL


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
    vq_loss(z_e, quantized).backward()
    assert codebook.grad is not None and codebook.grad.abs().sum() > 0


def test_vq_codes_are_the_same_for_any_chunking():
    torch.manual_seed(0)
    z_e, codebook = torch.randn(300, 12), torch.randn(40, 12)
    whole = VectorQuantizer(3, chunk_size=1000).codes(z_e, codebook)
    # the earlier formulation (one einsum per chunk of 1024): the search must not move any code
    book = F.normalize(codebook.view(40, 3, 4), dim=-1)
    query = F.normalize(z_e.view(300, 3, 4), dim=-1)
    assert torch.equal(whole, torch.einsum("nhd,khd->nhk", query, book).argmax(-1))
    for chunk_size in (None, 1, 7, 256):
        assert torch.equal(VectorQuantizer(3, chunk_size).codes(z_e, codebook), whole)


def test_first_max_index_is_argmax_with_ties_nan_and_short_blocks():
    torch.manual_seed(0)
    # under one block, one block, a short last block, Scientific's codebook
    for size in (5, 64, 130, 4385):
        scores = torch.randn(3, 7, size)
        # many equal maxima: the first must win
        ties = torch.randint(0, 3, (3, 7, size)).float()
        with_nan = scores.clone()
        with_nan[0, 0, size // 2] = with_nan[1, 2, -1] = float("nan")
        for case in (scores, ties, with_nan):
            assert torch.equal(first_max_index(case), case.argmax(-1))
            assert torch.equal(first_max_index(case, block=7), case.argmax(-1))


def test_vq_codes_over_many_codewords_are_the_exact_search():
    torch.manual_seed(0)
    z_e, codebook = torch.randn(300, 16), torch.randn(1000, 16)
    book = F.normalize(codebook.view(1000, 4, 4), dim=-1)
    query = F.normalize(z_e.view(300, 4, 4), dim=-1)
    exact = torch.einsum("nhd,khd->nhk", query, book).argmax(-1)
    for chunk_size in (None, 1, 256):
        assert torch.equal(VectorQuantizer(4, chunk_size).codes(z_e, codebook), exact)


def test_vq_blocks_are_sized_to_the_cache_for_the_codebook():
    # the [heads, rows, K] block of float scores fills at most 4 MiB on CPU: fewer rows for a larger table
    quantizer = VectorQuantizer(4)
    assert quantizer.chunk_rows(torch.zeros(9922, 64)) == 26  # Instruments
    assert quantizer.chunk_rows(torch.zeros(4385, 64)) == 59  # Scientific
    assert quantizer.chunk_rows(torch.zeros(10**7, 64)) == 1
    assert VectorQuantizer(4, chunk_size=256).chunk_rows(torch.zeros(9922, 64)) == 256


def test_vq_loss_is_eq3_squared_norms_summed_over_dimensions():
    torch.manual_seed(0)
    z_e = torch.randn(5, 8, requires_grad=True)
    quantized = torch.randn(5, 8, requires_grad=True)
    loss = vq_loss(z_e, quantized)
    # both terms have the value ||z_q - z_e||^2; the mean over the 8 dimensions would be 8 times smaller
    expected = 2 * (quantized - z_e).detach().pow(2).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # stop-gradients: each side is pulled by its own term only
    torch.testing.assert_close(quantized.grad, 2 * (quantized - z_e).detach() / 5)
    torch.testing.assert_close(z_e.grad, 2 * (z_e - quantized).detach() / 5)


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
        inner_steps=1,
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


def _plain_target_step(model, optimizer, batches):
    """What target-only training does with the same batches: one step on the mean of their losses."""
    optimizer.zero_grad()
    loss = torch.stack([model.calculate_loss(batch) for batch in batches]).mean()
    loss.backward()
    optimizer.step()
    return loss.detach()


@pytest.mark.parametrize("learner, learning_rate", [("sgd", 0.5), ("adam", 0.01)])
@pytest.mark.parametrize(
    "transfer", [dict(inner_lr=0.0), dict(transfer="target")], ids=["control", "target"]
)
def test_inner_lr_zero_is_plain_target_training_step_for_step(
    data_root, tmp_path, learner, learning_rate, transfer
):
    # inner_lr 0 (the control): phi = theta, so each meta-gradient is the plain gradient of its target batch and
    # the rescaling weights are 1/n (cos with a zero step is 0). Float64, no dropout, the same initial weights and
    # batches, and (with SGD) an update proportional to the gradient: nothing else can tell the two apart, while
    # the default inner steps move the gradient by percents (test below), which fails this at once.
    # transfer=target computes the same without the inner loop, reading no source at all
    settings = dict(dropout_prob=0.0, learner=learner, learning_rate=learning_rate)
    _, meta, meta_trainer, (train, _, _) = _build(
        data_root, tmp_path / "meta", **settings, **transfer
    )
    _, plain, plain_trainer, _ = _build(data_root, tmp_path / "plain", **settings)
    meta.double()
    plain.double()
    sources = train._dataset.sources
    tables = [t.weight.detach().clone() for t in meta.source_item_embedding]
    if meta_trainer.transfer == "target":
        meta_trainer._source_batch = lambda source: pytest.fail("a source was read")
    batches = list(train)[:8]
    initial = {n: p.detach().clone() for n, p in meta.named_parameters()}
    for step in range(4):
        pair = batches[2 * step : 2 * step + 2]
        meta_loss = meta_trainer.step(
            pair, meta_trainer._sample_domains(len(sources)), sources
        )
        plain_loss = _plain_target_step(plain, plain_trainer.optimizer, pair)
        torch.testing.assert_close(meta_loss, plain_loss, rtol=1e-13, atol=0)
        after = dict(plain.named_parameters())
        for name, param in meta.named_parameters():
            if name in meta_trainer.shared_names:
                torch.testing.assert_close(param, after[name], rtol=1e-12, atol=1e-14)
    if meta_trainer.transfer == "target":  # the source tables stay as they were
        for table, before in zip(meta.source_item_embedding, tables):
            assert torch.equal(table.weight, before)
    # not equal by standing still: every shared tensor has moved
    for name, param in meta.named_parameters():
        if name in meta_trainer.shared_names:
            assert not torch.equal(param, initial[name]), name


def test_source_pretraining_reads_every_source_row_once_per_epoch(data_root, tmp_path):
    _, model, trainer, (train, _, _) = _build(
        data_root, tmp_path, dropout_prob=0.0, source_pretrain_epochs=2
    )
    sources = train._dataset.sources
    batches = trainer.source_epoch_batches(sources)
    assert {d for d, _ in batches} == set(range(1, len(sources) + 1))
    assert [d for d, _ in batches] != sorted(d for d, _ in batches)  # interleaved
    for domain, source in enumerate(sources, start=1):
        rows = torch.cat([r for d, r in batches if d == domain])
        assert torch.equal(rows.sort().values, torch.arange(len(source.interaction)))
        assert all(len(r) <= trainer.source_batch_size for d, r in batches)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = trainer.pretrain_on_sources(sources)
    assert len(losses) == 2 and losses[1] < losses[0]
    after = dict(model.named_parameters())
    # the body and every source table learn; the target's output bias gets no loss
    assert not torch.equal(
        after["blocks.0.lru.params_log"], before["blocks.0.lru.params_log"]
    )
    for domain in range(len(sources)):
        name = f"source_item_embedding.{domain}.weight"
        assert not torch.equal(after[name], before[name])
    assert torch.equal(after["output_bias"], before["output_bias"])
    # with VQ the target table is the codebook: L_vq pulls it toward the source items
    assert not torch.equal(
        after["item_embedding.weight"], before["item_embedding.weight"]
    )
    assert trainer.optimizer.state == {}  # the target starts with a fresh optimizer


def test_fit_pretrains_on_the_sources_before_the_target(
    data_root, tmp_path, monkeypatch
):
    _, _, trainer, (train, valid, _) = _build(
        data_root, tmp_path, transfer="target", source_pretrain_epochs=1
    )
    calls = []
    pretrain, step = trainer.pretrain_on_sources, trainer.target_step
    monkeypatch.setattr(
        trainer,
        "pretrain_on_sources",
        lambda *a: calls.append("sources") or pretrain(*a),
    )
    monkeypatch.setattr(
        trainer, "target_step", lambda *a: calls.append("target") or step(*a)
    )
    trainer.fit(train, valid, saved=False)
    assert calls[0] == "sources" and calls.count("sources") == 1
    assert calls.count("target") == -(-len(train) // trainer.n_tasks)


# measured on this fixture with the defaults (inner_lr 1, inner_steps 3), dropout off, over 3 iterations:
# ||theta - phi|| / ||theta|| = 6.7e-3-7.4e-3 and ||g_meta - g_plain|| / ||g_plain|| = 3.3e-2-4.0e-2; the inert
# meta path of the earlier defaults (inner_lr 0.1, one step) gave 1.8e-4-2.0e-4 and 1.3e-3
MIN_INNER_STEP = 2e-3
MIN_META_GRADIENT_CHANGE = 1.5e-2


def test_default_inner_steps_move_phi_and_the_meta_gradient(data_root, tmp_path):
    _, model, trainer, (train, _, _) = _build(data_root, tmp_path, dropout_prob=0.0)
    records = diagnose(trainer, train, iterations=2)
    for record in records:
        stats = record["groups"]["all"]
        assert stats["step"] > MIN_INNER_STEP
        assert stats["diff"] > MIN_META_GRADIENT_CHANGE
        # the inner steps descend on the source batch
        assert record["source_loss_phi"] < record["source_loss_theta"] - 0.05
        # a source step does not touch the target's output bias
        assert record["groups"]["output_bias"]["step"] == 0
        # the source gradient a joint step would add is there
        assert stats["source"] > MIN_META_GRADIENT_CHANGE
    use = records[0]["codewords"][SOURCES[0]]
    assert use["codewords"] == model.n_items - 1
    assert use["items"] == model.source_item_embedding[0].num_embeddings - 1
    assert len(use["heads"]) == 4
    for distinct, top_share in use["heads"]:
        assert 1 <= distinct <= min(use["items"], use["codewords"])
        assert 10 / use["items"] <= top_share <= 1


def test_diagnosis_statistics_on_known_tensors():
    theta = {"w": torch.tensor([3.0, 4.0])}
    meta = {
        "phis": [{"w": torch.tensor([3.0, 3.5])}],
        "grads": [{"w": torch.tensor([2.0, 2.0])}],  # g_meta
        # the source gradient at theta
        "first_grads": [{"w": torch.tensor([0.0, 3.0])}],
        "weights": {"w": torch.tensor([1.0])},
    }
    plain = [{"w": torch.tensor([2.0, 0.0])}]
    stats = _group_stats(["w"], theta, meta, plain)
    assert stats["step"] == pytest.approx(0.5 / 5)
    assert stats["diff"] == pytest.approx(1.0)  # ||(0, 2)|| / ||(2, 0)||
    assert stats["cos"] == pytest.approx(2**-0.5)
    assert stats["source"] == pytest.approx(1.5)  # ||(0, 3)|| / ||(2, 0)||
    assert stats["source_cos"] == pytest.approx(1.0)  # (0, 2) along (0, 3)


def test_the_inert_control_shows_no_meta_path_in_the_diagnosis(data_root, tmp_path):
    _, _, trainer, (train, _, _) = _build(
        data_root, tmp_path, dropout_prob=0.0, inner_lr=0.0
    )
    (record,) = diagnose(trainer, train, iterations=1)
    assert record["groups"]["all"]["step"] == 0
    assert record["groups"]["all"]["diff"] < 1e-5
    # the sources have a gradient at theta; only the meta path to the update is closed
    assert record["groups"]["all"]["source"] > MIN_META_GRADIENT_CHANGE
    assert record["loss_phi"] == pytest.approx(record["loss_theta"], rel=1e-6)


def test_metarec_training_lowers_the_loss_end_to_end(data_root, tmp_path):
    _, model, trainer, (train, valid, test) = _build(
        data_root,
        tmp_path,
        epochs=2,
        metrics=["Recall", "NDCG", "MRR"],
        topk=[10],
        learning_rate=0.01,
    )
    epoch_losses = []
    train_epoch = trainer._train_epoch

    def recording(*args, **kwargs):
        epoch_losses.append(train_epoch(*args, **kwargs))
        return epoch_losses[-1]

    trainer._train_epoch = recording
    fixed = next(iter(train))
    model.eval()
    with torch.no_grad():
        before = model.calculate_loss(fixed).item()
    trainer.fit(train, valid, saved=False, show_progress=False)
    model.eval()
    with torch.no_grad():
        after = model.calculate_loss(fixed).item()
    result = trainer.evaluate(test, load_best_model=False, show_progress=False)
    # measured: epoch losses 71.1 -> 67.5 (sums over 10 iterations), one fixed batch 7.11 -> 6.43, Recall@10
    # 0.055 against 0.008 for a random ranking of the 1,213 items
    assert len(epoch_losses) == 2 and epoch_losses[1] < epoch_losses[0] - 1.0
    assert after < before - 0.3
    assert set(result) == {"recall@10", "ndcg@10", "mrr@10"}
    assert all(0 <= v <= 1 for v in result.values())
    assert result["recall@10"] > 2 * 10 / (model.n_items - 1)


def test_metarec_trains_on_whole_histories_by_default(data_root, tmp_path):
    from recbole_transfer.quick_start import build

    small = {k: v for k, v in SMALL.items() if k != "train_positions"}
    config, model, trainer, (train, _, _) = build(
        "MetaRec",
        "Scientific",
        config_dict=dict(
            small, data_path=str(data_root), checkpoint_dir=str(tmp_path / "saved")
        ),
    )
    assert config["train_positions"] == "all" and type(model).all_positions
    rows = train._dataset.inter_feat
    # rows per user history (windows of MAX_ITEM_LIST_LENGTH), targets at every real position
    users = set(rows["user_id"].tolist())
    assert len(users) == 200 and len(rows) < 1.2 * len(users)
    assert int((rows["item_id_target_list"] > 0).sum()) > 2 * len(rows)
    for source in train._dataset.sources:
        assert "item_id_target_list" in source.interaction
    loss = trainer._train_epoch(train, 0)
    assert torch.isfinite(torch.as_tensor(loss))


def test_an_epoch_trains_on_every_target_batch(data_root, tmp_path, monkeypatch):
    _, _, trainer, (train, _, _) = _build(data_root, tmp_path, meta_tasks=3)
    assert len(train) % 3  # the fixture leaves a remainder
    seen = []
    monkeypatch.setattr(
        trainer,
        "meta_step",
        lambda batches, domains, sources: seen.append(len(batches))
        or torch.tensor(1.0),
    )
    trainer._train_epoch(train, 0)
    assert sum(seen) == len(train) and seen[-1] == len(train) % 3
    assert len(trainer.iteration_seconds) == -(-len(train) // 3)


def _update(data_root, tmp_path, **switches):
    """The change of the shared weights after one iteration (2 target batches, sources 1 and 2) with SGD."""
    _, model, trainer, (train, _, _) = _build(
        data_root,
        tmp_path,
        dropout_prob=0.0,
        learner="sgd",
        learning_rate=0.1,
        **switches,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = list(train)[:2]
    trainer.step(batches, [1, 2], train._dataset.sources)
    named = dict(model.named_parameters())
    return {n: named[n].detach() - before[n] for n in trainer.shared_names}


# measured relative change of the update against the default MetaRec's on this fixture: joint 0.51, no VQ 0.089,
# single-head VQ 0.042, first order 0.017, no rescaling 0.0074 (float noise: below 1e-6)
@pytest.mark.parametrize(
    "switches",
    [
        dict(transfer="joint"),
        dict(vq_heads=0),
        dict(vq_heads=1),
        dict(first_order=True),
        dict(gradient_rescaling=False),
    ],
    ids=["joint", "no_vq", "single_head", "first_order", "no_rescaling"],
)
def test_each_ablation_switch_changes_the_update(data_root, tmp_path, switches):
    reference = _update(data_root, tmp_path / "default")
    update = _update(data_root, tmp_path / "switched", **switches)
    change = torch.sqrt(sum((update[n] - reference[n]).pow(2).sum() for n in update))
    size = torch.sqrt(sum(reference[n].pow(2).sum() for n in reference))
    assert change / size > 1e-3
    assert update["blocks.0.lru.params_log"].abs().sum() > 0


def _steps(data_root, tmp_path, iterations, transfer="meta", **settings):
    """The shared weights after ``iterations`` steps on fixed batches (sources 1 and 2), and the searches made."""
    _, model, trainer, (train, _, _) = _build(
        data_root, tmp_path, dropout_prob=0.0, transfer=transfer, **settings
    )
    searches, search = [], model.quantizer.codes
    model.quantizer.codes = lambda z_e, book: searches.append(1) or search(z_e, book)
    batches = list(train)[: 2 * iterations]
    for i in range(iterations):
        trainer.step(batches[2 * i : 2 * i + 2], [1, 2], train._dataset.sources)
    named = dict(model.named_parameters())
    return {n: named[n].detach().clone() for n in trainer.shared_names}, len(searches)


def test_codes_refreshed_every_iteration_equal_the_exact_path_with_one_inner_step(
    data_root, tmp_path
):
    # with one inner step every source forward is at theta, where a search per iteration (vq_refresh_steps 1)
    # finds what the search per forward (0, the exact path) finds: the same weights to the last bit
    exact, exact_searches = _steps(data_root, tmp_path / "a", 3, inner_steps=1)
    cached, cached_searches = _steps(
        data_root, tmp_path / "b", 3, inner_steps=1, vq_refresh_steps=1
    )
    assert exact_searches == cached_searches == 3 * 2
    for name in exact:
        assert torch.equal(exact[name], cached[name]), name
    # with three inner steps the exact path searches again at each phi, and the inner_lr 1 steps move codes
    exact, exact_searches = _steps(data_root, tmp_path / "c", 3, inner_steps=3)
    cached, cached_searches = _steps(
        data_root, tmp_path / "d", 3, inner_steps=3, vq_refresh_steps=1
    )
    assert (exact_searches, cached_searches) == (3 * 2 * 3, 3 * 2)
    assert any(not torch.equal(exact[n], cached[n]) for n in exact)


def test_vq_refresh_steps_reuses_codes_with_current_codewords(data_root, tmp_path):
    _, searches = _steps(data_root, tmp_path / "a", 5, "joint", vq_refresh_steps=2)
    assert searches == 3 * 2  # iterations 1, 3 and 5, each of the two sources
    _, searches = _steps(data_root, tmp_path / "b", 5, "joint")
    assert searches == 5 * 2
    _, model, trainer, (train, _, _) = _build(
        data_root, tmp_path / "c", vq_refresh_steps=3, learning_rate=0.1
    )
    batches = list(train)[:2]
    source = train._dataset.sources[0].interaction[torch.arange(8)]
    seq, pos = source[model.ITEM_SEQ], source[model.POS_ITEM_ID]
    model.start_iteration()
    model.source_table(1, seq, pos)
    codes = model._codes[1][1]
    trainer.joint_step(batches, [1, 2], train._dataset.sources)  # moves both tables
    table, _ = model.source_table(1, seq, pos)
    assert model._codes[1][1] is codes  # not searched again
    book = model.item_embedding.weight[1:].detach().view(-1, 4, 4)
    # the cached codes read the codewords as they are now, not as they were at the search
    expected = book[codes, torch.arange(4)].reshape(-1, 16)
    assert torch.equal(table[1:].detach(), expected)
    fresh = model.quantizer.codes(
        model.source_item_embedding[0].weight[1:], model.item_embedding.weight[1:]
    )
    assert not torch.equal(fresh, codes)  # a search would have moved some codes


def test_code_changes_counts_moved_codes_and_none_when_nothing_trains(
    data_root, tmp_path
):
    _, _, trainer, (train, _, _) = _build(data_root, tmp_path / "a", dropout_prob=0.0)
    changes = code_changes(trainer, train, iterations=3, lags=(1, 2))
    assert [len(changes["lags"][lag]) for lag in (1, 2)] == [2, 1]
    assert len(changes["inner"]) == 2  # inner steps 2 and 3 against the first
    shares = changes["inner"] + changes["lags"][1] + changes["lags"][2]
    assert all(0 <= share <= 1 for share in shares)
    assert max(changes["inner"]) > 0  # inner_lr 1 moves codes within an iteration
    _, _, trainer, (train, _, _) = _build(
        data_root, tmp_path / "b", dropout_prob=0.0, inner_lr=0.0, learning_rate=0.0
    )
    changes = code_changes(trainer, train, iterations=3, lags=(1, 2))
    assert changes["inner"] == [0.0, 0.0]
    assert changes["lags"] == {1: [0.0, 0.0], 2: [0.0]}


def test_source_tables_and_parameter_counts(data_root, tmp_path):
    _, model, trainer, (train, _, _) = _build(
        data_root, tmp_path, learner="adamw", weight_decay=0.1
    )
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
    # one optimizer, the configured one, holds every parameter: the source tables follow learner and weight_decay
    # and a checkpoint of the optimizer holds their state too
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    (group,) = trainer.optimizer.param_groups
    assert group["weight_decay"] == 0.1
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}


def test_vq_chunk_rows_reaches_the_search(data_root, tmp_path):
    _, model, _, _ = _build(data_root, tmp_path, vq_chunk_rows=7)
    assert model.quantizer.chunk_rows(model.item_embedding.weight) == 7
    _, model, _, _ = _build(data_root, tmp_path)
    table = model.item_embedding.weight[1:]
    assert model.quantizer.chunk_rows(table) == (4 << 20) // (
        4 * model.vq_heads * table.shape[0]
    )


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
        UserInputError,
        match="^transfer must be one of meta, joint, target; got 'mixed'$",
    ):
        _build(data_root, tmp_path, transfer="mixed")
    with pytest.raises(UserInputError, match="^inner_steps must be 1 to 5; got 6$"):
        _build(data_root, tmp_path, inner_steps=6)
    with pytest.raises(UserInputError, match="^inner_lr must be >= 0; got -1.0$"):
        _build(data_root, tmp_path, inner_lr=-1.0)
    with pytest.raises(UserInputError, match="^vq_refresh_steps must be >= 0; got -1$"):
        _build(data_root, tmp_path, vq_refresh_steps=-1)
    with pytest.raises(UserInputError, match="^vq_chunk_rows must be >= 0; got -1$"):
        _build(data_root, tmp_path, vq_chunk_rows=-1)
    with pytest.raises(
        UserInputError, match="^source_pretrain_epochs must be >= 0; got -1$"
    ):
        _build(data_root, tmp_path, source_pretrain_epochs=-1)


def test_default_sources_are_the_family_without_the_target_end_to_end(
    data_root, tmp_path
):
    """``--model=MetaRec --dataset=D`` with nothing else: the sources are every other dataset of D's shipped family
    found beside it, never D, and one epoch trains and tests on them."""
    from recbole_transfer.config import Config
    from recbole_transfer.quick_start import run

    settings = {k: v for k, v in SMALL.items() if k != "source_datasets"}

    config = Config(
        "MetaRec", "Scientific", config_dict=dict(settings, data_path=str(data_root))
    )
    assert sorted(config["source_datasets"]) == sorted(SOURCES)
    assert "Scientific" not in config["source_datasets"]
    result = run(
        "MetaRec",
        "Scientific",
        config_dict=dict(
            settings,
            data_path=str(data_root),
            checkpoint_dir=str(tmp_path / "saved"),
        ),
    )
    assert result["checkpoint"] and os.path.isfile(result["checkpoint"])
    assert set(result["test_result"]) >= {"recall@10", "ndcg@10"}
