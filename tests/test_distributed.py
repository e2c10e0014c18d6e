"""Distributed (DDP) training on CPU with gloo and 2 processes, for the stock path and each plugin trainer."""

import os

import pytest
import torch

from conftest import FAST, METAREC_SMALL, REPO, cut_users, free_port

from recbole_transfer.quick_start import run

METRICS = {"recall@10", "recall@50", "ndcg@10", "ndcg@50"}


def _tiny(root, tmp_path, **extra):
    return dict(
        FAST, data_path=str(root), checkpoint_dir=str(tmp_path / "saved"), **extra
    )


def test_two_processes_match_one_process_on_the_same_global_batches(
    tiny_root, tmp_path
):
    # Without shuffling, rank r takes rows r, r + 2, ... and a batch of B / 2 each: the two ranks' batches together
    # are exactly the one-process batch of B, and the averaged gradients are its gradient. Without dropout the two
    # runs differ only by float summation order (and the distributed sampler's padding of the last batch): measured
    # <= 1e-4 here, while another seed moves NDCG@10 by 0.01.
    settings = _tiny(
        tiny_root,
        tmp_path,
        epochs=3,
        shuffle=False,
        hidden_dropout_prob=0.0,
        attn_dropout_prob=0.0,
        learning_rate=0.01,
        train_batch_size=128,
    )
    one = run("SASRec", "Scientific", config_dict=settings)
    two = run("SASRec", "Scientific", config_dict=settings, nproc=2, port=free_port())
    assert set(two["best_valid_result"]) == METRICS
    for metric, value in one["best_valid_result"].items():
        assert two["best_valid_result"][metric] == pytest.approx(
            value, abs=0.002
        ), metric
    assert one["best_valid_result"]["recall@50"] > 0


def test_all_positions_rows_train_under_ddp(tiny_root, tmp_path):
    # train_positions=all rows are an ordinary Interaction: RecBole's distributed sampler shards them like any rows
    settings = _tiny(tiny_root, tmp_path, epochs=1, train_positions="all")
    two = run("LRURec", "Scientific", config_dict=settings, nproc=2, port=free_port())
    assert set(two["test_result"]) == METRICS
    assert two["test_result"]["recall@50"] > 0


def _fit_rank(rank, model, dataset, config_dict, out_dir):
    """One rank: build, fit, save its parameters and validation result for the parent to compare."""
    from recbole_transfer.quick_start import build

    config_dict = dict(config_dict, local_rank=rank)
    _, net, trainer, (train_data, valid_data, _) = build(
        model, dataset, config_dict=config_dict
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    evaluates = getattr(trainer, "evaluates", True)  # pretraining stages train only
    _, valid = trainer.fit(train_data, valid_data if evaluates else None, saved=False)
    changed = [k for k, v in net.state_dict().items() if not torch.equal(before[k], v)]
    torch.save(
        {"state": net.state_dict(), "changed": changed, "valid": dict(valid or {})},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    torch.distributed.destroy_process_group()


def _spawn_two(model, dataset, config_dict, tmp_path, port):
    import torch.multiprocessing as mp

    config_dict = dict(
        config_dict, world_size=2, nproc=2, ip="localhost", port=port, offset=0
    )
    mp.spawn(
        _fit_rank,
        args=(model, dataset, config_dict, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


# the meta step in MetaRec's default form (one row per history), joint training on prefix rows: both forms shard
@pytest.mark.parametrize("transfer, positions", [("meta", "all"), ("joint", "last")])
def test_metarec_ranks_average_their_gradients_and_stay_identical(
    metarec_root, tmp_path, transfer, positions
):
    settings = dict(
        METAREC_SMALL,
        data_path=str(metarec_root),
        checkpoint_dir=str(tmp_path / "saved"),
        transfer=transfer,
        first_order=True,
        train_positions=positions,
    )
    ranks = _spawn_two(
        "MetaRec",
        "Scientific",
        settings,
        tmp_path,
        port=free_port(),
    )
    # each rank drew its own sources and source rows, yet both apply the same averaged update
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    changed = set(ranks[0]["changed"])
    assert any(n.startswith("source_item_embedding") for n in changed)
    assert any(not n.startswith("source_") for n in changed)
    assert ranks[0]["valid"] == ranks[1]["valid"] and set(ranks[0]["valid"]) == METRICS


def _evaluate_rank(rank, config_files, config_dict, out_dir):
    from recbole_transfer.quick_start import build

    _, net, trainer, (_, _, test_data) = build(
        "PeterRec",
        "ml-100k",
        config_file_list=config_files,
        config_dict=dict(config_dict, local_rank=rank),
    )
    result = trainer.evaluate(test_data, load_best_model=False)
    torch.save(
        {
            "state": net.state_dict(),
            "result": dict(result),
            "users": len(test_data.sampler),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    torch.distributed.destroy_process_group()


def test_profile_metrics_over_two_ranks_equal_one_process(tmp_path):
    # each rank scores its shard of the test users; the gathered predictions (each user once, although the sampler
    # pads the shards to equal size) give exactly the one-process accuracy and macro-F1 of the same weights
    import torch.multiprocessing as mp

    from recbole_transfer.quick_start import build

    config_files = [f"{REPO}/properties/task/ml100k_gender.yaml"]
    settings = dict(
        FAST,
        hidden_size=16,
        dilations=[1, 2],
        MAX_ITEM_LIST_LENGTH=20,
        finetune_mode="peter_zero",
        checkpoint_dir=str(tmp_path / "saved"),
    )
    two = dict(
        settings, world_size=2, nproc=2, ip="localhost", port=free_port(), offset=0
    )
    mp.spawn(
        _evaluate_rank, args=(config_files, two, str(tmp_path)), nprocs=2, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["result"] == ranks[1]["result"]
    _, net, trainer, (_, _, test_data) = build(
        "PeterRec", "ml-100k", config_file_list=config_files, config_dict=settings
    )
    net.load_state_dict(ranks[0]["state"])
    one = trainer.evaluate(test_data, load_best_model=False)
    assert ranks[0]["result"] == dict(one)
    assert ranks[0]["users"] + ranks[1]["users"] >= len(test_data.dataset.inter_feat)


@pytest.fixture(scope="module")
def text_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_ddp")
    cut_users("Tools", 20, root)
    return root


@pytest.mark.parametrize("model", ["PromptLoRA", "BehaviorTuning"])
def test_language_model_trainers_keep_ranks_identical(
    text_root, tmp_path, text_cache, model
):
    settings = _tiny(
        text_root,
        tmp_path,
        epochs=1,
        train_batch_size=8,
        text_cache_dir=text_cache,
        lora_r=4,
    )
    if model == "PromptLoRA":
        settings.update(
            xc_max_length=64, xc_history_items=5, xc_negatives=4, eval_batch_size=150
        )
    else:
        settings.update(
            plm_tuning="lora",
            lora_layers=[5],
            bt_seq_max_length=32,
            bt_item_max_length=16,
            max_train_examples=32,
            tuned_plm_dir=str(tmp_path / "tuned"),
        )
    ranks = _spawn_two(
        model,
        "Tools",
        settings,
        tmp_path,
        port=free_port(),
    )
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    changed = ranks[0]["changed"]
    assert changed and all(
        "lora_" in n or n.startswith("head.") for n in changed
    ), changed
    if model == "PromptLoRA":
        assert ranks[0]["valid"] == ranks[1]["valid"] and "mrr@10" in ranks[0]["valid"]
