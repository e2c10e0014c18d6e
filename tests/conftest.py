"""Shared fixtures: tiny datasets cut from the committed real data (first N users, all their rows)."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASET_DIR = REPO / "dataset"
SHARED_DATA = REPO.parent / "shared" / "data"

# Small, fast settings for end-to-end runs on the tiny fixtures.
FAST = {
    "epochs": 2,
    "train_batch_size": 256,
    "eval_batch_size": 256,
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 1,
    "show_progress": False,
    "log_flops": False,
    "state": "WARNING",
}

# PromptLoRA / X-Cross: short prompts, one training step, one validation user: a CPU scores them in seconds
PROMPT = dict(
    FAST,
    xc_max_length=32,
    xc_title_tokens=8,
    xc_history_items=3,
    xc_negatives=2,
    train_batch_size=4,
    lora_r=4,
    epochs=1,
    max_train_examples=8,
    max_eval_users=1,
)

# PeterRec: a one-block, 16-wide backbone, one epoch per stage
PETERREC = dict(
    FAST,
    hidden_size=16,
    dilations=[1],
    train_batch_size=128,
    MAX_ITEM_LIST_LENGTH=20,
    epochs=1,
)


def free_port():
    """A TCP port nothing listens on now, for a test's torch.distributed rendezvous: fixed ports collide when two
    test runs share a machine."""
    import socket

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return str(probe.getsockname()[1])


def cut_users(name, n_users, out_root):
    """Copy the first ``n_users`` users of dataset/<name> (with item text, if any) into out_root/<name>."""
    src = DATASET_DIR / name
    dst = Path(out_root) / name
    dst.mkdir(parents=True, exist_ok=True)
    users, items = [], set()
    with (
        open(src / f"{name}.inter", encoding="utf-8") as fin,
        open(dst / f"{name}.inter", "w", encoding="utf-8") as fout,
    ):
        fout.write(fin.readline())
        for line in fin:
            user, item = line.split("\t")[:2]
            if not users or users[-1] != user:
                if len(users) == n_users:
                    break
                users.append(user)
            items.add(item)
            fout.write(line)
    text = src / f"{name}.text"
    if text.exists():
        with (
            open(text, encoding="utf-8") as fin,
            open(dst / f"{name}.text", "w", encoding="utf-8") as fout,
        ):
            fout.write(fin.readline())
            for line in fin:
                if line.split("\t", 1)[0] in items:
                    fout.write(line)
    return dst


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A data_path holding the first 200 users of Scientific."""
    root = tmp_path_factory.mktemp("tiny_data")
    cut_users("Scientific", 200, root)
    return root


METAREC_SOURCES = ["Pantry", "Instruments"]
# a MetaRec small enough for a test: one layer of 16, histories of 10, 2 pairs of 64 target rows per step
METAREC_SMALL = dict(
    FAST,
    hidden_size=16,
    n_layers=1,
    MAX_ITEM_LIST_LENGTH=10,
    source_datasets=METAREC_SOURCES,
    vq_heads=4,
    meta_tasks=2,
    source_batch_size=32,
    train_batch_size=64,
    epochs=1,
    # one row per prefix: 200 users give the meta-step tests enough batches (the default, all, is tested apart)
    train_positions="last",
)


@pytest.fixture(scope="session")
def metarec_root(tmp_path_factory):
    """A data_path holding MetaRec's fixture: the first 200 users of Scientific (target) and 150 of each source."""
    root = tmp_path_factory.mktemp("metarec_data")
    cut_users("Scientific", 200, root)
    for name in METAREC_SOURCES:
        cut_users(name, 150, root)
    return root


@pytest.fixture(scope="session")
def text_cache(tmp_path_factory):
    """One encoded-text cache for the whole session (each fixture's texts are encoded once)."""
    return str(tmp_path_factory.mktemp("text_cache"))


@pytest.fixture(autouse=True)
def clean_argv(monkeypatch, tmp_path):
    """RecBole's Config reads sys.argv: keep pytest's own flags out; run in a temporary working directory so logs,
    checkpoints and caches stay out of the repository."""
    monkeypatch.setattr(sys, "argv", ["run_recbole_transfer.py"])
    monkeypatch.chdir(tmp_path)
    yield
