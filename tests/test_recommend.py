"""python -m recbole_transfer.recommend: top-k items per user from a saved checkpoint."""

import csv

import pytest
import torch

from conftest import FAST, PETERREC, PROMPT, REPO, cut_users

from recbole_transfer import recommend
from recbole_transfer.data.dataset import read_atomic


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    from recbole_transfer.quick_start import build

    saved = tmp_path_factory.mktemp("recommend_saved")
    settings = dict(FAST, data_path=str(tiny_root), checkpoint_dir=str(saved), epochs=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["x"])
        patch.chdir(saved)
        _, _, trainer, (train, valid, _) = build(
            "SASRec", "Scientific", config_dict=settings
        )
        trainer.fit(train, valid, saved=True, show_progress=False)
    return trainer.saved_model_file


def _raw_history(root, name, user):
    """The user's item tokens in the raw atomic file ``root/name/name.inter``, in time order."""
    rows = read_atomic(
        root / name / f"{name}.inter", ["user_id", "item_id", "timestamp"]
    )
    rows = rows[rows.user_id == user].sort_values(
        "timestamp", key=lambda t: t.astype(float), kind="stable"
    )
    return list(rows.item_id)


def _expected(checkpoint, tiny_root, user, k):
    """From the raw atomic file: the user's whole history (time order), last 50 items in, seen items out."""
    from recbole_transfer.quick_start import load_data_and_model

    config, model, data, *_ = load_data_and_model(checkpoint)
    raw = _raw_history(tiny_root, "Scientific", user)
    item_ids = {str(t): i for i, t in enumerate(data.field2id_token["item_id"])}
    history = torch.tensor([item_ids[t] for t in raw])[-50:]
    seq = torch.zeros(1, 50, dtype=torch.long)
    seq[0, : len(history)] = history
    with torch.no_grad():
        scores = model.forward(seq, torch.tensor([len(history)]))
        scores = scores @ model.item_embedding.weight.T
    scores[0, 0] = -torch.inf
    scores[0, history] = -torch.inf
    top = torch.topk(scores[0], k).indices
    return [str(data.field2id_token["item_id"][i]) for i in top], set(raw)


def test_top_k_from_the_whole_history_without_seen_items(trained, tiny_root):
    users = read_atomic(
        tiny_root / "Scientific" / "Scientific.inter", ["user_id"]
    ).user_id.unique()[:3]
    rows = recommend.recommend(trained, users=list(users), k=5)
    assert [r[0] for r in rows] == [u for u in users for _ in range(5)]
    for user in users:
        expected, seen = _expected(trained, tiny_root, user, 5)
        got = [item for u, _, item, _ in rows if u == user]
        assert got == expected
        assert not set(got) & seen
    with_seen = recommend.recommend(
        trained, users=list(users[:1]), k=200, include_seen=True
    )
    assert {item for _, _, item, _ in with_seen} & _expected(
        trained, tiny_root, users[0], 5
    )[1]


def test_cli_writes_the_csv_whole(trained, tiny_root, tmp_path, capsys):
    users = tmp_path / "users.txt"
    first = read_atomic(
        tiny_root / "Scientific" / "Scientific.inter", ["user_id"]
    ).user_id[0]
    users.write_text(f"{first}\n", encoding="utf-8")
    out = tmp_path / "recs.csv"
    assert (
        recommend.main(
            [f"--checkpoint={trained}", f"--users={users}", "--k=3", f"--out={out}"]
        )
        == 0
    )
    with open(out, encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [row["rank"] for row in table] == ["1", "2", "3"] and {
        row["user"] for row in table
    } == {first}


def test_unknown_users_and_bad_checkpoints_are_one_line(trained, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_text("NOBODY1\nNOBODY2\n", encoding="utf-8")
    out = tmp_path / "recs.csv"
    assert (
        recommend.main([f"--checkpoint={trained}", f"--users={users}", f"--out={out}"])
        == 2
    )
    assert (
        capsys.readouterr().err
        == "error: 2 users are not in Scientific, e.g. NOBODY1, NOBODY2\n"
    )
    assert not out.exists()
    assert recommend.main([f"--checkpoint={tmp_path / 'none.pth'}"]) == 2
    assert (
        capsys.readouterr().err
        == f"error: checkpoint '{tmp_path / 'none.pth'}' not found\n"
    )


def _write_candidates(path, pairs):
    path.write_text(
        "user,item\n" + "".join(f"{u},{i}\n" for u, i in pairs), encoding="utf-8"
    )
    return path


def _read_csv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_candidates_restrict_a_full_ranking(trained, tiny_root, tmp_path):
    """A full-ranking model given candidates: its full ranking, kept to the user's candidates."""
    user = read_atomic(
        tiny_root / "Scientific" / "Scientific.inter", ["user_id"]
    ).user_id[0]
    everything = recommend.recommend(trained, users=[user], k=10**6)
    seen = _raw_history(tiny_root, "Scientific", user)
    unseen = [item for _, _, item, _ in everything]
    candidates = unseen[::7][:6] + seen[:2]  # spread over the ranking, plus seen items
    rows = recommend.recommend(
        trained, k=4, candidates=[(user, item) for item in candidates]
    )
    assert [item for _, _, item, _ in rows] == [i for i in unseen if i in candidates][
        :4
    ]
    assert [rank for _, rank, _, _ in rows] == [1, 2, 3, 4]


# --- language models that rank candidates (PromptLoRA, X-Cross) -------------------------------------------------
SOURCES = ["Sports", "Electronics"]  # labels of the source adapters X-Cross integrates


@pytest.fixture(scope="module")
def prompt_checkpoints(tmp_path_factory):
    """The first 20 users of Tools; a PromptLoRA checkpoint, and an X-Cross one over two copies of its adapter."""
    from recbole_transfer.quick_start import build

    root = tmp_path_factory.mktemp("recommend_prompt_data")
    cut_users("Tools", 20, root)
    saved = tmp_path_factory.mktemp("recommend_prompt_saved")
    checkpoints = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["x"])
        patch.chdir(saved)
        settings = dict(PROMPT, data_path=str(root), checkpoint_dir=str(saved))
        _, model, trainer, (train, valid, _) = build(
            "PromptLoRA", "Tools", config_dict=settings
        )
        trainer.fit(train, valid, saved=True, show_progress=False)
        checkpoints["PromptLoRA"] = trainer.saved_model_file
        for name in SOURCES:
            model.export(str(saved / f"PromptLoRA-{name}"))
        _, _, trainer, (train, valid, _) = build(
            "XCross",
            "Tools",
            config_dict=dict(
                settings, source_datasets=SOURCES, source_adapter_dir=str(saved)
            ),
        )
        trainer.fit(train, valid, saved=True, show_progress=False)
        checkpoints["XCross"] = trainer.saved_model_file
    return root, checkpoints


@pytest.mark.parametrize("name", ["PromptLoRA", "XCross"])
def test_language_model_ranks_the_candidates_by_its_own_scores(
    prompt_checkpoints, tmp_path, name
):
    """The CSV ranks each user's candidates (four unseen items and one seen) as the loaded model scores their
    prompts after the user's whole history read from the raw atomic file; the seen one is left out, unless
    --include_seen."""
    from recbole_transfer.quick_start import load_data_and_model

    root, checkpoints = prompt_checkpoints
    _, model, data, *_ = load_data_and_model(checkpoints[name])
    item_ids = {str(t): i for i, t in enumerate(data.field2id_token["item_id"])}
    frame = read_atomic(root / "Tools" / "Tools.inter", ["user_id", "item_id"])
    users = list(frame.user_id.unique()[:3])
    histories = {user: _raw_history(root, "Tools", user) for user in users}
    candidates = {}
    for n, user in enumerate(users):
        others = [i for i in frame.item_id.unique() if i not in histories[user]]
        candidates[user] = others[4 * n : 4 * n + 4] + histories[user][:1]
    # the model's own prompts and scores, all users in one batch
    width = max(len(h) for h in histories.values())
    sequences = torch.tensor(
        [
            [item_ids[i] for i in histories[u]] + [0] * (width - len(histories[u]))
            for u in users
        ]
    )
    tokens = model.prompt_tokens(
        sequences,
        torch.tensor([len(histories[u]) for u in users]),
        torch.tensor([[item_ids[i] for i in candidates[u]] for u in users]),
    )
    with torch.no_grad():
        scores = model.score_prompts(tokens).view(len(users), -1).tolist()
    expected = {  # best first; ties keep the file's order
        u: sorted(zip(candidates[u], row), key=lambda p: -p[1])
        for u, row in zip(users, scores)
    }

    pairs = [(u, i) for u in users for i in candidates[u]]
    path = _write_candidates(tmp_path / "candidates.csv", pairs)
    out = tmp_path / "recs.csv"
    args = [f"--checkpoint={checkpoints[name]}", f"--candidates={path}", "--k=3"]
    assert recommend.main(args + [f"--out={out}"]) == 0
    table = _read_csv(out)
    assert [row["user"] for row in table] == [u for u in users for _ in range(3)]
    for user in users:
        got = [(r["item"], float(r["score"])) for r in table if r["user"] == user]
        unseen = [p for p in expected[user] if p[0] not in histories[user]][:3]
        assert [item for item, _ in got] == [item for item, _ in unseen]
        assert [r["rank"] for r in table if r["user"] == user] == ["1", "2", "3"]
        for (_, score), (_, want) in zip(got, unseen):
            assert score == pytest.approx(want, rel=1e-4, abs=1e-5)
    if name == "PromptLoRA":  # the same code path for both models: once is enough
        first = users[0]
        with_seen = recommend.recommend(
            checkpoints[name],
            k=10,
            include_seen=True,
            candidates=[(first, item) for item in candidates[first]],
        )
        assert [item for _, _, item, _ in with_seen] == [
            item for item, _ in expected[first]
        ]


def test_language_model_without_candidates_is_one_line(
    prompt_checkpoints, tmp_path, capsys
):
    _, checkpoints = prompt_checkpoints
    for name, checkpoint in checkpoints.items():
        out = tmp_path / "recs.csv"
        assert recommend.main([f"--checkpoint={checkpoint}", f"--out={out}"]) == 2
        assert capsys.readouterr().err == (
            f"error: {name} ranks given candidates, not every item: "
            "give --candidates=FILE (a CSV with the header user,item)\n"
        )
        assert not out.exists()


def test_bad_candidate_files_are_one_line_with_the_line_number(
    prompt_checkpoints, tmp_path, capsys
):
    root, checkpoints = prompt_checkpoints
    frame = read_atomic(root / "Tools" / "Tools.inter", ["user_id", "item_id"])
    user, item = frame.user_id[0], frame.item_id[0]
    out = tmp_path / "recs.csv"

    def error(text, *extra):
        path = tmp_path / "candidates.csv"
        path.write_text(text, encoding="utf-8")
        args = [f"--checkpoint={checkpoints['PromptLoRA']}", f"--candidates={path}"]
        assert recommend.main(args + [f"--out={out}", *extra]) == 2
        assert not out.exists()
        # the language model's loading may print progress bars above the error line
        errors = [
            line
            for line in capsys.readouterr().err.splitlines()
            if line.startswith("error:")
        ]
        assert len(errors) == 1
        return errors[0].replace(str(path), "FILE") + "\n"

    assert error(f"user,item\n{user},{item}\n\n{user},NOSUCHITEM\n") == (
        "error: --candidates FILE line 4: item 'NOSUCHITEM' is not in Tools\n"
    )
    assert error(f"user,item\nNOBODY,{item}\n") == (
        "error: --candidates FILE line 2: user 'NOBODY' is not in Tools\n"
    )
    assert error(f"user,item\n{user},{item},extra\n") == (
        f"error: --candidates FILE line 2: expected a user and an item; got {user},{item},extra\n"
    )
    assert error(f"{user},{item}\n") == (
        f"error: --candidates FILE line 1: the header must be user,item; got {user},{item}\n"
    )
    users = tmp_path / "users.txt"
    users.write_text(f"{user}\n", encoding="utf-8")
    assert error(f"user,item\n{user},{item}\n", f"--users={users}") == (
        "error: give --users or --candidates, not both: the candidates file names its users\n"
    )


# --- PeterRec fine-tuned on a target item task (general-type data: the user's source history is the input) ----


@pytest.fixture(scope="module")
def peterrec_item_task(tmp_path_factory):
    """Causal pretraining on the first 100 users of ABE_Beauty, then the item task on the same users' ABE_Electronics
    items (properties/task/beauty_to_electronics.yaml), one epoch each."""
    from recbole_transfer.quick_start import build, run_recbole_transfer

    root = tmp_path_factory.mktemp("recommend_peterrec_data")
    cut_users("ABE_Beauty", 100, root)
    cut_users("ABE_Electronics", 100, root)
    saved = tmp_path_factory.mktemp("recommend_peterrec_saved")
    settings = dict(PETERREC, data_path=str(root), checkpoint_dir=str(saved))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["x"])
        patch.chdir(saved)
        pretrained = run_recbole_transfer(
            "PeterRec", "ABE_Beauty", config_dict=settings
        )
        _, _, trainer, (train, valid, _) = build(
            "PeterRec",
            "ABE_Electronics",
            config_file_list=[f"{REPO}/properties/task/beauty_to_electronics.yaml"],
            # recommend ranks as of now (the whole source history), as the paper's protocol evaluates
            config_dict=dict(
                settings,
                pretrained_path=pretrained["checkpoint"],
                source_history="whole",
            ),
        )
        trainer.fit(train, valid, saved=True, show_progress=False)
    return root, trainer.saved_model_file


def test_peterrec_item_task_recommends_the_models_full_ranking(peterrec_item_task):
    """RecBole's full_sort_scores of the loaded model (padding, training and validation items out) with the user's
    test items (from the raw atomic file) out as well: the top-k of recommend; with --include_seen, the top-k of
    full_sort_predict."""
    from recbole.data.interaction import Interaction
    from recbole.utils.case_study import full_sort_scores

    from recbole_transfer.quick_start import load_data_and_model

    root, checkpoint = peterrec_item_task
    config, model, data, _, _, test = load_data_and_model(checkpoint)
    assert config["train_stage"] == "finetune" and config["target_task"] == "item"
    assert type(data).__name__ == "TargetTaskDataset"
    tokens = data.field2id_token["item_id"]
    item_ids = {str(t): i for i, t in enumerate(tokens)}
    users = list(
        read_atomic(
            root / "ABE_Electronics" / "ABE_Electronics.inter", ["user_id"]
        ).user_id.unique()[:5]
    )
    uids = [data.token2id("user_id", u) for u in users]
    rows = recommend.recommend(checkpoint, users=users, k=5)
    scores = full_sort_scores(uids, model, test)
    for row, user in enumerate(users):
        seen = _raw_history(root, "ABE_Electronics", user)
        scores[row, [item_ids[i] for i in seen if i in item_ids]] = -torch.inf
    top = torch.topk(scores, 5)
    for row, user in enumerate(users):
        got = [(item, score) for u, _, item, score in rows if u == user]
        assert [item for item, _ in got] == [str(tokens[i]) for i in top.indices[row]]
        assert [s for _, s in got] == pytest.approx(top.values[row].tolist(), abs=1e-6)
    with torch.no_grad():
        every = model.full_sort_predict(Interaction({"user_id": torch.tensor(uids)}))
    every[:, 0] = -torch.inf
    with_seen = recommend.recommend(checkpoint, users=users, k=5, include_seen=True)
    assert [item for _, _, item, _ in with_seen] == [
        str(tokens[i]) for i in torch.topk(every, 5).indices.flatten()
    ]
