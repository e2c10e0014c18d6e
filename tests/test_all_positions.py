"""train_positions=all: one training row per user history, the loss at every real position.

On the first 200 users of Scientific: the loss equals the mean of RecBole's per-prefix losses with dropout off, the
training rows hold the training items only (never a validation or test interaction), long histories are cut into
windows that predict every training target once, evaluation rows are RecBole's own, and unsupported models or
settings fail with one line.
"""

import numpy as np
import pytest
import torch

from conftest import FAST, METAREC_SOURCES

from recbole_transfer.errors import UserInputError

TARGETS = "item_id_target_list"
# the equivalence cases: model name and its settings with dropout off
NO_DROPOUT = {
    "SASRec": ("SASRec", {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}),
    "LRURec": ("LRURec", {"dropout_prob": 0.0}),
    "GRU4Rec": ("GRU4Rec", {"dropout_prob": 0.0}),
    # a random, frozen item table (embedding_mode freeze): no text encoder to run
    "PLMInitSASRec": (
        "PLMInitSASRec",
        {"init_type": "none", "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0},
    ),
}
UNISREC = {
    "hidden_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0,
    "adaptor_dropout_prob": 0.0,
    "n_heads": 2,
    "n_exps": 2,
    "pretrained_path": None,
}
for _stage in ("inductive_ft", "transductive_ft"):
    NO_DROPOUT[f"UniSRec-{_stage}"] = ("UniSRec", dict(UNISREC, train_stage=_stage))


def _settings(tiny_root, tmp_path, **extra):
    return dict(
        FAST, data_path=str(tiny_root), checkpoint_dir=str(tmp_path / "saved"), **extra
    )


def _build(model, tiny_root, tmp_path, **extra):
    from recbole_transfer.quick_start import build

    return build(
        model, "Scientific", config_dict=_settings(tiny_root, tmp_path, **extra)
    )


def _rows_by_user(inter):
    """{user: [row indices in order]}."""
    users = {}
    for i, u in enumerate(inter["user_id"].tolist()):
        users.setdefault(u, []).append(i)
    return users


def _real(row, length):
    return row[: int(length)].tolist()


def _training_targets(prefix_train):
    """{user: the user's training targets in time order} from RecBole's per-prefix training split."""
    order = np.lexsort(
        (prefix_train["timestamp"].numpy(), prefix_train["user_id"].numpy())
    )
    targets = {}
    for i in order:
        targets.setdefault(int(prefix_train["user_id"][i]), []).append(
            int(prefix_train["item_id"][i])
        )
    return targets


def _splits(tiny_root, tmp_path, model="SASRec", **extra):
    """The (train, valid, test) rows of the tiny Scientific in the prefix form and the all-positions form."""
    from recbole_transfer.config import Config
    from recbole_transfer.quick_start import create_dataset

    splits = {}
    for mode in ("last", "all"):
        config = Config(
            model,
            "Scientific",
            config_dict=_settings(tiny_root, tmp_path, train_positions=mode, **extra),
        )
        splits[mode] = [part.inter_feat for part in create_dataset(config).build()]
    return splits["last"], splits["all"]


def _random_text_vectors(dataset, word_drop_ratio=0.0, seed=None):
    """Seeded stand-ins for the encoded item texts: the loss maths does not depend on what the vectors hold, and no
    text encoder has to run."""
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(len(dataset.item_texts), 24, generator=generator)
    vectors[0] = 0  # the padding item
    return vectors


@pytest.mark.parametrize("case", list(NO_DROPOUT))
def test_all_positions_loss_is_the_mean_of_the_prefix_losses(
    tiny_root, tmp_path, monkeypatch, case
):
    from recbole_transfer.data.dataset import TextSequentialDataset

    monkeypatch.setattr(
        TextSequentialDataset, "encode_item_texts", _random_text_vectors
    )
    model_name, settings = NO_DROPOUT[case]
    _, model_all, _, (train_all, _, _) = _build(
        model_name, tiny_root, tmp_path, train_positions="all", **settings
    )
    assert type(model_all).all_positions
    _, model_last, _, (train_last, _, _) = _build(
        model_name, tiny_root, tmp_path, **settings
    )
    _assert_same_losses(
        model_all,
        model_last,
        train_all._dataset.inter_feat,
        train_last._dataset.inter_feat,
        lambda model, batch: model.calculate_loss(batch),
    )


def _assert_same_losses(model_all, model_last, rows, prefixes, loss):
    """On the users whose training history fits in one row: ``loss(model, batch)`` of the all-positions rows equals
    that of the prefix rows, for all of them and for one user alone (a mean over positions, not over rows).
    """
    model_last.load_state_dict(model_all.state_dict())
    model_all.eval(), model_last.eval()
    max_length = rows["item_id_list"].shape[1]
    # users whose whole training history fits in one row (shorter than the max length)
    short = [
        u
        for u, index in _rows_by_user(rows).items()
        if len(index) == 1 and int(rows["item_length"][index[0]]) < max_length
    ]
    assert len(short) > 100
    short = torch.tensor(short)
    rows = rows[torch.isin(rows["user_id"], short)]
    prefixes = prefixes[torch.isin(prefixes["user_id"], short)]
    # the same predictions are asked for: one per prefix
    assert int((rows[TARGETS] > 0).sum()) == len(prefixes)
    with torch.no_grad():
        loss_all = loss(model_all, rows)
        loss_last = loss(model_last, prefixes)
        first = rows[torch.tensor([0])]
        per_prefix = loss(
            model_last, prefixes[prefixes["user_id"] == int(first["user_id"])]
        )
        one_row = loss(model_all, first)
    torch.testing.assert_close(loss_all, loss_last, rtol=0, atol=1e-5)
    torch.testing.assert_close(one_row, per_prefix, rtol=0, atol=1e-5)


def test_metarec_target_and_source_losses_are_the_means_of_the_prefix_losses(
    metarec_root, tmp_path
):
    from recbole_transfer.model.metarec import TARGET_DOMAIN

    settings = dict(
        source_datasets=METAREC_SOURCES,
        vq_heads=4,
        dropout_prob=0.0,
        meta_tasks=2,
        source_batch_size=32,
    )
    _, model_all, trainer, (train_all, _, _) = _build(
        "MetaRec", metarec_root, tmp_path, train_positions="all", **settings
    )
    _, model_last, _, (train_last, _, _) = _build(
        "MetaRec", metarec_root, tmp_path, train_positions="last", **settings
    )
    _assert_same_losses(
        model_all,
        model_last,
        train_all._dataset.inter_feat,
        train_last._dataset.inter_feat,
        lambda model, batch: model.domain_loss(batch, TARGET_DOMAIN),
    )
    sources_all, sources_last = train_all._dataset.sources, train_last._dataset.sources
    max_length = model_all.max_seq_length
    for domain, (ours, theirs) in enumerate(zip(sources_all, sources_last), start=1):
        rows, prefixes = ours.interaction, theirs.interaction
        # a source is training data only: every prefix of every whole history is predicted, once
        assert int((rows[TARGETS] > 0).sum()) == len(prefixes)
        assert int(rows["item_length"].max()) <= max_length
        if int(prefixes["item_length"].max()) < max_length:
            # no history is cut into windows: the source loss (CE + L_vq) is the mean of the prefix losses
            with torch.no_grad():
                torch.testing.assert_close(
                    model_all.domain_loss(rows, domain),
                    model_last.domain_loss(prefixes, domain),
                    rtol=0,
                    atol=1e-5,
                )
            compared = ours.name
    assert compared == "Pantry"
    # the bi-level trainer runs on these rows: target batches and source batches alike
    model_all.train()
    before = model_all.source_item_embedding[0].weight.detach().clone()
    loss = trainer._train_epoch(train_all, 0, show_progress=False)
    assert np.isfinite(float(loss))
    assert not torch.equal(before, model_all.source_item_embedding[0].weight)


def test_training_rows_hold_training_items_only_and_evaluation_is_unchanged(
    tiny_root, tmp_path
):
    (train_last, valid_last, test_last), (train_all, valid_all, test_all) = _splits(
        tiny_root, tmp_path
    )
    # validation and test rows are RecBole's own prefix rows, field by field and in order
    for ours, theirs in ((valid_all, valid_last), (test_all, test_last)):
        assert set(ours.interaction) == set(theirs.interaction)
        for field in theirs.interaction:
            assert torch.equal(ours[field], theirs[field]), field
    expected = _training_targets(train_last)
    max_length = train_all["item_id_list"].shape[1]
    valid_row = {u: i for i, u in enumerate(valid_last["user_id"].tolist())}
    test_row = {u: i for i, u in enumerate(test_last["user_id"].tolist())}
    held_out_checked = 0
    for user, index in _rows_by_user(train_all).items():
        assert len(index) == 1  # histories of the tiny cut fit in one row of 50
        i = index[0]
        length = int(train_all["item_length"][i])
        inputs = _real(train_all["item_id_list"][i], length)
        targets = _real(train_all[TARGETS][i], length)
        assert bool((train_all["item_id_list"][i][length:] == 0).all())
        assert bool((train_all[TARGETS][i][length:] == 0).all())
        assert inputs[1:] == targets[:-1]  # targets = inputs shifted by one
        assert targets == expected[user]  # every training target, nothing else
        history = inputs + targets[-1:]
        if user not in test_row:
            continue
        # RecBole's test row reads everything before the test item: ... training items, validation item
        t = test_row[user]
        before_test = _real(test_last["item_id_list"][t], test_last["item_length"][t])
        if len(before_test) == max_length:
            continue  # cut at the max length: not the whole history
        held_out = [(int(test_last["item_id"][t]), before_test)]
        if user in valid_row:
            valid_item = int(valid_last["item_id"][valid_row[user]])
            assert before_test[-1] == valid_item
            assert history == before_test[:-1]  # the history stops before validation
            held_out.append((valid_item, before_test[:-1]))
        else:
            assert history == before_test
        for item, earlier in held_out:
            if item not in earlier:  # not a repeat of an earlier training interaction
                assert item not in inputs and item not in targets
                held_out_checked += 1
    assert held_out_checked > 100
    # every user with a training target has a row, no other user
    assert set(_rows_by_user(train_all)) == set(expected)


def test_long_histories_are_cut_into_windows_that_predict_each_target_once(
    tiny_root, tmp_path
):
    window = 3
    (train_last, _, _), (rows, _, _) = _splits(
        tiny_root, tmp_path, "LRURec", MAX_ITEM_LIST_LENGTH=window
    )
    expected = _training_targets(train_last)
    assert rows["item_id_list"].shape[1] == window
    windows_seen = 0
    for user, index in _rows_by_user(rows).items():
        targets, previous = [], None
        for k, i in enumerate(index):
            length = int(rows["item_length"][i])
            inputs = _real(rows["item_id_list"][i], length)
            row_targets = _real(rows[TARGETS][i], length)
            assert 1 <= length <= window
            assert k == 0 or length == window  # only the first window is partial
            assert inputs[1:] == row_targets[:-1]
            if previous is not None:  # inputs start right after the previous window
                assert inputs[0] == previous[-1]
            assert int(rows["item_id"][i]) == row_targets[-1]
            targets += row_targets
            previous = row_targets
        windows_seen += len(index) > 1
        assert targets == expected[user]  # each training target exactly once, in order
    assert windows_seen > 50
    assert int((rows[TARGETS] > 0).sum()) == len(train_last)


def test_same_seed_gives_the_same_training_loss_and_metrics(tiny_root, tmp_path):
    from recbole_transfer.quick_start import run_recbole_transfer

    losses = []
    for _ in range(2):
        _, _, trainer, (train, _, _) = _build(
            "SASRec", tiny_root, tmp_path, train_positions="all"
        )
        losses.append(trainer._train_epoch(train, 0, show_progress=False))
    assert losses[0] == losses[1]
    config = dict(
        FAST,
        data_path=str(tiny_root),
        checkpoint_dir=str(tmp_path / "saved"),
        train_positions="all",
        epochs=1,
    )
    first = run_recbole_transfer("LRURec", "Scientific", config_dict=config)
    second = run_recbole_transfer("LRURec", "Scientific", config_dict=config)
    assert set(first["test_result"]) == {"recall@10", "recall@50", "ndcg@10", "ndcg@50"}
    assert first["test_result"] == second["test_result"]


@pytest.mark.parametrize(
    "model, extra, message",
    [
        (
            "SASRec",
            {"train_positions": "every"},
            "train_positions must be one of last, all; got 'every'",
        ),
        (
            "NextItNet",
            {},
            "train_positions=all is not supported by NextItNet: RecBole's NextItNet scores from the last column",
        ),
        (
            "UniSRec",
            {"train_stage": "pretrain"},
            "train_positions=all is not supported by UniSRec pretrain: its contrastive losses take the other "
            "sequences of a batch as negatives",
        ),
        (
            "PLMInitBERT4Rec",
            {"init_type": "none"},
            "train_positions=all is not supported by PLMInitBERT4Rec: BERT4Rec's attention is bidirectional",
        ),
        (
            "PeterRec",
            {"train_stage": "pretrain"},
            "train_positions=all is not supported by PeterRec pretrain: its histories are right-aligned",
        ),
        (
            "PeterRec",
            {"train_stage": "finetune"},
            "train_positions=all is not supported by PeterRec finetune: fine-tuning predicts one label per row",
        ),
        ("Caser", {}, "train_positions=all is not supported by Caser yet"),
        (
            "SASRec",
            {"loss_type": "BPR", "train_neg_sample_args": {"distribution": "uniform"}},
            "train_positions=all trains with cross-entropy over all items",
        ),
        (
            "SASRec",
            {"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO"}},
            "train_positions=all needs the leave-one-out split",
        ),
        (
            "SASRec",
            {"benchmark_filename": ["train", "valid", "test"]},
            "train_positions=all builds its training rows from whole histories",
        ),
    ],
)
def test_unsupported_models_and_settings_fail_with_one_line(
    tiny_root, tmp_path, model, extra, message
):
    extra = {"train_positions": "all", **extra}
    with pytest.raises(UserInputError) as err:
        _build(model, tiny_root, tmp_path, **extra)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
