"""Top-k items per user from a saved checkpoint, in the dataset's own tokens:

    python -m recbole_transfer.recommend --checkpoint=saved/SASRec-X.pth [--users=users.txt] [--k=10]
        [--out=recs.csv] [--include_seen] [--dataset=Other] [--data_path=DIR]
    python -m recbole_transfer.recommend --checkpoint=saved/XCross-X.pth --candidates=candidates.csv [--k=10] ...

Each user is scored after everything the dataset knows about them (training, validation and test interactions:
what a deployed model would have seen), with the items they already interacted with excluded unless
``--include_seen``. Sequential models read the user's last ``MAX_ITEM_LIST_LENGTH`` items; other models score from
the user's id. ``--users``: a file with one user token per line (default: every user). ``--dataset``: another
dataset with the same settings, for text models (UniSRec) that score items they were not trained on.

``--candidates``: a CSV file with the header ``user,item`` and one user-candidate pair per line (tokens; a TSV with
the header ``user<TAB>item`` also reads); each of its users gets the top-k of their own candidates, in the order of
the file's users. Language models that score candidates (X-Cross, PromptLoRA) need it: they score each pair through
their ``predict`` (RecBole's sampled evaluation); other models rank the candidates by their full-ranking scores.
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

# user-candidate pairs scored in one ``predict`` call (a language model batches its prompts further itself)
PAIRS_PER_CALL = 4096
# users ranked over every item in one full_sort_predict call
USERS_PER_CALL = 256


class RecommendError(UserInputError):
    pass


def ranks_candidates_only(model_class):
    """True for a model class that scores given candidates but has no full ranking here: the language models that
    score prompts (X-Cross, PromptLoRA; one language-model pass per item would be a full ranking), and any model
    without its own ``full_sort_predict``."""
    from recbole.model.abstract_recommender import AbstractRecommender

    from recbole_transfer.model.xcross import PromptRecommender

    return (
        issubclass(model_class, PromptRecommender)
        or model_class.full_sort_predict is AbstractRecommender.full_sort_predict
    )


def _check_full_ranking(checkpoint):
    """Without candidates: stop before loading the data and the model (a language model takes a while) when the
    checkpoint's model only ranks candidates."""
    from recbole_transfer import registry
    from recbole_transfer.utils import load_checkpoint

    name = load_checkpoint(checkpoint, what="checkpoint")["config"]["model"]
    if ranks_candidates_only(registry.get_model_class(name)):
        raise RecommendError(
            f"{name} ranks given candidates, not every item: "
            "give --candidates=FILE (a CSV with the header user,item)"
        )


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


def _model_input(dataset, config, histories, user_ids):
    """One row per entry of ``user_ids``: the user's recent items (sequential models) or the user's id."""
    from recbole.data.interaction import Interaction
    from recbole.utils import ModelType

    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        return _sequence_input(dataset, config, histories, user_ids)
    return Interaction({dataset.uid_field: torch.tensor(user_ids)})


def scores_for(model, config, dataset, histories, user_ids, include_seen=False):
    """[len(user_ids), n_items] scores after each user's whole history (``_histories``); padding (and seen
    items) at -inf."""
    interaction = _model_input(dataset, config, histories, user_ids)
    with torch.no_grad():
        try:
            scores = model.full_sort_predict(interaction.to(config["device"]))
        except NotImplementedError:
            raise RecommendError(
                f"{config['model']} has no full ranking (full_sort_predict): give --candidates=FILE"
            ) from None
    scores = scores.view(len(user_ids), -1).float().cpu()
    scores[:, 0] = -torch.inf
    if not include_seen:
        for row, user in enumerate(user_ids):
            scores[row, histories[user]] = -torch.inf
    return scores


def candidate_scores(
    model, config, dataset, histories, user_ids, candidates, include_seen=False
):
    """One score tensor per user: the scores of ``candidates[i]`` (item ids) for ``user_ids[i]`` after the user's
    whole history, seen items at -inf. A model that only ranks candidates (``ranks_candidates_only``) scores
    each user-candidate pair through its ``predict``, as in RecBole's sampled evaluation; any other model
    through its full ranking."""
    if not ranks_candidates_only(type(model)):
        scores = scores_for(model, config, dataset, histories, user_ids, include_seen)
        return [scores[row, items] for row, items in enumerate(candidates)]
    from recbole.data.interaction import Interaction

    pair_users = [user for user, items in zip(user_ids, candidates) for _ in items]
    interaction = _model_input(dataset, config, histories, pair_users)
    interaction.update(Interaction({config["ITEM_ID_FIELD"]: torch.cat(candidates)}))
    with torch.no_grad():
        flat = model.predict(interaction.to(config["device"])).view(-1).float().cpu()
    scores = list(torch.split(flat, [len(items) for items in candidates]))
    if not include_seen:
        for user, items, row in zip(user_ids, candidates, scores):
            row[torch.isin(items, histories[user])] = -torch.inf
    return scores


def _resolve_candidates(dataset, candidates):
    """``{user id: item ids}`` (in the order the users first appear) from ``[(user, item[, where]), ...]``
    tokens; the first unknown user or item stops with its ``where`` (file and line)."""
    users = {
        str(t): i for i, t in enumerate(dataset.field2id_token[dataset.uid_field]) if i
    }
    items = {
        str(t): i for i, t in enumerate(dataset.field2id_token[dataset.iid_field]) if i
    }
    per_user = {}
    for n, pair in enumerate(candidates, 1):
        user, item = pair[0], pair[1]
        where = pair[2] if len(pair) > 2 else f"candidate {n}"
        if user not in users:
            raise RecommendError(
                f"{where}: user '{user}' is not in {dataset.dataset_name}"
            )
        if item not in items:
            raise RecommendError(
                f"{where}: item '{item}' is not in {dataset.dataset_name}"
            )
        per_user.setdefault(users[user], {})[items[item]] = None  # each pair once
    if not per_user:
        raise RecommendError("no candidates given")
    return {user: torch.tensor(list(ids)) for user, ids in per_user.items()}


def _batches(user_ids, sizes, limit):
    """Consecutive runs of ``user_ids`` holding at most ``limit`` in total of ``sizes`` (at least one user)."""
    batch, total = [], 0
    for user in user_ids:
        if batch and total + sizes[user] > limit:
            yield batch
            batch, total = [], 0
        batch.append(user)
        total += sizes[user]
    if batch:
        yield batch


def _ranked(user_token, item_ids, scores, item_tokens, k):
    """Rows ``(user, rank, item, score)`` of the top ``k`` finite scores; ties keep the order of ``item_ids``."""
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return [
        (user_token, rank, str(item_tokens[item_ids[i]]), float(scores[i]))
        for rank, i in enumerate(order.tolist(), 1)
        if torch.isfinite(scores[i])
    ]


def recommend(
    checkpoint,
    users=None,
    k=10,
    include_seen=False,
    dataset=None,
    config_dict=None,
    candidates=None,
):
    """``[(user token, rank, item token, score), ...]`` for ``users`` (tokens; None = every user), or, given
    ``candidates`` (``[(user token, item token), ...]``; ``read_candidates`` adds each pair's file and line, for the
    messages), for the users of ``candidates``, each ranking only their own candidate items.
    """
    if k < 1:
        raise RecommendError("--k must be at least 1")
    if users is not None and candidates is not None:
        raise RecommendError(
            "give --users or --candidates, not both: the candidates file names its users"
        )
    if candidates is None:
        _check_full_ranking(checkpoint)
    config, model, data, *_ = load_data_and_model(checkpoint, dataset, config_dict)
    user_tokens = data.field2id_token[data.uid_field]
    item_tokens = data.field2id_token[data.iid_field]
    by_pairs = ranks_candidates_only(type(model))
    per_user = None if candidates is None else _resolve_candidates(data, candidates)
    user_ids = _user_ids(data, users) if per_user is None else list(per_user)
    histories = _histories(data)
    rows = []
    if per_user is None:
        for start in range(0, len(user_ids), USERS_PER_CALL):
            batch = user_ids[start : start + USERS_PER_CALL]
            scores = scores_for(model, config, data, histories, batch, include_seen)
            top = torch.topk(scores, min(k, scores.shape[1] - 1), dim=1)
            for row, user in enumerate(batch):
                rows += _ranked(
                    str(user_tokens[user]),
                    top.indices[row],
                    top.values[row],
                    item_tokens,
                    k,
                )
        return rows
    # a language model's batch: user-candidate pairs; a full ranking's: users
    cost = {user: len(items) if by_pairs else 1 for user, items in per_user.items()}
    limit = PAIRS_PER_CALL if by_pairs else USERS_PER_CALL
    for batch in _batches(user_ids, cost, limit):
        items = [per_user[user] for user in batch]
        scores = candidate_scores(
            model, config, data, histories, batch, items, include_seen
        )
        for user, ids, row in zip(batch, items, scores):
            rows += _ranked(str(user_tokens[user]), ids, row, item_tokens, k)
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


def read_candidates(path):
    """``[(user, item, "--candidates FILE line N"), ...]`` from a CSV file with the header ``user,item`` (a TSV
    with the header ``user<TAB>item`` also reads); blank lines are skipped."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except OSError as err:
        raise RecommendError(f"--candidates {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise RecommendError(f"--candidates {path}: not UTF-8 text") from None
    first = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text), delimiter="\t" if "\t" in first else ",")
    pairs, header = [], None
    for fields in reader:
        fields = [field.strip() for field in fields]
        if not any(fields):
            continue
        where = f"--candidates {path} line {reader.line_num}"
        if header is None:
            header = fields
            if [field.lower() for field in fields] != ["user", "item"]:
                raise RecommendError(
                    f"{where}: the header must be user,item; got {','.join(fields)}"
                )
            continue
        if len(fields) != 2 or not all(fields):
            raise RecommendError(
                f"{where}: expected a user and an item; got {','.join(fields)}"
            )
        pairs.append((fields[0], fields[1], where))
    if not pairs:
        raise RecommendError(f"--candidates {path} names no candidate")
    return pairs


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
    parser.add_argument(
        "--candidates",
        default=None,
        help="CSV with the header user,item: rank only these items per user "
        "(needed by X-Cross and PromptLoRA)",
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
        candidates = read_candidates(args.candidates) if args.candidates else None
        extra = {"data_path": args.data_path} if args.data_path else {}
        rows = recommend(
            args.checkpoint,
            users,
            args.k,
            args.include_seen,
            args.dataset,
            extra,
            candidates,
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
