"""Top-k items per user from a saved checkpoint, in the dataset's own tokens:

    python -m recbole_transfer.recommend --checkpoint=saved/SASRec-X.pth [--users=users.txt] [--k=10]
        [--out=recs.csv] [--include_seen] [--dataset=Other] [--data_path=DIR]

Each user is scored after everything the dataset knows about them (training, validation and test interactions:
what a deployed model would have seen), with the items they already interacted with excluded unless
``--include_seen``. Sequential models read the user's last ``MAX_ITEM_LIST_LENGTH`` items; other models score from
the user's id. ``--users``: a file with one user token per line (default: every user). ``--dataset``: another
dataset with the same settings, for text models (UniSRec) that score items they were not trained on.
Output: CSV ``user,rank,item,score`` (written whole or not at all) or, without ``--out``, standard output.
"""

import argparse
import csv
import io
import sys

import torch

from recbole_transfer.errors import UserInputError, report
from recbole_transfer.quick_start import load_data_and_model
from recbole_transfer.utils import atomic_write_text


class RecommendError(UserInputError):
    pass


def _user_ids(dataset, users):
    tokens = dataset.field2id_token[dataset.uid_field]
    index = {str(token): i for i, token in enumerate(tokens) if i > 0}
    if users is None:
        return list(range(1, len(tokens)))
    unknown = [u for u in users if u not in index]
    if unknown:
        raise RecommendError(
            f"{len(unknown)} users are not in {dataset.dataset_name}, e.g. {', '.join(unknown[:3])}"
        )
    return [index[u] for u in users]


def _histories(dataset):
    """``{user id: every item of the user, in time order}``, read once. A sequential dataset's rows are its
    training examples (one per prefix, the item being the prefix's next item), so a user's first item is only in
    the first prefix."""
    inter = dataset.inter_feat
    users, items = inter[dataset.uid_field], inter[dataset.iid_field]
    seq_field = dataset.config["ITEM_ID_FIELD"] + dataset.config["LIST_SUFFIX"]
    sequential = seq_field in inter
    order_field = (
        dataset.config["ITEM_LIST_LENGTH_FIELD"] if sequential else dataset.time_field
    )
    order = torch.arange(len(users))
    if order_field in inter:
        order = torch.argsort(inter[order_field], stable=True)
    order = order[torch.argsort(users[order], stable=True)]  # by user, in order within
    users, items = users[order], items[order]
    ids, counts = torch.unique_consecutive(users, return_counts=True)
    firsts = inter[seq_field][order, 0] if sequential else None
    histories = {}
    for user, rows in zip(
        ids.tolist(), torch.split(torch.arange(len(users)), counts.tolist())
    ):
        history = items[rows]
        if sequential:
            history = torch.cat([firsts[rows[:1]], history])
        histories[user] = history
    return histories


def _sequence_input(dataset, config, histories, user_ids):
    from recbole.data.interaction import Interaction

    length = config["MAX_ITEM_LIST_LENGTH"]
    seq = torch.zeros(len(user_ids), length, dtype=torch.long)
    lengths = torch.zeros(len(user_ids), dtype=torch.long)
    for row, user in enumerate(user_ids):
        recent = histories[user][-length:]
        seq[row, : len(recent)] = recent
        lengths[row] = len(recent)
    fields = {
        dataset.uid_field: torch.tensor(user_ids),
        config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]: seq,
        config["ITEM_LIST_LENGTH_FIELD"]: lengths,
    }
    return Interaction(fields)


def scores_for(model, config, dataset, histories, user_ids, include_seen=False):
    """[len(user_ids), n_items] scores after each user's whole history (``_histories``); padding (and seen
    items) at -inf."""
    from recbole.data.interaction import Interaction
    from recbole.utils import ModelType

    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        interaction = _sequence_input(dataset, config, histories, user_ids)
    else:
        interaction = Interaction({dataset.uid_field: torch.tensor(user_ids)})
    with torch.no_grad():
        try:
            scores = model.full_sort_predict(interaction.to(config["device"]))
        except NotImplementedError:
            raise RecommendError(
                f"{config['model']} has no full ranking (full_sort_predict); rank candidates instead"
            ) from None
    scores = scores.view(len(user_ids), -1).float().cpu()
    scores[:, 0] = -torch.inf
    if not include_seen:
        for row, user in enumerate(user_ids):
            scores[row, histories[user]] = -torch.inf
    return scores


def recommend(
    checkpoint, users=None, k=10, include_seen=False, dataset=None, config_dict=None
):
    """``[(user token, rank, item token, score), ...]`` for ``users`` (tokens; None = every user)."""
    if k < 1:
        raise RecommendError("--k must be at least 1")
    config, model, data, *_ = load_data_and_model(checkpoint, dataset, config_dict)
    user_ids = _user_ids(data, users)
    user_tokens = data.field2id_token[data.uid_field]
    item_tokens = data.field2id_token[data.iid_field]
    histories = _histories(data)
    rows = []
    for start in range(0, len(user_ids), 256):
        batch = user_ids[start : start + 256]
        scores = scores_for(model, config, data, histories, batch, include_seen)
        top = torch.topk(scores, min(k, scores.shape[1] - 1), dim=1)
        for row, user in enumerate(batch):
            for rank, (score, item) in enumerate(
                zip(top.values[row], top.indices[row]), 1
            ):
                if torch.isfinite(score):
                    rows.append(
                        (
                            str(user_tokens[user]),
                            rank,
                            str(item_tokens[item]),
                            float(score),
                        )
                    )
    return rows


def to_csv(rows):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["user", "rank", "item", "score"])
    writer.writerows((u, r, i, f"{s:.6g}") for u, r, i, s in rows)
    return out.getvalue()


def _read_users(path):
    try:
        with open(path, encoding="utf-8") as f:
            # each user once, in the file's order
            users = list(dict.fromkeys(line.strip() for line in f if line.strip()))
    except OSError as err:
        raise RecommendError(f"--users {path}: {err.strerror}") from None
    if not users:
        raise RecommendError(f"--users {path} names no user")
    return users


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m recbole_transfer.recommend",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a checkpoint saved by the pipeline"
    )
    parser.add_argument(
        "--users", default=None, help="file of user tokens, one per line"
    )
    parser.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    parser.add_argument(
        "--out", default=None, help="CSV file (default: standard output)"
    )
    parser.add_argument(
        "--include_seen", action="store_true", help="keep items the user already has"
    )
    parser.add_argument("--dataset", default=None, help="another dataset (text models)")
    parser.add_argument("--data_path", default=None, help="folder holding the dataset")
    args = parser.parse_args(argv)
    try:
        users = _read_users(args.users) if args.users else None
        extra = {"data_path": args.data_path} if args.data_path else {}
        rows = recommend(
            args.checkpoint, users, args.k, args.include_seen, args.dataset, extra
        )
        text = to_csv(rows)
        if args.out:
            atomic_write_text(args.out, text)
            print(
                f"{len(rows)} recommendations for {len({r[0] for r in rows})} users -> {args.out}"
            )
        else:
            sys.stdout.write(text)
    except UserInputError as err:
        return report(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
