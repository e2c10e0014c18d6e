"""UniSRec: augmentation, merged datasets, losses per stage, freezing, checkpoints, resume, DDP, the recipe."""

import os

import pytest
import torch

from conftest import FAST, cut_users, free_port

from recbole_transfer.data.augment import item_drop

PLM_SIZE = 384
SMALL = dict(
    FAST,
    hidden_size=16,
    inner_size=32,
    n_layers=1,
    n_heads=2,
    n_exps=2,
    train_batch_size=64,
    MAX_ITEM_LIST_LENGTH=20,
    pretrained_path=None,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """First users of two pretraining domains (Tools, Electronics) and of the target (Scientific)."""
    root = tmp_path_factory.mktemp("unisrec_data")
    cut_users("Scientific", 200, root)
    cut_users("Tools", 120, root)
    cut_users("Electronics", 120, root)
    return root


def _config(data_root, tmp_path, text_cache, **extra):
    return dict(
        SMALL,
        data_path=str(data_root),
        checkpoint_dir=str(tmp_path / "saved"),
        text_cache_dir=text_cache,
        **extra,
    )


def _build(data_root, tmp_path, text_cache, dataset="Scientific", **extra):
    from recbole_transfer.quick_start import build

    return build(
        "UniSRec",
        dataset,
        config_dict=_config(data_root, tmp_path, text_cache, **extra),
    )


def _pretrain(data_root, tmp_path, text_cache, **extra):
    from recbole_transfer.quick_start import run_recbole_transfer

    extra = dict(dict(train_stage="pretrain", pretrain_epochs=2, save_step=1), **extra)
    return run_recbole_transfer(
        "UniSRec",
        "Tools,Electronics",
        config_dict=_config(data_root, tmp_path, text_cache, **extra),
    )


def _moe_params(hidden, n_exps=SMALL["n_exps"]):
    return n_exps * (PLM_SIZE + PLM_SIZE * hidden) + 2 * PLM_SIZE * n_exps


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- augmentation and buckets -------------------------------------------------------------------------------------
def test_item_drop_keeps_order_and_never_empties():
    torch.manual_seed(0)
    seq = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    length = torch.tensor([4, 1, 6])
    for _ in range(50):
        new_seq, new_len = item_drop(seq, length, 0.5)
        assert ((new_len >= 1) & (new_len <= length)).all()
        for row, n, orig, orig_n in zip(
            new_seq.tolist(), new_len.tolist(), seq.tolist(), length.tolist()
        ):
            kept = row[:n]
            assert all(v == 0 for v in row[n:])
            assert kept == [
                v for v in orig[:orig_n] if v in kept
            ]  # a subsequence, order kept
    assert torch.equal(item_drop(seq, length, 0.0)[0], seq)
    assert torch.equal(
        item_drop(seq, length, 1.0)[0], seq
    )  # would empty every row: kept whole


def test_length_buckets_give_the_padded_batch_outputs(data_root, tmp_path, text_cache):
    _, model, _, (train_data, _, _) = _build(
        data_root, tmp_path, text_cache, train_stage="transductive_ft"
    )
    model.eval()
    batch = next(iter(train_data))
    seq, length = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    assert length.min() < length.max()
    with torch.no_grad():
        table = model.moe_adaptor(model.plm_embedding)
        bucketed = model.forward(seq, length, table)
        padded = model._encode(seq, length, table[seq])
    torch.testing.assert_close(bucketed, padded, rtol=1e-5, atol=1e-5)


# --- datasets ---------------------------------------------------------------------------------------------------
def test_merged_domains_prefix_tokens_and_reuse_each_domain_vectors(
    data_root, tmp_path, text_cache
):
    from recbole_transfer.config import Config
    from recbole_transfer.data.dataset import TextSequentialDataset

    def dataset(name):
        config = Config(
            "UniSRec", name, config_dict=_config(data_root, tmp_path, text_cache)
        )
        return TextSequentialDataset(config)

    tools, electronics, merged = (
        dataset("Tools"),
        dataset("Electronics"),
        dataset("Tools,Electronics"),
    )
    assert merged.item_num == tools.item_num + electronics.item_num - 1
    assert merged.user_num == tools.user_num + electronics.user_num - 1
    assert len(merged.inter_feat) == len(tools.inter_feat) + len(electronics.inter_feat)
    tokens = list(merged.field2id_token["item_id"])
    assert all(t.startswith(("Tools-", "Electronics-")) for t in tokens[1:])
    assert merged.item_domain[0] == 0
    for single, index, domain in ((tools, 1, "Tools"), (electronics, 2, "Electronics")):
        for raw in list(single.field2id_token["item_id"])[1:50]:
            i = tokens.index(f"{domain}-{raw}")
            assert merged.item_domain[i] == index
            assert torch.equal(
                merged.plm_embedding[i],
                single.plm_embedding[single.token2id("item_id", raw)],
            )
    assert torch.equal(merged.plm_embedding[0], torch.zeros(PLM_SIZE))


# --- stages -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["pretrain", "inductive_ft", "transductive_ft"])
def test_loss_and_scores_per_stage(stage, data_root, tmp_path, text_cache):
    dataset = "Tools,Electronics" if stage == "pretrain" else "Scientific"
    _, model, trainer, (train_data, _, _) = _build(
        data_root, tmp_path, text_cache, dataset, train_stage=stage
    )
    batch = next(iter(train_data))
    loss = model.calculate_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        assert scores.shape == (len(batch), model.n_items)
        point = model.predict(batch)  # scores the next item of each row
    assert point.shape == (len(batch),)
    torch.testing.assert_close(
        point, scores[torch.arange(len(batch)), batch["item_id"]], rtol=1e-5, atol=1e-5
    )
    assert (type(trainer).__name__ == "PretrainTrainer") == (stage == "pretrain")
    assert (model.item_embedding is not None) == (stage == "transductive_ft")
    if stage == "pretrain":
        assert model.plm_embedding_aug.shape == model.plm_embedding.shape
        assert not torch.equal(
            model.plm_embedding_aug, model.plm_embedding
        )  # the word-dropped texts


def test_contrastive_pretraining_loss_falls(data_root, tmp_path, text_cache):
    _, model, _, (train_data, _, _) = _build(
        data_root,
        tmp_path,
        text_cache,
        "Tools,Electronics",
        train_stage="pretrain",
        hidden_dropout_prob=0.0,
        attn_dropout_prob=0.0,
    )
    batch = next(iter(train_data))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.fixture(scope="module")
def pretrained(data_root, tmp_path_factory, text_cache):
    tmp = tmp_path_factory.mktemp("pretrain")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["run_recbole_transfer.py"])
        patch.chdir(tmp)
        return _pretrain(data_root, tmp, text_cache)


def test_pretrain_stage_saves_snapshots_without_evaluation(pretrained):
    assert pretrained["test_result"] is None and pretrained["best_valid_result"] is None
    assert pretrained["checkpoint"].endswith("UniSRec-Tools,Electronics-pretrain-2.pth")
    folder = os.path.dirname(pretrained["checkpoint"])
    assert os.path.isfile(
        os.path.join(folder, "UniSRec-Tools,Electronics-pretrain-1.pth")
    )
    state = torch.load(pretrained["checkpoint"], weights_only=True)["state_dict"]
    assert not any(
        k.startswith("plm_embedding") for k in state
    )  # text tables are rebuilt, not stored


@pytest.mark.parametrize("stage", ["inductive_ft", "transductive_ft"])
def test_finetune_from_pretrained_trains_only_the_adaptor(
    stage, pretrained, data_root, tmp_path, text_cache
):
    _, model, trainer, (train_data, _, _) = _build(
        data_root,
        tmp_path,
        text_cache,
        train_stage=stage,
        pretrained_path=pretrained["checkpoint"],
    )
    saved = torch.load(pretrained["checkpoint"], weights_only=True)["state_dict"]
    for name, value in model.transferable_state_dict().items():
        assert torch.equal(
            value, saved[name]
        ), name  # everything transferable was loaded
    hidden = SMALL["hidden_size"]
    expected = _moe_params(hidden) + (
        model.n_items * hidden if stage == "transductive_ft" else 0
    )
    assert _trainable(model) == expected
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer._train_epoch(train_data, 0)
    after = model.state_dict()
    for name in before:
        frozen = name.split(".")[0] in model.ENCODER
        assert torch.equal(before[name], after[name]) == frozen, name


def test_from_scratch_trains_everything(data_root, tmp_path, text_cache):
    _, model, _, _ = _build(data_root, tmp_path, text_cache, train_stage="inductive_ft")
    assert _trainable(model) == sum(p.numel() for p in model.parameters())
    assert model.pretrained_path is None


def test_mismatched_checkpoints_give_clear_errors(
    pretrained, data_root, tmp_path, text_cache
):
    from recbole_transfer.model.unisrec import PretrainedCheckpointError
    from recbole_transfer.quick_start import run_recbole_transfer

    with pytest.raises(
        PretrainedCheckpointError,
        match=r"does not fit this model: hidden_size=16 there, 32 here",
    ):
        _build(
            data_root,
            tmp_path,
            text_cache,
            pretrained_path=pretrained["checkpoint"],
            hidden_size=32,
        )
    sasrec = run_recbole_transfer(
        "SASRec",
        "Scientific",
        config_dict=dict(
            FAST,
            epochs=1,
            data_path=str(data_root),
            checkpoint_dir=str(tmp_path / "saved"),
        ),
    )
    with pytest.raises(
        PretrainedCheckpointError, match=r"holds a SASRec checkpoint, not UniSRec"
    ):
        _build(data_root, tmp_path, text_cache, pretrained_path=sasrec["checkpoint"])
    with pytest.raises(
        PretrainedCheckpointError, match=r"^pretrained_path 'nowhere.pth' not found$"
    ):
        _build(data_root, tmp_path, text_cache, pretrained_path="nowhere.pth")


def test_bad_stage_and_missing_checkpoint_are_one_line_cli_errors(
    data_root, tmp_path, text_cache, capsys
):
    import run_recbole_transfer

    args = [
        f"--{k}={v}"
        for k, v in _config(data_root, tmp_path, text_cache).items()
        if k != "pretrained_path"
    ]

    def error_lines():  # (the text encoder may draw its loading bar before the error)
        return [
            line
            for line in capsys.readouterr().err.splitlines()
            if "error" in line.lower()
        ]

    assert (
        run_recbole_transfer.main(
            ["--model=UniSRec", "--dataset=Scientific", "--train_stage=finetune"] + args
        )
        == 2
    )
    assert error_lines() == [
        "error: train_stage must be one of pretrain, inductive_ft, transductive_ft; got 'finetune'"
    ]
    assert (
        run_recbole_transfer.main(
            ["--model=UniSRec", "--dataset=Scientific", "--pretrained_path=x.pth"]
            + args
        )
        == 2
    )
    assert error_lines() == ["error: pretrained_path 'x.pth' not found"]


def test_resume_continues_with_the_identical_next_epoch(
    data_root, tmp_path, text_cache
):
    from recbole_transfer.quick_start import build

    def trainer_for(epochs, folder):
        config_dict = _config(
            data_root,
            tmp_path / folder,
            text_cache,
            train_stage="pretrain",
            pretrain_epochs=epochs,
            save_step=1,
        )
        _, _, trainer, (train_data, _, _) = build(
            "UniSRec", "Tools,Electronics", config_dict=config_dict
        )
        return trainer, train_data

    straight, train_data = trainer_for(2, "straight")
    straight.fit(train_data, None)
    first, train_data = trainer_for(1, "first")
    first.fit(train_data, None)
    resumed, train_data = trainer_for(2, "resumed")
    resumed.resume_checkpoint(first.saved_model_file)
    resumed.fit(train_data, None)
    assert resumed.train_loss_dict[1] == straight.train_loss_dict[1]
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


# --- the recipe and DDP -----------------------------------------------------------------------------------------
def test_recipe_pretrains_then_finetunes_from_the_snapshot(
    data_root, tmp_path, text_cache
):
    from recbole_transfer.recipe import run_recipe

    done = run_recipe(
        "unisrec",
        "Scientific",
        config_dict=_config(
            data_root,
            tmp_path,
            text_cache,
            pretrain_epochs=1,
            epochs=1,
            train_stage="inductive_ft",
            source_datasets="Tools,Electronics",
        ),
    )
    (pretrain,) = done["stages"]
    assert pretrain["datasets"] == ["Tools", "Electronics"]
    assert pretrain["settings"]["train_stage"] == "pretrain"
    assert set(done["result"]["test_result"]) == {
        "recall@10",
        "recall@50",
        "ndcg@10",
        "ndcg@50",
    }
    saved = torch.load(pretrain["output"], weights_only=True)["config"]
    assert saved["train_stage"] == "pretrain" and saved["pretrain_epochs"] == 1
    fine_config = torch.load(done["result"]["checkpoint"], weights_only=True)["config"]
    assert fine_config["pretrained_path"] == pretrain["output"]
    assert fine_config["train_stage"] == "inductive_ft"


def _ddp_pretrain_worker(rank, config_dict, out_dir):
    from recbole_transfer.quick_start import build

    config_dict = dict(config_dict, local_rank=rank)
    _, model, trainer, (train_data, _, _) = build(
        "UniSRec", "Tools,Electronics", config_dict=config_dict
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(train_data, None, saved=False)
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    torch.save(
        {"state": model.state_dict(), "changed": changed},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    torch.distributed.destroy_process_group()


def test_two_process_gloo_pretraining_keeps_ranks_identical(
    data_root, tmp_path, text_cache
):
    import torch.multiprocessing as mp

    config_dict = _config(
        data_root,
        tmp_path,
        text_cache,
        train_stage="pretrain",
        pretrain_epochs=1,
        world_size=2,
        nproc=2,
        ip="localhost",
        port=free_port(),
        offset=0,
    )
    mp.spawn(
        _ddp_pretrain_worker, args=(config_dict, str(tmp_path)), nprocs=2, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["changed"] and ranks[1]["changed"]
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for name in ranks[0]["state"]:
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name


def _build_with_yaml_defaults(data_root, tmp_path, text_cache, dataset):
    """UniSRec with the yaml's own architecture and pretrained_path (not SMALL's)."""
    from recbole_transfer.quick_start import build

    _, model, _, _ = build(
        "UniSRec",
        dataset,
        config_dict=dict(
            data_path=str(data_root),
            checkpoint_dir=str(tmp_path / "saved"),
            text_cache_dir=text_cache,
            show_progress=False,
            log_flops=False,
            state="WARNING",
        ),
    )
    return model


def test_shipped_checkpoint_never_saw_the_target(data_root, tmp_path, text_cache):
    """``shipped`` picks, per target, a shipped checkpoint pretrained without it: Scientific gets the default, Toys
    and Tools each the one pretrained on the other four text domains; a target every checkpoint saw gets the
    default. Each shipped file is a loadable UniSRec checkpoint whose recorded datasets match its name.
    """
    from recbole_transfer.config import PRETRAINED_DIR
    from recbole_transfer.model.unisrec import (
        SHIPPED_CHECKPOINT,
        SHIPPED_CHECKPOINTS,
        shipped_checkpoint,
    )
    from recbole_transfer.utils import load_checkpoint

    assert shipped_checkpoint(["Scientific"]) == SHIPPED_CHECKPOINT
    assert (
        shipped_checkpoint(["Toys"])
        == "UniSRec-Electronics,Scientific,Sports,Tools.pth"
    )
    assert (
        shipped_checkpoint(["Tools"])
        == "UniSRec-Electronics,Scientific,Sports,Toys.pth"
    )
    assert shipped_checkpoint(["Electronics"]) == SHIPPED_CHECKPOINT
    assert shipped_checkpoint(["Toys", "Tools"]) == SHIPPED_CHECKPOINT
    for name in SHIPPED_CHECKPOINTS:
        checkpoint = load_checkpoint(os.path.join(PRETRAINED_DIR, name))
        assert checkpoint["config"]["dataset"] == name[len("UniSRec-") : -len(".pth")]
        assert checkpoint["config"]["plm_name"] == "all-MiniLM-L6-v2"
    model = _build_with_yaml_defaults(data_root, tmp_path, text_cache, "Tools")
    assert os.path.basename(model.pretrained_path) == shipped_checkpoint(["Tools"])
    saved = load_checkpoint(model.pretrained_path)["state_dict"]
    loaded = model.state_dict()
    assert all(
        torch.equal(loaded[k], saved[k]) for k in saved if k.startswith("trm_encoder")
    )


def test_shipped_checkpoint_is_the_default_for_finetuning(
    data_root, tmp_path, text_cache
):
    from recbole_transfer.model.unisrec import (
        SHIPPED_CHECKPOINT,
        resolve_pretrained_path,
    )

    assert resolve_pretrained_path("shipped", "pretrain") is None
    model = _build_with_yaml_defaults(data_root, tmp_path, text_cache, "Scientific")
    assert model.pretrained_path.endswith(SHIPPED_CHECKPOINT)
    assert model.train_stage == "transductive_ft"
    assert _trainable(model) == _moe_params(300, n_exps=8) + model.n_items * 300
    assert os.path.getsize(model.pretrained_path) < 16 * 2**20  # small enough to ship
