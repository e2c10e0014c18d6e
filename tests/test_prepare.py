"""The converters: dataset/build.py rebuilds the shipped files identically and they match the sources;
recbole_transfer.data.prepare converts user data.

Every row used here comes from ../shared/data, from the committed dataset/ files made from it, or from RecBole's
own MovieLens-100K (recbole/dataset_example/ml-100k, read in place or copied).
"""

import ast
import csv
import gzip
import importlib.util
import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from recbole_transfer import utils
from recbole_transfer.data import prepare

from conftest import DATASET_DIR, REPO, SHARED_DATA

# RecBole's own copy of MovieLens-100K (real data shipped inside the installed recbole package; only read here)
ML100K = (
    Path(importlib.util.find_spec("recbole").origin).parent
    / "dataset_example"
    / "ml-100k"
)

BUILD_PY = REPO / "dataset" / "build.py"
PREPARE_PY = REPO / "recbole_transfer" / "data" / "prepare.py"


def _load_build():
    """dataset/build.py is a script of the repository, not a module of the package: load it by path (without
    leaving a __pycache__ in dataset/)."""
    spec = importlib.util.spec_from_file_location("dataset_build", BUILD_PY)
    module = importlib.util.module_from_spec(spec)
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


build = _load_build()

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
DOMAIN_GROUPS = {
    "Scientific": "amazon2018",
    "Tools": "amazon2018",
    "Electronics": "amazon2018",
    "Sports": "amazon2018",
    "Toys": "amazon2018",
    "Pantry": "amazon2018",
    "Instruments": "amazon2018",
    "Games": "amazon2018",
    "ABE_Beauty": "abe",
    "ABE_Electronics": "abe",
    "AFK_Food": "afk",
    "AFK_Kitchen": "afk",
}
SCI_SOURCE = SHARED_DATA / "amazon2018_scientific_unisrec"


def _rows(path):
    """TSV rows without the header line."""
    with open(path, encoding="utf-8", newline="") as f:
        return [line.rstrip("\r\n").split("\t") for line in f][1:]


def _rows_nohead(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [line.rstrip("\r\n").split("\t") for line in f if line.strip()]


def _sequences(path):
    seqs = {}
    for user, item, ts in _rows(path):
        seqs.setdefault(user, []).append((item, float(ts)))
    return seqs


@pytest.fixture(scope="module")
def scientific():
    """(sequences, texts) of the committed dataset/Scientific files."""
    seqs = _sequences(DATASET_DIR / "Scientific" / "Scientific.inter")
    texts = dict(_rows(DATASET_DIR / "Scientific" / "Scientific.text"))
    return seqs, texts


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """Every shipped dataset, its yaml and the README, rebuilt by ``dataset/build.py --all`` into a temporary folder."""
    root = tmp_path_factory.mktemp("rebuilt")
    out, props = root / "dataset", root / "props"
    assert (
        build.main(["--all", "--output_root", str(out), "--properties_dir", str(props)])
        == 0
    )
    return out, props


def _write_csv(path, seqs, texts, users):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user", "item", "timestamp", "text"])
        for user in users:
            for item, ts in seqs[user]:
                writer.writerow([user, item, int(ts), texts[item]])


# --- shipped datasets --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Scientific", "Tools"])
def test_regeneration_is_byte_identical(name, tmp_path):
    props = tmp_path / "props"
    assert (
        build.main(
            [
                "--only",
                name,
                "--output_root",
                str(tmp_path),
                "--properties_dir",
                str(props),
            ]
        )
        == 0
    )
    for suffix in ("inter", "text"):
        assert (tmp_path / name / f"{name}.{suffix}").read_bytes() == (
            DATASET_DIR / name / f"{name}.{suffix}"
        ).read_bytes()
    assert (props / f"{name}.yaml").read_bytes() == (
        REPO / "properties" / "dataset" / f"{name}.yaml"
    ).read_bytes()
    # temporaries were renamed, none left behind
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == [
        f"{name}.inter",
        f"{name}.text",
    ]


@pytest.mark.parametrize("name", sorted(SOURCE_COUNTS))
def test_build_all_is_byte_identical(name, rebuilt):
    out, props = rebuilt
    shipped = sorted(p.name for p in (DATASET_DIR / name).iterdir())
    assert (
        sorted(p.name for p in (out / name).iterdir()) == shipped
    )  # same files, no temporaries left
    for file in shipped:
        assert (out / name / file).read_bytes() == (
            DATASET_DIR / name / file
        ).read_bytes()
    assert (props / f"{name}.yaml").read_bytes() == (
        REPO / "properties" / "dataset" / f"{name}.yaml"
    ).read_bytes()
    assert (out / "README.md").read_bytes() == (DATASET_DIR / "README.md").read_bytes()


def test_build_defaults_are_the_repository_folders():
    assert build.DEFAULT_OUTPUT_ROOT == str(DATASET_DIR)
    assert build.DEFAULT_PROPERTIES_DIR == str(REPO / "properties" / "dataset")
    assert build.DEFAULT_SOURCE_ROOT == str(SHARED_DATA)
    assert set(build.SHIPPED) == set(SOURCE_COUNTS) == set(DOMAIN_GROUPS)
    assert tuple(build.SHIPPED) == prepare.SHIPPED_NAMES
    readme = (DATASET_DIR / "README.md").read_text(encoding="utf-8")
    assert (
        "python dataset/build.py --all" in readme
        and "recbole_transfer.data.prepare" not in readme
    )


@pytest.mark.parametrize("name", sorted(SOURCE_COUNTS))
def test_counts_match_source_readmes(name):
    counts = build.dataset_counts(str(DATASET_DIR / name))
    assert (counts["users"], counts["items"], counts["interactions"]) == SOURCE_COUNTS[
        name
    ]
    users, items, inters = SOURCE_COUNTS[name]
    assert (
        f"| {name} | {users:,} | {items:,} | {inters:,} |"
        in (DATASET_DIR / "README.md").read_text()
    )


def test_readme_is_what_the_code_counts():
    assert (DATASET_DIR / "README.md").read_text(encoding="utf-8") == build.readme_text(
        str(DATASET_DIR)
    )


@pytest.mark.parametrize("name", sorted(SOURCE_COUNTS))
def test_dataset_yaml_loads_only_inter(name):
    text = (REPO / "properties" / "dataset" / f"{name}.yaml").read_text(
        encoding="utf-8"
    )
    assert (
        "  inter: [user_id, item_id, timestamp]\n" in text
        and "TIME_FIELD: timestamp" in text
    )
    assert ("text_side_file: text" in text) == (
        DATASET_DIR / name / f"{name}.text"
    ).exists()


@pytest.mark.parametrize("name", sorted(SOURCE_COUNTS))
def test_shipped_yaml_names_its_domain_group(name):
    lines = (
        (REPO / "properties" / "dataset" / f"{name}.yaml")
        .read_text(encoding="utf-8")
        .splitlines()
    )
    assert build.SHIPPED[name]["group"] == DOMAIN_GROUPS[name]
    assert (
        lines[1]
        == f"# written by python dataset/build.py from ../shared/data/{build.SHIPPED[name]['folder']}"
    )
    assert lines[4].startswith("TIME_FIELD: timestamp ")
    assert lines[5].split("#")[0].rstrip() == f"domain_group: {DOMAIN_GROUPS[name]}"
    assert lines[5].index("#") == lines[4].index("#")  # comments aligned, RecBole style
    assert "(str) Family of shipped domains" in lines[5]
    assert sum(line.startswith("domain_group:") for line in lines) == 1


def test_scientific_sample_matches_source_split_and_text(scientific):
    seqs, shipped_text = scientific
    item_of = {
        index: asin
        for asin, index in _rows_nohead(SCI_SOURCE / "Scientific.item2index")
    }
    user_of = {
        index: user
        for user, index in _rows_nohead(SCI_SOURCE / "Scientific.user2index")
    }
    valid = {
        user_of[u]: (h.split(), item_of[i])
        for u, h, i in _rows(SCI_SOURCE / "Scientific.valid.inter")
    }
    test = {
        user_of[u]: (h.split(), item_of[i])
        for u, h, i in _rows(SCI_SOURCE / "Scientific.test.inter")
    }
    source_text = {
        asin: text.strip() for asin, text in _rows(SCI_SOURCE / "Scientific.text")
    }
    for user in random.Random(0).sample(sorted(seqs), 50):
        items = [item for item, _ in seqs[user]]
        assert items[-2] == valid[user][1] and items[-1] == test[user][1]
        # the source's test history is the last <= 50 items before the test item
        assert items[:-1][-50:] == [item_of[i] for i in test[user][0]]
        assert [ts for _, ts in seqs[user]] == list(range(len(items)))
        for item in items:
            assert shipped_text[item] == source_text[item] != ""


def test_leave_one_out_through_recbole_matches_source_split(monkeypatch):
    """RecBole's LS/TO split on the shipped file gives the source's valid and test items."""
    import sys

    from recbole.data import data_preparation

    from recbole_transfer.config import Config
    from recbole_transfer.quick_start import create_dataset

    monkeypatch.setattr(sys, "argv", ["x"])
    config = Config("SASRec", "Scientific", config_dict={"state": "WARNING"})
    dataset = create_dataset(config)
    _, valid_data, test_data = data_preparation(config, dataset)
    item_of = {
        index: asin
        for asin, index in _rows_nohead(SCI_SOURCE / "Scientific.item2index")
    }
    user_of = {
        index: user
        for user, index in _rows_nohead(SCI_SOURCE / "Scientific.user2index")
    }
    expected = {
        "valid": {
            user_of[u]: item_of[i]
            for u, _, i in _rows(SCI_SOURCE / "Scientific.valid.inter")
        },
        "test": {
            user_of[u]: item_of[i]
            for u, _, i in _rows(SCI_SOURCE / "Scientific.test.inter")
        },
    }
    for phase, loader in (("valid", valid_data), ("test", test_data)):
        split = loader._dataset
        users = split.id2token("user_id", split.inter_feat["user_id"].numpy())
        items = split.id2token("item_id", split.inter_feat["item_id"].numpy())
        assert len(users) == 8442
        for user, item in zip(users, items):
            assert expected[phase][user] == item


@pytest.mark.parametrize(
    "pair", [("ABE_Beauty", "ABE_Electronics"), ("AFK_Food", "AFK_Kitchen")]
)
def test_abxi_domains_share_users(pair):
    a, b = (
        {u for u, _, _ in _rows(DATASET_DIR / name / f"{name}.inter")} for name in pair
    )
    assert a == b and len(a) == SOURCE_COUNTS[pair[0]][0]
    assert all(
        u.startswith("A") for u in a
    )  # raw reviewer IDs, not the source's indices


def test_pantry_dates_become_unix_seconds():
    source = _rows(
        SHARED_DATA
        / "amazon2018_pantry_instruments_recbole_idonly"
        / "Pantry"
        / "Pantry.inter"
    )
    assert source[0] == [
        "0",
        "0",
        "2015-06-23",
    ]  # the first real row: 2015-06-23 00:00 UTC = 1435017600
    assert build.date_to_unix("2015-06-23") == 1435017600
    seqs = _sequences(DATASET_DIR / "Pantry" / "Pantry.inter")
    assert ("0", 1435017600.0) in seqs["0"]
    assert all(a[1] <= b[1] for s in seqs.values() for a, b in zip(s, s[1:]))
    assert sum(len(s) for s in seqs.values()) == len(
        source
    )  # every row kept, duplicates included


def test_recformer_user_split_kept():
    split = dict(_rows(DATASET_DIR / "Toys" / "Toys.user"))
    assert Counter(split.values()) == {"train": 17073, "heldout": 4269}
    sports = dict(_rows(DATASET_DIR / "Sports" / "Sports.text"))
    assert (
        sum(1 for t in sports.values() if not t) == 3
    )  # the three JSON NaN titles of the source


# --- user data ---------------------------------------------------------------------------------------------------
def test_user_csv_round_trip(tmp_path, scientific):
    seqs, texts = scientific
    users = list(seqs)[:30]
    _write_csv(tmp_path / "my.csv", seqs, texts, users)
    out = tmp_path / "out"
    assert (
        prepare.main(
            [
                "--csv",
                str(tmp_path / "my.csv"),
                "--name",
                "Mine",
                "--output_root",
                str(out),
            ]
        )
        == 0
    )
    converted = _sequences(out / "Mine" / "Mine.inter")
    assert list(converted) == users and all(converted[u] == seqs[u] for u in users)
    items = {item for u in users for item, _ in seqs[u]}
    assert build.dataset_counts(str(out / "Mine")) == {
        "users": 30,
        "items": len(items),
        "interactions": sum(len(seqs[u]) for u in users),
    }
    converted_text = dict(_rows(out / "Mine" / "Mine.text"))
    assert set(converted_text) == items and all(
        texts[i] == t for i, t in converted_text.items()
    )


def test_user_data_goes_under_the_working_directory(
    tmp_path, monkeypatch, capsys, scientific
):
    """Without --output_root / --properties_dir, prepare writes ./dataset/<name>/ and ./properties/dataset/<name>.yaml
    of the working directory, wherever the package is; the yaml of user data has no domain_group.
    """
    seqs, texts = scientific
    _write_csv(tmp_path / "my.csv", seqs, texts, list(seqs)[:5])
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    assert prepare.DEFAULT_OUTPUT_ROOT == "dataset"
    assert (
        prepare.main(
            ["--csv", str(tmp_path / "my.csv"), "--name", "Mine", "--write_yaml"]
        )
        == 0
    )
    assert capsys.readouterr().out.endswith("dataset/Mine\n")
    assert sorted(p.name for p in (work / "dataset" / "Mine").iterdir()) == [
        "Mine.inter",
        "Mine.text",
    ]
    assert sorted(p.name for p in work.iterdir()) == ["dataset", "properties"]
    assert [p.name for p in (work / "properties" / "dataset").iterdir()] == [
        "Mine.yaml"
    ]
    yaml_lines = (
        (work / "properties" / "dataset" / "Mine.yaml")
        .read_text(encoding="utf-8")
        .splitlines()
    )
    assert yaml_lines[1] == "# written by python -m recbole_transfer.data.prepare"
    assert (
        "  inter: [user_id, item_id, timestamp]" in yaml_lines
        and "text_side_file: text" in yaml_lines[-1]
    )
    assert not any("domain_group" in line for line in yaml_lines)


def test_dataset_yaml_domain_group_only_when_given():
    counts = {"users": 1, "items": 1, "interactions": 1}
    assert "domain_group" not in prepare.dataset_yaml(
        "Mine", "mine", counts, False, "unix"
    )
    shipped = prepare.dataset_yaml(
        "X",
        "x",
        counts,
        False,
        "unix",
        source="s",
        domain_group="abe",
        written_by="python dataset/build.py",
    )
    assert (
        shipped.splitlines()[1]
        == "# written by python dataset/build.py from ../shared/data/s"
    )
    assert shipped.splitlines()[5].startswith(
        "domain_group: abe                # (str) Family of shipped domains"
    )


def test_shipped_names_are_refused_for_user_data(tmp_path, capsys, scientific):
    seqs, texts = scientific
    _write_csv(tmp_path / "my.csv", seqs, texts, list(seqs)[:2])
    assert (
        prepare.main(
            [
                "--csv",
                str(tmp_path / "my.csv"),
                "--name",
                "Tools",
                "--output_root",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert (
        capsys.readouterr().err
        == "prepare: --name Tools is a shipped dataset; pick another name\n"
    )
    assert not (tmp_path / "Tools").exists()


def _kcore(rows, k):
    while True:
        users, items = Counter(u for u, _ in rows), Counter(i for _, i in rows)
        kept = [(u, i) for u, i in rows if users[u] >= k and items[i] >= k]
        if kept == rows:
            return rows
        rows = kept


def test_amazon_raw_kcore(tmp_path, scientific):
    # The ratings and metadata files are derived from the real Scientific rows (dataset/Scientific, made from
    # ../shared/data/amazon2018_scientific_unisrec): the position in the user's sequence is the timestamp, 5.0 the
    # rating, and title / categories / brand are split back out of the real text ("title. categories. brand.").
    seqs, texts = scientific
    users = list(seqs)[:1500]
    with open(tmp_path / "ratings.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for user in users:
            for item, ts in seqs[user]:
                writer.writerow([item, user, 5.0, int(ts)])
    items = sorted({i for u in users for i, _ in seqs[u]})
    with gzip.open(tmp_path / "meta.json.gz", "wt", encoding="utf-8") as f:
        for n, item in enumerate(items):
            title, _, rest = texts[item].partition(". ")
            categories, _, brand = rest.partition(". ")
            record = {
                "asin": item,
                "title": title,
                "category": [categories],
                "brand": brand,
            }
            # every other line as a Python literal, as in the Amazon 2014 metadata files
            f.write((json.dumps(record) if n % 2 else repr(record)) + "\n")
    out = tmp_path / "out"
    args = [
        "--amazon_ratings",
        str(tmp_path / "ratings.csv"),
        "--amazon_meta",
        str(tmp_path / "meta.json.gz"),
        "--name",
        "Sci5",
        "--output_root",
        str(out),
        "--kcore",
        "5",
    ]
    assert prepare.main(args) == 0
    rows = [(u, i) for u, i, _ in _rows(out / "Sci5" / "Sci5.inter")]
    assert rows
    users_count, items_count = Counter(u for u, _ in rows), Counter(i for _, i in rows)
    assert min(users_count.values()) >= 5 and min(items_count.values()) >= 5
    # exactly the 5-core (nothing more dropped than needed)
    expected = _kcore([(u, i) for u in users for i, _ in seqs[u]], 5)
    assert Counter(rows) == Counter(expected)
    converted_text = dict(_rows(out / "Sci5" / "Sci5.text"))
    assert set(converted_text) == set(items_count) and all(converted_text.values())
    # texts with exactly title, categories and brand come back as the source wrote them
    simple = [
        i for i in converted_text if texts[i].count(". ") == 2 and "  " not in texts[i]
    ]
    assert simple and all(converted_text[i] == texts[i] for i in simple)


# --- errors and atomic writes ------------------------------------------------------------------------------------
def test_missing_source_folder_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert (
        build.main(
            [
                "--only",
                "Scientific",
                "--source_root",
                str(missing),
                "--output_root",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == f"prepare: source folder {missing} not found\n"
    assert not (tmp_path / "Scientific").exists()


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert build.main(["--only", "Scientifc", "--output_root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(
        "prepare: unknown dataset 'Scientifc' (shipped: Scientific, Tools"
    )
    assert (
        prepare.main(
            [
                "--csv",
                str(tmp_path / "none.csv"),
                "--name",
                "X",
                "--output_root",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert (
        capsys.readouterr().err
        == f"prepare: source file {tmp_path / 'none.csv'} not found\n"
    )
    assert (
        prepare.main(["--csv", "a.csv", "--amazon_ratings", "b.csv", "--name", "X"])
        == 2
    )
    assert (
        capsys.readouterr().err
        == "prepare: give either --csv or --amazon_ratings, not both\n"
    )
    assert prepare.main([]) == 2
    assert capsys.readouterr().err.endswith(
        "prepare: nothing to do: give --csv, --amazon_ratings or --recbole "
        "(shipped datasets: python dataset/build.py --all)\n"
    )
    assert build.main([]) == 2
    assert capsys.readouterr().err.endswith(
        "prepare: nothing to do: give --all, --only or --readme\n"
    )


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with prepare.AtomicFiles() as files:
            files.write(str(tmp_path / "D" / "D.inter"), [prepare.INTER_HEADER])
            raise RuntimeError("boom")
    assert list((tmp_path / "D").iterdir()) == []


def test_failed_dataset_write_leaves_nothing(tmp_path):
    """The third file of a dataset fails after the first two were written: none of them appears."""
    sequences = {"u1": [("i1", 0), ("i2", 1)], "u2": [("i1", 0)]}
    with pytest.raises(KeyError):
        with prepare.AtomicFiles() as files:
            prepare.write_dataset(
                files,
                str(tmp_path),
                "D",
                sequences,
                {"i1": "a", "i2": "b"},
                {"u1": "train"},
            )
    assert list((tmp_path / "D").iterdir()) == []


def test_prepare_uses_the_package_writer_and_the_standard_library():
    source = PREPARE_PY.read_text(encoding="utf-8")
    assert "class AtomicFiles" not in source and "def _file_mode" not in source
    assert prepare.AtomicFiles is utils.AtomicFiles
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported - set(sys.stdlib_module_names) == {"recbole_transfer.utils"}
    assert (
        "REPO_ROOT" not in source and "__file__" not in source
    )  # defaults come from the working directory


def test_build_and_prepare_share_no_function():
    def top_level(path):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        return {
            n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
        }

    build_defs, prepare_defs = top_level(BUILD_PY), top_level(PREPARE_PY)
    # each file has its own command line (different options); nothing else is defined twice
    assert build_defs & prepare_defs == {"build_parser", "main"}
    # the shared writer is imported, not copied
    assert (
        build.write_converted is prepare.write_converted
        and build.dataset_yaml is prepare.dataset_yaml
    )
    assert (
        build.PrepareError is prepare.PrepareError
        and build.atomic_write_text is utils.atomic_write_text
    )


# --- user data: k-core, ids with spaces, header aliases, RecBole atomic folders -----------------------------------
def _write_table(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _prepare(*args):
    return prepare.main([str(a) for a in args])


@pytest.fixture(scope="module")
def ml100k_title_rows():
    """The first 3,000 rows of ml-100k.inter as (user, movie title, timestamp): the item is its movie_title in
    ml-100k.item (real ids with spaces; 23 titles name two movies, which then share the token).
    """
    titles = {row[0]: row[1] for row in _rows(ML100K / "ml-100k.item")}
    return [
        (user, titles[item], ts)
        for user, item, _, ts in _rows(ML100K / "ml-100k.inter")[:3000]
    ]


def _grouped(rows):
    """(user, item, timestamp) rows -> {user: [(item, time), ...]} as prepare writes them (users in order of first
    appearance, each user's rows in time order, stable)."""
    seqs = {}
    for user, item, ts in rows:
        seqs.setdefault(user, []).append((item, float(ts)))
    return {u: sorted(seq, key=lambda e: e[1]) for u, seq in seqs.items()}


def test_csv_kcore(tmp_path, capsys, scientific):
    seqs, _ = scientific
    users = list(seqs)[:1500]
    events = [(u, i, ts) for u in users for i, ts in seqs[u]]
    source = _write_table(
        tmp_path / "my.csv",
        ["user", "item", "timestamp"],
        [(u, i, int(ts)) for u, i, ts in events],
    )
    out = tmp_path / "out"
    # no --kcore: every row kept
    assert _prepare("--csv", source, "--name", "All", "--output_root", out) == 0
    assert "-core filter" not in capsys.readouterr().out
    assert _sequences(out / "All" / "All.inter") == {u: seqs[u] for u in users}
    # --kcore 3: exactly the iterative 3-core, and the note names the dropped rows
    assert (
        _prepare("--csv", source, "--name", "K3", "--output_root", out, "--kcore", "3")
        == 0
    )
    expected = prepare.kcore(events, 3)
    dropped = len(events) - len(expected)
    assert 0 < dropped < len(events)
    assert f"({dropped:,} rows dropped by the 3-core filter)" in capsys.readouterr().out
    assert build.dataset_counts(str(out / "K3")) == {
        "users": len({u for u, _, _ in expected}),
        "items": len({i for _, i, _ in expected}),
        "interactions": len(expected),
    }
    rows = [(u, i) for u, i, _ in _rows(out / "K3" / "K3.inter")]
    assert Counter(rows) == Counter(_kcore([(u, i) for u, i, _ in events], 3))
    users_count, items_count = Counter(u for u, _ in rows), Counter(i for _, i in rows)
    assert min(users_count.values()) >= 3 and min(items_count.values()) >= 3
    # --kcore 1 keeps everything; below 1 is refused
    assert (
        _prepare("--csv", source, "--name", "K1", "--output_root", out, "--kcore", "1")
        == 0
    )
    assert "(0 rows dropped by the 1-core filter)" in capsys.readouterr().out
    assert (out / "K1" / "K1.inter").read_bytes() == (
        out / "All" / "All.inter"
    ).read_bytes()
    assert (
        _prepare("--csv", source, "--name", "K0", "--output_root", out, "--kcore", "0")
        == 2
    )
    assert capsys.readouterr().err == "prepare: --kcore must be at least 1\n"
    assert not (out / "K0").exists()


def test_csv_ids_with_spaces_are_kept(tmp_path, capsys, ml100k_title_rows):
    from recbole_transfer.data.dataset import read_atomic

    rows = ml100k_title_rows
    out = tmp_path / "out"
    source = _write_table(tmp_path / "titles.csv", ["user", "item", "timestamp"], rows)
    assert _prepare("--csv", source, "--name", "Titles", "--output_root", out) == 0
    assert "replaced" not in capsys.readouterr().out
    inter = out / "Titles" / "Titles.inter"
    # read as RecBole's atomic reader splits it: tab-separated, the titles are whole tokens
    frame = read_atomic(inter, ["user_id", "item_id", "timestamp"])
    titles = {title for _, title, _ in rows}
    assert len(frame) == len(rows) and set(frame["item_id"]) == titles
    assert "Toy Story" in titles and sum(" " in t for t in titles) > len(titles) / 2
    assert _sequences(inter) == _grouped(rows)

    # a tab inside one title, spaces around another: the same file, one id counted as changed
    j = next(n for n, (_, title, _) in enumerate(rows) if " " in title)
    k = next(n for n in range(j + 1, len(rows)) if rows[n][1] != rows[j][1])
    edited = list(rows)
    user, title, ts = rows[j]
    edited[j] = (user, title.replace(" ", "\t", 1), ts)
    edited[k] = (rows[k][0], f"  {rows[k][1]} ", rows[k][2])
    source = _write_table(tmp_path / "tab.csv", ["user", "item", "timestamp"], edited)
    assert _prepare("--csv", source, "--name", "Tab", "--output_root", out) == 0
    assert (
        "(1 id had tabs or line breaks replaced by a space)" in capsys.readouterr().out
    )
    assert (out / "Tab" / "Tab.inter").read_bytes() == inter.read_bytes()


def test_csv_header_aliases(tmp_path, capsys, ml100k_title_rows):
    rows = ml100k_title_rows[:500]
    out = tmp_path / "out"
    outputs = []
    for n, header in enumerate(
        (
            ["user", "item", "timestamp"],
            ["user_id", "item_id", "timestamp"],
            ["USER_ID", "Item", "TimeStamp"],
        )
    ):
        source = _write_table(tmp_path / f"h{n}.csv", header, rows)
        assert _prepare("--csv", source, "--name", "H", "--output_root", out) == 0
        outputs.append((out / "H" / "H.inter").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    expected = "the header must be user,item,timestamp[,text] (or user_id,item_id,timestamp[,text])\n"
    capsys.readouterr()
    source = _write_table(tmp_path / "bad.csv", ["user_id", "item_id", "time"], rows)
    assert _prepare("--csv", source, "--name", "Bad", "--output_root", out) == 2
    assert (
        capsys.readouterr().err
        == f"prepare: {source}:1: unknown column 'time': {expected}"
    )
    source = _write_table(
        tmp_path / "two.csv", ["user_id", "item_id"], [r[:2] for r in rows]
    )
    assert _prepare("--csv", source, "--name", "Bad", "--output_root", out) == 2
    assert (
        capsys.readouterr().err
        == f"prepare: {source}:1: no timestamp column: {expected}"
    )
    assert not (out / "Bad").exists()


def test_malformed_csv_rows_name_their_line(tmp_path, capsys, ml100k_title_rows):
    """Line numbers count the file's lines, also after a quoted id that spans two lines."""
    rows = [list(r) for r in ml100k_title_rows[:20]]
    rows[4][1] = rows[4][1].replace(" ", "\n", 1)  # file lines 6-7
    out = tmp_path / "out"
    source = _write_table(tmp_path / "ok.csv", ["user", "item", "timestamp"], rows)
    assert _prepare("--csv", source, "--name", "Ok", "--output_root", out) == 0
    assert (
        "(1 id had tabs or line breaks replaced by a space)" in capsys.readouterr().out
    )
    truncated = rows[:10] + [rows[10][:2]] + rows[11:]  # row 11: file line 13
    source = _write_table(
        tmp_path / "short.csv", ["user", "item", "timestamp"], truncated
    )
    assert _prepare("--csv", source, "--name", "Bad", "--output_root", out) == 2
    assert (
        capsys.readouterr().err
        == f"prepare: {source}:13: expected 3 columns (user,item,timestamp), got 2\n"
    )
    blanked = rows[:10] + [[rows[10][0], " ", rows[10][2]]] + rows[11:]
    source = _write_table(
        tmp_path / "empty.csv", ["user", "item", "timestamp"], blanked
    )
    assert _prepare("--csv", source, "--name", "Bad", "--output_root", out) == 2
    assert capsys.readouterr().err == f"prepare: {source}:13: empty item id\n"
    assert not (out / "Bad").exists()


def _item_rows():
    return _rows(ML100K / "ml-100k.item")


def test_recbole_folder(tmp_path, capsys, monkeypatch):
    import yaml

    from recbole_transfer.data.text import align_item_text, read_item_text

    out, props = tmp_path / "out", tmp_path / "props"
    args = ["--recbole", ML100K, "--text_fields=movie_title", "--name", "ml100k_text"]
    args += ["--output_root", out, "--write_yaml", "--properties_dir", props]
    assert _prepare(*args) == 0
    folder = out / "ml100k_text"
    stdout = capsys.readouterr().out
    assert stdout.startswith(
        "ml100k_text: 943 users / 1,682 items / 100,000 interactions"
    )
    assert stdout.endswith(f"\n{folder}\n")
    sources = sorted(p.name for p in ML100K.iterdir())
    suffixes = [name.split(".", 1)[1] for name in sources]
    assert {"inter", "item", "user"} <= set(suffixes)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"ml100k_text.{s}" for s in suffixes] + ["ml100k_text.text"]
    )
    for name, suffix in zip(sources, suffixes):
        assert (folder / f"ml100k_text.{suffix}").read_bytes() == (
            ML100K / name
        ).read_bytes()
    item_rows = _item_rows()
    texts = read_item_text(folder / "ml100k_text.text")
    assert len(texts) == 1682 and list(texts) == [row[0] for row in item_rows]
    assert next(iter(texts.values())) == item_rows[0][1] == "Toy Story"
    assert all(texts[row[0]] == row[1] for row in item_rows)
    config_file = props / "ml100k_text.yaml"
    loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    assert loaded["load_col"] == {
        "inter": ["user_id", "item_id", "rating", "timestamp"]
    }
    assert loaded["text_side_file"] == "text" and loaded["ITEM_ID_FIELD"] == "item_id"

    # RecBole reads the written folder with that yaml, and every item it knows has a text row
    from recbole_transfer.config import Config
    from recbole_transfer.quick_start import create_dataset

    monkeypatch.setattr(sys, "argv", ["x"])
    monkeypatch.chdir(tmp_path)
    config = Config(
        "SASRec",
        "ml100k_text",
        config_file_list=[str(config_file)],
        config_dict={"data_path": str(out), "state": "WARNING"},
    )
    dataset = create_dataset(config)
    assert dataset.inter_num == 100000 and dataset.item_num == 1683  # + padding
    aligned = align_item_text(texts, list(dataset.field2id_token["item_id"]))
    assert len(aligned) == 1683 and all(aligned[1:])

    # several columns: joined with ". "
    args = ["--recbole", ML100K, "--text_fields=movie_title,release_year,class"]
    assert _prepare(*args, "--name", "ml100k_all", "--output_root", out) == 0
    texts = read_item_text(out / "ml100k_all" / "ml100k_all.text")
    assert texts["1"] == "Toy Story. 1995. Animation Children's Comedy"
    assert all(texts[row[0]] == ". ".join(row[1:]) for row in item_rows)


def _copy_ml100k(folder, suffixes=("inter", "item"), edit=None):
    """RecBole's ml-100k files (``suffixes``) copied into ``folder`` as ``<folder name>.<suffix>``,
    ``edit(suffix, lines)`` changing them."""
    folder.mkdir(parents=True)
    for suffix in suffixes:
        lines = (ML100K / f"ml-100k.{suffix}").read_text(encoding="utf-8").split("\n")
        if edit:
            lines = edit(suffix, lines)
        (folder / f"{folder.name}.{suffix}").write_text(
            "\n".join(lines), encoding="utf-8"
        )
    return folder


def test_recbole_folder_errors(tmp_path, capsys):
    out = tmp_path / "out"
    item = ML100K / "ml-100k.item"
    assert (
        _prepare("--recbole", ML100K, "--text_fields=title", "--output_root", out) == 2
    )
    assert capsys.readouterr().err == (
        f"prepare: --text_fields: {item} has no column title "
        "(columns: item_id, movie_title, release_year, class)\n"
    )
    assert _prepare("--recbole", ML100K, "--output_root", out) == 2
    assert capsys.readouterr().err == (
        f"prepare: --text_fields=COLUMN[,COLUMN...] is required with --recbole "
        f"(columns of {item}: item_id, movie_title, release_year, class)\n"
    )
    args = ["--text_fields=movie_title", "--output_root", out]
    assert _prepare("--recbole", ML100K, *args, "--kcore", "5") == 2
    assert capsys.readouterr().err.startswith(
        "prepare: --kcore applies to --csv and --amazon_ratings;"
    )
    assert _prepare("--recbole", ML100K, *args, "--csv", "my.csv", "--name", "X") == 2
    assert (
        capsys.readouterr().err
        == "prepare: give --recbole alone, not with --csv or --amazon_ratings\n"
    )
    no_item = _copy_ml100k(tmp_path / "a" / "ml-100k", ("inter",))
    assert _prepare("--recbole", no_item, *args) == 2
    assert capsys.readouterr().err == (
        f"prepare: --recbole {no_item}: no ml-100k.item (the item text is built from its columns)\n"
    )
    no_inter = _copy_ml100k(tmp_path / "b" / "ml-100k", ("item",))
    assert _prepare("--recbole", no_inter, *args) == 2
    assert capsys.readouterr().err.startswith(
        f"prepare: --recbole {no_inter}: no ml-100k.inter"
    )

    def truncate_row_11(suffix, lines):
        if suffix == "item":
            lines[11] = "\t".join(lines[11].split("\t")[:3])  # file line 12
        return lines

    bad = _copy_ml100k(tmp_path / "c" / "ml-100k", edit=truncate_row_11)
    assert _prepare("--recbole", bad, *args) == 2
    assert capsys.readouterr().err == (
        f"prepare: {bad / 'ml-100k.item'}:12: expected 4 tab-separated columns, got 3\n"
    )
    assert not out.exists()

    # an item id column named otherwise (in .inter and .item, as RecBole needs): --item_field
    def rename(suffix, lines):
        lines[0] = lines[0].replace("item_id:token", "movie_id:token")
        return lines

    renamed = _copy_ml100k(tmp_path / "d" / "movies", edit=rename)
    assert _prepare("--recbole", renamed, *args) == 2
    assert capsys.readouterr().err == (
        f"prepare: {renamed / 'movies.item'}:1: no item id column item_id "
        "(columns: movie_id, movie_title, release_year, class); name it with --item_field\n"
    )
    args += ["--item_field=movie_id", "--write_yaml", "--properties_dir", tmp_path]
    assert _prepare("--recbole", renamed, *args) == 0
    assert capsys.readouterr().out.endswith(f"{out / 'movies'}\n")  # the folder's name
    assert "ITEM_ID_FIELD: movie_id " in (tmp_path / "movies.yaml").read_text()
    assert len(_rows(out / "movies" / "movies.text")) == 1682


def test_recbole_failure_leaves_nothing(tmp_path, capsys, monkeypatch, scientific):
    """The .text write fails after the copies were queued: no file, no temporary, no folder appears."""
    write = utils.AtomicFiles.write

    def failing_write(self, path, chunks):
        if str(path).endswith(".text"):
            raise OSError("disk full")
        return write(self, path, chunks)

    monkeypatch.setattr(utils.AtomicFiles, "write", failing_write)
    out, props = tmp_path / "out", tmp_path / "props"
    out.mkdir()
    args = ["--recbole", ML100K, "--text_fields=movie_title", "--name", "ml100k_text"]
    args += ["--output_root", out, "--write_yaml", "--properties_dir", props]
    assert _prepare(*args) == 2
    assert capsys.readouterr().err == "prepare: disk full\n"
    assert list(out.iterdir()) == [] and not props.exists()
    # the same for a CSV with text
    seqs, texts = scientific
    _write_csv(tmp_path / "my.csv", seqs, texts, list(seqs)[:5])
    assert (
        _prepare("--csv", tmp_path / "my.csv", "--name", "Mine", "--output_root", out)
        == 2
    )
    assert capsys.readouterr().err == "prepare: disk full\n"
    assert list(out.iterdir()) == []


def test_recbole_options_need_recbole(tmp_path, capsys, scientific):
    seqs, texts = scientific
    _write_csv(tmp_path / "my.csv", seqs, texts, list(seqs)[:2])
    args = ["--csv", tmp_path / "my.csv", "--name", "Mine", "--output_root", tmp_path]
    assert _prepare(*args, "--text_fields=title") == 2
    assert (
        capsys.readouterr().err
        == "prepare: --text_fields and --item_field go with --recbole\n"
    )
    assert not (tmp_path / "Mine").exists()
