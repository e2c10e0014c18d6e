"""Convert your own interaction data into RecBole atomic files under ``<output_root>/<name>/``.

The shipped datasets in ``dataset/`` are rebuilt from ``../shared/data`` by ``python dataset/build.py --all``.

Paths are relative to the working directory: ``--output_root`` defaults to ``dataset`` and ``--properties_dir`` to
``properties/dataset`` (``--write_yaml`` writes ``<properties_dir>/<name>.yaml`` there), as RecBole reads them when
run from the same folder::

    # any CSV with the header user,item,timestamp[,text] (or user_id,item_id,timestamp[,text]; any case); an
    # item's text is taken from its first row that has one. Every row is kept unless --kcore K is given.
    python -m recbole_transfer.data.prepare --csv my.csv --name MyData [--kcore 5] [--write_yaml]

    # Amazon Review Data (2018) "ratings only" CSV (no header: item,user,rating,timestamp) + metadata JSON lines
    # (.json or .json.gz; python-literal lines as in the 2014 files are accepted too). As the UniSRec preprocessing:
    # items without a title are dropped, identical (user, item, timestamp) rows are kept once, then iterative k-core
    # (users and items with >= --kcore interactions, repeated until stable, default 5); item text =
    # "title. categories. brand." (each field HTML-unescaped, quotes removed, whitespace collapsed).
    python -m recbole_transfer.data.prepare --amazon_ratings Office_Products.csv \\
        --amazon_meta meta_Office_Products.json.gz --name Office [--kcore 5] [--write_yaml]

    # a RecBole atomic dataset folder <D>/ (<D>.inter, <D>.item, ...): every <D>.* file copied byte for byte as
    # <name>.*, plus <name>.text built from the listed .item columns (joined with ". ", empty values skipped)
    python -m recbole_transfer.data.prepare --recbole path/to/ml-100k --text_fields=movie_title \\
        [--name ml100k_text] [--item_field=item_id] [--write_yaml]

Ids (``--csv``, ``--amazon_ratings``) are kept as they are, spaces included (atomic files are tab-separated): only
runs of whitespace holding a tab or a line break become one space (counted and printed) and the id is stripped; an
id that is then empty makes its row malformed.

Files written per dataset (TSV, RecBole ``name:type`` header, ``\\n`` line ends, UTF-8):

- ``<D>.inter``: ``user_id:token  item_id:token  timestamp:float``. Rows are grouped by user (users in order of first
  appearance in the source), each user's rows in time order (stable). Integer-valued times are written without a
  decimal point.
- ``<D>.text`` (sources with item text): ``item_id:token  text:token_seq``, one row per item of ``<D>.inter`` in
  order of first appearance there (``--recbole``: in ``.item`` file order, then the ``.inter`` items the ``.item``
  file lacks); tabs / line breaks become one space, the text is stripped; an item without text gets an empty field
  (counted and printed).
- ``<D>.user`` (only the shipped datasets that keep a source's user split): ``user_id:token  split:token``.

Every file goes to a temporary file in its target folder first (``recbole_transfer.utils.AtomicFiles``); the files
of one dataset are renamed into place together at the end, so a failure never leaves a half-written file. Bad input
stops with one line (``prepare: ...``, with ``file:line`` for a malformed row) on stderr and exit status 2. Only the
standard library is used (plus the stdlib-only ``recbole_transfer.utils``). ``write_dataset``, ``dataset_yaml`` and
the small helpers here are shared with ``dataset/build.py``.
"""

import argparse
import ast
import contextlib
import csv
import gzip
import html
import json
import math
import os
import re
import shutil
import sys
from collections import Counter, OrderedDict

from recbole_transfer.utils import AtomicFiles

DEFAULT_OUTPUT_ROOT = "dataset"  # relative to the working directory
DEFAULT_PROPERTIES_DIR = os.path.join("properties", "dataset")
# --kcore for --amazon_ratings, as the UniSRec preprocessing (--csv: none, every row is kept)
DEFAULT_AMAZON_KCORE = 5

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
# a run of whitespace holding a tab or a line break (str.splitlines' line breaks included) inside an id
_ID_BREAKS = re.compile(r"\s*[\t\n\r\v\f\x1c-\x1e\x85\u2028\u2029]\s*")
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


def _clean_id(raw):
    """An id as one TSV token: stripped, each run of whitespace holding a tab or a line break -> one space (other
    spaces are kept). Returns (id, whether a tab or line break was replaced)."""
    value = raw.strip()
    cleaned = _ID_BREAKS.sub(" ", value)
    return cleaned, cleaned != value


def _ids_note(changed):
    n = len(changed)
    return (
        f"{n:,} id{'' if n == 1 else 's'} had tabs or line breaks replaced by a space"
    )


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
    # utf-8-sig: a byte order mark (as spreadsheet exports write it) is not part of the first field
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _sorted_by_time(events):
    """{user: [(item, time), ...]} in input order -> each user's rows sorted by time (stable)."""
    return OrderedDict(
        (u, sorted(seq, key=lambda e: e[1])) for u, seq in events.items()
    )


# header names of a user CSV (any case) -> the column they are
CSV_COLUMNS = {
    "user": "user",
    "user_id": "user",
    "item": "item",
    "item_id": "item",
    "timestamp": "timestamp",
    "text": "text",
}
CSV_HEADER = "user,item,timestamp[,text] (or user_id,item_id,timestamp[,text])"


def _parse_time(raw, path, line_no):
    try:
        value = float(raw)
    except ValueError:
        raise PrepareError(
            f"prepare: {path}:{line_no}: timestamp '{one_line(raw)}' is not a number"
        ) from None
    if not math.isfinite(value):
        raise PrepareError(
            f"prepare: {path}:{line_no}: timestamp '{one_line(raw)}' is not finite"
        )
    return value


def _csv_records(path, f):
    """``(line number where the record starts, fields)`` of a CSV file; a csv error names its line."""
    reader = csv.reader(f)
    start = 1
    try:
        for row in reader:
            yield start, row
            start = reader.line_num + 1
    except csv.Error as err:
        raise PrepareError(
            f"prepare: {path}:{reader.line_num}: {one_line(err)}"
        ) from None


def _csv_columns(path, header):
    """``{user|item|timestamp|text: index}`` from the header row of a user CSV (line 1)."""
    where = {}
    for index, field in enumerate(header):
        column = CSV_COLUMNS.get(field.strip().lower())
        if column is None:
            raise PrepareError(
                f"prepare: {path}:1: unknown column '{one_line(field)}': the header must be {CSV_HEADER}"
            )
        if column in where:
            raise PrepareError(
                f"prepare: {path}:1: two {column} columns: the header must be {CSV_HEADER}"
            )
        where[column] = index
    for column in ("user", "item", "timestamp"):
        if column not in where:
            raise PrepareError(
                f"prepare: {path}:1: no {column} column: the header must be {CSV_HEADER}"
            )
    return where


def load_user_csv(path, k=None):
    """CSV with the header ``user,item,timestamp[,text]`` (``user_id`` / ``item_id`` accepted, any case); with ``k``
    the iterative k-core of its rows, else every row."""
    events, texts, changed = [], {}, set()
    with _open_text(path) as f:
        records = _csv_records(path, f)
        _, header = next(records, (1, []))
        where = _csv_columns(path, header)
        has_text = "text" in where
        for line_no, row in records:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise PrepareError(
                    f"prepare: {path}:{line_no}: expected {len(header)} columns "
                    f"({','.join(h.strip() for h in header)}), got {len(row)}"
                )
            ids = []
            for column in ("user", "item"):
                value, replaced = _clean_id(row[where[column]])
                if not value:
                    raise PrepareError(f"prepare: {path}:{line_no}: empty {column} id")
                if replaced:
                    changed.add((column, row[where[column]]))
                ids.append(value)
            user, item = ids
            ts = _parse_time(row[where["timestamp"]], path, line_no)
            events.append((user, item, ts))
            text = row[where["text"]] if has_text else None
            if has_text and item not in texts and one_line(text):
                texts[item] = text
    notes = [_ids_note(changed)] if changed else []
    if k is not None:
        kept = kcore(events, k)
        if events and not kept:
            raise PrepareError(
                f"prepare: {path}: no rows left after the {k}-core filter (of {len(events):,})"
            )
        notes.append(f"{len(events) - len(kept):,} rows dropped by the {k}-core filter")
        events = kept
    by_user = OrderedDict()
    for user, item, ts in events:
        by_user.setdefault(user, []).append((item, ts))
    return {
        "sequences": _sorted_by_time(by_user),
        "texts": texts if has_text else None,
        "notes": notes,
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


def load_amazon_raw(ratings_path, meta_path, k=DEFAULT_AMAZON_KCORE):
    """Amazon 2018 ratings CSV + metadata JSON lines -> k-core sequences with UniSRec-style item text."""
    texts = {}
    with _open_text(meta_path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = _parse_meta_line(line, meta_path, line_no)
            asin = record.get("asin")
            if isinstance(asin, str):
                asin = _clean_id(asin)[0]  # as the ratings' item ids
            if asin and asin not in texts and _unisrec_field(record.get("title")):
                texts[asin] = amazon_item_text(
                    record
                )  # first record of an ASIN wins, as in UniSRec
    events, seen, dropped_no_title, duplicates, changed = [], set(), 0, 0, set()
    with _open_text(ratings_path) as f:
        for line_no, row in _csv_records(ratings_path, f):
            if not row:
                continue
            if len(row) != 4:
                raise PrepareError(
                    f"prepare: {ratings_path}:{line_no}: expected item,user,rating,timestamp"
                )
            ids = []
            for column, raw in (("item", row[0]), ("user", row[1])):
                value, replaced = _clean_id(raw)
                if not value:
                    raise PrepareError(
                        f"prepare: {ratings_path}:{line_no}: empty {column} id"
                    )
                if replaced:
                    changed.add((column, raw))
                ids.append(value)
            item, user = ids
            ts = _parse_time(row[3], ratings_path, line_no)
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
    notes = [_ids_note(changed)] if changed else []
    notes += [
        f"{dropped_no_title:,} rows of items without a title dropped",
        f"{duplicates:,} duplicate rows dropped",
        f"{len(events) - len(kept):,} rows dropped by the {k}-core filter",
    ]
    return {"sequences": _sorted_by_time(by_user), "texts": texts, "notes": notes}


# --- a RecBole atomic dataset ---------------------------------------------------------------------------------------
def _atomic_header(path):
    """The field names of an atomic file's header (line 1: ``name:type`` fields)."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    for field in header:
        if not field.split(":", 1)[0] or ":" not in field:
            raise PrepareError(
                f"prepare: {path}:1: header fields must be name:type, got '{one_line(field)}'"
            )
    return [field.split(":", 1)[0] for field in header]


def _atomic_rows(path, width):
    """``(line number, fields)`` of an atomic file's rows (blank lines skipped, as RecBole's reader does)."""
    with open(path, encoding="utf-8") as f:
        f.readline()
        for line_no, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != width:
                raise PrepareError(
                    f"prepare: {path}:{line_no}: expected {width} tab-separated columns, got {len(fields)}"
                )
            yield line_no, fields


def load_recbole_dir(folder, text_fields, item_field="item_id"):
    """A RecBole atomic dataset folder ``<D>/``: its ``<D>.*`` files (to copy), the ``.inter`` counts and the item
    text built from the ``text_fields`` columns of ``<D>.item`` (joined with ". ", empty values skipped).

    Text rows: the items of ``<D>.item`` in file order that ``<D>.inter`` has (RecBole's item ids when only the
    ``.inter`` file is loaded), then the ``.inter`` items the ``.item`` file lacks, with empty text.
    """
    if not os.path.isdir(folder):
        raise PrepareError(f"prepare: --recbole {folder}: folder not found")
    token = os.path.basename(os.path.normpath(folder))
    inter_path = os.path.join(folder, f"{token}.inter")
    item_path = os.path.join(folder, f"{token}.item")
    if not os.path.isfile(inter_path):
        raise PrepareError(
            f"prepare: --recbole {folder}: no {token}.inter (a RecBole atomic dataset folder <D>/ holds <D>.inter)"
        )
    if not os.path.isfile(item_path):
        raise PrepareError(
            f"prepare: --recbole {folder}: no {token}.item (the item text is built from its columns)"
        )
    item_header = _atomic_header(item_path)
    if item_field not in item_header:
        raise PrepareError(
            f"prepare: {item_path}:1: no item id column {item_field} (columns: {', '.join(item_header)}); "
            "name it with --item_field"
        )
    if not text_fields:
        raise PrepareError(
            f"prepare: --text_fields=COLUMN[,COLUMN...] is required with --recbole "
            f"(columns of {item_path}: {', '.join(item_header)})"
        )
    for field in text_fields:
        if field not in item_header:
            raise PrepareError(
                f"prepare: --text_fields: {item_path} has no column {field} "
                f"(columns: {', '.join(item_header)})"
            )
    inter_header = _atomic_header(inter_path)
    if item_field not in inter_header:
        raise PrepareError(
            f"prepare: {inter_path}:1: no item id column {item_field} (columns: {', '.join(inter_header)})"
        )
    item_at = inter_header.index(item_field)
    user_at = inter_header.index("user_id") if "user_id" in inter_header else None
    inter_items, users, interactions = OrderedDict(), set(), 0
    for _, fields in _atomic_rows(inter_path, len(inter_header)):
        inter_items.setdefault(fields[item_at])
        if user_at is not None:
            users.add(fields[user_at])
        interactions += 1

    at, columns = item_header.index(item_field), [
        item_header.index(f) for f in text_fields
    ]
    texts = OrderedDict()
    for line_no, fields in _atomic_rows(item_path, len(item_header)):
        item = fields[at]
        if not item.strip():
            raise PrepareError(f"prepare: {item_path}:{line_no}: empty item id")
        if item in texts:
            raise PrepareError(
                f"prepare: {item_path}:{line_no}: item {item} appears twice"
            )
        texts[item] = ". ".join(v for v in (one_line(fields[i]) for i in columns) if v)
    rows = [(item, text) for item, text in texts.items() if item in inter_items]
    missing = [item for item in inter_items if item not in texts]
    notes = []
    if len(rows) < len(texts):
        notes.append(
            f"{len(texts) - len(rows):,} items of {token}.item without interactions left out of the text"
        )
    if missing:
        notes.append(f"{len(missing):,} items of {token}.inter not in {token}.item")
    rows += [(item, "") for item in missing]
    files = [
        (file[len(token) + 1 :], os.path.join(folder, file))
        for file in sorted(os.listdir(folder))
        if file.startswith(f"{token}.")
        and len(file) > len(token) + 1
        and os.path.isfile(os.path.join(folder, file))
    ]
    if any(suffix == "text" for suffix, _ in files):
        notes.append(f"{token}.text replaced")
        files = [(suffix, path) for suffix, path in files if suffix != "text"]
    return {
        "token": token,
        "files": files,
        "text_rows": rows,
        "inter_fields": inter_header,
        "counts": {
            "users": None if user_at is None else len(users),
            "items": len(inter_items),
            "interactions": interactions,
        },
        "notes": notes,
    }


def recbole_yaml(name, data, item_field, text_fields):
    """The yaml of a dataset copied by ``--recbole``: its ``.inter`` columns and the ``.text`` side file."""
    counts = data["counts"]
    return (
        "\n".join(
            [
                f"# {name}: RecBole atomic dataset {data['token']} ({counts['users']:,} users / "
                f"{counts['items']:,} items / {counts['interactions']:,} interactions); "
                f"text = {', '.join(text_fields)} of {data['token']}.item",
                "# written by python -m recbole_transfer.data.prepare",
                "USER_ID_FIELD: user_id           # (str) user id field",
                f"ITEM_ID_FIELD: {item_field}".ljust(33) + "# (str) item id field",
                "TIME_FIELD: timestamp            # (str) time field",
                "load_col:                        # (dict) columns to load per atomic file (.inter only)",
                f"  inter: [{', '.join(data['inter_fields'])}]",
                "text_side_file: text             # (str) suffix of the item text side file: <D>.text",
            ]
        )
        + "\n"
    )


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


@contextlib.contextmanager
def _removed_if_failed(folder):
    """A dataset folder that did not exist and stays empty because writing failed is removed again (AtomicFiles
    creates it for its temporaries)."""
    existed = os.path.isdir(folder)
    try:
        yield
    except BaseException:
        if not existed and os.path.isdir(folder):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when empty
        raise


def _check_name(name):
    if not name or not _NAME.match(name):
        raise PrepareError(
            "prepare: --name NAME is required (letters, digits, '_', '.', '-')"
        )
    if name in SHIPPED_NAMES:
        raise PrepareError(
            f"prepare: --name {name} is a shipped dataset; pick another name"
        )


def _yaml_path(args, name):
    return (
        os.path.join(args.properties_dir, f"{name}.yaml") if args.write_yaml else None
    )


def prepare_user_data(args):
    _check_name(args.name)
    if args.csv:
        k = args.kcore  # None: every row kept
        data = load_user_csv(args.csv, k)
        description = f"converted from {os.path.basename(args.csv)}" + (
            f", {k}-core" if k is not None else ""
        )
    else:
        if not args.amazon_meta:
            raise PrepareError(
                "prepare: --amazon_meta is required with --amazon_ratings"
            )
        k = DEFAULT_AMAZON_KCORE if args.kcore is None else args.kcore
        data = load_amazon_raw(args.amazon_ratings, args.amazon_meta, k)
        description = (
            f"Amazon 2018 raw files {os.path.basename(args.amazon_ratings)}, {k}-core; "
            "text = title. categories. brand"
        )
    folder = os.path.join(args.output_root, args.name)
    with _removed_if_failed(folder):
        counts, empty = write_converted(
            args.output_root,
            args.name,
            data,
            _yaml_path(args, args.name),
            lambda counts: dataset_yaml(
                args.name, description, counts, data.get("texts") is not None, "unix"
            ),
        )
    report_dataset(args.name, counts, empty, data.get("notes", []), folder)
    print(folder)


def prepare_recbole(args):
    """``--recbole DIR``: DIR's ``<D>.*`` files copied as ``<name>.*`` plus ``<name>.text`` (and the yaml)."""
    name = args.name or os.path.basename(os.path.normpath(args.recbole))
    _check_name(name)
    text_fields = [f.strip() for f in (args.text_fields or "").split(",") if f.strip()]
    item_field = args.item_field or "item_id"
    data = load_recbole_dir(args.recbole, text_fields, item_field)
    if args.write_yaml:
        inter = os.path.join(args.recbole, f"{data['token']}.inter")
        for field in ("user_id", "timestamp"):
            if field not in data["inter_fields"]:
                raise PrepareError(
                    f"prepare: --write_yaml: {inter} has no column {field} "
                    f"(columns: {', '.join(data['inter_fields'])}); write the yaml yourself"
                )
    folder = os.path.join(args.output_root, name)
    yaml_path = _yaml_path(args, name)
    lines = [TEXT_HEADER] + [f"{item}\t{text}\n" for item, text in data["text_rows"]]
    with _removed_if_failed(folder), AtomicFiles() as files:
        for suffix, source in data["files"]:
            files.write_with(
                os.path.join(folder, f"{name}.{suffix}"),
                lambda tmp, source=source: shutil.copyfile(source, tmp),
            )
        files.write(os.path.join(folder, f"{name}.text"), lines)
        if yaml_path:
            files.write(yaml_path, [recbole_yaml(name, data, item_field, text_fields)])
    counts = data["counts"]
    empty = sum(1 for _, text in data["text_rows"] if not text)
    copied = ", ".join(f"{data['token']}.{suffix}" for suffix, _ in data["files"])
    notes = [f"copied {copied}", f"text = {', '.join(text_fields)}"]
    notes += data["notes"] + ([f"{empty:,} items with empty text"] if empty else [])
    users = "" if counts["users"] is None else f"{counts['users']:,} users / "
    print(
        f"{name}: {users}{counts['items']:,} items / {counts['interactions']:,} interactions "
        f"({'; '.join(notes)}) -> {folder}"
    )
    print(folder)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m recbole_transfer.data.prepare",
        description="Convert your own interaction data into RecBole atomic files under <output_root>/<name>/ "
        "(the shipped datasets are rebuilt by python dataset/build.py --all).",
        epilog="Examples: --csv my.csv --name MyData [--kcore 5] | --amazon_ratings R.csv --amazon_meta "
        "meta_R.json.gz --name R | --recbole path/to/ml-100k --text_fields=movie_title --name ml100k_text",
    )
    parser.add_argument(
        "--csv",
        default=None,
        help="CSV with the header user,item,timestamp[,text] (user_id, item_id accepted; any case); ids may "
        "hold spaces; timestamps are numbers",
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
        "--recbole",
        default=None,
        metavar="DIR",
        help="RecBole atomic dataset folder <D>/ (<D>.inter, <D>.item, ...): its <D>.* files are copied as "
        "<name>.*, plus <name>.text from --text_fields",
    )
    parser.add_argument(
        "--text_fields",
        default=None,
        metavar="COLUMN[,COLUMN...]",
        help="--recbole: columns of <D>.item joined with '. ' (empty values skipped) into the item text",
    )
    parser.add_argument(
        "--item_field",
        default=None,
        help="--recbole: the item id column of <D>.item and <D>.inter (default item_id)",
    )
    parser.add_argument(
        "--kcore",
        type=int,
        default=None,
        metavar="K",
        help="iterative k-core filter: keep users and items with >= K interactions, repeated until stable "
        f"(1 keeps everything). Default: none for --csv (every row kept), {DEFAULT_AMAZON_KCORE} for "
        "--amazon_ratings",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="dataset name (required for --csv / --amazon_ratings; --recbole: default the folder's name)",
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


def check_arguments(args):
    """Options that do not go together, one line each."""
    if args.csv and args.amazon_ratings:
        raise PrepareError("prepare: give either --csv or --amazon_ratings, not both")
    if args.recbole and (args.csv or args.amazon_ratings):
        raise PrepareError(
            "prepare: give --recbole alone, not with --csv or --amazon_ratings"
        )
    if args.amazon_meta and not args.amazon_ratings:
        raise PrepareError("prepare: --amazon_meta goes with --amazon_ratings")
    if not args.recbole and (args.text_fields or args.item_field):
        raise PrepareError("prepare: --text_fields and --item_field go with --recbole")
    if args.kcore is not None:
        if args.recbole:
            raise PrepareError(
                "prepare: --kcore applies to --csv and --amazon_ratings; filter a RecBole dataset in its yaml "
                "(user_inter_num_interval, item_inter_num_interval)"
            )
        if args.kcore < 1:
            raise PrepareError("prepare: --kcore must be at least 1")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.csv or args.amazon_ratings or args.recbole):
        parser.print_usage(sys.stderr)
        print(
            "prepare: nothing to do: give --csv, --amazon_ratings or --recbole "
            "(shipped datasets: python dataset/build.py --all)",
            file=sys.stderr,
        )
        return 2

    def run():
        check_arguments(args)
        if args.recbole:
            prepare_recbole(args)
        else:
            prepare_user_data(args)

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
