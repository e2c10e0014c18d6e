"""Training on all positions of a history at once (``train_positions: all``).

RecBole turns each user's history into one row per prefix (i1 -> i2; i1, i2 -> i3; ...): memory and work grow with
interactions x ``MAX_ITEM_LIST_LENGTH``. A causal model's state at position t depends only on the items up to t, so
one pass over the whole training history yields every prefix's prediction. With ``train_positions: all`` the
TRAINING split holds one row per user history instead:

    item_id_list          inputs  = history[:-1], right-padded to MAX_ITEM_LIST_LENGTH
    item_id_target_list   targets = history[1:], 0 at padding (``target_list_field``)
    item_length           real positions in the row
    item_id               the row's last target (so the split stays an ordinary RecBole Interaction)

The history is the user's training items only: the items whose prefix rows RecBole's leave-one-out split ('LS')
would put in the training split, plus the user's first item. Validation and test rows are RecBole's own prefix rows
(full ranking on the last items, unchanged); they are the only prefix rows ever built.

A history with more targets than MAX_ITEM_LIST_LENGTH is cut into consecutive windows of targets, aligned at the
end: every window but the first holds exactly MAX_ITEM_LIST_LENGTH targets, its inputs are the items right before
them, and every training target is predicted exactly once.
"""

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType, set_color

from recbole_transfer.errors import UserInputError

TRAIN_POSITIONS = ("last", "all")

# leave-one-out mode -> the split index (1 valid, 2 test) of a user's held-out rows, oldest first
_HELD_OUT_PARTS = {"valid_and_test": (1, 2), "valid_only": (1,), "test_only": (2,)}


def train_positions(config):
    """``config['train_positions']`` checked: ``last`` (unset) or ``all``."""
    value = config["train_positions"] if "train_positions" in config else None
    value = "last" if value is None else str(value)
    if value not in TRAIN_POSITIONS:
        raise UserInputError(
            f"train_positions must be one of {', '.join(TRAIN_POSITIONS)}; got '{value}'"
        )
    return value


def target_list_field(config):
    """Name of the per-position target field of all-positions rows (``item_id_target_list``)."""
    return config["ITEM_ID_FIELD"] + "_target" + config["LIST_SUFFIX"]


def _distribution(args):
    return "none" if not args else args.get("distribution", "none")


def check_all_positions_data(config):
    """What all-positions rows need from the data settings; one-line errors otherwise."""
    if config["benchmark_filename"] is not None:
        raise UserInputError(
            "train_positions=all builds its training rows from whole histories: unset benchmark_filename"
        )
    split = config["eval_args"]["split"]
    mode = split.get("LS") if isinstance(split, dict) else None
    if mode not in _HELD_OUT_PARTS:
        raise UserInputError(
            "train_positions=all needs the leave-one-out split (eval_args split LS: "
            f"{', '.join(_HELD_OUT_PARTS)}); got {split}"
        )
    if _distribution(config["train_neg_sample_args"]) != "none":
        raise UserInputError(
            "train_positions=all trains with cross-entropy over all items: set train_neg_sample_args to None"
        )
    for phase in ("valid", "test"):
        distribution = _distribution(config[f"{phase}_neg_sample_args"])
        # these samplers read the training split's item column, which all-positions rows do not hold in full
        if distribution == "popularity" or (
            distribution != "none" and not config["repeatable"]
        ):
            raise UserInputError(
                f"train_positions=all evaluates with full ranking or uniform sampling (repeatable: True); "
                f"got {distribution} {phase} sampling with repeatable: {config['repeatable']}"
            )
    return mode


def _gather_rows(values, starts, lengths, width):
    """Rows ``values[start : start + length]`` right-padded with zeros to ``width`` (``values`` [N, ...])."""
    offsets = torch.arange(width)
    index = torch.as_tensor(starts)[:, None] + offsets
    real = offsets < torch.as_tensor(lengths)[:, None]
    rows = values[index.clamp(max=max(len(values) - 1, 0))]
    real = real.reshape(real.shape + (1,) * (rows.dim() - 2))
    return torch.where(real, rows, torch.zeros((), dtype=rows.dtype))


def history_windows(user_start, train_length, width):
    """Windows over flat training histories: user u's items are ``flat[user_start[u] : user_start[u] +
    train_length[u]]``. Returns ``(row_user, input_start, input_length)`` (numpy): the targets of a row are the
    items right after its inputs. Windows are aligned at the end of each history, so only a user's first window
    has fewer than ``width`` targets and each target is in exactly one window."""
    targets = np.maximum(np.asarray(train_length, dtype=np.int64) - 1, 0)
    n_windows = -(-targets // width)  # ceil; 0 for a history of one item
    row_user = np.repeat(np.arange(len(targets)), n_windows)
    first_row = np.cumsum(n_windows) - n_windows
    # 0 = the user's first window
    window = np.arange(len(row_user)) - first_row[row_user]
    first_length = (targets - (n_windows - 1) * width)[row_user]
    input_length = np.where(window == 0, first_length, width)
    offset = np.where(window == 0, 0, first_length + (window - 1) * width)
    input_start = np.asarray(user_start, dtype=np.int64)[row_user] + offset
    return row_user, input_start, input_length


def history_rows(items, length, width, config, users=None):
    """All-positions rows (fields named by ``config``) over flat histories: history u is ``items[start_u : start_u
    + length[u]]``, one after the other. With ``users`` (one id per history) the rows carry the user field.
    """
    length = torch.as_tensor(length).numpy()
    user_start = np.cumsum(length) - length
    row_user, start, input_length = history_windows(user_start, length, width)
    last = torch.from_numpy(start + input_length)
    item = config["ITEM_ID_FIELD"]
    rows = {}
    if users is not None:
        rows[config["USER_ID_FIELD"]] = users[torch.from_numpy(row_user)]
    rows |= {
        item: items[last] if len(last) else items[:0],
        item + config["LIST_SUFFIX"]: _gather_rows(items, start, input_length, width),
        config["ITEM_LIST_LENGTH_FIELD"]: torch.from_numpy(input_length),
        target_list_field(config): _gather_rows(items, start + 1, input_length, width),
    }
    return rows


def dataset_history_rows(dataset):
    """All-positions rows over every user's whole history in ``dataset`` (a Dataset read but not built: its
    interactions still a DataFrame), for data that is training data only (e.g. a source domain).
    """
    uid, iid = dataset.uid_field, dataset.iid_field
    # stable, as RecBole's build orders histories: by user, then time, ties in file order
    feat = dataset.inter_feat.sort_values(by=[uid, dataset.time_field], kind="stable")
    users = feat[uid].to_numpy()
    n = len(users)
    new_user = np.r_[True, users[1:] != users[:-1]] if n else np.zeros(0, bool)
    length = np.diff(np.r_[np.flatnonzero(new_user), n])
    return history_rows(
        torch.as_tensor(feat[iid].to_numpy()),
        length,
        dataset.config["MAX_ITEM_LIST_LENGTH"],
        dataset.config,
    )


class AllPositionsDataset:
    """Mixin over a SequentialDataset class: RecBole's prefix rows for validation and test only, one row per user
    history (windows) for training. Built through ``all_positions_dataset``."""

    def __init__(self, config):
        self.leave_one_mode = check_all_positions_data(config)
        self.target_list_field = target_list_field(config)
        super().__init__(config)

    def data_augmentation(self):
        """RecBole's augmentation, restricted to the rows leave-one-out holds out; the training items of each user
        are kept as one flat history (``self.train_history``)."""
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        feat = self.inter_feat
        users = feat[self.uid_field].numpy()
        n = len(users)
        new_user = np.r_[True, users[1:] != users[:-1]] if n else np.zeros(0, bool)
        user_start = np.flatnonzero(new_user)
        counts = np.diff(np.r_[user_start, n])
        # a user with k prefix rows holds out min(parts, k - 1) of them (RecBole's _split_index_by_leave_one_out)
        parts = len(_HELD_OUT_PARTS[self.leave_one_mode])
        held_out = np.clip(np.minimum(parts, counts - 2), 0, None)
        train_length = counts - held_out  # the first item and the training targets

        # held-out prefix rows, exactly as RecBole builds them
        rank = np.arange(held_out.sum()) - np.repeat(
            np.cumsum(held_out) - held_out, held_out
        )
        target = np.repeat(user_start + counts - held_out, held_out) + rank
        group_start = np.repeat(user_start, held_out)
        list_start = np.maximum(group_start, target - self.max_item_list_len)
        list_length = target - list_start
        rows = feat[torch.from_numpy(target)]
        lists = {self.item_list_length_field: torch.from_numpy(list_length)}
        for field in feat:
            if field == self.uid_field:
                continue
            list_field = getattr(self, f"{field}_list_field")
            width = self.field2seqlen[list_field]
            width = width if isinstance(width, int) else width[0]
            lists[list_field] = _gather_rows(
                feat[field], list_start, list_length, width
            )
        rows.update(Interaction(lists))

        in_train = np.arange(n) - np.repeat(user_start, counts) < np.repeat(
            train_length, counts
        )
        keep = torch.from_numpy(np.flatnonzero(in_train))
        # RecBole's split visits users in the order of their first prefix row (by time, then user id)
        first_row_time = torch.full((self.user_num,), float("inf"), dtype=torch.float64)
        has_rows = counts > 1
        first_row_time[torch.from_numpy(users[user_start[has_rows]])] = feat[
            self.time_field
        ][torch.from_numpy(user_start[has_rows] + 1)].to(torch.float64)
        self.first_row_time = first_row_time
        self.train_history = {
            "user": torch.from_numpy(users[user_start]),
            "length": torch.from_numpy(train_length),
            "items": feat[self.iid_field][keep],
        }
        self.set_field_property(
            self.target_list_field,
            FeatureType.TOKEN_SEQ,
            FeatureSource.INTERACTION,
            self.max_item_list_len,
        )
        self.inter_feat = rows

    def all_positions_rows(self):
        """The training split: one row per window of each user's training history."""
        history = self.train_history
        return Interaction(
            history_rows(
                history["items"],
                history["length"],
                self.max_item_list_len,
                self.config,
                users=history["user"],
            )
        )

    def leave_one_out(self, group_by, leave_one_mode):
        """The held-out rows go to validation / test as RecBole's split sends them; training gets the
        all-positions rows."""
        parts = _HELD_OUT_PARTS[leave_one_mode]
        next_index = [[], [], []]
        users = self.inter_feat[group_by].numpy()
        groups = list(self._grouped_index(users))
        first_users = np.array([users[index[0]] for index in groups], dtype=np.int64)
        order = np.lexsort((first_users, self.first_row_time.numpy()[first_users]))
        for index in (groups[i] for i in order):
            index = list(index)
            for part, i in zip(parts[len(parts) - len(index) :], index):
                next_index[part].append(i)
        self._drop_unused_col()
        train = self.all_positions_rows()
        targets = int((train[self.target_list_field] > 0).sum())
        # train_batch_size counts rows, and a row here carries several targets: the steps per epoch shrink alike
        self.logger.info(
            set_color("train_positions", "green")
            + f" all: {len(train)} training rows, {targets} targets ({targets / max(1, len(train)):.1f} per row; "
            f"train_batch_size counts rows, so an epoch has that many times fewer steps than with prefix rows)"
        )
        return [self.copy(train)] + [
            self.copy(self.inter_feat[torch.tensor(index, dtype=torch.long)])
            for index in next_index[1:]
        ]


_CLASSES = {}


def all_positions_dataset(dataset_class=None):
    """``dataset_class`` (a SequentialDataset subclass; default SequentialDataset) building all-positions
    training rows; one class per input."""
    dataset_class = dataset_class or SequentialDataset
    if not issubclass(dataset_class, SequentialDataset):
        raise UserInputError(
            f"train_positions=all needs sequential data; {dataset_class.__name__} is not"
        )
    if dataset_class not in _CLASSES:
        _CLASSES[dataset_class] = type(
            dataset_class.__name__,
            (AllPositionsDataset, dataset_class),
            {"__module__": __name__},
        )
    return _CLASSES[dataset_class]
