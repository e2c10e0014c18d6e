"""The converter: shipped files regenerate identically, match the sources, and user data converts."""
import csv
import json
import random
from collections import Counter

import pytest

from recbole_transfer.data import prepare

from conftest import DATASET_DIR, SHARED_DATA

# users / items / interactions as stated in the source READMEs under ../shared/data
SOURCE_COUNTS = {
    "Scientific": (8442, 4385, 59427),
    "Tools": (10962, 5820, 66164),
    "Electronics": (26319, 12031, 165541),
    "Sports": (19244, 10036, 120122),
    "Toys": (21342, 10457, 131485),
    "Pantry": (12608, 4926, 109007),
    "Instruments": (24772, 9922, 206153),
    "Games": (50546, 16859, 452989),
    "ABE_Beauty": (4474, 10379, 50329),
    "ABE_Electronics": (4474, 14188, 63800),
    "AFK_Food": (7144, 11837, 83663),
    "AFK_Kitchen": (7144, 16258, 89885),
}
SCI_SOURCE = SHARED_DATA / "amazon2018_scientific_unisrec"


def _rows(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f][1:]


def _rows_nohead(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f]


def _sequences(path):
    seqs = {}
    for user, item, ts in _rows(path):
        seqs.setdefault(user, []).append((item, float(ts)))
    return seqs


@pytest.mark.parametrize("name", ["Scientific", "Tools"])
def test_regeneration_is_byte_identical(name, tmp_path):
    assert prepare.main(["--only", name, "--output_root", str(tmp_path), "--properties_dir", str(tmp_path / "p")]) == 0
    for suffix in ("inter", "text"):
        assert (tmp_path / name / f"{name}.{suffix}").read_bytes() == (DATASET_DIR / name / f"{name}.{suffix}").read_bytes()
    assert not [p for p in (tmp_path / name).iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", sorted(SOURCE_COUNTS))
def test_counts_match_source_readmes(name):
    counts = prepare.dataset_counts(str(DATASET_DIR / name))
    assert (counts["users"], counts["items"], counts["interactions"]) == SOURCE_COUNTS[name]
    assert f"| {name} | {SOURCE_COUNTS[name][0]:,} | {SOURCE_COUNTS[name][1]:,} |" in (DATASET_DIR / "README.md").read_text()


def test_scientific_sample_matches_source_split_and_text():
    item_of = {r[1]: r[0] for r in _rows_nohead(SCI_SOURCE / "Scientific.item2index")}
    user_of = {r[1]: r[0] for r in _rows_nohead(SCI_SOURCE / "Scientific.user2index")}
    valid = {user_of[u]: item_of[i] for u, _, i in _rows(SCI_SOURCE / "Scientific.valid.inter")}
    test = {user_of[u]: item_of[i] for u, _, i in _rows(SCI_SOURCE / "Scientific.test.inter")}
    seqs = _sequences(DATASET_DIR / "Scientific" / "Scientific.inter")
    for user in random.Random(0).sample(sorted(seqs), 50):
        items = [item for item, _ in seqs[user]]
        assert items[-2] == valid[user] and items[-1] == test[user]
        assert [ts for _, ts in seqs[user]] == list(range(len(items)))
    source_text = {asin: t.strip() for asin, t in _rows(SCI_SOURCE / "Scientific.text")}
    shipped_text = dict(_rows(DATASET_DIR / "Scientific" / "Scientific.text"))
    for asin in random.Random(1).sample(sorted(source_text), 50):
        assert shipped_text[asin] == source_text[asin]


def test_leave_one_out_through_recbole_matches_source_split():
    """RecBole's LS/TO split on the shipped file gives the source's valid and test items."""
    import sys

    from recbole.data import data_preparation

    from recbole_transfer.config import Config
    from recbole_transfer.quick_start import create_dataset

    sys.argv = ["x"]
    config = Config("SASRec", "Scientific", config_dict={"state": "WARNING"})
    dataset = create_dataset(config)
    _, valid_data, test_data = data_preparation(config, dataset)
    item_of = {r[1]: r[0] for r in _rows_nohead(SCI_SOURCE / "Scientific.item2index")}
    user_of = {r[1]: r[0] for r in _rows_nohead(SCI_SOURCE / "Scientific.user2index")}
    expected = {
        "valid": {user_of[u]: item_of[i] for u, _, i in _rows(SCI_SOURCE / "Scientific.valid.inter")},
        "test": {user_of[u]: item_of[i] for u, _, i in _rows(SCI_SOURCE / "Scientific.test.inter")},
    }
    for phase, loader in (("valid", valid_data), ("test", test_data)):
        split = loader._dataset
        users = split.id2token("user_id", split.inter_feat["user_id"].numpy())
        items = split.id2token("item_id", split.inter_feat["item_id"].numpy())
        assert len(users) == 8442
        for user, item in zip(users, items):
            assert expected[phase][user] == item


def test_abe_domains_share_users():
    beauty = {u for u, _, _ in _rows(DATASET_DIR / "ABE_Beauty" / "ABE_Beauty.inter")}
    electronics = {u for u, _, _ in _rows(DATASET_DIR / "ABE_Electronics" / "ABE_Electronics.inter")}
    assert beauty == electronics and len(beauty) == 4474


def test_pantry_dates_become_unix_seconds():
    # first source row: user 0, item 0, 2015-06-23 -> 1435017600 (UTC midnight)
    source = _rows(SHARED_DATA / "amazon2018_pantry_instruments_recbole_idonly" / "Pantry" / "Pantry.inter")
    assert source[0] == ["0", "0", "2015-06-23"]
    seqs = _sequences(DATASET_DIR / "Pantry" / "Pantry.inter")
    assert ("0", 1435017600.0) in seqs["0"]
    assert all(a[1] <= b[1] for s in seqs.values() for a, b in zip(s, s[1:]))


def test_recformer_user_split_kept():
    split = dict(_rows(DATASET_DIR / "Toys" / "Toys.user"))
    assert Counter(split.values()) == {"train": 17073, "heldout": 4269}


def test_user_csv_round_trip(tmp_path):
    seqs = _sequences(DATASET_DIR / "Scientific" / "Scientific.inter")
    texts = dict(_rows(DATASET_DIR / "Scientific" / "Scientific.text"))
    users = list(seqs)[:30]
    with open(tmp_path / "my.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user", "item", "timestamp", "text"])
        for user in users:
            for item, ts in seqs[user]:
                writer.writerow([user, item, ts, texts[item]])
    out = tmp_path / "out"
    assert prepare.main(["--csv", str(tmp_path / "my.csv"), "--name", "Mine", "--output_root", str(out)]) == 0
    converted = _sequences(out / "Mine" / "Mine.inter")
    assert list(converted) == users and all(converted[u] == seqs[u] for u in users)
    assert all(texts[item] == t for item, t in _rows(out / "Mine" / "Mine.text"))


def test_amazon_raw_kcore(tmp_path):
    # ratings and metadata derived from the real Scientific rows: position as timestamp, 5.0 as rating,
    # title / categories / brand split back out of the real text
    seqs = _sequences(DATASET_DIR / "Scientific" / "Scientific.inter")
    texts = dict(_rows(DATASET_DIR / "Scientific" / "Scientific.text"))
    users = list(seqs)[:1500]
    with open(tmp_path / "ratings.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for user in users:
            for item, ts in seqs[user]:
                writer.writerow([item, user, 5.0, int(ts)])
    with open(tmp_path / "meta.json", "w", encoding="utf-8") as f:
        for item in {i for u in users for i, _ in seqs[u]}:
            title, _, rest = texts[item].partition(". ")
            categories, _, brand = rest.partition(". ")
            f.write(json.dumps({"asin": item, "title": title, "category": categories.split(), "brand": brand}) + "\n")
    out = tmp_path / "out"
    args = ["--amazon_ratings", str(tmp_path / "ratings.csv"), "--amazon_meta", str(tmp_path / "meta.json"),
            "--name", "Sci5", "--output_root", str(out), "--kcore", "5"]
    assert prepare.main(args) == 0
    rows = _rows(out / "Sci5" / "Sci5.inter")
    assert rows
    users_count, items_count = Counter(r[0] for r in rows), Counter(r[1] for r in rows)
    assert min(users_count.values()) >= 5 and min(items_count.values()) >= 5
    assert all(t for _, t in _rows(out / "Sci5" / "Sci5.text"))


def test_missing_source_folder_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert prepare.main(["--only", "Scientific", "--source_root", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"prepare: source folder {missing} not found"
