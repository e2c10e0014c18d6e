"""Rebuild the shipped datasets in ``dataset/`` byte for byte from the read-only raw copies in ``../shared/data``.

    python dataset/build.py --all                    # all 12 datasets, their properties/dataset/<D>.yaml, dataset/README.md
    python dataset/build.py --only Scientific,Tools  # some of them
    python dataset/build.py --readme                 # only recount dataset/README.md
    # --source_root DIR (default <repo>/../shared/data), --output_root DIR (default: this folder, <repo>/dataset),
    # --properties_dir DIR (default <repo>/properties/dataset, where <D>.yaml goes)

This is a script of the repository, not part of the package: its defaults are found from where it sits. Your own
data is converted by ``python -m recbole_transfer.data.prepare`` (``--csv`` / ``--amazon_ratings``), whose writer
(``write_converted``, ``dataset_yaml``) and helpers are imported from there.

What each shipped file holds (see also ``recbole_transfer/data/prepare.py``):

- ``<D>.inter``: ``user_id:token  item_id:token  timestamp:float``, rows grouped by user (users in order of first
  appearance in the source), each user's rows in time order. Sources with dates or unix times store unix seconds;
  order-only sources store the 0-based position in the user's sequence (``0``, ``1``, ...), so RecBole's leave-one-out
  split (``LS``, order ``TO``) reproduces the source's split.
- ``<D>.text`` (datasets with item text): ``item_id:token  text:token_seq``, one row per item of ``<D>.inter``.
- ``<D>.user`` (Electronics, Sports, Toys): ``user_id:token  split:token`` with ``train`` | ``heldout``: the source's
  user split, kept for X-Cross's own protocol. ``load_col`` in the dataset yaml loads only ``.inter``.
- ``properties/dataset/<D>.yaml`` also names the dataset's ``domain_group`` (``amazon2018``, ``abe``, ``afk``): a
  method's default source domains are the other datasets of its family.

The counts of every dataset are checked against its source README before anything is written; the files of one
dataset (and its yaml) are renamed into place together at the end, so a failure never leaves a half-written file.
Bad input stops with one line (``prepare: ...``) on stderr and exit status 2.
"""

import argparse
import calendar
import html
import json
import os
import re
import sys
from collections import Counter, OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
DEFAULT_SOURCE_ROOT = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
DEFAULT_OUTPUT_ROOT = HERE
DEFAULT_PROPERTIES_DIR = os.path.join(REPO_ROOT, "properties", "dataset")

try:
    import recbole_transfer.data.prepare  # noqa: F401
except ModuleNotFoundError as err:  # not installed: use the package of this checkout
    if err.name != "recbole_transfer":
        raise
    sys.path.insert(0, REPO_ROOT)
from recbole_transfer.data.prepare import (  # noqa: E402
    INTER_HEADER,
    SHIPPED_NAMES,
    TEXT_HEADER,
    PrepareError,
    counts_of,
    dataset_yaml,
    exit_status,
    report_dataset,
    require_file,
    write_converted,
)
from recbole_transfer.utils import atomic_write_text  # noqa: E402

WRITTEN_BY = "python dataset/build.py"
SOURCE_INTER_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"
UNISREC_MAX_HISTORY = (
    50  # the UniSRec preprocessing keeps the last 50 items of every history
)

_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


# --- reading the sources ---------------------------------------------------------------------------------------------
def _require_dir(path):
    if not os.path.isdir(path):
        raise PrepareError(f"prepare: source folder {path} not found")
    return path


def _read_lines(path):
    """Lines of a text file without their line ends (``\\r\\n`` or ``\\n``); a trailing empty line is dropped."""
    with open(require_file(path), encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _read_json(path):
    with open(require_file(path), encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise PrepareError(f"prepare: {path} is not valid JSON ({err})") from None


def _read_index_map(path):
    """``token \\t index`` lines -> {index (str): token}; both sides must be unique."""
    index_to_token = {}
    for line_no, line in enumerate(_read_lines(path), start=1):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise PrepareError(f"prepare: {path}:{line_no}: expected 'token<TAB>index'")
        token, index = fields
        if index in index_to_token:
            raise PrepareError(
                f"prepare: {path}:{line_no}: index {index} appears twice"
            )
        index_to_token[index] = token
    if len(set(index_to_token.values())) != len(index_to_token):
        raise PrepareError(f"prepare: {path}: a token appears twice")
    return index_to_token


def _invert(mapping, path):
    """{token: index} (JSON) -> {str(index): token}, checked one to one."""
    inverted = {}
    for token, index in mapping.items():
        key = str(index[0] if isinstance(index, list) else index)
        if key in inverted:
            raise PrepareError(f"prepare: {path}: index {key} appears twice")
        inverted[key] = token
    return inverted


def _lookup(mapping, key, what, path):
    try:
        return mapping[str(key)]
    except KeyError:
        raise PrepareError(
            f"prepare: {path}: {what} index {key} has no entry in the id map"
        ) from None


def _positions(items):
    """Order-only sequence -> [(item, position)]."""
    return [(item, position) for position, item in enumerate(items)]


# --- shipped sources -------------------------------------------------------------------------------------------------
def _read_unisrec_split(path):
    lines = _read_lines(path)
    if not lines or lines[0] != SOURCE_INTER_HEADER:
        raise PrepareError(f"prepare: {path}: header must be '{SOURCE_INTER_HEADER}'")
    rows = []
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3:
            raise PrepareError(
                f"prepare: {path}:{line_no}: expected 3 tab-separated columns"
            )
        rows.append((fields[0], fields[1].split(), fields[2]))
    return rows


def _unisrec_sequence(train_rows, valid_row, test_row):
    """The full sequence implied by one user's rows (``train_rows`` in time order), or None if a row disagrees.

    Every row's history must equal the last min(position, 50) items before its target.
    """
    if train_rows:
        seq = list(train_rows[0][0]) + [target for _, target in train_rows]
    else:
        seq = list(valid_row[0])
    seq += [valid_row[1], test_row[1]]
    checks = list(train_rows) + [valid_row, test_row]
    start = len(seq) - len(checks)
    for offset, (history, target) in enumerate(checks):
        position = start + offset
        if (
            seq[position] != target
            or history != seq[max(0, position - UNISREC_MAX_HISTORY) : position]
        ):
            return None
    return seq


def load_unisrec(folder, name):
    """UniSRec split files -> full chronological sequences (raw ASIN / reviewerID tokens) and item text.

    ``<name>.train.inter`` holds one row per training prefix, histories truncated to 50. The UniSRec preprocessing
    writes a user's prefixes latest first (descending time); which order holds is checked per user, and every source
    row must agree with the reconstructed sequence."""
    _require_dir(folder)
    item_token = _read_index_map(os.path.join(folder, f"{name}.item2index"))
    user_token = _read_index_map(os.path.join(folder, f"{name}.user2index"))
    split_rows = {
        s: _read_unisrec_split(os.path.join(folder, f"{name}.{s}.inter"))
        for s in ("train", "valid", "test")
    }

    users = OrderedDict()  # first appearance over train, valid, test
    train = {}
    for user, history, target in split_rows["train"]:
        users.setdefault(user)
        train.setdefault(user, []).append((history, target))
    last = {}
    for split in ("valid", "test"):
        last[split] = {}
        for user, history, target in split_rows[split]:
            if user in last[split]:
                raise PrepareError(
                    f"prepare: {name}.{split}.inter: user {user} has more than one row"
                )
            users.setdefault(user)
            last[split][user] = (history, target)

    sequences = OrderedDict()
    order_found = Counter()
    for user in users:
        if user not in last["valid"] or user not in last["test"]:
            raise PrepareError(
                f"prepare: {name}: user {user} lacks a valid or test row"
            )
        rows = train.get(user, [])
        seq = None
        for order, candidate in (
            ("latest first", rows[::-1]),
            ("earliest first", rows),
        ):
            seq = _unisrec_sequence(candidate, last["valid"][user], last["test"][user])
            if seq is not None:
                order_found[order if len(rows) > 1 else "one or no train row"] += 1
                break
        if seq is None:
            raise PrepareError(
                f"prepare: {name}: user {user}: the source rows are not prefixes of one sequence"
            )
        sequences[_lookup(user_token, user, "user", f"{name}.user2index")] = _positions(
            [_lookup(item_token, item, "item", f"{name}.item2index") for item in seq]
        )

    text_path = os.path.join(folder, f"{name}.text")
    lines = _read_lines(text_path)
    if not lines or lines[0] != TEXT_HEADER.rstrip("\n"):
        raise PrepareError(
            f"prepare: {text_path}: header must be '{TEXT_HEADER.rstrip()}'"
        )
    texts = {}
    for line_no, line in enumerate(lines[1:], start=2):
        item, sep, text = line.partition("\t")
        if not sep:
            raise PrepareError(
                f"prepare: {text_path}:{line_no}: expected 'item<TAB>text'"
            )
        texts.setdefault(item, text)
    notes = [
        "train rows "
        + ", ".join(f"{k}: {v:,} users" for k, v in sorted(order_found.items()))
    ]
    return {"sequences": sequences, "texts": texts, "notes": notes}


def load_recformer(folder):
    """RecFormer fine-tune files: train.json (training users) + val.json (held-out users; test.json is the same
    file) -> whole per-user sequences with repeats kept; text = the title from meta_data.json, HTML-unescaped.
    """
    _require_dir(folder)
    path = lambda file: os.path.join(folder, file)  # noqa: E731
    item_token = _invert(_read_json(path("smap.json")), path("smap.json"))
    user_token = _invert(_read_json(path("umap.json")), path("umap.json"))
    titles = _read_json(path("meta_data.json"))
    sequences, split = OrderedDict(), {}
    for part, file in (("train", "train.json"), ("heldout", "val.json")):
        for user, items in _read_json(path(file)).items():
            token = _lookup(user_token, user, "user", path("umap.json"))
            if token in sequences:
                raise PrepareError(
                    f"prepare: {path(file)}: user {user} is also in an earlier file"
                )
            sequences[token] = _positions(
                [_lookup(item_token, i, "item", path("smap.json")) for i in items]
            )
            split[token] = part
    texts = {
        asin: html.unescape(title) if isinstance(title, str) else None
        for asin, title in titles.items()
    }
    repeats = sum(len(seq) - len({i for i, _ in seq}) for seq in sequences.values())
    notes = [
        f"{Counter(split.values())['heldout']:,} held-out users",
        f"{repeats:,} repeated items kept",
    ]
    return {"sequences": sequences, "texts": texts, "user_split": split, "notes": notes}


def date_to_unix(day):
    """``YYYY-MM-DD`` -> unix seconds at UTC midnight (int)."""
    match = _DATE.match(day)
    if not match:
        raise ValueError(day)
    year, month, dom = (int(x) for x in match.groups())
    if not (1 <= month <= 12 and 1 <= dom <= calendar.monthrange(year, month)[1]):
        raise ValueError(day)
    return calendar.timegm((year, month, dom, 0, 0, 0))


def load_recbole_dates(path):
    """RecBole ``.inter`` whose timestamp column holds dates: unix seconds at UTC midnight; every row kept; each
    user's rows ordered by (date, source row order)."""
    lines = _read_lines(path)
    if not lines or lines[0] != INTER_HEADER.rstrip("\n"):
        raise PrepareError(f"prepare: {path}: header must be '{INTER_HEADER.rstrip()}'")
    by_user = OrderedDict()
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3:
            raise PrepareError(
                f"prepare: {path}:{line_no}: expected 3 tab-separated columns"
            )
        user, item, day = fields
        try:
            seconds = date_to_unix(day)
        except ValueError:
            raise PrepareError(
                f"prepare: {path}:{line_no}: '{day}' is not a YYYY-MM-DD date"
            ) from None
        by_user.setdefault(user, []).append((seconds, line_no, item))
    sequences = OrderedDict(
        (u, [(item, ts) for ts, _, item in sorted(rows)]) for u, rows in by_user.items()
    )
    pairs = Counter((u, i) for u, seq in sequences.items() for i, _ in seq)
    reordered = sum(1 for rows in by_user.values() if rows != sorted(rows))
    notes = [
        f"{sum(c - 1 for c in pairs.values()):,} repeated (user, item) rows kept",
        f"{reordered:,} users' rows reordered by date",
    ]
    return {"sequences": sequences, "notes": notes}


def load_lcrec(folder, name):
    """LC-Rec/LETTER release: {user_idx: [item_idx, ...]} (chronological, no times) + ASIN / reviewerID maps."""
    _require_dir(folder)
    inter_path = os.path.join(folder, f"{name}.inter.json")
    item_path, user_path = os.path.join(folder, f"{name}.item2id"), os.path.join(
        folder, f"{name}.user2id"
    )
    inter = _read_json(inter_path)
    item_token, user_token = _read_index_map(item_path), _read_index_map(user_path)
    sequences = OrderedDict()
    for user, items in inter.items():
        sequences[_lookup(user_token, user, "user", user_path)] = _positions(
            [_lookup(item_token, i, "item", item_path) for i in items]
        )
    return {"sequences": sequences, "notes": []}


def load_abxi(folder, prefix, domain):
    """ABXI merged two-domain sequences -> one domain's part of every user's sequence (raw reviewerID / ASIN, unix
    seconds). The file is time-sorted per user; ties keep the file order."""
    _require_dir(folder)
    item_path, user_path = os.path.join(folder, "map_item_50.txt"), os.path.join(
        folder, "map_user_50.txt"
    )
    item_map = {}
    for asin, (index, dom) in _read_json(item_path).items():
        if str(index) in item_map:
            raise PrepareError(f"prepare: {item_path}: index {index} appears twice")
        item_map[str(index)] = (asin, int(dom))
    user_token = _invert(_read_json(user_path), user_path)
    path = os.path.join(folder, f"{prefix}_50_preprocessed.txt")
    sequences, unsorted, no_rows = OrderedDict(), 0, 0
    for line_no, line in enumerate(_read_lines(path), start=1):
        user, *events = line.split()
        seq = []
        for event in events:
            index, sep, ts = event.partition("|")
            if not sep or not ts.isdigit():
                raise PrepareError(
                    f"prepare: {path}:{line_no}: expected 'item|unix_time', got '{event}'"
                )
            asin, dom = _lookup(item_map, index, "item", item_path)
            if dom == domain:
                seq.append((asin, int(ts)))
        times = [ts for _, ts in seq]
        if times != sorted(times):
            unsorted += 1
            seq.sort(key=lambda e: e[1])
        token = _lookup(user_token, user, "user", user_path)
        if token in sequences:
            raise PrepareError(f"prepare: {path}:{line_no}: user {user} appears twice")
        if seq:
            sequences[token] = seq
        else:
            no_rows += 1
    notes = [f"{unsorted:,} users not time-sorted in the file"] if unsorted else []
    if no_rows:
        notes.append(f"{no_rows:,} users without rows in this domain left out")
    return {"sequences": sequences, "notes": notes}


# name -> how to build it. ``expected``: (users, items, interactions) as stated in the source README.
SHIPPED = OrderedDict()


def _ship(name, folder, description, expected, time, group, loader):
    SHIPPED[name] = {
        "folder": folder,
        "description": description,
        "expected": expected,
        "time": time,
        "group": group,
        "loader": loader,
    }


_ship(
    "Scientific",
    "amazon2018_scientific_unisrec",
    "Amazon 2018 Industrial_and_Scientific, UniSRec preprocessing; text = title. categories. brand",
    (8442, 4385, 59427),
    "position",
    "amazon2018",
    lambda src: load_unisrec(src, "Scientific"),
)
_ship(
    "Tools",
    "amazon2018_tools_unisrec",
    "Amazon 2018 Tools_and_Home_Improvement, UniSRec preprocessing; text = title. categories. brand",
    (10962, 5820, 66164),
    "position",
    "amazon2018",
    lambda src: load_unisrec(src, "Tools"),
)
for _name, _expected in (
    ("Electronics", (26319, 12031, 165541)),
    ("Sports", (19244, 10036, 120122)),
    ("Toys", (21342, 10457, 131485)),
):
    _ship(
        _name,
        f"amazon2018_xcross_recformer/{_name}",
        f"Amazon 2018 {_name}, RecFormer/X-Cross release; text = title (at most 8 words); .user = source user split",
        _expected,
        "position",
        "amazon2018",
        load_recformer,
    )
_ship(
    "Pantry",
    "amazon2018_pantry_instruments_recbole_idonly/Pantry",
    "Amazon 2018 Prime_Pantry, RecBole release with dates; ID only (the source's integer ids)",
    (12608, 4926, 109007),
    "date",
    "amazon2018",
    lambda src: load_recbole_dates(os.path.join(src, "Pantry.inter")),
)
for _name, _full, _expected in (
    ("Instruments", "Musical_Instruments", (24772, 9922, 206153)),
    ("Games", "Video_Games", (50546, 16859, 452989)),
):
    _ship(
        _name,
        f"amazon2018_games_instruments_idonly/{_name}",
        f"Amazon 2018 {_full}, LC-Rec/LETTER release; ID only",
        _expected,
        "position",
        "amazon2018",
        lambda src, n=_name: load_lcrec(src, n),
    )
for _name, _prefix, _dom, _full, _expected in (
    ("ABE_Beauty", "abe", 0, "Beauty", (4474, 10379, 50329)),
    ("ABE_Electronics", "abe", 1, "Electronics", (4474, 14188, 63800)),
    ("AFK_Food", "afk", 0, "Grocery_and_Gourmet_Food", (7144, 11837, 83663)),
    ("AFK_Kitchen", "afk", 1, "Home_and_Kitchen", (7144, 16258, 89885)),
):
    _ship(
        _name,
        f"amazon2014_crossdomain_abxi/{_prefix}",
        f"Amazon 2014 {_full}, ABXI {_prefix} pair domain {_dom} (same users as its partner); ID only",
        _expected,
        "unix",
        _prefix,
        lambda src, p=_prefix, d=_dom: load_abxi(src, p, d),
    )
if tuple(SHIPPED) != SHIPPED_NAMES:  # prepare.py refuses these names for user data
    raise RuntimeError(
        "dataset/build.py: SHIPPED and recbole_transfer.data.prepare.SHIPPED_NAMES disagree"
    )


# --- counts, README --------------------------------------------------------------------------------------------------
def dataset_counts(dataset_dir):
    """{'users', 'items', 'interactions'} counted from ``<dataset_dir>/<D>.inter`` (D = the folder name)."""
    name = os.path.basename(os.path.normpath(dataset_dir))
    path = os.path.join(dataset_dir, f"{name}.inter")
    lines = _read_lines(path)
    header = lines[0].split("\t") if lines else []
    fields = [h.split(":")[0] for h in header]
    if "user_id" not in fields or "item_id" not in fields:
        raise PrepareError(
            f"prepare: {path}: the header has no user_id / item_id column"
        )
    u, i = fields.index("user_id"), fields.index("item_id")
    users, items = set(), set()
    for line in lines[1:]:
        row = line.split("\t")
        users.add(row[u])
        items.add(row[i])
    return {"users": len(users), "items": len(items), "interactions": len(lines) - 1}


def _empty_texts(path):
    return sum(1 for line in _read_lines(path)[1:] if not line.partition("\t")[2])


def readme_text(output_root):
    rows = []
    for name, spec in SHIPPED.items():
        folder = os.path.join(output_root, name)
        if not os.path.isfile(os.path.join(folder, f"{name}.inter")):
            continue
        c = dataset_counts(folder)
        text_path = os.path.join(folder, f"{name}.text")
        if os.path.isfile(text_path):
            empty = _empty_texts(text_path)
            has_text = f"yes ({empty} empty)" if empty else "yes"
        else:
            has_text = "no"
        time = {"position": "position", "date": "unix s (date)", "unix": "unix s"}[
            spec["time"]
        ]
        rows.append(
            f"| {name} | {c['users']:,} | {c['items']:,} | {c['interactions']:,} | {has_text} | {time} | "
            f"`{spec['folder']}` |"
        )
    return (
        "# Shipped datasets\n\n"
        "RecBole atomic files converted from the real public data in `../shared/data` (each source folder has a README\n"
        "with its origin repository, commit, format and licence). Regenerate all of them, byte for byte, with\n\n"
        "```bash\npython dataset/build.py --all\n```\n\n"
        "- Scientific, Tools: the UniSRec releases; each user's full sequence is rebuilt from the train/valid/test\n"
        "  rows and checked against every row. Item text = title. categories. brand.\n"
        "- Electronics, Sports, Toys: the RecFormer/X-Cross releases (train.json and val.json users; text = titles of\n"
        "  at most 8 words). `<D>.user` keeps the source's user split (`train` / `heldout`) for X-Cross's protocol.\n"
        "- Pantry: a RecBole release with dates (integer ids only); Instruments, Games: the LC-Rec/LETTER releases.\n"
        "- ABE_Beauty / ABE_Electronics and AFK_Food / AFK_Kitchen: the two domains of an ABXI pair each, with the\n"
        "  same reviewer-ID user tokens in both domains.\n"
        "- Tokens are the raw Amazon ASINs and reviewer IDs wherever the source has them (Pantry: the source's ids).\n"
        "- `timestamp`: unix seconds where the source has times or dates (dates: UTC midnight). Order-only sources\n"
        "  store the 0-based position in the user's sequence, so RecBole's leave-one-out split (`LS`, order `TO`)\n"
        "  reproduces the source's split.\n"
        "- `<D>.text` is a side file (`item_id:token  text:token_seq`) read by `recbole_transfer.data.text`; the\n"
        "  dataset yaml loads only `.inter` (`load_col`).\n"
        "- `properties/dataset/<D>.yaml` names the dataset's `domain_group` (`amazon2018`, `abe`, `afk`): a method's\n"
        "  default source domains are the other datasets of its family.\n"
        "- ml-100k is read from the installed `recbole` package (`--dataset=ml-100k`) and is not copied here.\n\n"
        "Counts computed from the files by `dataset_counts` in `dataset/build.py`:\n\n"
        "| dataset | users | items | interactions | item text | timestamp | source (`../shared/data/...`) |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def write_readme(output_root):
    atomic_write_text(os.path.join(output_root, "README.md"), readme_text(output_root))


# --- driver --------------------------------------------------------------------------------------------------------
def prepare_shipped(names, source_root, output_root, properties_dir):
    unknown = [n for n in names if n not in SHIPPED]
    if unknown:
        raise PrepareError(
            f"prepare: unknown dataset '{unknown[0]}' (shipped: {', '.join(SHIPPED)})"
        )
    _require_dir(source_root)
    for name in names:
        spec = SHIPPED[name]
        data = spec["loader"](_require_dir(os.path.join(source_root, spec["folder"])))
        found = counts_of(data["sequences"])
        if (found["users"], found["items"], found["interactions"]) != spec["expected"]:
            raise PrepareError(
                f"prepare: {name}: counted {found['users']}/{found['items']}/{found['interactions']} "
                f"users/items/interactions, the source README states {'/'.join(map(str, spec['expected']))}"
            )
        yaml_path = (
            os.path.join(properties_dir, f"{name}.yaml") if properties_dir else None
        )
        counts, empty = write_converted(
            output_root,
            name,
            data,
            yaml_path,
            lambda counts, spec=spec, data=data: dataset_yaml(
                name,
                spec["description"],
                counts,
                data.get("texts") is not None,
                spec["time"],
                source=spec["folder"],
                domain_group=spec["group"],
                written_by=WRITTEN_BY,
            ),
        )
        report_dataset(
            name, counts, empty, data.get("notes", []), os.path.join(output_root, name)
        )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python dataset/build.py",
        description="Rebuild the shipped datasets byte for byte from the raw copies in ../shared/data "
        "(your own data: python -m recbole_transfer.data.prepare).",
        epilog="Examples: --all | --only Scientific,Tools | --readme",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="rebuild every shipped dataset and <output_root>/README.md",
    )
    parser.add_argument(
        "--only",
        default=None,
        metavar="D1,D2",
        help=f"comma-separated subset of: {', '.join(SHIPPED)}",
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="rewrite <output_root>/README.md from the files",
    )
    parser.add_argument(
        "--source_root",
        default=DEFAULT_SOURCE_ROOT,
        help="default: <repo>/../shared/data",
    )
    parser.add_argument(
        "--output_root",
        default=DEFAULT_OUTPUT_ROOT,
        help="default: <repo>/dataset (this script's folder)",
    )
    parser.add_argument(
        "--properties_dir",
        default=DEFAULT_PROPERTIES_DIR,
        help="default: <repo>/properties/dataset",
    )
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.all or args.only or args.readme):
        parser.print_usage(sys.stderr)
        print("prepare: nothing to do: give --all, --only or --readme", file=sys.stderr)
        return 2

    def run():
        if args.all or args.only:
            names = (
                list(SHIPPED)
                if args.all
                else [n.strip() for n in args.only.split(",") if n.strip()]
            )
            prepare_shipped(
                names, args.source_root, args.output_root, args.properties_dir
            )
        if args.all or args.readme:
            write_readme(args.output_root)

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
