"""Item text -> PLM vectors aligned to RecBole's item ids, cached on disk.

- ``read_item_text`` / ``align_item_text``: the ``<D>.text`` side file, checked and aligned to RecBole's item ids.
- ``item_text_matrix``: the aligned matrix (row 0 = padding = zeros), encoded by ``recbole_transfer.plm`` and
  cached on disk under a key over (dataset, encoder, pooling, max length, word drop, seed, text content); a cache
  hit never loads the encoder.
- ``word_drop``: the augmentation variant (each word dropped with a probability, seeded).
"""

import hashlib
import json
import os
import random
import re

import torch

from recbole_transfer import plm
from recbole_transfer.errors import UserInputError
from recbole_transfer.plm import DEFAULT_PLM, DEFAULT_TOKEN_BUDGET
from recbole_transfer.utils import atomic_torch_save

TEXT_HEADER = ["item_id:token", "text:token_seq"]


class ItemTextError(UserInputError):
    """A problem with item text; the message is one user-facing line."""


# --- the side file ----------------------------------------------------------------------------------------------
def read_item_text(path):
    """``{item token: text}`` from a ``<D>.text`` side file (TSV, header ``item_id:token<TAB>text:token_seq``)."""
    path = str(path)
    if not os.path.isfile(path):
        raise ItemTextError(
            f"item text file {path} not found: this model needs item text; "
            "run python -m recbole_transfer.data.prepare or add the file"
        )
    item_text = {}
    with open(path, encoding="utf-8", newline="\n") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if header != TEXT_HEADER:
            raise ItemTextError(
                f"{path}: header must be '{chr(9).join(TEXT_HEADER)}', got '{chr(9).join(header)}'"
            )
        for line_no, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 2:
                raise ItemTextError(
                    f"{path}:{line_no}: expected 2 tab-separated columns, got {len(fields)}"
                )
            token, text = fields
            if token in item_text:
                raise ItemTextError(f"{path}:{line_no}: item {token} appears twice")
            item_text[token] = text
    return item_text


def align_item_text(
    item_text, item_tokens, allow_extra=False, known_tokens=None, source="the text file"
):
    """Texts aligned to ``item_tokens`` (RecBole's ``field2id_token[item_id]``; index 0 is padding -> '').

    Every dataset item needs a text row. A row for an item outside ``known_tokens`` (default: ``item_tokens``) is an
    error unless ``allow_extra``; pass the dataset's tokens before filtering as ``known_tokens`` to accept rows of
    items that RecBole's filtering dropped while still catching rows for items the dataset never had.
    ``source`` names the file in the messages (e.g. ``Scientific.text``)."""
    tokens = list(item_tokens)
    missing = [t for t in tokens[1:] if t not in item_text]
    if missing:
        raise ItemTextError(
            f"{len(missing)} items of the dataset have no text in {source}, e.g. {', '.join(map(str, missing[:3]))}"
        )
    if not allow_extra:
        known = set(tokens[1:]) if known_tokens is None else set(known_tokens)
        extra = [t for t in item_text if t not in known]
        if extra:
            raise ItemTextError(
                f"{len(extra)} rows of {source} name items that are not in the dataset, e.g. {', '.join(extra[:3])}"
            )
    return [""] + [item_text[t] for t in tokens[1:]]


# --- augmentation -----------------------------------------------------------------------------------------------
def word_drop(text, ratio, rng):
    """Drop each whitespace-separated word with probability ``ratio``; at least one word survives if there was any.

    ``rng``: ``random.Random`` or ``numpy.random.Generator`` (both have ``.random()``); a seeded one is
    deterministic."""
    words = text.split()
    if not words or ratio <= 0:
        return text
    kept = [w for w in words if rng.random() >= ratio]
    if kept:
        return " ".join(kept)
    return words[min(int(rng.random() * len(words)), len(words) - 1)]


# --- the cached matrix ------------------------------------------------------------------------------------------
def cache_key(
    dataset_name, texts, plm_name, pooling, max_length, word_drop_ratio, seed
):
    """sha256 over the settings and the full text content (the seed only matters when words are dropped)."""
    digest = hashlib.sha256()
    meta = {
        "dataset": str(dataset_name),
        "plm": plm.plm_identity(plm_name),
        "pooling": pooling,
        "max_length": plm.effective_max_length(plm_name, max_length),
        "word_drop_ratio": float(word_drop_ratio),
        "seed": int(seed) if word_drop_ratio > 0 else None,
        "n": len(texts),
    }
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:24]


def cache_path(dataset_name, key, cache_dir):
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(dataset_name))[:80]
    return os.path.join(cache_dir, f"{safe}-{key}.pt")


def _load_cached(path, rows, logger):
    try:
        matrix = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # truncated/foreign file: encode again and overwrite
        if logger:
            logger.warning(
                f"ignoring unreadable text cache {path} ({type(err).__name__}); encoding again"
            )
        return None
    if (
        not isinstance(matrix, torch.Tensor)
        or matrix.dim() != 2
        or matrix.shape[0] != rows
    ):
        if logger:
            logger.warning(
                f"ignoring text cache {path} with unexpected content; encoding again"
            )
        return None
    return matrix


def item_text_matrix(
    dataset_name,
    texts_aligned,
    plm_name=DEFAULT_PLM,
    pooling="cls",
    max_length=512,
    cache_dir="saved/text_cache",
    device="cpu",
    word_drop_ratio=0.0,
    seed=2020,
    logger=None,
    show_progress=True,
    token_budget=DEFAULT_TOKEN_BUDGET,
):
    """[len(texts_aligned), plm size]; row 0 (padding) is zeros. Loaded from the on-disk cache when it exists
    (the encoder is then never loaded); otherwise encoded and written atomically.

    ``word_drop_ratio`` > 0 drops words (``word_drop``, seeded by ``seed``) before encoding: the augmented variant.
    """
    plm.check_pooling(pooling)
    texts_aligned = list(texts_aligned)
    key = cache_key(
        dataset_name,
        texts_aligned,
        plm_name,
        pooling,
        max_length,
        word_drop_ratio,
        seed,
    )
    path = cache_path(dataset_name, key, cache_dir)
    if os.path.isfile(path):
        matrix = _load_cached(path, len(texts_aligned), logger)
        if matrix is not None:
            if logger:
                logger.info(f"item text vectors loaded from {path}")
            return matrix

    texts = texts_aligned[1:]
    if word_drop_ratio > 0:
        rng = random.Random(seed)
        texts = [word_drop(t, word_drop_ratio, rng) for t in texts]
    tokenizer, model = plm.load_plm(plm_name, device=device)
    vectors = plm.encode_texts(
        texts,
        tokenizer,
        model,
        pooling=pooling,
        max_length=max_length,
        token_budget=token_budget,
        device=device,
        show_progress=show_progress,
        desc=f"Encode {dataset_name} item text",
    )
    matrix = torch.cat([torch.zeros(1, vectors.shape[1]), vectors], dim=0)
    atomic_torch_save(matrix, path)  # readers see the old file or the complete new one
    if logger:
        logger.info(f"item text vectors cached at {path}")
    return matrix
