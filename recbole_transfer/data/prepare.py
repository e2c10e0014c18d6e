"""Convert your own interaction data into RecBole atomic files under ``<output_root>/<name>/``.

The shipped datasets in ``dataset/`` are rebuilt from ``../shared/data`` by ``python dataset/build.py --all``.

Paths are relative to the working directory: ``--output_root`` defaults to ``dataset`` and ``--properties_dir`` to
``properties/dataset`` (``--write_yaml`` writes ``<properties_dir>/<name>.yaml`` there), as RecBole reads them when
run from the same folder::

    # any CSV with the header user,item,timestamp[,text]; an item's text is taken from its first row that has one
    python -m recbole_transfer.data.prepare --csv my.csv --name MyData [--write_yaml]

    # Amazon Review Data (2018) "ratings only" CSV (no header: item,user,rating,timestamp) + metadata JSON lines
    # (.json or .json.gz; python-literal lines as in the 2014 files are accepted too). As the UniSRec preprocessing:
    # items without a title are dropped, identical (user, item, timestamp) rows are kept once, then iterative k-core
    # (users and items with >= --kcore interactions, repeated until stable, default 5); item text =
    # "title. categories. brand." (each field HTML-unescaped, quotes removed, whitespace collapsed).
    python -m recbole_transfer.data.prepare --amazon_ratings Office_Products.csv \\
        --amazon_meta meta_Office_Products.json.gz --name Office [--kcore 5] [--write_yaml]

Files written per dataset (TSV, RecBole ``name:type`` header, ``\\n`` line ends, UTF-8):

- ``<D>.inter``: ``user_id:token  item_id:token  timestamp:float``. Rows are grouped by user (users in order of first
  appearance in the source), each user's rows in time order (stable). Integer-valued times are written without a
  decimal point.
- ``<D>.text`` (sources with item text): ``item_id:token  text:token_seq``, one row per item of ``<D>.inter`` in
  order of first appearance there; tabs / line breaks become one space, the text is stripped; an item without text
  gets an empty field (counted and printed).
- ``<D>.user`` (only the shipped datasets that keep a source's user split): ``user_id:token  split:token``.

Every file goes to a temporary file in its target folder first (``recbole_transfer.utils.AtomicFiles``); the files
of one dataset are renamed into place together at the end, so a failure never leaves a half-written file. Bad input
stops with one line (``prepare: ...``) on stderr and exit status 2. Only the standard library is used (plus the
stdlib-only ``recbole_transfer.utils``). ``write_dataset``, ``dataset_yaml`` and the small helpers here are shared
with ``dataset/build.py``.
"""

import argparse
import ast
import csv
import gzip
import html
import json
import math
import os
import re
import sys
from collections import Counter, OrderedDict

from recbole_transfer.utils import AtomicFiles

DEFAULT_OUTPUT_ROOT = "dataset"  # relative to the working directory
DEFAULT_PROPERTIES_DIR = os.path.join("properties", "dataset")

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
TEXT_HEADER = "item_id:token\ttext:token_seq\n"
USER_HEADER = "user_id:token\tsplit:token\n"

# The datasets ``python dataset/build.py`` ships (its SHIPPED table lists exactly these): user data may not take
# their names.
SHIPPED_NAMES = (
    "Scientific",
    "Tools",
    "Electronics",
    "Sports",
    "Toys",
    "Pantry",
    "Instruments",
    "Games",
    "ABE_Beauty",
    "ABE_Electronics",
    "AFK_Food",
    "AFK_Kitchen",
)

_LINE_BREAKS = re.compile(r"[\t\r\n]+")
_WHITESPACE = re.compile(r"\s+")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PrepareError(ValueError):
    """Bad input to the converter; the message is one line."""


# --- small helpers ---------------------------------------------------------------------------------------------------
def one_line(text):
    """Item text as one TSV field: missing / NaN -> '', tabs and line breaks -> one space, stripped."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    return _LINE_BREAKS.sub(" ", str(text)).strip()


def format_time(value):
    """Integer-valued times without a decimal point (``3``), others with repr (``3.5``): stable and exact."""
    value = float(value)
    if not math.isfinite(value):
        raise PrepareError(f"prepare: timestamp {value} is not finite")
    return str(int(value)) if value.is_integer() else repr(value)


def require_file(path):
    if not os.path.isfile(path):
        raise PrepareError(f"prepare: source file {path} not found")
    return path


def counts_of(sequences):
    return {
        "users": len(sequences),
        "items": len({item for seq in sequences.values() for item, _ in seq}),
        "interactions": sum(len(seq) for seq in sequences.values()),
    }


def write_dataset(files, output_root, name, sequences, texts=None, user_split=None):
    """Queue ``<D>.inter`` (+ ``.text``, ``.user``) on ``files`` (an AtomicFiles).

    ``sequences``: ordered {user: [(item, time), ...]} in time order; ``texts``: {item: text} or None;
    ``user_split``: {user: split} or None. Returns (counts, number of items whose text is empty).
    """
    if not sequences:
        raise PrepareError(f"prepare: {name}: no interactions to write")
    folder = os.path.join(output_root, name)
    files.write(
        os.path.join(folder, f"{name}.inter"),
        [INTER_HEADER]
        + [
            f"{user}\t{item}\t{format_time(ts)}\n"
            for user, seq in sequences.items()
            for item, ts in seq
        ],
    )
    empty = 0
    if texts is not None:
        items = OrderedDict.fromkeys(
            item for seq in sequences.values() for item, _ in seq
        )
        lines = [TEXT_HEADER]
        for item in items:
            text = one_line(texts.get(item))
            empty += not text
            lines.append(f"{item}\t{text}\n")
        files.write(os.path.join(folder, f"{name}.text"), lines)
    if user_split is not None:
        files.write(
            os.path.join(folder, f"{name}.user"),
            [USER_HEADER] + [f"{u}\t{user_split[u]}\n" for u in sequences],
        )
    return counts_of(sequences), empty


def write_converted(output_root, name, data, yaml_path=None, yaml_for=None):
    """A converted dataset (``data``: ``sequences``, optional ``texts`` and ``user_split``) and, with ``yaml_path``,
    its yaml ``yaml_for(counts)``: all files appear together or none does. Returns (counts, empty texts).
    """
    with AtomicFiles() as files:
        counts, empty = write_dataset(
            files,
            output_root,
            name,
            data["sequences"],
            data.get("texts"),
            data.get("user_split"),
        )
        if yaml_path:
            files.write(yaml_path, [yaml_for(counts)])
    return counts, empty


# --- yaml ------------------------------------------------------------------------------------------------------------
_TIME_NOTES = {
    "position": "order-only source: the position in the user's sequence (0, 1, ...)",
    "date": "unix seconds at UTC midnight of the source's date",
    "unix": "unix seconds from the source",
}
DOMAIN_GROUP_NOTE = (
    "(str) Family of shipped domains: a method's default source domains are the other datasets of "
    "its family"
)


def dataset_yaml(
    name,
    description,
    counts,
    has_text,
    time,
    source=None,
    domain_group=None,
    written_by="python -m recbole_transfer.data.prepare",
):
    """The text of ``<properties_dir>/<name>.yaml``. ``time``: a key of ``_TIME_NOTES``; ``source``: the folder under
    ``../shared/data`` the dataset was built from and ``domain_group``: its family (both only for the shipped datasets,
    written by ``dataset/build.py``); ``written_by``: the command named in the second line.
    """
    lines = [
        f"# {name}: {description} ({counts['users']:,} users / {counts['items']:,} items / "
        f"{counts['interactions']:,} interactions)",
        f"# written by {written_by}"
        + (f" from ../shared/data/{source}" if source else ""),
        "USER_ID_FIELD: user_id           # (str) user id field",
        "ITEM_ID_FIELD: item_id           # (str) item id field",
        f"TIME_FIELD: timestamp            # (str) time field; {_TIME_NOTES[time]}",
    ]
    if domain_group:
        lines.append(
            f"domain_group: {domain_group}".ljust(33) + f"# {DOMAIN_GROUP_NOTE}"
        )
    lines += [
        "load_col:                        # (dict) columns to load per atomic file (.inter only)",
        "  inter: [user_id, item_id, timestamp]",
    ]
    if has_text:
        lines.append(
            "text_side_file: text             # (str) suffix of the item text side file: <D>.text"
        )
    return "\n".join(lines) + "\n"


# --- user data -------------------------------------------------------------------------------------------------------
def _open_text(path):
    require_file(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _sorted_by_time(events):
    """{user: [(item, time), ...]} in input order -> each user's rows sorted by time (stable)."""
    return OrderedDict(
        (u, sorted(seq, key=lambda e: e[1])) for u, seq in events.items()
    )


def load_user_csv(path):
    """CSV with the header ``user,item,timestamp[,text]``."""
    events, texts = OrderedDict(), {}
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if not {"user", "item", "timestamp"} <= set(fields):
            raise PrepareError(
                f"prepare: {path}: the header must be user,item,timestamp[,text], got {','.join(fields)}"
            )
        has_text = "text" in fields
        for line_no, row in enumerate(reader, start=2):
            user, item = (row["user"] or "").strip(), (row["item"] or "").strip()
            if not user or not item or any(c in user + item for c in "\t\r\n "):
                raise PrepareError(
                    f"prepare: {path}:{line_no}: user and item must be non-empty without whitespace"
                )
            try:
                ts = float(row["timestamp"])
                format_time(ts)
            except (TypeError, ValueError):
                raise PrepareError(
                    f"prepare: {path}:{line_no}: timestamp '{row['timestamp']}' is not a number"
                ) from None
            events.setdefault(user, []).append((item, ts))
            if has_text and item not in texts and one_line(row.get("text")):
                texts[item] = row["text"]
    return {
        "sequences": _sorted_by_time(events),
        "texts": texts if has_text else None,
        "notes": [],
    }


def kcore(events, k):
    """Iteratively keep rows whose user and item both have >= k rows, until nothing changes."""
    while True:
        users = Counter(e[0] for e in events)
        items = Counter(e[1] for e in events)
        kept = [e for e in events if users[e[0]] >= k and items[e[1]] >= k]
        if len(kept) == len(events):
            return kept
        events = kept


def _unisrec_field(value):
    """One metadata field cleaned as the UniSRec preprocessing does (lists joined by spaces, HTML entities decoded,
    double quotes and line breaks removed, fields of 2000+ characters dropped), whitespace collapsed, trailing dots
    removed (the text adds exactly one)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, list):
        if value and all(
            isinstance(v, list) for v in value
        ):  # 2014 "categories": a list of category paths
            value = value[0]
        value = " ".join(str(v) for v in value)
    text = re.sub(r'["\n\r]', "", html.unescape(str(value)))
    if len(text) >= 2000:
        return ""
    return _WHITESPACE.sub(" ", text).strip().rstrip(".").strip()


def amazon_item_text(meta):
    """``title. categories. brand.`` (empty fields left out), as the UniSRec ``.text`` files."""
    parts = [_unisrec_field(meta.get("title"))]
    parts.append(_unisrec_field(meta.get("category", meta.get("categories"))))
    parts.append(_unisrec_field(meta.get("brand")))
    parts = [p for p in parts if p]
    return ". ".join(parts) + "." if parts else ""


def _parse_meta_line(line, path, line_no):
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise PrepareError(
                f"prepare: {path}:{line_no}: neither a JSON nor a Python-literal record"
            ) from None
    if not isinstance(record, dict):
        raise PrepareError(f"prepare: {path}:{line_no}: expected one object per line")
    return record


def load_amazon_raw(ratings_path, meta_path, k=5):
    """Amazon 2018 ratings CSV + metadata JSON lines -> k-core sequences with UniSRec-style item text."""
    texts = {}
    with _open_text(meta_path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = _parse_meta_line(line, meta_path, line_no)
            asin = record.get("asin")
            if asin and asin not in texts and _unisrec_field(record.get("title")):
                texts[asin] = amazon_item_text(
                    record
                )  # first record of an ASIN wins, as in UniSRec
    events, seen, dropped_no_title, duplicates = [], set(), 0, 0
    with _open_text(ratings_path) as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 4:
                raise PrepareError(
                    f"prepare: {ratings_path}:{line_no}: expected item,user,rating,timestamp"
                )
            item, user, _, ts = (x.strip() for x in row)
            try:
                ts = float(ts)
                format_time(ts)
            except ValueError:
                raise PrepareError(
                    f"prepare: {ratings_path}:{line_no}: timestamp '{ts}' is not a number"
                ) from None
            if item not in texts:
                dropped_no_title += 1
                continue
            key = (user, item, ts)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            events.append(key)
    kept = kcore(events, k)
    by_user = OrderedDict()
    for user, item, ts in kept:
        by_user.setdefault(user, []).append((item, ts))
    notes = [
        f"{dropped_no_title:,} rows of items without a title dropped",
        f"{duplicates:,} duplicate rows dropped",
        f"{len(events) - len(kept):,} rows dropped by the {k}-core filter",
    ]
    return {"sequences": _sorted_by_time(by_user), "texts": texts, "notes": notes}


# --- drivers ---------------------------------------------------------------------------------------------------------
def report_dataset(name, counts, empty, notes, folder):
    extra = list(notes) + ([f"{empty:,} items with empty text"] if empty else [])
    print(
        f"{name}: {counts['users']:,} users / {counts['items']:,} items / {counts['interactions']:,} interactions"
        + (f" ({'; '.join(extra)})" if extra else "")
        + f" -> {folder}"
    )


def exit_status(action):
    """Run ``action()``: 0, or 2 after printing the one-line message of a bad input on stderr."""
    try:
        action()
    except PrepareError as err:
        print(str(err).splitlines()[0], file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        print(f"prepare: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


def prepare_user_data(args):
    if not args.name or not _NAME.match(args.name):
        raise PrepareError(
            "prepare: --name NAME is required (letters, digits, '_', '.', '-')"
        )
    if args.name in SHIPPED_NAMES:
        raise PrepareError(
            f"prepare: --name {args.name} is a shipped dataset; pick another name"
        )
    if args.csv:
        data = load_user_csv(args.csv)
        description = f"converted from {os.path.basename(args.csv)}"
    else:
        if not args.amazon_meta:
            raise PrepareError(
                "prepare: --amazon_meta is required with --amazon_ratings"
            )
        if args.kcore < 1:
            raise PrepareError("prepare: --kcore must be at least 1")
        data = load_amazon_raw(args.amazon_ratings, args.amazon_meta, args.kcore)
        description = (
            f"Amazon 2018 raw files {os.path.basename(args.amazon_ratings)}, {args.kcore}-core; "
            "text = title. categories. brand"
        )
    folder = os.path.join(args.output_root, args.name)
    yaml_path = (
        os.path.join(args.properties_dir, f"{args.name}.yaml")
        if args.write_yaml
        else None
    )
    counts, empty = write_converted(
        args.output_root,
        args.name,
        data,
        yaml_path,
        lambda counts: dataset_yaml(
            args.name, description, counts, data.get("texts") is not None, "unix"
        ),
    )
    report_dataset(args.name, counts, empty, data.get("notes", []), folder)
    print(folder)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m recbole_transfer.data.prepare",
        description="Convert your own interaction data into RecBole atomic files "
        "(the shipped datasets are rebuilt by python dataset/build.py --all).",
        epilog="Examples: --csv my.csv --name MyData | --amazon_ratings R.csv --amazon_meta meta_R.json.gz --name R",
    )
    parser.add_argument(
        "--csv", default=None, help="CSV with the header user,item,timestamp[,text]"
    )
    parser.add_argument(
        "--amazon_ratings",
        default=None,
        help="Amazon 2018 ratings CSV: item,user,rating,timestamp",
    )
    parser.add_argument(
        "--amazon_meta",
        default=None,
        help="Amazon 2018 metadata JSON lines (.json or .json.gz)",
    )
    parser.add_argument(
        "--kcore",
        type=int,
        default=5,
        help="k of the iterative k-core filter (default 5)",
    )
    parser.add_argument(
        "--name", default=None, help="dataset name for --csv / --amazon_ratings"
    )
    parser.add_argument(
        "--write_yaml",
        action="store_true",
        help="also write <properties_dir>/<name>.yaml",
    )
    parser.add_argument(
        "--output_root",
        default=DEFAULT_OUTPUT_ROOT,
        help="folder that receives <name>/ (default: dataset, relative to the working directory)",
    )
    parser.add_argument(
        "--properties_dir",
        default=DEFAULT_PROPERTIES_DIR,
        help="folder of --write_yaml's <name>.yaml (default: properties/dataset, relative to the "
        "working directory)",
    )
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.csv or args.amazon_ratings):
        parser.print_usage(sys.stderr)
        print(
            "prepare: nothing to do: give --csv or --amazon_ratings (shipped datasets: python dataset/build.py --all)",
            file=sys.stderr,
        )
        return 2

    def run():
        if args.csv and args.amazon_ratings:
            raise PrepareError(
                "prepare: give either --csv or --amazon_ratings, not both"
            )
        prepare_user_data(args)

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
