"""Stage recipes: a method's name and a dataset run the whole method; every stage is cached, reused on the next
call (by any model asking for it), re-run when its settings change, and never half-written.
"""

import json
import os

import pytest

from conftest import FAST, PETERREC, PROMPT, REPO, cut_users

from recbole_transfer import recipe
from recbole_transfer.model.xcross import HEAD_FILE
from recbole_transfer.recipe import RecipeError, plan, run_recipe

# one optimiser step per behavior-tuning stage on short texts: the chain, not the tuning, is under test
TUNING = {"max_train_examples": 16, "train_batch_size": 16, "bt_seq_max_length": 32}
# the item table is as wide as the encoder (hidden_size unset)
PLM_INIT = dict(
    {k: v for k, v in FAST.items() if k != "hidden_size"}, epochs=1, n_heads=2
)


@pytest.fixture(scope="module")
def text_root(tmp_path_factory):
    """Scientific (target) and two text sources, first users only."""
    root = tmp_path_factory.mktemp("recipe_data")
    cut_users("Scientific", 150, root)
    cut_users("Tools", 60, root)
    cut_users("Toys", 60, root)
    return root


class StageRecorder:
    """Wraps recipe.run: records (model, datasets) of every run, stage or target."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = recipe.run

        def recording(model, dataset, *args, **kwargs):
            self.calls.append((model, dataset))
            return real(model, dataset, *args, **kwargs)

        monkeypatch.setattr(recipe, "run", recording)


def _plm_init(model, text_root, text_cache, saved):
    return run_recipe(
        model,
        "Scientific",
        config_dict=dict(
            PLM_INIT,
            data_path=str(text_root),
            checkpoint_dir=str(saved),
            text_cache_dir=text_cache,
        ),
        scoped={"PT": TUNING, "FT": TUNING},
    )


def test_plm_init_recipe_chains_caches_and_shares_its_stages(
    text_root, text_cache, tmp_path, monkeypatch, capsys
):
    recorder = StageRecorder(monkeypatch)
    saved = tmp_path / "saved"
    first = _plm_init("PLMInitSASRec", text_root, text_cache, saved)
    # PT on the other text domains of the family present (never the target), FT on the target, then the model
    assert recorder.calls == [
        ("BehaviorTuning", "Tools,Toys"),
        ("BehaviorTuning", "Scientific"),
        ("PLMInitSASRec", "Scientific"),
    ]
    pt, ft = first["stages"]
    assert pt["sources"] and "Scientific" not in pt["datasets"]
    assert ft["settings"]["init_plm_path"] == pt["output"]
    for stage in (pt, ft):
        assert os.path.isfile(os.path.join(stage["output"], "behavior_tuning.json"))
        assert not os.path.exists(stage["folder"] + ".partial")
        info = json.load(open(os.path.join(stage["folder"], "stage.json")))
        assert info["key"] == stage["key"] and stage["key"] in stage["folder"]
    log = capsys.readouterr().out
    assert "[stage 1/2] PT: BehaviorTuning on Tools,Toys -> " in log

    recorder.calls.clear()
    second = _plm_init("PLMInitSASRec", text_root, text_cache, saved)
    assert recorder.calls == [("PLMInitSASRec", "Scientific")]
    assert second["result"]["test_result"] == first["result"]["test_result"]
    assert "FT: BehaviorTuning on Scientific: reusing cached stage" in (
        capsys.readouterr().out
    )

    # another model asking for the same encoders reuses them
    recorder.calls.clear()
    bert = _plm_init("PLMInitBERT4Rec", text_root, text_cache, saved)
    assert recorder.calls == [("PLMInitBERT4Rec", "Scientific")]
    assert bert["stages"][1]["output"] == ft["output"]


def test_changed_settings_make_another_stage(text_root, tmp_path):
    def folders(**tuning):
        _, stages, feeds = plan(
            "PLMInitSASRec",
            "Scientific",
            config_dict=dict(PLM_INIT, data_path=str(text_root)),
            scoped={"PT": dict(TUNING, **tuning)},
        )
        return [stage["folder"] for stage in stages], feeds

    (pt, ft), feeds = folders()
    assert feeds == {"init_plm_path": os.path.join(ft, "output")}
    (pt_lr, ft_lr), _ = folders(learning_rate=0.001)
    # the PT's settings changed; the FT starts from another PT, so it changes too
    assert pt_lr != pt and ft_lr != ft
    assert folders()[0] == [pt, ft]  # nothing random in a key


def test_a_stage_whose_recorded_settings_differ_runs_again(tmp_path):
    stage = {"folder": str(tmp_path / "S-abc"), "key": "abc", "output_key": None}
    stage["identity"] = {"settings": {"epochs": 1}}
    os.makedirs(stage["folder"])
    open(os.path.join(stage["folder"], "output.pth"), "wb").close()
    info = {"key": "abc", "identity": {"settings": {"epochs": 2}}}
    with open(os.path.join(stage["folder"], "stage.json"), "w") as f:
        json.dump(info, f)
    assert not recipe.cached(stage)
    info["identity"] = stage["identity"]
    with open(os.path.join(stage["folder"], "stage.json"), "w") as f:
        json.dump(info, f)
    assert recipe.cached(stage)


def _fake_stage(tmp_path, output_key=None):
    return {
        "name": "pretrain",
        "model": "UniSRec",
        "datasets": ["Tools"],
        "settings": {"seed": 1},
        "output_key": output_key,
        "folder": str(tmp_path / "stages" / "UniSRec-Tools-k"),
        "key": "k",
        "identity": {"k": 1},
        "inputs": {},
    }


def test_a_failing_stage_is_one_line_and_leaves_nothing_in_the_cache(
    tmp_path, monkeypatch
):
    stage = _fake_stage(tmp_path)

    def crash(model, dataset, config_dict=None, **kwargs):
        with open(os.path.join(config_dict["checkpoint_dir"], "UniSRec-1.pth"), "w"):
            pass
        raise RuntimeError("out of memory")

    monkeypatch.setattr(recipe, "run", crash)
    with pytest.raises(RecipeError) as err:
        recipe.run_stage(stage, 1, 1, {})
    partial = stage["folder"] + ".partial"
    assert str(err.value) == (
        "stage pretrain (UniSRec on Tools) failed: RuntimeError: out of memory; "
        f"its partial output stays in {partial}"
    )
    assert not os.path.exists(stage["folder"]) and not recipe.cached(stage)

    # the next call resumes from the checkpoint the stopped run left
    seen = {}

    def finish(model, dataset, config_dict=None, **kwargs):
        seen.update(config_dict)
        path = os.path.join(config_dict["checkpoint_dir"], "UniSRec-2.pth")
        open(path, "w").close()
        return {"checkpoint": path}

    monkeypatch.setattr(recipe, "run", finish)
    output = recipe.run_stage(stage, 1, 1, {})
    assert seen["resume_checkpoint"] == os.path.join(partial, "UniSRec-1.pth")
    assert output == os.path.join(stage["folder"], "output.pth")
    assert recipe.cached(stage) and not os.path.exists(partial)


def test_sources_must_not_hold_the_target_and_must_exist(text_root):
    settings = dict(PLM_INIT, data_path=str(text_root))
    with pytest.raises(RecipeError) as err:
        plan(
            "PLMInitSASRec",
            "Scientific",
            config_dict=dict(settings, source_datasets="Tools,Scientific"),
        )
    assert str(err.value) == (
        "source_datasets must not include the target dataset 'Scientific'"
    )
    with pytest.raises(Exception) as err:
        plan(
            "PLMInitSASRec",
            "Scientific",
            config_dict=dict(settings, source_datasets="Tools,Nowhere"),
        )
    assert "Nowhere" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RecipeError) as err:
        plan("PLMInitSASRec", "Scientific", config_dict=settings, scoped={"XX": {}})
    assert str(err.value) == (
        "--XX.KEY names no stage of PLMInitSASRec's recipe (its stages: FT, PT)"
    )


def test_given_inputs_need_no_stage(text_root):
    settings = dict(PLM_INIT, data_path=str(text_root))
    for model, extra in (
        ("PLMInitSASRec", {"init_type": "plm"}),
        ("PLMInitSASRec", {"init_plm_path": "somewhere"}),
        ("XCross", {"source_adapter_dir": "saved"}),
        ("SASRec", {}),
        ("MetaRec", {}),
    ):
        _, stages, feeds = plan(
            model, "Scientific", config_dict=dict(settings, **extra)
        )
        assert (stages, feeds) == ([], {}), model


def test_cli_scopes_stage_keys_and_refuses_unknown_stages(capsys):
    import run_recbole_transfer

    code = run_recbole_transfer.main(
        ["--model=SASRec", "--dataset=Scientific", "--PT.epochs=1"]
    )
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --PT.KEY names no stage of SASRec's recipe"
    )


# --- X-Cross: one PromptLoRA per source, then X-Cross on the target ---------------------------------------------


def test_xcross_recipe_trains_one_adapter_per_source_then_reuses_them(
    tmp_path, monkeypatch
):
    root = tmp_path / "data"
    for name in ("Tools", "Sports", "Electronics"):
        cut_users(name, 20, root)
    recorder = StageRecorder(monkeypatch)
    source_keys = {k: PROMPT[k] for k in ("epochs", "max_train_examples")}
    source_keys.update(max_eval_users=1, train_batch_size=4)

    def xcross():
        return run_recipe(
            "XCross",
            "Tools",
            config_dict=dict(
                PROMPT,
                data_path=str(root),
                checkpoint_dir=str(tmp_path / "saved"),
            ),
            scoped={"source": source_keys},
        )

    first = xcross()
    assert recorder.calls == [
        ("PromptLoRA", "Electronics"),
        ("PromptLoRA", "Sports"),
        ("XCross", "Tools"),
    ]
    for stage in first["stages"]:
        assert stage["settings"]["xc_max_length"] == 32  # the prompt keys X-Cross reads
        assert os.path.isfile(os.path.join(stage["output"], HEAD_FILE))
    recorder.calls.clear()
    second = xcross()
    assert recorder.calls == [("XCross", "Tools")]
    assert second["result"]["test_result"] == first["result"]["test_result"]


# --- PeterRec: pretraining on the task's source, then the item task ----------------------------------------------
def test_peterrec_recipe_pretrains_on_the_source_then_finetunes(tmp_path, monkeypatch):
    root = tmp_path / "data"
    cut_users("ABE_Beauty", 100, root)
    cut_users("ABE_Electronics", 100, root)
    recorder = StageRecorder(monkeypatch)
    settings = dict(
        PETERREC, data_path=str(root), checkpoint_dir=str(tmp_path / "saved")
    )
    task = [str(REPO / "properties/task/beauty_to_electronics.yaml")]
    pretrain_keys = {"pretrain": {"epochs": 1}}
    first = run_recipe("PeterRec", "ABE_Electronics", task, settings, pretrain_keys)
    assert recorder.calls == [
        ("PeterRec", "ABE_Beauty"),
        ("PeterRec", "ABE_Electronics"),
    ]
    (pretrain,) = first["stages"]
    # the run's backbone keys reach the pretraining stage; the task's and the fine-tuning keys do not
    assert pretrain["settings"]["hidden_size"] == 16
    assert pretrain["settings"]["train_stage"] == "pretrain"
    assert "target_task" not in pretrain["settings"]
    import torch

    saved = torch.load(first["result"]["checkpoint"], weights_only=True)["config"]
    assert saved["pretrained_path"] == pretrain["output"]
    recorder.calls.clear()
    # another fine-tuning mode (and the paper's whole-history protocol) reuses the same pretraining
    whole = task + [str(REPO / "properties/task/whole_source_history.yaml")]
    settings = dict(settings, finetune_mode="fine_all")
    run_recipe("PeterRec", "ABE_Electronics", whole, settings, pretrain_keys)
    assert recorder.calls == [("PeterRec", "ABE_Electronics")]


def test_bench_xcross_source_eval_users_shares_the_source_stages_across_target_eval_users(
    tmp_path,
):
    """The source stages are keyed by ``max_eval_users``: two runs of one X-Cross table with different target
    ``max_eval_users`` plan different source adapters unless ``--source_eval_users`` fixes the sources' own.
    """
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_xcross

    root = tmp_path / "data"
    for name in ("Tools", "Sports", "Electronics"):
        cut_users(name, 20, root)
    settings = dict(PROMPT, data_path=str(root), checkpoint_dir=str(tmp_path / "saved"))

    def source_folders(eval_users, source_eval_users):
        common = dict(settings, max_eval_users=eval_users)
        scoped = bench_xcross.source_stage_settings(
            common, source_examples=30, source_eval_users=source_eval_users
        )
        _, stages, _ = plan(
            "XCross", "Tools", config_dict=common, scoped={"source": scoped}
        )
        return [stage["folder"] for stage in stages]

    assert source_folders(10, None) != source_folders(5, None)
    assert source_folders(10, 8) == source_folders(5, 8)
    assert len(set(source_folders(10, 8))) == 2  # one adapter per source
