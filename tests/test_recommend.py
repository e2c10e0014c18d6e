"""python -m recbole_transfer.recommend: top-k items per user from a saved checkpoint."""

import csv

import pytest
import torch

from conftest import FAST

from recbole_transfer import recommend
from recbole_transfer.data.dataset import read_atomic


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    from recbole_transfer.quick_start import build

    saved = tmp_path_factory.mktemp("recommend_saved")
    settings = dict(FAST, data_path=str(tiny_root), checkpoint_dir=str(saved), epochs=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["x"])
        patch.chdir(saved)
        _, _, trainer, (train, valid, _) = build(
            "SASRec", "Scientific", config_dict=settings
        )
        trainer.fit(train, valid, saved=True, show_progress=False)
    return trainer.saved_model_file


def _expected(checkpoint, tiny_root, user, k):
    """From the raw atomic file: the user's whole history (time order), last 50 items in, seen items out."""
    from recbole_transfer.quick_start import load_data_and_model

    config, model, data, *_ = load_data_and_model(checkpoint)
    rows = read_atomic(
        tiny_root / "Scientific" / "Scientific.inter",
        ["user_id", "item_id", "timestamp"],
    )
    rows = rows[rows.user_id == user].sort_values(
        "timestamp", key=lambda t: t.astype(float), kind="stable"
    )
    item_ids = {str(t): i for i, t in enumerate(data.field2id_token["item_id"])}
    history = torch.tensor([item_ids[t] for t in rows.item_id])[-50:]
    seq = torch.zeros(1, 50, dtype=torch.long)
    seq[0, : len(history)] = history
    with torch.no_grad():
        scores = model.forward(seq, torch.tensor([len(history)]))
        scores = scores @ model.item_embedding.weight.T
    scores[0, 0] = -torch.inf
    scores[0, history] = -torch.inf
    top = torch.topk(scores[0], k).indices
    return [str(data.field2id_token["item_id"][i]) for i in top], set(rows.item_id)


def test_top_k_from_the_whole_history_without_seen_items(trained, tiny_root):
    users = read_atomic(
        tiny_root / "Scientific" / "Scientific.inter", ["user_id"]
    ).user_id.unique()[:3]
    rows = recommend.recommend(trained, users=list(users), k=5)
    assert [r[0] for r in rows] == [u for u in users for _ in range(5)]
    for user in users:
        expected, seen = _expected(trained, tiny_root, user, 5)
        got = [item for u, _, item, _ in rows if u == user]
        assert got == expected
        assert not set(got) & seen
    with_seen = recommend.recommend(
        trained, users=list(users[:1]), k=200, include_seen=True
    )
    assert {item for _, _, item, _ in with_seen} & _expected(
        trained, tiny_root, users[0], 5
    )[1]


def test_cli_writes_the_csv_whole(trained, tiny_root, tmp_path, capsys):
    users = tmp_path / "users.txt"
    first = read_atomic(
        tiny_root / "Scientific" / "Scientific.inter", ["user_id"]
    ).user_id[0]
    users.write_text(f"{first}\n", encoding="utf-8")
    out = tmp_path / "recs.csv"
    assert (
        recommend.main(
            [f"--checkpoint={trained}", f"--users={users}", "--k=3", f"--out={out}"]
        )
        == 0
    )
    with open(out, encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [row["rank"] for row in table] == ["1", "2", "3"] and {
        row["user"] for row in table
    } == {first}


def test_unknown_users_and_bad_checkpoints_are_one_line(trained, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_text("NOBODY1\nNOBODY2\n", encoding="utf-8")
    out = tmp_path / "recs.csv"
    assert (
        recommend.main([f"--checkpoint={trained}", f"--users={users}", f"--out={out}"])
        == 2
    )
    assert (
        capsys.readouterr().err
        == "error: 2 users are not in Scientific, e.g. NOBODY1, NOBODY2\n"
    )
    assert not out.exists()
    assert recommend.main([f"--checkpoint={tmp_path / 'none.pth'}"]) == 2
    assert (
        capsys.readouterr().err
        == f"error: checkpoint '{tmp_path / 'none.pth'}' not found\n"
    )
