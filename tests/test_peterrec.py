"""PeterRec: dilated residual blocks (causal / non-causal), model patches, pretraining."""

import pytest
import torch
import torch.nn.functional as F

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


@pytest.mark.parametrize("insertion", ["parallel_d", "parallel_e"])
def test_parallel_shortcut_is_eq_9_and_11(insertion):
    """parallel_shortcut=True: each parallel patch is MP(x) = x + up(relu(down(x))) (Eq. 9), placed as Eq. 11 (d)
    and (e) write it; False: the same weights add up(relu(down(x))) alone."""
    torch.manual_seed(0)
    block = ResidualBlock(
        32, 3, 2, causal=True, insertion=insertion, parallel_shortcut=True
    )
    x = torch.randn(4, 20, 32)
    with torch.no_grad():
        for patch in block.patches:
            patch.up.weight.normal_(std=0.5)
        branch = [lambda e, p=p: p.up(F.relu(p.down(e))) for p in block.patches]
        for shortcut in (True, False):
            block.parallel_shortcut = shortcut
            mp1, mp2 = (lambda e, b=b: e * shortcut + b(e) for b in branch)
            if insertion == "parallel_d":
                e = F.relu(block.ln1(mp1(x) + block.conv1(x)))
                f = F.relu(block.ln2(mp2(e) + block.conv2(e)))
            else:
                e = mp1(x) + F.relu(block.ln1(block.conv1(x)))
                f = mp2(e) + F.relu(block.ln2(block.conv2(e)))
            assert torch.allclose(block(x), x + f, atol=1e-6)


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


def _finetune(pair_root, tmp_path, pretrained, files=(), **extra):
    from recbole_transfer.quick_start import build

    return build(
        "PeterRec",
        "ABE_Electronics",
        config_file_list=[f"{REPO}/{TASK}", *(f"{REPO}/{f}" for f in files)],
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


def _source_rows(pair_root):
    """{user token: [(source item token, time), ...] oldest first} from the raw Beauty file."""
    from recbole_transfer.data.dataset import read_atomic

    frame = read_atomic(
        pair_root / "ABE_Beauty" / "ABE_Beauty.inter",
        ["user_id", "item_id", "timestamp"],
    )
    frame = frame.assign(time=frame.timestamp.astype(float)).sort_values(
        ["user_id", "time"], kind="stable"
    )
    return {
        user: list(zip(rows.item_id, rows.time))
        for user, rows in frame.groupby("user_id")
    }


def _inputs_and_times(model, loaders):
    """(user token, target time, input row) for every training row and every ranked user (whose time is that of
    the user's earliest row in the split), through the loaders as the trainer reads them.
    """
    train, *evaluations = loaders
    dataset = train._dataset
    token = dataset.field2id_token["user_id"]
    out = []
    with torch.no_grad():
        for batch in train:
            inputs = model.input_sequences(batch)
            out += zip(
                token[batch["user_id"].numpy()], batch["timestamp"].tolist(), inputs
            )
        for loader in evaluations:
            rows = loader._dataset.inter_feat
            first = {}
            for user, time in zip(rows["user_id"].tolist(), rows["timestamp"].tolist()):
                first[user] = min(time, first.get(user, time))
            for batch in loader:
                users = batch[0]["user_id"]
                inputs = model.input_sequences(batch[0])
                out += zip(
                    token[users.numpy()], [first[u] for u in users.tolist()], inputs
                )
    return out


@pytest.mark.parametrize("source_history", ["before_target", "whole"])
def test_source_items_after_the_target_never_reach_the_input(
    pair_root, tmp_path, pretrained, source_history
):
    """Every training row, and every validation / test user in full ranking, reads exactly the newest of the
    user's Beauty items before its Electronics time (before_target) or the newest of all of them (whole). On the
    shipped rows some test users bought in Beauty after their test item: that item is absent / present. Both
    protocols come from task files alone (whole: the shipped overlay)."""
    overlay = ["properties/task/whole_source_history.yaml"]
    _, model, _, loaders = _finetune(
        pair_root,
        tmp_path,
        pretrained,
        files=overlay if source_history == "whole" else (),
    )
    assert model.config["source_history"] == source_history
    vocabulary = {t: i for i, t in enumerate(model.source_item_tokens)}
    history = _source_rows(pair_root)
    width = SMALL["MAX_ITEM_LIST_LENGTH"]
    rows = _inputs_and_times(model, loaders)
    assert len(rows) == sum(len(part._dataset.inter_feat) for part in loaders)
    later = 0  # rows (and ranked users) whose newest Beauty item comes at or after their target time
    for user, time, got in rows:
        items = [
            vocabulary[item]
            for item, t in history[user]
            if source_history == "whole" or t < time
        ][-(width - 1) :]
        expected = torch.zeros(width, dtype=torch.long)
        expected[width - 1 - len(items) : width - 1] = torch.tensor(
            items, dtype=torch.long
        )
        assert torch.equal(got, expected), (user, time)
        newest, newest_time = history[user][-1]
        if newest_time >= time and all(
            i != newest for i, t in history[user] if t < time
        ):
            later += 1
            present = bool((got == vocabulary[newest]).any())
            assert present == (source_history == "whole"), (user, newest)
    assert later > 100  # the shipped rows hold the case


def test_rows_without_prior_source_items_are_counted(pair_root, tmp_path, pretrained):
    """before_target keeps rows with no Beauty item before them (their input is empty) and counts them per split;
    whole has none on the shipped pair (every user is in both domains)."""
    _, model, _, (train, valid, test) = _finetune(pair_root, tmp_path, pretrained)
    counts = train._dataset.no_history
    lengths = train._dataset.inter_feat["source_length"]
    assert counts["train"] == (int((lengths == 0).sum()), len(lengths))
    assert counts["train"][0] > 0 and counts["test"][0] > 0
    assert counts["test"][1] == len(test._dataset.inter_feat)  # one test row per user
    empty = train._dataset.inter_feat[lengths == 0][:8]
    with torch.no_grad():
        assert not model.input_sequences(empty).any()
    _, _, _, (train, _, _) = _finetune(
        pair_root, tmp_path, pretrained, source_history="whole"
    )
    assert [n for n, _ in train._dataset.no_history.values()] == [0, 0, 0]


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


MODES = (
    "peterrec",
    "fine_all",
    "fine_zero",
    "fine_cls",
    "fine_last",
    "fine_last1",
    "fine_last2",
    "peter_zero",
)


def test_trainable_counts_per_mode(pair_root, tmp_path, pretrained):
    k, blocks, bottleneck = (
        SMALL["hidden_size"],
        len(SMALL["dilations"]),
        SMALL["hidden_size"] // 8,
    )
    conv, ln = k * k * 3 + k, 2 * k
    patch = k * bottleneck + bottleneck + bottleneck * k + k
    counts = {}
    runs = {mode: dict(finetune_mode=mode) for mode in MODES}
    runs["sum"] = dict(finetune_mode="peterrec", user_state="sum")
    for shortcut in (False, True):
        runs[f"parallel_d {shortcut}"] = dict(
            patch_insertion="parallel_d", parallel_shortcut=shortcut
        )
    for name, settings in runs.items():
        _, model, _, (train, _, _) = _finetune(
            pair_root,
            tmp_path,
            pretrained,
            **{"patch_insertion": "serial_c", **settings},
        )
        counts[name] = (_trainable(model), sum(p.numel() for p in model.parameters()))
        labels = train._dataset.item_num
        if name == "sum":  # Eq. 7: no [TCL], the head reads the sum of the states
            assert model.tcl_embedding is None
            assert torch.isfinite(model.calculate_loss(next(iter(train))))
    head = k * labels + labels + k  # linear head + [TCL]
    assert (
        counts["peterrec"][0]
        == counts["peter_zero"][0]
        == blocks * (patch + 2 * ln) + head
    )
    assert counts["sum"][0] == counts["peterrec"][0] - k
    assert counts["fine_cls"][0] == head
    assert counts["fine_last1"][0] == conv + ln + head
    assert counts["fine_last"][0] == counts["fine_last2"][0] == 2 * (conv + ln) + head
    assert counts["fine_all"][0] == counts["fine_all"][1]  # no patches in the baselines
    assert counts["fine_zero"] == counts["fine_all"]
    assert counts["peterrec"][1] == counts["fine_all"][1] + blocks * patch
    assert (
        counts["parallel_d False"]
        == counts["parallel_d True"]
        == (
            blocks * (2 * patch + 2 * ln) + head,
            counts["fine_all"][1] + 2 * blocks * patch,
        )
    )


def _declared_trainable(mode, names):
    """What each finetune_mode names as trained (PeterRec.yaml), for SMALL's two blocks and serial_c patches."""
    head = {"output.weight", "output.bias", "tcl_embedding"}

    def layer(block, j):
        return {
            f"blocks.{block}.conv{j}.conv.weight",
            f"blocks.{block}.conv{j}.conv.bias",
            f"blocks.{block}.ln{j}.weight",
            f"blocks.{block}.ln{j}.bias",
        }

    patches_and_norms = {
        f"blocks.{b}.{part}.{w}"
        for b in (0, 1)
        for part in ("patches.0.down", "patches.0.up", "ln1", "ln2")
        for w in ("weight", "bias")
    }
    return {
        "peterrec": head | patches_and_norms,
        "peter_zero": head | patches_and_norms,
        "fine_all": set(names),
        "fine_zero": set(names),
        "fine_cls": head,
        "fine_last1": head | layer(1, 2),
        "fine_last2": head | layer(1, 1) | layer(1, 2),
        "fine_last": head | layer(1, 1) | layer(1, 2),
    }[mode]


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_trains_exactly_the_parameters_it_names(
    pair_root, tmp_path, pretrained, mode
):
    """requires_grad, and what one optimiser step changes, are the mode's declared set, nothing more or less."""
    _, model, trainer, (train, _, _) = _finetune(
        pair_root, tmp_path, pretrained, finetune_mode=mode, patch_insertion="serial_c"
    )
    names = [name for name, _ in model.named_parameters()]
    declared = _declared_trainable(mode, names)
    assert declared <= set(names)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == declared
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    trainer.optimizer.zero_grad()
    model.calculate_loss(next(iter(train))).backward()
    trainer.optimizer.step()
    changed = {
        n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])
    }
    assert changed == declared


def test_item_loss_is_bpr_on_the_full_head_scores(pair_root, tmp_path, pretrained):
    """The loss reads only the label's and the negative's head rows: the same value and gradient as BPR over
    ``self.output(user)``, the full score matrix, with the same negatives."""
    import torch.nn.functional as F

    _, model, _, (train, _, _) = _finetune(pair_root, tmp_path, pretrained)
    model.eval()  # no dropout: both passes see the same states
    batch = next(iter(train))
    torch.manual_seed(7)
    loss = model.calculate_loss(batch)
    grads = torch.autograd.grad(loss, [model.output.weight, model.output.bias])
    torch.manual_seed(7)
    label = batch[model.ITEM_ID]
    scores = model.output(model.user_representation(model.input_sequences(batch)))
    negative = torch.randint(1, model.n_items - 1, label.shape)
    negative = negative + (negative >= label).long()
    rows = torch.arange(len(label))
    reference = -F.logsigmoid(scores[rows, label] - scores[rows, negative]).mean()
    expected = torch.autograd.grad(reference, [model.output.weight, model.output.bias])
    assert torch.allclose(loss, reference, atol=1e-6)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-6)
    assert (grads[0].abs().sum(1) > 0).sum() <= 2 * len(label)


def test_fresh_patches_keep_the_pretrained_user_states(pair_root, tmp_path, pretrained):
    _, patched, _, _ = _finetune(
        pair_root, tmp_path, pretrained, patch_insertion="serial_b"
    )
    _, plain, _, _ = _finetune(
        pair_root, tmp_path, pretrained, finetune_mode="fine_all"
    )
    plain.tcl_embedding.data.copy_(patched.tcl_embedding.data)
    seq = plain.source_sequences(torch.arange(1, 33))
    with torch.no_grad():
        reference = plain.user_representation(seq)
        assert (
            patched.user_representation(seq) - reference
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
        assert (model.source_sequences(torch.tensor([user_id])) > 0).sum() == min(
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
        _finetune(pair_root, tmp_path, pretrained, source_history="future")
    assert str(err.value) == (
        "source_history must be one of before_target, whole; got 'future'"
    )
    with pytest.raises(UserInputError) as err:
        _finetune(pair_root, tmp_path, pretrained, user_state="mean")
    assert str(err.value) == "user_state must be one of tcl, sum; got 'mean'"
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
