"""Dataset classes the stock RecBole ones lack.

``TextSequentialDataset``: a SequentialDataset whose items carry PLM vectors of their text, read from the
``<D>.text`` side file and encoded (and cached) by ``recbole_transfer.data.text``.

Several datasets given as ``--dataset=A,B,C`` are merged in memory into one dataset: user and item tokens become
``<domain>-<token>`` (so domains never share ids), ``item_domain[i]`` is the 1-based domain index of item ``i``
(0 for padding) and each domain's item texts are encoded (and cached) on their own, so a merge reuses the vectors
of single-domain runs.
"""

import os

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from collections import namedtuple

from recbole.data.dataset import Dataset, SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType, set_color

from recbole_transfer.data import text
from recbole_transfer.data.folders import config_for_dataset, dataset_folder
from recbole_transfer.data.positions import dataset_history_rows, train_positions
from recbole_transfer.errors import UserInputError
from recbole_transfer.plm import encoder_item_max_length, init_encoder_name
from recbole_transfer.utils import dataset_names


def _rank_zero_first(fn):
    """Run ``fn`` on rank 0 first, then on the other ranks (which then read rank 0's cache), under DDP."""
    distributed = (
        dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    )
    if distributed and dist.get_rank() != 0:
        dist.barrier()
    result = fn()
    if distributed and dist.get_rank() == 0:
        dist.barrier()
    return result


class TextSequentialDataset(SequentialDataset):
    """``self.plm_embedding``: float tensor [item_num, plm_size] aligned with ``field2id_token[item_id]``
    (row 0, the padding item, is all zeros) from the encoder ``text_encoder()`` names; None when it names none.
    ``self.item_texts``: the aligned texts (None when neither vectors nor ``reads_item_text`` need them).
    """

    reads_item_text = False  # True: load the texts even when no vectors are needed

    def __init__(self, config):
        self.domains = dataset_names(config["dataset"])
        super().__init__(config)
        self.item_domain = self._item_domains()
        encoder = self.text_encoder()
        self.item_texts = (
            self._load_item_texts() if encoder or self.reads_item_text else None
        )
        self.plm_embedding = self.encode_item_texts() if encoder else None
        self.plm_size = (
            None if self.plm_embedding is None else self.plm_embedding.shape[1]
        )

    def text_encoder(self):
        """The encoder whose item vectors this dataset carries (a name or folder), or None for no vectors."""
        return self.config["plm_name"]

    def text_max_length(self):
        """Token limit of one item text when encoding it."""
        return self.config["plm_max_length"]

    @property
    def is_merged(self):
        return len(self.domains) > 1

    def _domain_path(self, domain):
        return os.path.join(self.config["data_root"], domain)

    def _load_data(self, token, dataset_path):
        if not self.is_merged:
            super()._load_data(token, dataset_path)
        else:
            frames = []
            for domain in self.domains:
                path = os.path.join(self._domain_path(domain), f"{domain}.inter")
                feat = self._load_feat(path, FeatureSource.INTERACTION)
                for field in (self.uid_field, self.iid_field):
                    feat[field] = domain + "-" + feat[field].astype(str)
                frames.append(feat)
            self.inter_feat = pd.concat(frames, ignore_index=True)
            self.user_feat = None
            self.item_feat = None
        # tokens before filtering: a text row for one of these is known even if filtering later drops the item
        self._raw_item_tokens = set(self.inter_feat[self.iid_field].tolist())

    def _item_domains(self):
        tokens = self.field2id_token[self.iid_field]
        if not self.is_merged:
            return torch.cat(
                [
                    torch.zeros(1, dtype=torch.long),
                    torch.ones(len(tokens) - 1, dtype=torch.long),
                ]
            )
        index = {domain: i + 1 for i, domain in enumerate(self.domains)}
        return torch.tensor(
            [0] + [index[str(t).split("-", 1)[0]] for t in tokens[1:]], dtype=torch.long
        )

    def _text_file(self, domain):
        return os.path.join(
            self._domain_path(domain), f"{domain}.{self.config['text_side_file']}"
        )

    def _load_item_texts(self):
        item_text = {}
        for domain in self.domains:
            texts = text.read_item_text(self._text_file(domain))
            item_text.update(
                {f"{domain}-{t}": v for t, v in texts.items()}
                if self.is_merged
                else texts
            )
        sources = ", ".join(os.path.basename(self._text_file(d)) for d in self.domains)
        return text.align_item_text(
            item_text,
            list(self.field2id_token[self.iid_field]),
            known_tokens=self._raw_item_tokens,
            source=sources,
        )

    def encode_item_texts(self, word_drop_ratio=0.0, seed=None):
        """PLM matrix of the item texts (cached on disk per domain); ``word_drop_ratio`` > 0 gives the augmented
        variant (words dropped before encoding)."""
        config = self.config
        matrix = None
        for domain_index, domain in enumerate(self.domains, start=1):
            rows = (self.item_domain == domain_index).nonzero().flatten()
            texts = [""] + [self.item_texts[i] for i in rows.tolist()]
            vectors = _rank_zero_first(
                lambda: text.item_text_matrix(
                    domain,
                    texts,
                    plm_name=self.text_encoder(),
                    pooling=config["plm_pooling"],
                    max_length=self.text_max_length(),
                    cache_dir=config["text_cache_dir"],
                    device=(
                        config["device"]
                        if config["plm_device"] is None
                        else config["plm_device"]
                    ),
                    word_drop_ratio=word_drop_ratio,
                    seed=config["seed"] if seed is None else seed,
                    logger=self.logger,
                    show_progress=config["show_progress"],
                )
            )
            if matrix is None:
                matrix = torch.zeros(len(self.item_texts), vectors.shape[1])
            matrix[rows] = vectors[1:].to(torch.float32)
        return matrix


def _seeded_subset(values, size, seed):
    """``size`` of ``values`` drawn at random without replacement (seeded), in their original order."""
    return np.sort(np.random.default_rng(seed).choice(values, size=size, replace=False))


class ItemTextDataset(TextSequentialDataset):
    """Item texts without vectors: for models that run the language model themselves (behavior tuning, prompts).
    ``max_train_examples`` > 0 keeps a random subset of that many training examples (seeded by
    ``train_subset_seed``, else ``seed``): training-set-size studies. ``max_eval_users`` > 0 evaluates a seeded
    random subset of that many users (the same users in validation and test; seeded by ``seed``): a language
    model scores every (user, candidate) prompt, so full evaluation of a large target is slow without a GPU.
    """

    reads_item_text = True

    def text_encoder(self):
        return None

    def training_rows(self, train):
        """Row indices of the training split to keep before the size limit (all of them)."""
        return np.arange(len(train.inter_feat))

    def build(self):
        datasets = super().build()
        train = datasets[0]
        rows = self.training_rows(train)
        limit = self.config["max_train_examples"]
        if limit and len(rows) > int(limit):
            seed = self.config["train_subset_seed"]
            rows = _seeded_subset(
                rows, int(limit), self.config["seed"] if seed is None else int(seed)
            )
        if len(rows) < len(train.inter_feat):
            datasets[0] = train.copy(train.inter_feat[torch.from_numpy(rows)])
        eval_users = self.config["max_eval_users"]
        if eval_users:
            users = np.unique(
                np.concatenate(
                    [part.inter_feat[self.uid_field].numpy() for part in datasets[1:]]
                )
            )
            if len(users) > int(eval_users):
                kept = torch.from_numpy(
                    _seeded_subset(users, int(eval_users), self.config["seed"])
                )
                datasets[1:] = [
                    part.copy(
                        part.inter_feat[
                            torch.isin(part.inter_feat[self.uid_field], kept)
                        ]
                    )
                    for part in datasets[1:]
                ]
        return datasets


class BehaviorTuningDataset(ItemTextDataset):
    """Item texts for tuning the encoder itself. The training split keeps each user's last ``prefixes_per_user``
    training examples (0 keeps all), then at most ``max_train_examples`` of them. Validation and test stay
    RecBole's leave-one-out rows, and the trainer never reads them, so nothing after a user's training
    interactions is seen."""

    def training_rows(self, train):
        keep = self.config["prefixes_per_user"]
        if not keep:
            return super().training_rows(train)
        users = train.inter_feat[self.uid_field].numpy()
        order = np.argsort(users, kind="stable")  # rows of one user stay in time order
        sorted_users = users[order]
        last = np.r_[
            sorted_users[1:] != sorted_users[:-1], True
        ]  # a user's last row in the sorted order
        # rows from the end of the user's group: 0 for the last, 1 for the one before, ...
        end_index = np.minimum.accumulate(
            np.where(last, np.arange(len(order)), len(order))[::-1]
        )[::-1]
        from_end = end_index - np.arange(len(order))
        return np.sort(order[from_end < int(keep)])


class PLMInitDataset(TextSequentialDataset):
    """Items carry the vectors of the encoder ``init_type`` selects (none: no text is read at all)."""

    def text_encoder(self):
        return init_encoder_name(self.config)

    def text_max_length(self):
        """A behavior-tuned encoder encodes items as long as it saw them in tuning."""
        return encoder_item_max_length(
            self.text_encoder(), self.config["plm_max_length"]
        )


SourceDomain = namedtuple("SourceDomain", ["name", "interaction", "n_items"])


class MetaRecDataset(SequentialDataset):
    """The target dataset (RecBole's splits, evaluation and loaders as usual) plus ``self.sources``: one
    ``SourceDomain`` per ``source_datasets`` entry, read with the target's settings, holding every prefix of every
    user's sequence (item_id_list, item_length, item_id; a source is training data only) and its own item ids.
    With ``train_positions: all`` a source holds all-positions rows over each user's whole history instead
    (``data.positions``), as the target's training split does.
    """

    def __init__(self, config):
        super().__init__(config)
        names = [str(n) for n in (config["source_datasets"] or [])]
        if config["dataset"] in names:
            raise UserInputError(
                f"source_datasets must not include the target dataset '{config['dataset']}'"
            )
        self.sources = [self._load_source(name) for name in names]

    def _load_source(self, name):
        source = SequentialDataset(config_for_dataset(self.config, name))
        if train_positions(self.config) == "all":
            interaction = Interaction(dataset_history_rows(source))
            self._log_source(name, interaction, source)
            return SourceDomain(name, interaction, source.item_num)
        fields = [
            self.config["ITEM_ID_FIELD"] + self.config["LIST_SUFFIX"],
            self.config["ITEM_LIST_LENGTH_FIELD"],
            self.config["ITEM_ID_FIELD"],
        ]
        # build() makes the prefixes; its train/valid/test split is undone, all of a source is for training
        parts = [part.inter_feat for part in source.build()]
        interaction = Interaction(
            {field: torch.cat([part[field] for part in parts]) for field in fields}
        )
        self._log_source(name, interaction, source)
        return SourceDomain(name, interaction, source.item_num)

    def _log_source(self, name, interaction, source):
        self.logger.info(
            set_color("source", "green") + f" {name}: {len(interaction)} sequences, "
            f"{source.item_num - 1} items"
        )


def read_atomic(path, columns):
    """Named columns of an atomic file as strings (header ``name:type``), read without RecBole's processing."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserInputError(
            f"{path} has no column {missing[0]}; it has {', '.join(frame.columns)}"
        )
    return frame[list(columns)]


class TargetTaskDataset(Dataset):
    """A fine-tuning task of a model pretrained on sequences: ``--dataset`` gives the labels, ``source_datasets``
    (exactly one) the input sequences (each user's history there, by time).

    ``target_task``:
        item     labels = the dataset's items (one row per user-item interaction);
        profile  labels = ``label_field`` of the dataset's ``.user`` file (one row per user; ``age_bins`` cut a
                 numeric field into brackets).
    ``self.source_histories``: {user token: [source item tokens, oldest first]}; ``self.source_times``: their
    times.

    Which part of the history a row reads is the row's ``SOURCE_LENGTH`` field: that many of the user's source items,
    oldest first. ``source_history`` (item tasks) sets it:
        before_target  the items with a time before the row's own (a shop only knows the past);
        whole          every item, whatever the row's time (the paper's protocol).
    Profile rows have no time: they read the whole history. Validation and test rows are ranked per user (RecBole's
    full ranking passes user ids, joined with ``user_feat``), so each evaluation split's ``user_feat`` carries the
    user's smallest length over that split's rows. Rows with no source item before them are kept (an empty history:
    the model gives them all one learned no-history state); ``self.no_history`` holds how many there are per split
    (logged)."""

    TASKS = ("item", "profile")
    SOURCE_HISTORIES = ("before_target", "whole")
    SOURCE_LENGTH = "source_length"

    def __init__(self, config):
        if config["target_task"] not in self.TASKS:
            raise UserInputError(
                f"target_task must be one of {', '.join(self.TASKS)}; got '{config['target_task']}'"
            )
        if config["source_history"] not in self.SOURCE_HISTORIES:
            raise UserInputError(
                f"source_history must be one of {', '.join(self.SOURCE_HISTORIES)}; "
                f"got '{config['source_history']}'"
            )
        sources = config["source_datasets"] or []
        if len(sources) != 1:
            raise UserInputError(
                "fine-tuning needs source_datasets with one dataset (whose sequences are the input); "
                f"got {len(sources)}"
            )
        super().__init__(config)
        self.source_histories, self.source_times = self._read_source_histories()
        self.before_target = (
            config["target_task"] == "item"
            and config["source_history"] == "before_target"
        )
        self._set_source_lengths()
        self.no_history = None  # {split: (rows or users without history, of how many)}, set by build()

    def _load_data(self, token, dataset_path):
        super()._load_data(token, dataset_path)
        if self.config["target_task"] == "profile":
            field = self.config["label_field"]
            users = read_atomic(
                os.path.join(dataset_path, f"{token}.user"), [self.uid_field, field]
            )
            labels = users[field]
            if self.config["age_bins"]:
                labels = age_brackets(labels, self.config["age_bins"])
            self.inter_feat = pd.DataFrame(
                {self.uid_field: users[self.uid_field], self.iid_field: labels}
            )
            self.user_feat = None

    def _read_source_histories(self):
        source = self.config["source_datasets"][0]
        folder = dataset_folder(source, self.config["data_root"])
        time_field = self.config["TIME_FIELD"]
        frame = read_atomic(
            os.path.join(folder, f"{source}.inter"),
            [self.uid_field, self.iid_field, time_field],
        )
        frame = frame.assign(_time=frame[time_field].astype(float))
        frame = frame.sort_values([self.uid_field, "_time"], kind="stable")
        histories, times = {}, {}
        for user, rows in frame.groupby(self.uid_field, sort=False):
            histories[user] = rows[self.iid_field].tolist()
            times[user] = rows["_time"].to_numpy()
        return histories, times

    def _set_source_lengths(self):
        """The ``SOURCE_LENGTH`` column: per row, how many of the user's source items its input reads."""
        users = self.field2id_token[self.uid_field][
            self.inter_feat[self.uid_field].to_numpy()
        ]
        if self.before_target:
            time_field = self.time_field
            if time_field is None or time_field not in self.inter_feat:
                raise UserInputError(
                    f"source_history=before_target needs the time of each {self.dataset_name} row: "
                    f"load TIME_FIELD ({time_field}) in load_col, or set source_history=whole"
                )
            normalized = self.config["normalize_field"] or []
            if self.config["normalize_all"] or time_field in normalized:
                raise UserInputError(
                    f"source_history=before_target compares raw times: do not normalize {time_field}"
                )
            empty = np.empty(0)
            lengths = [
                # strictly before: an item of the same time is not known yet
                np.searchsorted(self.source_times.get(str(u), empty), t, side="left")
                for u, t in zip(users, self.inter_feat[time_field].to_numpy())
            ]
        else:
            lengths = [len(self.source_histories.get(str(u), ())) for u in users]
        self.inter_feat[self.SOURCE_LENGTH] = np.asarray(lengths, dtype=np.float64)
        # RecBole's only numeric field type; the model reads it as an integer
        self.set_field_property(
            self.SOURCE_LENGTH, FeatureType.FLOAT, FeatureSource.INTERACTION, 1
        )

    def build(self):
        datasets = super().build()
        for part in datasets[1:]:
            self._set_split_lengths(part)
        self._log_no_history(datasets)
        return datasets

    def _set_split_lengths(self, part):
        """Full ranking scores a user once per split: the user's input is the history before the earliest of the
        user's rows there, so it is before every row it ranks."""
        field, uid = self.SOURCE_LENGTH, self.uid_field
        lengths = torch.full((self.user_num,), float("inf"))
        lengths.scatter_reduce_(
            0, part.inter_feat[uid], part.inter_feat[field], reduce="amin"
        )
        lengths[torch.isinf(lengths)] = 0.0  # users without rows here are not ranked
        feat = {uid: torch.arange(self.user_num), field: lengths}
        if part.user_feat is not None:
            feat = {**part.user_feat.interaction, field: lengths}
        part.user_feat = Interaction(feat)

    def _log_no_history(self, datasets):
        field, uid = self.SOURCE_LENGTH, self.uid_field
        counts = {}
        for name, part in zip(("train", "valid", "test"), datasets):
            rows = part.inter_feat
            if name == "train":
                counts[name] = (int((rows[field] == 0).sum()), len(rows))
            else:
                users = torch.unique(rows[uid])
                counts[name] = (
                    int((part.user_feat[field][users] == 0).sum()),
                    len(users),
                )
        for part in (self, *datasets):
            part.no_history = counts
        mode, missing = (
            ("before_target", "item before the target")
            if self.before_target
            else ("whole", "history")
        )
        text = ", ".join(
            f"{n} of {total} {name} {'rows' if name == 'train' else 'users'}"
            for name, (n, total) in counts.items()
        )
        self.logger.info(
            set_color("source_history", "green")
            + f" {mode}: no {self.config['source_datasets'][0]} {missing} for {text} "
            "(kept: they all get the model's no-history state)"
        )


def age_brackets(values, bins):
    """Ages -> bracket labels: bins [18, 25] give '<18', '18-24', '25+'."""
    bins = [int(b) for b in bins]
    names = (
        [f"<{bins[0]}"]
        + [f"{lo}-{hi - 1}" for lo, hi in zip(bins, bins[1:])]
        + [f"{bins[-1]}+"]
    )
    index = np.searchsorted(np.array(bins), values.astype(int).to_numpy(), side="right")
    return pd.Series([names[i] for i in index], index=values.index)
