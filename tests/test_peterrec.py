"""PeterRec: dilated residual blocks (causal / non-causal), model patches, pretraining."""
import pytest
import torch

from conftest import FAST, cut_users

from recbole_transfer.model.layers import ModelPatch
from recbole_transfer.model.peterrec import INSERTIONS, ResidualBlock, right_align

SMALL = dict(FAST, hidden_size=32, dilations=[1, 4], train_batch_size=128, MAX_ITEM_LIST_LENGTH=20)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("peterrec_data")
    cut_users("ABE_Beauty", 300, root)
    return root


def _build(data_root, tmp_path, **extra):
    from recbole_transfer.quick_start import build

    return build("PeterRec", "ABE_Beauty", config_dict=dict(SMALL, data_path=str(data_root),
                                                             checkpoint_dir=str(tmp_path / "saved"), **extra))


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
        for patch in patched.patches:  # a patch that has learned something does change the block
            patch.up.weight.normal_(std=0.5)
        assert (patched(x) - reference).abs().max() > 0.1
    assert sum(p.numel() for p in patched.patches.parameters()) == len(patched.patches) * (32 * 4 + 4 + 4 * 32 + 32)


def test_model_patch_bottleneck():
    patch = ModelPatch(64, ratio=8)
    assert patch.down.out_features == 8 and patch.up.in_features == 8


@pytest.mark.parametrize("causal", [True, False])
def test_pretraining_loss_falls_and_ranks(data_root, tmp_path, causal):
    from recbole_transfer.quick_start import run_recbole_transfer

    config, model, trainer, (train, valid, test) = _build(data_root, tmp_path, causal=causal)
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
    assert str(err.value) == ("patch_insertion must be one of none, serial_b, serial_c, parallel_d, parallel_e; "
                              "got 'serial_x'")
