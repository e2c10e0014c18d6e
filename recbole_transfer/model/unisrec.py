"""UniSRec.

Reference:
    Yupeng Hou, Shanlei Mu, Wayne Xin Zhao, Yaliang Li, Bolin Ding, Ji-Rong Wen. "Towards Universal Sequence
    Representation Learning for Recommender Systems." KDD 2022.

Item text -> frozen PLM vector x -> MoE adaptor (parametric whitening experts, noisy gate) -> SASRec-style encoder.
``train_stage``:
    pretrain         sequence-item + lambda * sequence-sequence in-batch contrastive losses over merged domains,
                     augmented views by item drop or word drop (pre-encoded word-dropped text);
    inductive_ft     text only; CE over all items of the target;
    transductive_ft  text + item ID embedding (input and output side); CE over all items.
With ``pretrained_path`` the fine-tuning stages load the pretrained encoder and adaptor and (``freeze_encoder``)
train only the adaptor (+ ID table), as in the paper.

The adaptor depends only on the item, so each step adapts every distinct item once and gathers rows for the
sequences (the reference code adapts every position). Same maths, except that adaptor dropout and gate noise are
shared by all occurrences of an item within one step.

The Transformer is causal, so the fine-tuning stages also train on all-positions rows (``train_positions: all``,
``model.positions``): the cosine CE at every real position. Pretraining does not: its two losses (Eq. 8-9 of the
paper) take the other instances of a batch as negatives, so the prefixes of one history would be each other's
negatives, and the sequence-sequence views (item drop) are of whole sequences, not of positions.
"""

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder

from recbole_transfer import compat
from recbole_transfer.data.augment import item_drop
from recbole_transfer.data.positions import target_list_field
from recbole_transfer.errors import UserInputError
from recbole_transfer.model.layers import MoEAdaptor, length_buckets
from recbole_transfer.model.positions import all_positions_cross_entropy
from recbole_transfer.utils import find_path, input_stage, is_unset, load_checkpoint


class PretrainedCheckpointError(UserInputError):
    pass


# pretrained by this project (pretrained/README.md has the commands): the default, then one per shipped text domain
# that the default saw, each without that domain, so that no target is fine-tuned from a checkpoint that saw it
SHIPPED_CHECKPOINT = "UniSRec-Electronics,Sports,Toys,Tools.pth"
SHIPPED_CHECKPOINTS = (
    SHIPPED_CHECKPOINT,
    "UniSRec-Electronics,Scientific,Sports,Tools.pth",
    "UniSRec-Electronics,Scientific,Sports,Toys.pth",
)


def shipped_checkpoint(targets):
    """The first of ``SHIPPED_CHECKPOINTS`` whose source domains (named in the file) include none of
    ``targets``, or the default when every one saw a target."""
    for name in SHIPPED_CHECKPOINTS:
        sources = name[len("UniSRec-") : -len(".pth")].split(",")
        if not set(sources) & set(targets):
            return name
    return SHIPPED_CHECKPOINT


def resolve_pretrained_path(
    value, train_stage, pretrained_dir="pretrained", targets=()
):
    """The checkpoint file to load, or None. ``shipped`` (the yaml default) is, for the fine-tuning stages, the
    shipped checkpoint in ``pretrained_dir`` (the config's folder of shipped checkpoints) that was not pretrained on
    any of ``targets`` (``shipped_checkpoint``), and nothing for pretraining; None / '' / 'none' mean no checkpoint.
    Any other path is relative to the working directory.
    """
    if is_unset(value):
        return None
    path = str(value)
    if path == "shipped":
        if train_stage == "pretrain":
            return None
        path = os.path.join(pretrained_dir, shipped_checkpoint(targets))
    found = find_path(path)
    if found is None:
        raise PretrainedCheckpointError(f"pretrained_path '{path}' not found")
    return found


class UniSRec(SequentialRecommender):
    # on a domain it was not trained on, a checkpoint scores from text only (its ID table is of its own items)
    other_domain_settings = {"train_stage": "inductive_ft"}
    STAGES = ("pretrain", "inductive_ft", "transductive_ft")
    all_positions = {
        "inductive_ft": True,
        "transductive_ft": True,
        "pretrain": "its contrastive losses take the other sequences of a batch as negatives (KDD 2022, Eq. 8-9), "
        "so the prefixes of one history would be each other's negatives; pretrain with train_positions=last",
    }
    # weights that transfer between stages and domains (the text tables and the ID table do not)
    TRANSFERABLE = ("position_embedding", "LayerNorm", "trm_encoder", "moe_adaptor")
    # the "universal sequence representation" part, frozen while fine-tuning from a pretrained checkpoint
    ENCODER = ("position_embedding", "LayerNorm", "trm_encoder")

    @classmethod
    def input_stages(cls, config):
        """A fine-tuning stage with source_datasets: pretraining on them (merged) runs first, with this run's
        architecture and pretraining keys, and its last snapshot is the pretrained_path (instead of the shipped
        checkpoint)."""
        sources = config["source_datasets"]
        if config["train_stage"] == "pretrain" or not sources:
            return [], {}
        given = config["pretrained_path"]
        if not is_unset(given) and given != "shipped":
            raise PretrainedCheckpointError(
                f"give pretrained_path ({given}) or source_datasets (pretrain on them first), not both"
            )
        stage = input_stage(
            "pretrain",
            "UniSRec",
            sources,
            settings={
                "train_stage": "pretrain",
                "pretrained_path": None,
                "source_datasets": None,
            },
            sources=True,
            inherit=cls.ARCHITECTURE_KEYS + cls.PRETRAIN_KEYS,
        )
        return [stage], {"pretrained_path": "@pretrain"}

    # config keys that must agree between a pretrained checkpoint and the run loading it
    ARCHITECTURE_KEYS = (
        "hidden_size",
        "inner_size",
        "n_layers",
        "n_heads",
        "n_exps",
        "MAX_ITEM_LIST_LENGTH",
        "plm_name",
        "plm_pooling",
    )

    # what else shapes pretraining: a recipe's pretrain stage takes these and ARCHITECTURE_KEYS from this run
    PRETRAIN_KEYS = (
        "pretrain_epochs",
        "save_step",
        "hidden_dropout_prob",
        "attn_dropout_prob",
        "hidden_act",
        "layer_norm_eps",
        "initializer_range",
        "adaptor_dropout_prob",
        "temperature",
        "lambda",
        "item_drop_ratio",
        "item_drop_coefficient",
        "word_drop_ratio",
    )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.train_stage = config["train_stage"]
        if self.train_stage not in self.STAGES:
            raise UserInputError(
                f"train_stage must be one of {', '.join(self.STAGES)}; got '{self.train_stage}'"
            )
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.temperature = config["temperature"]
        self.lam = config["lambda"]
        self.item_drop_ratio = config["item_drop_ratio"]
        self.item_drop_coefficient = config["item_drop_coefficient"]
        self.config = config

        # frozen item-text tables: not in the state dict (rebuilt from the dataset's text cache), identical on every
        # rank, so DDP need not broadcast them
        self.register_buffer(
            "plm_embedding", dataset.plm_embedding.clone(), persistent=False
        )
        self.plm_size = self.plm_embedding.shape[1]
        text_tables = ["plm_embedding"]
        if self.train_stage == "pretrain":
            aug = dataset.encode_item_texts(word_drop_ratio=config["word_drop_ratio"])
            self.register_buffer("plm_embedding_aug", aug, persistent=False)
            text_tables.append("plm_embedding_aug")
        compat.ddp_ignore_buffers(self, text_tables)

        # define layers and loss
        self.moe_adaptor = MoEAdaptor(
            config["n_exps"],
            self.plm_size,
            self.hidden_size,
            dropout=config["adaptor_dropout_prob"],
        )
        self.item_embedding = (
            nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
            if self.train_stage == "transductive_ft"
            else None
        )
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.loss_fct = nn.CrossEntropyLoss()
        self.TARGET_ITEM_SEQ = target_list_field(config)

        # parameters initialization
        self.apply(self._init_weights)
        self.pretrained_path = resolve_pretrained_path(
            config["pretrained_path"],
            self.train_stage,
            config["pretrained_dir"],
            targets=str(config["dataset"]).split(","),
        )
        if self.pretrained_path is not None:
            self.load_pretrained(self.pretrained_path)
            if self.train_stage != "pretrain" and config["freeze_encoder"]:
                for name, param in self.named_parameters():
                    if name.split(".")[0] in self.ENCODER:
                        param.requires_grad = False

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    # --- pretrained weights -------------------------------------------------------------------------------------
    def transferable_state_dict(self):
        """The weights a later stage loads: encoder and adaptor (no text tables, no ID table)."""
        return {
            k: v
            for k, v in self.state_dict().items()
            if k.split(".")[0] in self.TRANSFERABLE
        }

    def load_pretrained(self, path):
        checkpoint = load_checkpoint(path, what="pretrained_path")
        saved_config = checkpoint["config"]
        if saved_config.get("model") != "UniSRec":
            raise PretrainedCheckpointError(
                f"pretrained_path '{path}' holds a {saved_config.get('model', 'unknown')} checkpoint, not UniSRec"
            )
        differing = [
            f"{key}={saved_config[key]} there, {self.config[key]} here"
            for key in self.ARCHITECTURE_KEYS
            if key in saved_config and saved_config[key] != self.config[key]
        ]
        if differing:
            raise PretrainedCheckpointError(
                f"pretrained_path '{path}' does not fit this model: {'; '.join(differing)}"
            )
        state = {
            k: v
            for k, v in checkpoint["state_dict"].items()
            if k.split(".")[0] in self.TRANSFERABLE
        }
        own = self.transferable_state_dict()
        missing = sorted(set(own) - set(state))
        wrong = [
            f"{k} {tuple(state[k].shape)} there, {tuple(own[k].shape)} here"
            for k in sorted(own)
            if k in state and state[k].shape != own[k].shape
        ]
        if missing or wrong:
            detail = wrong[0] if wrong else f"missing {missing[0]}"
            raise PretrainedCheckpointError(
                f"pretrained_path '{path}' does not fit this model: {detail}"
            )
        self.load_state_dict(state, strict=False)

    # --- item and sequence representations ----------------------------------------------------------------------
    def adapt_distinct(self, item_ids, table):
        """Each distinct item of ``item_ids`` through the adaptor once: ``(adapted [n_distinct, hidden], rows)``
        with ``adapted[rows]`` the vectors of ``item_ids`` (same shape)."""
        unique, rows = torch.unique(item_ids, return_inverse=True)
        return self.moe_adaptor(table[unique]), rows

    def item_tables(self):
        """Adapted text vectors of every item [n_items, hidden], and the output item table (text + ID embedding in
        transductive_ft)."""
        text_table = self.moe_adaptor(self.plm_embedding)
        if self.item_embedding is None:
            return text_table, text_table
        return text_table, text_table + self.item_embedding.weight

    def forward(self, item_seq, item_seq_len, table, rows=None, every_position=False):
        """Sequence vectors [B, hidden] (``every_position``: [B, L, hidden], the vector of every prefix; what lies
        past a row's length means nothing). Position j of sequence i reads ``table[rows[i, j]]`` (adapted text
        vectors; ``rows`` defaults to ``item_seq``). Rows are encoded in length buckets (``length_buckets``).
        """
        rows = item_seq if rows is None else rows
        max_len = item_seq.shape[1]
        order, outputs = [], []
        for bucket, width in length_buckets(item_seq_len, max_len):
            output = self._encode(
                item_seq[bucket, :width],
                item_seq_len[bucket],
                table[rows[bucket, :width]],
                every_position,
            )
            if every_position:
                # causal attention: a bucket's narrower width changes no output at the positions it keeps
                output = F.pad(output, (0, 0, 0, max_len - width))
            outputs.append(output)
            order.append(bucket)
        return torch.cat(outputs)[torch.argsort(torch.cat(order))]

    def _encode(self, item_seq, item_seq_len, item_emb, every_position=False):
        """The Transformer output at each row's newest item [B, hidden] (``every_position``: at every position,
        [B, L, hidden])."""
        position_ids = (
            torch.arange(item_seq.shape[1], device=item_seq.device)
            .unsqueeze(0)
            .expand_as(item_seq)
        )
        input_emb = item_emb + self.position_embedding(position_ids)
        if self.item_embedding is not None:
            input_emb = input_emb + self.item_embedding(item_seq)
        input_emb = self.dropout(self.LayerNorm(input_emb))
        extended_attention_mask = self.get_attention_mask(item_seq)
        output = self.trm_encoder(
            input_emb, extended_attention_mask, output_all_encoded_layers=True
        )[-1]
        if every_position:
            return output
        return self.gather_indexes(output, item_seq_len - 1)

    # --- losses -------------------------------------------------------------------------------------------------
    def _contrastive(self, anchors, positives, same_target):
        """In-batch InfoNCE: row i's positive is positives[i]; other rows with the same next item are not negatives."""
        logits = anchors @ positives.T / self.temperature
        logits = logits.masked_fill(same_target, float("-inf"))
        labels = torch.arange(anchors.shape[0], device=anchors.device)
        return F.cross_entropy(logits, labels)

    def pretrain_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        pos_items = interaction[self.POS_ITEM_ID]
        batch = item_seq.shape[0]

        # augmented view per sequence: item drop with probability item_drop_coefficient, else word drop (the same
        # items read from the word-dropped text table)
        dropped_seq, dropped_len = item_drop(
            item_seq, item_seq_len, self.item_drop_ratio
        )
        word_drop = (
            torch.rand(batch, device=item_seq.device) >= self.item_drop_coefficient
        )
        aug_seq = torch.where(word_drop.unsqueeze(1), item_seq, dropped_seq)
        aug_len = torch.where(word_drop, item_seq_len, dropped_len)

        # adapt every distinct item of the batch once per table, then index rows
        unique, inverse = torch.unique(
            torch.cat([item_seq.flatten(), pos_items, aug_seq.flatten()]),
            return_inverse=True,
        )
        unique_aug, inverse_aug = torch.unique(item_seq[word_drop], return_inverse=True)
        table = self.moe_adaptor(
            torch.cat([self.plm_embedding[unique], self.plm_embedding_aug[unique_aug]])
        )
        n_seq = item_seq.numel()
        seq_rows = inverse[:n_seq].view_as(item_seq)
        pos_rows = inverse[n_seq : n_seq + batch]
        aug_rows = inverse[n_seq + batch :].view_as(item_seq).clone()
        aug_rows[word_drop] = inverse_aug.view(-1, item_seq.shape[1]) + unique.numel()

        seq_output = F.normalize(
            self.forward(item_seq, item_seq_len, table, rows=seq_rows), dim=-1
        )
        same_target = pos_items.unsqueeze(1) == pos_items.unsqueeze(0)
        same_target &= ~torch.eye(batch, dtype=torch.bool, device=item_seq.device)
        loss_seq_item = self._contrastive(
            seq_output, F.normalize(table[pos_rows], dim=-1), same_target
        )

        aug_output = F.normalize(
            self.forward(aug_seq, aug_len, table, rows=aug_rows), dim=-1
        )
        loss_seq_seq = self._contrastive(seq_output, aug_output, same_target)
        return loss_seq_item + self.lam * loss_seq_seq

    def calculate_loss(self, interaction):
        if self.train_stage == "pretrain":
            return self.pretrain_loss(interaction)
        if self.TARGET_ITEM_SEQ in interaction:
            return self.all_positions_loss(interaction)
        logits = self.full_sort_predict(interaction) / self.temperature
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def all_positions_loss(self, interaction):
        """Fine-tuning's cosine CE at every real position of all-positions rows (``train_positions: all``)."""
        text_table, item_table = self.item_tables()
        hidden = self.forward(
            interaction[self.ITEM_SEQ],
            interaction[self.ITEM_SEQ_LEN],
            text_table,
            every_position=True,
        )
        items = F.normalize(item_table, dim=-1)
        return all_positions_cross_entropy(
            hidden,
            interaction[self.TARGET_ITEM_SEQ],
            lambda h: F.normalize(h, dim=-1) @ items.T / self.temperature,
        )

    # --- scoring ------------------------------------------------------------------------------------------------
    def predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        table, rows = self.adapt_distinct(item_seq, self.plm_embedding)
        seq_output = F.normalize(
            self.forward(item_seq, interaction[self.ITEM_SEQ_LEN], table, rows=rows),
            dim=-1,
        )
        test_item = interaction[self.ITEM_ID]
        test_table, test_rows = self.adapt_distinct(test_item, self.plm_embedding)
        item_emb = test_table[test_rows]
        if self.item_embedding is not None:
            item_emb = item_emb + self.item_embedding(test_item)
        return (seq_output * F.normalize(item_emb, dim=-1)).sum(dim=-1)

    def full_sort_predict(self, interaction):
        """Cosine of the sequence vector with every item (the fine-tuning loss divides it by the temperature)."""
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        text_table, item_table = self.item_tables()
        seq_output = F.normalize(
            self.forward(item_seq, item_seq_len, text_table), dim=-1
        )
        return seq_output @ F.normalize(item_table, dim=-1).T
