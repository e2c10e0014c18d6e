"""Behavior tuning of the text encoder and PLM-initialized SASRec / BERT4Rec."""

import json
import os
import sys

import pytest
import torch

from conftest import FAST, cut_users

PLM_SIZE = 384
# small, fast behavior tuning: LoRA on the top layer only (backprop stops there), short texts
TUNE = dict(
    FAST,
    plm_tuning="lora",
    lora_layers=[5],
    learning_rate=0.001,
    bt_seq_max_length=32,
    bt_item_max_length=16,
    train_batch_size=16,
    epochs=1,
    max_train_examples=32,
)
INIT = dict(
    FAST,
    hidden_size=None,
    inner_size=32,
    n_layers=1,
    n_heads=2,
    MAX_ITEM_LIST_LENGTH=20,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("plm_init_data")
    cut_users("Scientific", 200, root)
    return root


@pytest.fixture(scope="module")
def tuned(data_root, text_cache, tmp_path_factory):
    """A LoRA encoder behavior-tuned on the fixture's training split (an FT encoder for Scientific)."""
    from recbole_transfer.quick_start import run_recbole_transfer

    saved = tmp_path_factory.mktemp("tuned")
    with (
        pytest.MonkeyPatch.context() as patch
    ):  # module scope: clean_argv has not run yet
        patch.setattr(sys, "argv", ["run_recbole_transfer.py"])
        patch.chdir(saved)
        result = run_recbole_transfer(
            "BehaviorTuning",
            "Scientific",
            config_dict=dict(
                TUNE,
                data_path=str(data_root),
                checkpoint_dir=str(saved),
                text_cache_dir=text_cache,
            ),
        )
    return result["checkpoint"]


def _init_config(data_root, tmp_path, text_cache, **extra):
    return dict(
        INIT,
        data_path=str(data_root),
        checkpoint_dir=str(tmp_path / "saved"),
        text_cache_dir=text_cache,
        **extra,
    )


def _build(model, data_root, tmp_path, text_cache, **extra):
    from recbole_transfer.quick_start import build

    return build(
        model,
        "Scientific",
        config_dict=_init_config(data_root, tmp_path, text_cache, **extra),
    )


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- behavior tuning ----------------------------------------------------------------------------------------------
def test_behavior_tuning_loss_falls(data_root, text_cache, tmp_path):
    from recbole_transfer.quick_start import build

    config, model, trainer, (train, _, _) = build(
        "BehaviorTuning",
        "Scientific",
        config_dict=dict(
            TUNE,
            plm_tuning="full",
            learning_rate=5e-5,
            data_path=str(data_root),
            text_cache_dir=text_cache,
        ),
    )
    batch = next(iter(train))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=5e-5
    )
    losses = []
    for _ in range(4):
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_behavior_tuning_reads_only_training_prefixes(data_root, text_cache, tmp_path):
    """Every example the loss sees is a prefix of the user's history that ends before the validation item."""
    from recbole_transfer.quick_start import build

    config, model, trainer, (train, valid, test) = build(
        "BehaviorTuning",
        "Scientific",
        config_dict=dict(
            TUNE,
            prefixes_per_user=0,
            max_train_examples=0,
            data_path=str(data_root),
            text_cache_dir=text_cache,
            checkpoint_dir=str(tmp_path / "saved"),
        ),
    )
    # each user's whole sequence from its test row (history + test item); None where the window cut the history
    test_feat = test._dataset.inter_feat
    histories = {}
    for user, seq, n, item in zip(
        test_feat[model.USER_ID].tolist(),
        test_feat[model.ITEM_SEQ].tolist(),
        test_feat[model.ITEM_SEQ_LEN].tolist(),
        test_feat[model.POS_ITEM_ID].tolist(),
    ):
        histories[user] = (
            seq[:n] + [item] if n < config["MAX_ITEM_LIST_LENGTH"] else None
        )
    seen = []

    def spy(interaction):
        seen.extend(
            zip(
                interaction[model.USER_ID].tolist(),
                interaction[model.ITEM_SEQ].tolist(),
                interaction[model.ITEM_SEQ_LEN].tolist(),
                interaction[model.POS_ITEM_ID].tolist(),
            )
        )
        return (
            next(p for p in model.parameters() if p.requires_grad).sum() * 0
        )  # the data is what is tested

    model.calculate_loss = spy
    trainer.fit(train, None, saved=True, show_progress=False)
    assert len(seen) == len(train._dataset) > 0
    checked = 0
    for user, seq, n, item in seen:
        full = histories[user]
        if full is None:
            continue
        assert n <= len(full) - 3, (
            user,
            n,
            len(full),
        )  # the last two items are validation and test
        assert seq[:n] == full[:n] and item == full[n]
        checked += 1
    assert checked > 0.9 * len(seen)


def test_tuned_encoder_folder(tuned):
    with open(os.path.join(tuned, "behavior_tuning.json"), encoding="utf-8") as f:
        info = json.load(f)
    assert (
        info["datasets"] == ["Scientific"]
        and info["plm_tuning"] == "lora"
        and info["epochs"] == 1
    )
    assert (
        info["train_examples_per_epoch"] == 32
        and info["item_max_length"] == TUNE["bt_item_max_length"] + 2
    )
    assert os.path.isfile(os.path.join(tuned, "adapter_config.json"))
    assert not [f for f in os.listdir(os.path.dirname(tuned)) if f.startswith(".tmp-")]


# --- PLM-initialized models ---------------------------------------------------------------------------------------
def test_item_rows_equal_encoder_vectors(data_root, text_cache, tmp_path, tuned):
    """Row of item token t = the tuned encoder's vector of t's text (alignment through field2id_token)."""
    from recbole_transfer import plm
    from recbole_transfer.data import text

    for name in ("PLMInitSASRec", "PLMInitBERT4Rec"):
        config, model, _, (train, _, _) = _build(
            name,
            data_root,
            tmp_path,
            text_cache,
            init_type="finetune",
            init_plm_path=tuned,
        )
        dataset = train._dataset
        assert model.hidden_size == PLM_SIZE
        texts = text.read_item_text(
            os.path.join(data_root, "Scientific", "Scientific.text")
        )
        tokens = dataset.field2id_token["item_id"]
        picks = [1, 7, len(tokens) // 2, len(tokens) - 1]
        tokenizer, encoder = plm.load_plm(tuned)
        # encoded as the tuning saw items: bt_item_max_length tokens + [CLS] and [SEP]
        expected = plm.encode_texts(
            [texts[tokens[i]] for i in picks],
            tokenizer,
            encoder,
            show_progress=False,
            max_length=TUNE["bt_item_max_length"] + 2,
        )
        assert torch.allclose(
            model.item_embedding.weight[picks].detach(), expected, atol=1e-4
        )
        vanilla_tokenizer, vanilla = plm.load_plm(config["plm_name"])
        plain = plm.encode_texts(
            [texts[tokens[i]] for i in picks],
            vanilla_tokenizer,
            vanilla,
            show_progress=False,
        )
        assert not torch.allclose(
            plain, expected, atol=1e-3
        )  # the tuned encoder really is another encoder


def test_freeze_keeps_rows_bit_identical_and_counts(
    data_root, text_cache, tmp_path, tuned
):
    for name in ("PLMInitSASRec", "PLMInitBERT4Rec"):
        config, model, trainer, (train, valid, _) = _build(
            name,
            data_root,
            tmp_path,
            text_cache,
            init_type="finetune",
            init_plm_path=tuned,
        )
        table = model.item_embedding.weight.detach().clone()
        others = {
            k: v.clone()
            for k, v in model.state_dict().items()
            if not k.startswith("item_embedding")
        }
        total = sum(p.numel() for p in model.parameters())
        assert _trainable(model) == total - table.numel()
        trainer.fit(train, valid, saved=False, show_progress=False)
        assert torch.equal(model.item_embedding.weight, table)
        assert any(not torch.equal(v, model.state_dict()[k]) for k, v in others.items())


def test_trainable_mode_trains_the_table(data_root, text_cache, tmp_path):
    config, model, trainer, (train, valid, _) = _build(
        "PLMInitSASRec",
        data_root,
        tmp_path,
        text_cache,
        init_type="plm",
        embedding_mode="trainable",
    )
    table = model.item_embedding.weight.detach().clone()
    assert _trainable(model) == sum(p.numel() for p in model.parameters())
    trainer.fit(train, valid, saved=False, show_progress=False)
    assert not torch.equal(model.item_embedding.weight, table)


def test_saved_model_is_stock_sasrec(data_root, text_cache, tmp_path, tuned):
    """No encoder weights in the checkpoint: stock SASRec loads it and ranks identically."""
    from recbole_transfer.quick_start import run_recbole_transfer

    result = run_recbole_transfer(
        "PLMInitSASRec",
        "Scientific",
        config_dict=_init_config(
            data_root,
            tmp_path,
            text_cache,
            init_type="finetune",
            init_plm_path=tuned,
            epochs=1,
        ),
    )
    state = torch.load(result["checkpoint"], weights_only=True)["state_dict"]
    config, model, _, (_, _, test) = _build(
        "PLMInitSASRec", data_root, tmp_path, text_cache, init_type="none"
    )
    stock_config, stock, _, _ = _build(
        "SASRec", data_root, tmp_path, text_cache, hidden_size=PLM_SIZE
    )
    assert {k: v.shape for k, v in state.items()} == {
        k: v.shape for k, v in stock.state_dict().items()
    }
    model.load_state_dict(state)
    stock.load_state_dict(state)
    model.eval(), stock.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        scores = stock.full_sort_predict(batch)
        assert scores.shape == (len(batch), test._dataset.item_num)
        assert torch.equal(scores, model.full_sort_predict(batch))


def test_further_emb_trains_only_the_table(data_root, text_cache, tmp_path, tuned):
    from recbole_transfer.quick_start import run_recbole_transfer

    frozen = run_recbole_transfer(
        "PLMInitSASRec",
        "Scientific",
        config_dict=_init_config(
            data_root,
            tmp_path,
            text_cache,
            init_type="finetune",
            init_plm_path=tuned,
            epochs=1,
        ),
    )
    config, model, trainer, (train, valid, _) = _build(
        "PLMInitSASRec",
        data_root,
        tmp_path,
        text_cache,
        embedding_mode="further_emb",
        pretrained_path=frozen["checkpoint"],
    )
    saved = torch.load(frozen["checkpoint"], weights_only=True)["state_dict"]
    assert all(
        torch.equal(v, saved[k]) for k, v in model.state_dict().items()
    )  # starts from the checkpoint
    assert _trainable(model) == model.item_embedding.weight.numel()
    trainer.fit(train, valid, saved=False, show_progress=False)
    after = model.state_dict()
    assert not torch.equal(
        after["item_embedding.weight"], saved["item_embedding.weight"]
    )
    assert all(
        torch.equal(after[k], v)
        for k, v in saved.items()
        if not k.startswith("item_embedding")
    )

    _, model, _, _ = _build(
        "PLMInitSASRec",
        data_root,
        tmp_path,
        text_cache,
        embedding_mode="further_all",
        pretrained_path=frozen["checkpoint"],
    )
    assert _trainable(model) == sum(p.numel() for p in model.parameters())


def test_pca_projection(data_root, text_cache, tmp_path):
    config, model, _, (train, _, _) = _build(
        "PLMInitSASRec",
        data_root,
        tmp_path,
        text_cache,
        init_type="plm",
        hidden_size=16,
        plm_projection="pca",
    )
    rows = model.item_embedding.weight[1:].detach()
    assert rows.shape[1] == 16
    assert torch.allclose(
        rows.mean(0), torch.zeros(16), atol=1e-4
    )  # centered principal coordinates
    variances = rows.var(0)
    assert (variances[:-1] >= variances[1:] - 1e-5).all()  # leading directions first


def test_errors(data_root, text_cache, tmp_path, tuned):
    from recbole_transfer.model.plm_init import PLMInitError

    cases = [
        (
            dict(init_type="pretrain", init_plm_path=tuned),
            f"init_type=pretrain: {tuned} was tuned on Scientific, the target itself (that is init_type=finetune)",
        ),
        (
            dict(init_type="finetune"),
            "init_type=finetune needs init_plm_path (a folder written by --model=BehaviorTuning)",
        ),
        (
            dict(init_type="finetune", init_plm_path=str(tmp_path)),
            f"init_plm_path '{tmp_path}' is not a behavior-tuned encoder (no readable behavior_tuning.json)",
        ),
        (
            dict(init_type="plm", hidden_size=64),
            "hidden_size=64 differs from the encoder's width 384: leave hidden_size unset (= the encoder's width) "
            "or set plm_projection=pca",
        ),
        (
            dict(embedding_mode="further_all"),
            "embedding_mode=further_all needs pretrained_path (a checkpoint of this model trained with "
            "embedding_mode=freeze)",
        ),
        (
            dict(init_type="random"),
            "init_type must be one of none, plm, pretrain, finetune; got 'random'",
        ),
        (
            dict(init_type="finetune", init_plm_path=tuned, plm_pooling="mean"),
            f"{tuned} was tuned with plm_pooling=cls; pass --plm_pooling=cls",
        ),
    ]
    for extra, message in cases:
        with pytest.raises(PLMInitError) as err:
            _build("PLMInitSASRec", data_root, tmp_path, text_cache, **extra)
        assert str(err.value) == message


def test_further_needs_a_freeze_checkpoint(data_root, text_cache, tmp_path):
    from recbole_transfer.model.plm_init import PLMInitError
    from recbole_transfer.quick_start import run_recbole_transfer

    trained = run_recbole_transfer(
        "PLMInitSASRec",
        "Scientific",
        config_dict=_init_config(
            data_root,
            tmp_path,
            text_cache,
            init_type="plm",
            embedding_mode="trainable",
            epochs=1,
        ),
    )
    with pytest.raises(PLMInitError) as err:
        _build(
            "PLMInitSASRec",
            data_root,
            tmp_path,
            text_cache,
            embedding_mode="further_all",
            pretrained_path=trained["checkpoint"],
        )
    assert str(err.value) == (
        f"embedding_mode=further_all starts from a freeze-mode checkpoint; "
        f"'{trained['checkpoint']}' was trained with embedding_mode=trainable"
    )
