"""PeterRec: dilated residual blocks (causal / non-causal), model patches, pretraining."""

import pytest
import torch

from conftest import FAST, REPO, cut_users

from recbole_transfer.model.layers import ModelPatch
from recbole_transfer.model.peterrec import INSERTIONS, ResidualBlock, right_align

SMALL = dict(
    FAST,
    hidden_size=32,
    dilations=[1, 4],
    train_batch_size=128,
    MAX_ITEM_LIST_LENGTH=20,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("peterrec_data")
    cut_users("ABE_Beauty", 300, root)
    return root


def _build(data_root, tmp_path, **extra):
    from recbole_transfer.quick_start import build

    return build(
        "PeterRec",
        "ABE_Beauty",
        config_dict=dict(
            SMALL,
            data_path=str(data_root),
            checkpoint_dir=str(tmp_path / "saved"),
            **extra,
        ),
    )


def test_right_align():
    seq = torch.tensor([[5, 6, 7, 0, 0], [1, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    aligned = right_align(seq, torch.tensor([3, 1, 5]))
    assert aligned.tolist() == [[0, 0, 5, 6, 7], [0, 0, 0, 0, 1], [1, 2, 3, 4, 5]]


@pytest.mark.parametrize("causal", [True, False])
def test_causal_blocks_never_see_later_positions(data_root, tmp_path, causal):
    """Change the item at position 12: causal outputs before it stay bit-identical, non-causal ones move."""
    _, model, _, (train, _, _) = _build(data_root, tmp_path, causal=causal)
    model.eval()
    batch = next(iter(train))
    seq = right_align(batch["item_id_list"], batch["item_length"])[:8]
    changed = seq.clone()
    changed[:, 12] = (seq[:, 12] % (model.n_items - 1)) + 1  # another real item
    with torch.no_grad():
        before, after = model.encode(seq), model.encode(changed)
    assert not torch.equal(before[:, 12:], after[:, 12:])
    if causal:
        assert torch.equal(before[:, :12], after[:, :12])
    else:
        assert not torch.allclose(before[:, :12], after[:, :12])


@pytest.mark.parametrize("insertion", [m for m in INSERTIONS if m != "none"])
def test_fresh_patches_keep_the_pretrained_function(insertion):
    torch.manual_seed(0)
    plain = ResidualBlock(32, 3, 2, causal=True)
    patched = ResidualBlock(32, 3, 2, causal=True, insertion=insertion)
    missing, unexpected = patched.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("patches.") for k in missing)
    x = torch.randn(4, 20, 32)
    with torch.no_grad():
        reference, out = plain(x), patched(x)
        assert (out - reference).abs().max() < 0.02 * reference.abs().max()
        for (
            patch
        ) in (
            patched.patches
        ):  # a patch that has learned something does change the block
            patch.up.weight.normal_(std=0.5)
        assert (patched(x) - reference).abs().max() > 0.1
    assert sum(p.numel() for p in patched.patches.parameters()) == len(
        patched.patches
    ) * (32 * 4 + 4 + 4 * 32 + 32)


def test_model_patch_bottleneck():
    patch = ModelPatch(64, ratio=8)
    assert patch.down.out_features == 8 and patch.up.in_features == 8


@pytest.mark.parametrize("causal", [True, False])
def test_pretraining_loss_falls_and_ranks(data_root, tmp_path, causal):
    config, model, trainer, (train, valid, test) = _build(
        data_root, tmp_path, causal=causal
    )
    losses = [trainer._train_epoch(train, epoch) for epoch in range(3)]
    assert losses[-1] < losses[0]
    result = trainer.evaluate(test, load_best_model=False)
    assert set(result) == {"recall@10", "recall@50", "ndcg@10", "ndcg@50"}
    batch = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
    assert scores.shape == (len(batch), test._dataset.item_num)


def test_unknown_insertion_is_one_line(data_root, tmp_path):
    from recbole_transfer.errors import UserInputError

    with pytest.raises(UserInputError) as err:
        _build(data_root, tmp_path, patch_insertion="serial_x")
    assert str(err.value) == (
        "patch_insertion must be one of none, serial_b, serial_c, parallel_d, parallel_e; "
        "got 'serial_x'"
    )


# --- fine-tuning --------------------------------------------------------------------------------------------------
TASK = "properties/task/beauty_to_electronics.yaml"


@pytest.fixture(scope="module")
def pair_root(tmp_path_factory):
    """The first users of the Beauty/Electronics pair (the same users in both)."""
    root = tmp_path_factory.mktemp("peterrec_pair")
    cut_users("ABE_Beauty", 300, root)
    cut_users("ABE_Electronics", 300, root)
    return root


@pytest.fixture(scope="module")
def pretrained(pair_root, tmp_path_factory):
    """Causal pretraining on the Beauty side, one epoch."""
    import sys

    from recbole_transfer.quick_start import run_recbole_transfer

    saved = tmp_path_factory.mktemp("peterrec_saved")
    with (
        pytest.MonkeyPatch.context() as patch
    ):  # module scope: clean_argv has not run yet
        patch.setattr(sys, "argv", ["run_recbole_transfer.py"])
        patch.chdir(saved)
        result = run_recbole_transfer(
            "PeterRec",
            "ABE_Beauty",
            config_dict=dict(
                SMALL, data_path=str(pair_root), checkpoint_dir=str(saved), epochs=1
            ),
        )
    return result["checkpoint"]


def _finetune(pair_root, tmp_path, pretrained, **extra):
    from recbole_transfer.quick_start import build

    return build(
        "PeterRec",
        "ABE_Electronics",
        config_file_list=[f"{REPO}/{TASK}"],
        config_dict=dict(
            SMALL,
            data_path=str(pair_root),
            checkpoint_dir=str(tmp_path / "saved"),
            pretrained_path=pretrained,
            **extra,
        ),
    )


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_peterrec_mode_keeps_pretrained_weights_bit_identical(
    pair_root, tmp_path, pretrained
):
    config, model, trainer, (train, valid, _) = _finetune(
        pair_root, tmp_path, pretrained, patch_insertion="parallel_d"
    )
    saved = torch.load(pretrained, weights_only=True)["state_dict"]
    frozen = {
        k: v
        for k, v in model.state_dict().items()
        if k.split(".")[0] in ("item_embedding", "blocks")
        and ".patches." not in k
        and ".ln" not in k
    }
    assert frozen and all(
        torch.equal(v, saved[k]) for k, v in frozen.items()
    )  # loaded from pretraining
    patches = {k: v.clone() for k, v in model.state_dict().items() if ".patches." in k}
    losses = [trainer._train_epoch(train, epoch) for epoch in range(3)]
    assert losses[-1] < losses[0]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any(not torch.equal(after[k], v) for k, v in patches.items())


def test_trainable_counts_per_mode(pair_root, tmp_path, pretrained):
    k, blocks, bottleneck = (
        SMALL["hidden_size"],
        len(SMALL["dilations"]),
        SMALL["hidden_size"] // 8,
    )
    conv, ln = k * k * 3 + k, 2 * k
    patch = k * bottleneck + bottleneck + bottleneck * k + k
    counts = {}
    for mode in ("peterrec", "fine_all", "fine_cls", "fine_last", "peter_zero"):
        _, model, _, (train, _, _) = _finetune(
            pair_root,
            tmp_path,
            pretrained,
            finetune_mode=mode,
            patch_insertion="serial_c",
        )
        counts[mode] = (_trainable(model), sum(p.numel() for p in model.parameters()))
        labels = train._dataset.item_num
    head = k * labels + labels + k  # linear head + [TCL]
    assert (
        counts["peterrec"][0]
        == counts["peter_zero"][0]
        == blocks * (patch + 2 * ln) + head
    )
    assert counts["fine_cls"][0] == head
    assert counts["fine_last"][0] == 2 * (conv + ln) + head
    assert counts["fine_all"][0] == counts["fine_all"][1]  # no patches in the baselines
    assert counts["peterrec"][1] == counts["fine_all"][1] + blocks * patch


def test_fresh_patches_keep_the_pretrained_user_states(pair_root, tmp_path, pretrained):
    _, patched, _, _ = _finetune(
        pair_root, tmp_path, pretrained, patch_insertion="serial_b"
    )
    _, plain, _, _ = _finetune(
        pair_root, tmp_path, pretrained, finetune_mode="fine_all"
    )
    plain.tcl_embedding.data.copy_(patched.tcl_embedding.data)
    users = torch.arange(1, 33)
    with torch.no_grad():
        reference = plain.user_representation(users)
        assert (
            patched.user_representation(users) - reference
        ).abs().max() < 0.05 * reference.abs().max()


def test_full_ranking_is_the_same_with_many_users_per_batch(
    pair_root, tmp_path, pretrained
):
    """Fine-tuning data is general-type: RecBole fits eval_batch_size // n_labels users in an evaluation batch."""
    results, steps, weights = [], [], None
    for eval_batch_size in (1, 1048576):
        _, model, trainer, (_, valid, _) = _finetune(
            pair_root, tmp_path, pretrained, eval_batch_size=eval_batch_size
        )
        weights = weights or model.state_dict()
        model.load_state_dict(weights)
        steps.append(valid.step)
        results.append(trainer.evaluate(valid, load_best_model=False))
    assert steps[0] == 1 and steps[1] == 1048576 // valid._dataset.item_num > 1
    assert results[0] == results[1]


def test_profile_labels_align_with_users(tmp_path):
    """ml-100k gender: every training row's label is that user's gender in ml-100k.user."""
    import os

    from recbole_transfer.data.folders import recbole_example_data
    from recbole_transfer.data.dataset import read_atomic
    from recbole_transfer.quick_start import build

    config, model, trainer, (train, valid, test) = build(
        "PeterRec",
        "ml-100k",
        config_file_list=[f"{REPO}/properties/task/ml100k_age.yaml"],
        config_dict=dict(
            SMALL, finetune_mode="peter_zero", checkpoint_dir=str(tmp_path / "saved")
        ),
    )
    users = read_atomic(
        os.path.join(recbole_example_data(), "ml-100k", "ml-100k.user"),
        ["user_id", "age"],
    )
    age = dict(zip(users["user_id"], users["age"].astype(int)))
    dataset = train._dataset
    rows = dataset.inter_feat
    n_rows = len(rows) + len(valid._dataset.inter_feat) + len(test._dataset.inter_feat)
    assert n_rows == 943  # one row per user, split 80/10/10
    for user_id, label_id in zip(rows["user_id"].tolist(), rows["item_id"].tolist()):
        years = age[dataset.id2token("user_id", user_id)]
        bracket = dataset.id2token("item_id", label_id)
        low = 0 if bracket.startswith("<") else int(bracket.rstrip("+").split("-")[0])
        high = (
            int(bracket[1:]) - 1
            if bracket.startswith("<")
            else (200 if bracket.endswith("+") else int(bracket.split("-")[1]))
        )
        assert low <= years <= high, (years, bracket)
    # the input sequences are the same users' movie histories
    histories = read_atomic(
        os.path.join(recbole_example_data(), "ml-100k", "ml-100k.inter"), ["user_id"]
    )
    counts = histories["user_id"].value_counts()
    for user_id in rows["user_id"].tolist()[:20]:
        token = dataset.id2token("user_id", user_id)
        assert (model.user_sequences[user_id] > 0).sum() == min(
            counts[token], SMALL["MAX_ITEM_LIST_LENGTH"] - 1
        )


def test_profile_task_trains_and_reports_accuracy(tmp_path):
    from recbole_transfer.quick_start import build

    config, model, trainer, (train, valid, test) = build(
        "PeterRec",
        "ml-100k",
        config_file_list=[f"{REPO}/properties/task/ml100k_gender.yaml"],
        config_dict=dict(
            SMALL, finetune_mode="peter_zero", checkpoint_dir=str(tmp_path / "saved")
        ),
    )
    losses = [trainer._train_epoch(train, epoch) for epoch in range(3)]
    assert losses[-1] < losses[0]
    result = trainer.evaluate(test, load_best_model=False)
    assert set(result) == {
        "accuracy",
        "macro_f1",
        "labelcs_accuracy",
        "labelcs_macro_f1",
    }
    assert 0.6 < result["labelcs_accuracy"] < 0.8  # ml-100k is about 71% male
    assert result["labelcs_macro_f1"] < 0.5  # one class predicted: F1 of the other is 0


def test_finetune_errors(pair_root, tmp_path, pretrained):
    from recbole_transfer.errors import UserInputError

    with pytest.raises(UserInputError) as err:
        _finetune(pair_root, tmp_path, None)
    assert (
        str(err.value)
        == "finetune_mode=peterrec needs pretrained_path (a PeterRec pretraining checkpoint)"
    )
    with pytest.raises(UserInputError) as err:
        _finetune(pair_root, tmp_path, pretrained, causal=False)
    assert (
        str(err.value)
        == f"pretrained_path '{pretrained}' does not fit this model: causal=True there, False here"
    )


def test_accuracy_and_macro_f1():
    from recbole_transfer.trainer.finetune import accuracy_and_macro_f1

    accuracy, macro_f1 = accuracy_and_macro_f1(
        torch.tensor([1, 1, 2, 2]), torch.tensor([1, 2, 2, 2])
    )
    assert accuracy == 0.75
    assert macro_f1 == pytest.approx(
        (2 / 3 + 4 / 5) / 2
    )  # class 1: tp 1, fp 1; class 2: tp 2, fn 1
