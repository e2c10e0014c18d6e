"""PeterRec: a dilated-convolution sequence encoder pretrained on a source domain, fine-tuned for target tasks
through small model patches while the pretrained weights stay frozen.

Reference:
    Fajie Yuan, Xiangnan He, Alexandros Karatzoglou, Liguang Zhang. "Parameter-Efficient Transfer from Sequential
    Behaviors for User Modeling and Recommendation." SIGIR 2020.

Backbone: residual blocks of two dilated convolutions (kernel ``kernel_size``, dilations d and 2d), each followed by
LayerNorm and ReLU (Eq. 3-4), in two kinds:
    causal      (NextItNet) left padding only, so position t sees positions <= t; autoregressive pretraining (Eq. 1):
                the hidden state at the newest item predicts the next item;
    non-causal  (GRec-style) symmetric padding; masked-item pretraining (Eq. 2): ``mask_ratio`` of the items are
                replaced by a mask token and predicted; ranking appends a mask token after the history.
Histories are right-aligned (newest item last) so the last position is always the newest item.
``ResidualBlock`` also takes the model patches (``layers.ModelPatch``) in the paper's insertion modes (Eq. 11).

Fine-tuning (``train_stage=finetune``, data: ``data.dataset.TargetTaskDataset``): the user's source history gets a
[TCL] token (causal: at the end; non-causal: before and after) and a new linear head scores every label from its
hidden state(s) (``user_state=sum``: from the sum of the history's states instead, Eq. 7). Item targets train with
BPR against a sampled other item and rank all target items (RecBole's full ranking); profile targets train with
cross-entropy (accuracy and macro-F1 from ``trainer.finetune``).
The input is per row: the model holds every user's whole source history, and a row's ``source_length`` field (set by
the dataset: the items before the row's time, or all of them) says how much of it the row reads; an interaction
without the field (``recommend``: ranking now) reads the whole history.
``finetune_mode``: peterrec (patches + LayerNorms + head), fine_all, fine_zero (fine_all from random weights),
fine_cls (head only), fine_last1 / fine_last2 (the last one / two convolution layers with their LayerNorms + head;
fine_last = fine_last2, the last block), peter_zero (peterrec from random weights).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_transfer.errors import UserInputError
from recbole_transfer.model.layers import ModelPatch
from recbole_transfer.utils import find_path, input_stage, is_unset, load_checkpoint

INSERTIONS = ("none", "serial_b", "serial_c", "parallel_d", "parallel_e")


class DilatedConv(nn.Module):
    """A 1-D dilated convolution over [B, L, C]; causal = left padding only (no position sees a later one)."""

    def __init__(self, channels, kernel_size, dilation, causal):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        span = (kernel_size - 1) * dilation
        self.padding = (span, 0) if causal else (span // 2, span - span // 2)

    def forward(self, x):
        return self.conv(F.pad(x.transpose(1, 2), self.padding)).transpose(1, 2)


class ResidualBlock(nn.Module):
    """x + relu(LN2(conv2(relu(LN1(conv1(x)))))) with dilations (d, 2d), and model patches per ``insertion``:

    serial_b    a patch after each convolution, before its LayerNorm (Fig. 3b);
    serial_c    one patch on the block's residual branch, before the shortcut (Fig. 3c);
    parallel_d  a patch beside each convolution, added before its LayerNorm (Fig. 3d);
    parallel_e  a patch beside each convolution + LayerNorm + ReLU, added after the activation (Fig. 3e).

    Parallel patches add their bottleneck branch only (``ModelPatch.delta``): with the paper's shortcut inside the
    parallel patch, the block would add its input to the convolution output and no longer compute the pretrained
    function when the patch starts near zero. ``parallel_shortcut=True`` keeps the shortcut, as Eq. 9 and Eq. 11
    write them: LN1(conv1(x) + MP1(x)) for (d), MP1(x) + relu(LN1(conv1(x))) for (e)."""

    def __init__(
        self,
        channels,
        kernel_size,
        dilation,
        causal,
        insertion="none",
        patch_ratio=8,
        eps=1e-8,
        parallel_shortcut=False,
    ):
        super().__init__()
        if insertion not in INSERTIONS:
            raise UserInputError(
                f"patch_insertion must be one of {', '.join(INSERTIONS)}; got '{insertion}'"
            )
        self.insertion = insertion
        self.parallel_shortcut = bool(parallel_shortcut)
        self.conv1 = DilatedConv(channels, kernel_size, dilation, causal)
        self.conv2 = DilatedConv(channels, kernel_size, 2 * dilation, causal)
        self.ln1 = nn.LayerNorm(channels, eps=eps)
        self.ln2 = nn.LayerNorm(channels, eps=eps)
        n_patches = {"none": 0, "serial_c": 1}.get(insertion, 2)
        self.patches = nn.ModuleList(
            ModelPatch(channels, patch_ratio) for _ in range(n_patches)
        )

    def _parallel(self, index, x):
        patch = self.patches[index]
        return patch(x) if self.parallel_shortcut else patch.delta(x)

    def forward(self, x):
        mode = self.insertion
        if mode == "serial_b":
            h = F.relu(self.ln1(self.patches[0](self.conv1(x))))
            h = F.relu(self.ln2(self.patches[1](self.conv2(h))))
        elif mode == "parallel_d":
            h = F.relu(self.ln1(self.conv1(x) + self._parallel(0, x)))
            h = F.relu(self.ln2(self.conv2(h) + self._parallel(1, h)))
        elif mode == "parallel_e":
            h = F.relu(self.ln1(self.conv1(x))) + self._parallel(0, x)
            h = F.relu(self.ln2(self.conv2(h))) + self._parallel(1, h)
        else:
            h = F.relu(self.ln1(self.conv1(x)))
            h = F.relu(self.ln2(self.conv2(h)))
            if mode == "serial_c":
                h = self.patches[0](h)
        return x + h


def right_align(item_seq, item_seq_len):
    """RecBole's left-aligned histories [i1 .. in 0 .. 0] -> right-aligned [0 .. 0 i1 .. in]."""
    length = item_seq.shape[1]
    index = torch.arange(length, device=item_seq.device).unsqueeze(0) - (
        length - item_seq_len
    ).unsqueeze(1)
    return torch.where(
        index >= 0, item_seq.gather(1, index.clamp(min=0)), torch.zeros_like(item_seq)
    )


class PeterRec(SequentialRecommender):
    STAGES = ("pretrain", "finetune")
    all_positions = {
        # the padding states (non-zero after a block) before a right-aligned prefix shape its output
        "pretrain": "its histories are right-aligned and the padding before a prefix changes the prefix's output, "
        "so one pass over a history does not give each prefix's prediction",
        "finetune": "fine-tuning predicts one label per row from the source history, not the next item at each "
        "position",
    }
    MODES = (
        "peterrec",
        "fine_all",
        "fine_zero",
        "fine_cls",
        "fine_last",
        "fine_last1",
        "fine_last2",
        "peter_zero",
    )
    PATCHED = ("peterrec", "peter_zero")  # the modes with model patches
    FROM_SCRATCH = ("fine_zero", "peter_zero")  # random weights, no pretrained_path
    LAST_LAYERS = {"fine_last": 2, "fine_last1": 1, "fine_last2": 2}
    USER_STATES = ("tcl", "sum")
    # pretrained weights a fine-tuning run loads (the pretraining softmax layer is replaced by the task head)
    BACKBONE = ("item_embedding", "blocks")
    # the keys that shape pretraining: a recipe's pretrain stage takes them from the fine-tuning run
    PRETRAIN_KEYS = (
        "causal",
        "mask_ratio",
        "hidden_size",
        "kernel_size",
        "dilations",
        "initializer_range",
        "MAX_ITEM_LIST_LENGTH",
    )

    @classmethod
    def input_stages(cls, config):
        """Fine-tuning without pretrained_path: pretraining on the source dataset runs first, with this run's
        backbone keys (the fine-tuning-only keys do not enter it, so every mode reuses one pretraining). An item task's source never holds the target's data; a
        profile task's input sequences are the target users' own histories."""
        if config["train_stage"] == "pretrain" or not is_unset(
            config["pretrained_path"]
        ):
            return [], {}
        stage = input_stage(
            "pretrain",
            "PeterRec",
            config["source_datasets"],
            settings={
                "train_stage": "pretrain",
                "pretrained_path": None,
                "source_datasets": None,
            },
            sources=config["target_task"] == "item",
            inherit=cls.PRETRAIN_KEYS,
        )
        return [stage], {"pretrained_path": "@pretrain"}

    @staticmethod
    def stage_model_type(train_stage):
        """Pretraining reads sequences (RecBole sequential data); fine-tuning reads (user, label) rows (general)."""
        from recbole.utils import ModelType

        return ModelType.GENERAL if train_stage == "finetune" else ModelType.SEQUENTIAL

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # load parameters info
        self.train_stage = config["train_stage"]
        if self.train_stage not in self.STAGES:
            raise UserInputError(
                f"train_stage must be one of {', '.join(self.STAGES)}; got '{self.train_stage}'"
            )
        self.hidden_size = config["hidden_size"]
        self.causal = bool(config["causal"])
        self.mask_ratio = config["mask_ratio"]
        self.initializer_range = config["initializer_range"]
        self.config = config
        insertion = config["patch_insertion"]
        if insertion not in INSERTIONS:
            raise UserInputError(
                f"patch_insertion must be one of {', '.join(INSERTIONS)}; got '{insertion}'"
            )
        if self.train_stage == "finetune":
            self.mode = config["finetune_mode"]
            if self.mode not in self.MODES:
                raise UserInputError(
                    f"finetune_mode must be one of {', '.join(self.MODES)}; got '{self.mode}'"
                )
            self.user_state = config["user_state"]
            if self.user_state not in self.USER_STATES:
                raise UserInputError(
                    f"user_state must be one of {', '.join(self.USER_STATES)}; got '{self.user_state}'"
                )
            if self.mode not in self.PATCHED:
                insertion = "none"  # the fine-tuning baselines have no patches
            checkpoint = (
                self._pretrained_checkpoint()
                if self.mode not in self.FROM_SCRATCH
                else None
            )
            # the source vocabulary: the pretraining run's item tokens, or (from scratch) the source's own
            self.source_item_tokens = (
                checkpoint["other_parameter"]["source_item_tokens"]
                if checkpoint
                else ["[PAD]"]
                + sorted(
                    {t for items in dataset.source_histories.values() for t in items}
                )
            )
        else:
            insertion = "none"  # patches belong to fine-tuning
            self.source_item_tokens = [
                str(t) for t in dataset.field2id_token[self.ITEM_ID]
            ]
        self.other_parameter_name = ["source_item_tokens"]  # saved with the checkpoint
        n_source_items = len(self.source_item_tokens)
        self.mask_token = n_source_items  # non-causal only: one row after the items

        # define layers
        self.item_embedding = nn.Embedding(
            n_source_items + (0 if self.causal else 1), self.hidden_size, padding_idx=0
        )
        self.blocks = nn.ModuleList(
            ResidualBlock(
                self.hidden_size,
                config["kernel_size"],
                dilation,
                self.causal,
                insertion=insertion,
                patch_ratio=config["patch_ratio"],
                parallel_shortcut=config["parallel_shortcut"],
            )
            for dilation in config["dilations"]
        )
        if self.train_stage == "pretrain":
            self.output = nn.Linear(
                self.hidden_size, n_source_items
            )  # the pretraining softmax layer
        else:
            self.n_users = dataset.num(self.USER_ID)
            self.source_length_field = dataset.SOURCE_LENGTH
            # the [TCL] token (Eq. 5-6); Eq. 7 sums the history's states and has none
            self.tcl_embedding = (
                nn.Parameter(torch.zeros(self.hidden_size))
                if self.user_state == "tcl"
                else None
            )
            self.output = nn.Linear(
                self.hidden_size, self.n_items
            )  # the task head: one score per label
            for name, value in self._source_table(dataset).items():
                self.register_buffer(name, value, persistent=False)
            # LabelCS, the majority label of the training rows (profiles' baseline)
            self.majority_label = int(
                torch.bincount(
                    dataset.inter_feat[self.ITEM_ID], minlength=self.n_items
                ).argmax()
            )

        # init weights
        self.apply(self._init_weights)
        if self.train_stage == "finetune":
            if self.tcl_embedding is not None:
                nn.init.normal_(self.tcl_embedding, 0.0, self.initializer_range)
            if checkpoint is not None:
                self._load_backbone(checkpoint)
            self._set_trainable()

    def _init_weights(self, module):
        # the patches' linear layers keep their own near-identity start
        if isinstance(module, (nn.Embedding, nn.Conv1d)) or module is getattr(
            self, "output", None
        ):
            module.weight.data.normal_(0.0, self.initializer_range)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    # --- fine-tuning set-up -------------------------------------------------------------------------------------
    def _pretrained_checkpoint(self):
        value = self.config["pretrained_path"]
        if is_unset(value):
            raise UserInputError(
                f"finetune_mode={self.mode} needs pretrained_path (a PeterRec pretraining checkpoint)"
            )
        path = find_path(value)
        if path is None:
            raise UserInputError(f"pretrained_path '{value}' not found")
        checkpoint = load_checkpoint(path, what="pretrained_path")
        saved = checkpoint["config"]
        if saved.get("model") != "PeterRec" or saved.get("train_stage") != "pretrain":
            raise UserInputError(
                f"pretrained_path '{path}' is not a PeterRec pretraining checkpoint"
            )
        differing = [
            f"{k}={saved.get(k)} there, {self.config[k]} here"
            for k in ("causal", "hidden_size", "kernel_size", "dilations")
            if saved.get(k) != self.config[k]
        ]
        if differing:
            raise UserInputError(
                f"pretrained_path '{path}' does not fit this model: {'; '.join(differing)}"
            )
        return checkpoint

    def _load_backbone(self, checkpoint):
        state = {
            k: v
            for k, v in checkpoint["state_dict"].items()
            if k.split(".")[0] in self.BACKBONE
        }
        missing, unexpected = self.load_state_dict(state, strict=False)
        assert not unexpected, unexpected
        # everything of the backbone but the new patches came from the checkpoint
        assert all(
            k.split(".")[0] not in self.BACKBONE or ".patches." in k for k in missing
        ), missing

    def _set_trainable(self):
        """peterrec / peter_zero: patches, LayerNorms, [TCL] and head; fine_all / fine_zero: everything; fine_cls:
        [TCL] and head; fine_last1 / fine_last2: the last one / two convolution layers, each with its LayerNorm
        (the paper's FineLast1 / FineLast2, Fig. 5), [TCL] and head; fine_last: fine_last2 (the last block).
        """
        head = ("output.", "tcl_embedding")
        # the convolution layers in order, each with the LayerNorm after it
        layers = [
            (f"blocks.{b}.conv{j}.", f"blocks.{b}.ln{j}.")
            for b in range(len(self.blocks))
            for j in (1, 2)
        ]
        n_last = self.LAST_LAYERS.get(self.mode)
        last = tuple(p for pair in layers[-n_last:] for p in pair) if n_last else ()
        for name, param in self.named_parameters():
            if self.mode in ("fine_all", "fine_zero"):
                trainable = True
            elif self.mode == "fine_cls":
                trainable = name.startswith(head)
            elif n_last:
                trainable = name.startswith(head + last)
            else:
                trainable = (
                    name.startswith(head) or ".patches." in name or ".ln" in name
                )
            param.requires_grad_(trainable)

    def _source_table(self, dataset):
        """Every user's whole source history in the source vocabulary (a token it lacks reads as padding):
        ``source_items`` [1 + all items] concatenates them oldest first after one padding entry; user ``u``'s are
        ``source_items[source_start[u] : source_start[u] + source_count[u]]`` (rows follow this dataset's user
        ids)."""
        index = {token: i for i, token in enumerate(self.source_item_tokens)}
        items, start, count = [0], [], []
        for token in dataset.field2id_token[self.USER_ID]:
            history = dataset.source_histories.get(str(token), [])
            start.append(len(items))
            count.append(len(history))
            items.extend(index.get(t, 0) for t in history)
        return {
            "source_items": torch.tensor(items, dtype=torch.long),
            "source_start": torch.tensor(start, dtype=torch.long),
            "source_count": torch.tensor(count, dtype=torch.long),
        }

    def source_sequences(self, user, length=None):
        """[B, L] right-aligned inputs: the newest of the first ``length`` source items of each ``user`` (default:
        all of them). With [TCL], the last column is left for it (non-causal: the first as well).
        """
        count = self.source_count[user]
        length = count if length is None else torch.minimum(length, count)
        width = self.max_seq_length
        if self.user_state == "sum":
            end, keep = width, width
        else:  # room for one [TCL] (causal) or two (non-causal)
            end, keep = width - 1, width - 1 if self.causal else width - 2
        position = length.unsqueeze(1) + torch.arange(-keep, 0, device=user.device)
        items = self.source_items[
            self.source_start[user].unsqueeze(1) + position.clamp(min=0)
        ]
        sequences = torch.zeros(len(user), width, dtype=torch.long, device=user.device)
        sequences[:, end - keep : end] = torch.where(
            position >= 0, items, torch.zeros_like(items)
        )
        return sequences

    def input_sequences(self, interaction):
        """The rows' inputs: each user's first ``source_length`` source items (the interaction's field, set by the
        dataset per row or, in ranking, per user), or the whole history when the interaction has no such field.
        """
        field = self.source_length_field
        length = interaction[field].long() if field in interaction else None
        return self.source_sequences(interaction[self.USER_ID], length)

    # --- representations ----------------------------------------------------------------------------------------
    def encode(self, item_seq, tcl_positions=None):
        """Hidden states [B, L, hidden] of right-aligned item ids; ``tcl_positions`` (bool [B, L]) take the [TCL]
        embedding instead."""
        h = self.item_embedding(item_seq)
        if tcl_positions is not None:
            h = torch.where(
                tcl_positions.unsqueeze(-1), self.tcl_embedding.expand_as(h), h
            )
        for block in self.blocks:
            h = block(h)
        return h

    def user_representation(self, seq):
        """The vector the head reads from ``source_sequences``. Causal: the hidden state of [TCL] appended after
        the history (Eq. 5). Non-causal: the sum of the states of [TCL] before and after the history (Eq. 6).
        ``user_state=sum``: the sum of the history items' states, no [TCL] (Eq. 7; an empty history gives 0, so
        the head's bias alone)."""
        if self.user_state == "sum":
            real = (seq > 0).unsqueeze(-1)
            return (self.encode(seq) * real).sum(1)
        tcl = torch.zeros_like(seq, dtype=torch.bool)
        tcl[:, -1] = True
        if self.causal:
            return self.encode(seq, tcl)[:, -1]
        first = (seq[:, :-1] > 0).float().argmax(
            1
        ) - 1  # the column before the oldest item
        first = torch.where(
            (seq[:, :-1] > 0).any(1), first, torch.full_like(first, seq.shape[1] - 2)
        )
        rows = torch.arange(len(seq), device=seq.device)
        tcl[rows, first] = True
        h = self.encode(seq, tcl)
        return h[rows, first] + h[:, -1]

    def _inputs(self, interaction, last=None):
        """Right-aligned history; non-causal: shifted left by one with ``last`` (the target or the mask token)
        in the final position."""
        seq = right_align(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        if self.causal:
            return seq
        last = (
            torch.full_like(seq[:, :1], self.mask_token)
            if last is None
            else last.unsqueeze(1)
        )
        return torch.cat([seq[:, 1:], last], dim=1)

    # --- losses and scores --------------------------------------------------------------------------------------
    def calculate_loss(self, interaction):
        if self.train_stage == "finetune":
            return self._task_loss(interaction)
        target = interaction[self.POS_ITEM_ID]
        if self.causal:
            return F.cross_entropy(
                self.output(self.encode(self._inputs(interaction))[:, -1]), target
            )
        seq = self._inputs(interaction, last=target)
        real = seq > 0
        masked = (torch.rand(seq.shape, device=seq.device) < self.mask_ratio) & real
        masked[:, -1] |= ~masked.any(1)  # every row predicts at least one item
        hidden = self.encode(seq.masked_fill(masked, self.mask_token))
        return F.cross_entropy(self.output(hidden[masked]), seq[masked])

    def _task_loss(self, interaction):
        """Items: BPR against one uniformly sampled other label (Eq. 8). Profiles: cross-entropy over the labels."""
        user = self.user_representation(self.input_sequences(interaction))
        label = interaction[self.ITEM_ID]
        if self.config["target_task"] == "profile":
            return F.cross_entropy(
                self.output(user)[:, 1:], label - 1
            )  # column 0 is RecBole's padding label
        negative = torch.randint(1, self.n_items - 1, label.shape, device=label.device)
        negative = (
            negative + (negative >= label).long()
        )  # uniform over the other labels
        # only the two scored rows of the head: the full [B, n_items] product cost a third of a training step
        return -F.logsigmoid(
            self._head_scores(user, label) - self._head_scores(user, negative)
        ).mean()

    def _head_scores(self, user, items):
        """The head's score of one item per row, ``self.output(user)[rows, items]`` without the other columns."""
        return (user * self.output.weight[items]).sum(-1) + self.output.bias[items]

    def _scores(self, interaction):
        if self.train_stage == "finetune":
            scores = self.output(
                self.user_representation(self.input_sequences(interaction))
            )
            scores[:, 0] = float("-inf")  # the padding label is never an answer
            return scores
        return self.output(self.encode(self._inputs(interaction))[:, -1])

    def predict(self, interaction):
        return (
            self._scores(interaction)
            .gather(1, interaction[self.ITEM_ID].unsqueeze(1))
            .squeeze(1)
        )

    def full_sort_predict(self, interaction):
        return self._scores(interaction)
