"""Behavior-tuned PLM item initialization for SASRec and BERT4Rec.

Reference:
    Zekai Qu, Ruobing Xie, Chaojun Xiao, Xingwu Sun, Zhanhui Kang. "The Elephant in the Room: Rethinking the Usage
    of Pre-trained Language Model in Sequential Recommendation." RecSys 2024.

``BehaviorTuning`` tunes the text encoder on interaction sequences (RecFormer-like): the text of a user's recent
items (most recent first, truncated) and the text of the next item go through the same encoder, and an in-batch
item-item contrastive loss pulls them together. LoRA through peft or full tuning (``plm_tuning``). The tuned encoder
is saved as a folder (peft ``save_pretrained`` for LoRA) with ``behavior_tuning.json`` saying what it was tuned on.
PT = tuned on source domains; FT = PT tuned further on the target's training split (``init_plm_path`` = the PT).

``PLMInitSASRec`` / ``PLMInitBERT4Rec`` are stock RecBole SASRec / BERT4Rec whose item table starts from the item
vectors of the encoder ``init_type`` picks (none | plm = vanilla, the paper's LF | pretrain = PT | finetune = FT),
``embedding_mode`` freeze | trainable | further_all | further_emb (the last two start from a freeze-mode checkpoint).
No encoder weights live in the model: serving costs what stock SASRec / BERT4Rec cost.
"""

import json
import os
import time

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.sequential_recommender import BERT4Rec, SASRec

from recbole_transfer import plm
from recbole_transfer.errors import UserInputError
from recbole_transfer.model.positions import EveryPositionOutput
from recbole_transfer.plm import TUNING_INFO, PLMInitError, read_tuning_info
from recbole_transfer.utils import (
    atomic_folder,
    dataset_names,
    find_path,
    input_stage,
    is_unset,
    load_checkpoint,
)

PROJECTIONS = ("none", "pca")
TUNINGS = ("lora", "full")


# --- behavior tuning --------------------------------------------------------------------------------------------
class BehaviorTuning(SequentialRecommender):
    """The text encoder under behavior tuning; ``calculate_loss`` is the in-batch item-item contrastive loss.
    It ranks nothing: its trainer (``trainer.lm.BehaviorTuningTrainer``) only trains and exports the encoder.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.config = config
        self.tuning = config["plm_tuning"]
        if self.tuning not in TUNINGS:
            raise PLMInitError(
                f"plm_tuning must be one of {', '.join(TUNINGS)}; got '{self.tuning}'"
            )
        self.pooling = config["plm_pooling"]
        self.temperature = config["bt_temperature"]
        self.seq_max_length = config["bt_seq_max_length"]
        self.item_max_length = config["bt_item_max_length"]
        self.init_plm_path = None
        if not is_unset(config["init_plm_path"]):
            self.init_plm_path, _ = read_tuning_info(config["init_plm_path"])
        # the encoder this run starts from (a tuned folder is loaded with its LoRA merged in)
        self.base_name = (
            os.path.abspath(self.init_plm_path)
            if self.init_plm_path
            else config["plm_name"]
        )

        # define layers: the encoder, with LoRA adapters when plm_tuning=lora
        self.tokenizer, encoder = plm.load_plm(self.base_name)
        if self.tuning == "lora":
            from peft import LoraConfig, get_peft_model

            layers = config["lora_layers"]
            lora = LoraConfig(
                r=config["lora_r"],
                lora_alpha=config["lora_alpha"],
                lora_dropout=config["lora_dropout"],
                target_modules=list(config["lora_target_modules"]),
                layers_to_transform=(
                    None if layers is None else [int(i) for i in layers]
                ),
            )
            encoder = get_peft_model(encoder, lora)
        self.encoder = encoder.train()
        # every item's text as token ids, once; row 0 is the padding item
        self.item_tokens = plm.ItemTokens(
            self.tokenizer, dataset.item_texts, self.item_max_length
        )

    def sequence_tokens(self, history):
        """[CLS] newest item [SEP] the one before [SEP] ... cut at ``bt_seq_max_length`` tokens."""
        return self.item_tokens.history(history, self.seq_max_length)

    def encode(self, token_lists):
        input_ids, attention_mask = plm.pad_batch(token_lists, self.item_tokens.pad_id)
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(
            self.device
        )
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        return plm.pool(hidden, attention_mask, self.pooling)

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ].tolist()
        lengths = interaction[self.ITEM_SEQ_LEN].tolist()
        targets = interaction[self.POS_ITEM_ID]
        sequences = self.encode(
            [self.sequence_tokens(seq[:n]) for seq, n in zip(item_seq, lengths)]
        )
        items = self.encode([self.item_tokens.item(i) for i in targets.tolist()])
        logits = (
            F.normalize(sequences, dim=-1)
            @ F.normalize(items, dim=-1).T
            / self.temperature
        )
        # another row with the same next item is not a negative
        same = (targets.unsqueeze(1) == targets.unsqueeze(0)) & ~torch.eye(
            len(targets), dtype=torch.bool, device=targets.device
        )
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(targets), device=logits.device))

    def predict(self, interaction):
        raise UserInputError(
            "BehaviorTuning tunes a text encoder and ranks nothing; rank with PLMInitSASRec"
        )

    full_sort_predict = predict

    def export(self, folder, extra_info):
        """Save the encoder to ``folder`` (atomically): the LoRA adapter (peft ``save_pretrained``, base = the
        encoder this run started from) or the whole tuned encoder and its tokenizer, plus ``behavior_tuning.json``.
        """
        info = {
            "plm_name": self.base_name,
            "plm_tuning": self.tuning,
            "plm_pooling": self.pooling,
            "datasets": dataset_names(self.config["dataset"]),
            "init_plm_path": self.init_plm_path,
            "item_max_length": self.item_max_length
            + 2,  # tokens per item text with [CLS] and [SEP]
            "tuned_on": "training split (RecBole leave-one-out; validation and test interactions never read)",
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            **extra_info,
        }

        def write(tmp):
            if self.tuning == "lora":
                self.encoder.peft_config["default"].base_model_name_or_path = (
                    self.base_name
                )
                # the embedding layers are not tuned; without this peft looks the base name up online to check
                self.encoder.save_pretrained(tmp, save_embedding_layers=False)
            else:
                self.encoder.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
            with open(os.path.join(tmp, TUNING_INFO), "w", encoding="utf-8") as f:
                json.dump(info, f, indent=2)

        atomic_folder(write, folder)
        return folder


# --- PLM-initialized ID models ----------------------------------------------------------------------------------
class PLMItemInit:
    """What PLMInitSASRec and PLMInitBERT4Rec add to their stock model: the item table's start and its mode.
    Rows 1 .. n_items - 1 are the items (row 0 is padding; BERT4Rec's mask token row follows the items).
    """

    # behavior tuning's PT stage reads the other text domains of the target's family by default
    default_sources = "text"

    @classmethod
    def input_stages(cls, config):
        """init_type pretrain / finetune without init_plm_path: PT (BehaviorTuning on source_datasets) and, for
        finetune, FT (PT tuned further on this dataset's training split) run first."""
        init_type = config["init_type"]
        if init_type not in ("pretrain", "finetune") or not is_unset(
            config["init_plm_path"]
        ):
            return [], {}
        shared = {"plm_name": config["plm_name"], "plm_pooling": config["plm_pooling"]}
        stages = [
            input_stage(
                "PT",
                "BehaviorTuning",
                config["source_datasets"],
                output_key="tuned_plm_dir",
                settings=shared,
                sources=True,
            )
        ]
        if init_type == "finetune":
            stages.append(
                input_stage(
                    "FT",
                    "BehaviorTuning",
                    config["dataset"],
                    output_key="tuned_plm_dir",
                    settings=dict(shared, init_plm_path="@PT"),
                )
            )
        return stages, {"init_plm_path": "@" + stages[-1]["name"]}

    @staticmethod
    def resolve_hidden_size(config, dataset):
        """``hidden_size`` unset -> the encoder's width; set and different -> an error unless plm_projection=pca."""
        mode = config["embedding_mode"]
        if (
            isinstance(mode, str)
            and mode.startswith("further")
            and not is_unset(config["pretrained_path"])
        ):
            saved = load_checkpoint(_checkpoint_path(config), what="pretrained_path")
            return saved["config"].get("hidden_size", config["hidden_size"])
        plm_size = dataset.plm_size or plm.plm_hidden_size(config["plm_name"])
        hidden = config["hidden_size"]
        if hidden is None or str(hidden).lower() == "auto":
            return plm_size
        if (
            int(hidden) != plm_size
            and dataset.plm_embedding is not None
            and config["plm_projection"] != "pca"
        ):
            raise PLMInitError(
                f"hidden_size={hidden} differs from the encoder's width {plm_size}: leave hidden_size unset "
                "(= the encoder's width) or set plm_projection=pca"
            )
        return int(hidden)

    def init_item_table(self, config, dataset):
        self.init_type = config["init_type"]
        self.embedding_mode = config["embedding_mode"]
        rows = self.n_items
        if dataset.plm_embedding is not None:
            vectors = self.project(dataset.plm_embedding, config["plm_projection"])
            with torch.no_grad():  # row 0 (padding) keeps the stock start
                self.item_embedding.weight[1:rows] = vectors[1:rows].to(
                    self.item_embedding.weight.dtype
                )
        if self.embedding_mode.startswith("further"):
            self.load_freeze_checkpoint(config)
        if self.embedding_mode == "freeze":
            self.item_embedding.weight.requires_grad_(False)
        elif self.embedding_mode == "further_emb":
            for name, param in self.named_parameters():
                param.requires_grad_(name.startswith("item_embedding."))

    def project(self, vectors, projection):
        if vectors.shape[1] == self.hidden_size:
            return vectors
        if projection not in PROJECTIONS:
            raise PLMInitError(
                f"plm_projection must be one of {', '.join(PROJECTIONS)}; got '{projection}'"
            )
        # the first hidden_size principal directions of the item vectors (deterministic: a full SVD)
        items = vectors[1:]
        centered = items - items.mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(centered, full_matrices=False)
        return torch.cat(
            [torch.zeros(1, self.hidden_size), centered @ v[: self.hidden_size].T],
            dim=0,
        )

    def load_freeze_checkpoint(self, config):
        path = _checkpoint_path(config)
        checkpoint = load_checkpoint(path, what="pretrained_path")
        saved = checkpoint["config"]
        model = type(self).__name__
        if saved.get("model") != model:
            raise PLMInitError(
                f"pretrained_path '{path}' holds a {saved.get('model', 'unknown')} checkpoint, not {model}"
            )
        if saved.get("embedding_mode") != "freeze":
            raise PLMInitError(
                f"embedding_mode={self.embedding_mode} starts from a freeze-mode checkpoint; "
                f"'{path}' was trained with embedding_mode={saved.get('embedding_mode')}"
            )
        own = self.state_dict()
        state = checkpoint["state_dict"]
        wrong = [k for k in own if k not in state or state[k].shape != own[k].shape]
        if wrong:
            raise PLMInitError(
                f"pretrained_path '{path}' does not fit this model ({wrong[0]}: other dataset or size?)"
            )
        self.load_state_dict(state)
        self.init_type = saved.get("init_type", self.init_type)


def _checkpoint_path(config):
    value = config["pretrained_path"]
    if is_unset(value):
        raise PLMInitError(
            f"embedding_mode={config['embedding_mode']} needs pretrained_path "
            "(a checkpoint of this model trained with embedding_mode=freeze)"
        )
    found = find_path(value)
    if found is None:
        raise PLMInitError(f"pretrained_path '{value}' not found")
    return found


class PLMInitSASRec(PLMItemInit, EveryPositionOutput, SASRec):
    """Stock SASRec; the item table starts from PLM item vectors (see the module docstring). Causal like SASRec, so
    it also trains on all-positions rows (``train_positions: all``)."""

    all_positions = True

    def __init__(self, config, dataset):
        config["hidden_size"] = self.resolve_hidden_size(config, dataset)
        super().__init__(config, dataset)
        self.init_item_table(config, dataset)


class PLMInitBERT4Rec(PLMItemInit, BERT4Rec):
    """Stock BERT4Rec; the item rows of its table start from PLM item vectors, the mask token row stays random
    (and is frozen with the table in freeze mode)."""

    all_positions = (
        "BERT4Rec's attention is bidirectional, so the output at a position reads the items after it "
        "(use PLMInitSASRec)"
    )

    def __init__(self, config, dataset):
        config["hidden_size"] = self.resolve_hidden_size(config, dataset)
        super().__init__(config, dataset)
        self.init_item_table(config, dataset)
