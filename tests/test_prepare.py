"""The converters: dataset/build.py rebuilds the shipped files identically and they match the sources;
recbole_transfer.data.prepare converts user data.

Every row used here comes from ../shared/data or from the committed dataset/ files made from it.
"""

import ast
import csv
import gzip
import importlib.util
import json
import random
import sys
from collections import Counter

import pytest

from recbole_transfer import utils
from recbole_transfer.data import prepare

from conftest import DATASET_DIR, REPO, SHARED_DATA

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
        "prepare: nothing to do: give --csv or --amazon_ratings "
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
        build.write_dataset is prepare.write_dataset
        and build.dataset_yaml is prepare.dataset_yaml
    )
    assert (
        build.PrepareError is prepare.PrepareError
        and build.AtomicFiles is utils.AtomicFiles
    )
