"""Stage recipes: a model whose input comes from earlier training stages (a tuned encoder, source adapters, a
pretrained checkpoint) declares those stages (``input_stages(config)`` on the model class), and the runner runs
the ones whose output is not cached yet before the model itself.

Each stage's output is cached under ``<checkpoint_dir>/stages/<Model>-<datasets>-<key>/``, where the key is a hash
of everything that determines it: the stage's model, its whole configuration (the stages it starts from included,
through their cached paths), the content of its datasets and the text encoder. A rerun, or another model asking for
the same stage, reuses it; any other setting makes another key, so a stale output is never reused. A stage writes
into ``<folder>.partial`` and becomes ``<folder>`` only once it has finished, so the cache never holds a
half-written output; a stage that stopped part-way continues from its last checkpoint where its trainer keeps one.

A stage is a dict: ``name`` (``PT``, ``source Tools``...), ``group`` (what ``--<group>.key=value`` on the command
line sets; default the name), ``model``, ``datasets`` (list), ``sources`` (True: a source-domain stage, which never
sees the target), ``settings`` (its config_dict; a value ``"@NAME"`` is the output of the earlier stage NAME),
``output_key`` (the stage model's key that names its output folder; None: the output is the run's checkpoint) and
``inherit`` (keys the stage takes from the target's configuration: a pretrain stage shares its architecture with the
fine-tuning run, but not the fine-tuning-only keys, so varying those reuses one pretraining). ``input_stages`` returns ``(stages, feeds)``: ``feeds`` maps the model's keys to stage
outputs (``"@NAME"`` or a list of them).
"""

import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager

from recbole_transfer import registry
from recbole_transfer.config import Config
from recbole_transfer.errors import UserInputError
from recbole_transfer.plm import plm_identity
from recbole_transfer.quick_start import DERIVED_KEYS, run
from recbole_transfer.utils import atomic_write_text, dataset_names, is_unset

STAGE_INFO = "stage.json"
PARTIAL = ".partial"
# settings that say where files go or how a run is displayed, never what it learns
UNKEYED = set(DERIVED_KEYS) | {
    "checkpoint_dir",
    "data_root",
    "pretrained_dir",
    "text_cache_dir",
    "resume_checkpoint",
    "show_progress",
    "state",
    "log_wandb",
    "wandb_project",
    "gpu_id",
    "use_gpu",
    "worker",
    "save_dataset",
    "save_dataloaders",
    "dataset_save_path",
    "dataloaders_save_path",
    "log_flops",
}
# the run's own keys every stage shares (where data and outputs live, which device, the seed)
SHARED_KEYS = (
    "seed",
    "reproducibility",
    "data_path",
    "checkpoint_dir",
    "text_cache_dir",
    "gpu_id",
    "use_gpu",
    "show_progress",
    "state",
    "worker",
)


class RecipeError(UserInputError):
    pass


def split_stage_overrides(overrides):
    """``{'PT.epochs': '1', 'epochs': '2'}`` -> ``({'PT': {'epochs': '1'}}, {'epochs': '2'})``."""
    scoped, plain = {}, {}
    for key, value in overrides.items():
        group, dot, name = key.partition(".")
        if dot:
            scoped.setdefault(group, {})[name] = value
        else:
            plain[key] = value
    return scoped, plain


def dataset_fingerprint(data_root, name):
    """A hash of the files of ``data_root/name`` (their names and contents)."""
    digest = hashlib.sha1()
    folder = os.path.join(data_root, name)
    for file in sorted(os.listdir(folder)):
        path = os.path.join(folder, file)
        if os.path.isfile(path):
            digest.update(file.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


@contextmanager
def _settings_only():
    """RecBole's Config reads this process's command line; a recipe passes every setting through config_dict."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = argv


def stage_key(config, stage):
    """``(key, keyed settings)``: a hash of everything that determines the stage's output."""
    skip = UNKEYED | {stage["output_key"]}
    settings = {k: v for k, v in config.final_config_dict.items() if k not in skip}
    data_root = config["data_root"]
    identity = {
        "model": stage["model"],
        "datasets": stage["datasets"],
        "settings": settings,
        "data": {n: dataset_fingerprint(data_root, n) for n in stage["datasets"]},
        "encoder": (
            plm_identity(config["plm_name"])
            if not is_unset(config["plm_name"])
            else None
        ),
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12], json.loads(text)


def _resolve(value, outputs):
    if isinstance(value, str) and value.startswith("@"):
        return outputs[value[1:]]
    if isinstance(value, list):
        return [_resolve(v, outputs) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, outputs) for k, v in value.items()}
    return value


def _refers(value):
    if isinstance(value, list):
        return any(_refers(v) for v in value)
    return isinstance(value, str) and value.startswith("@")


def plan(model, dataset, config_file_list=None, config_dict=None, scoped=None):
    """The target's Config, its stages with their cache folders, and what they feed it. Every stage's Config is
    built (and so every dataset checked) before anything trains."""
    config_dict = dict(config_dict or {})
    with _settings_only():
        target = Config(model, dataset, config_file_list, config_dict)
    declare = getattr(registry.get_model_class(target["model"]), "input_stages", None)
    stages, feeds = declare(target) if declare else ([], {})
    scoped = dict(scoped or {})
    groups = {stage.get("group", stage["name"]) for stage in stages}
    unknown = sorted(set(scoped) - groups)
    if unknown:
        raise RecipeError(
            f"--{unknown[0]}.KEY names no stage of {target['model']}'s recipe"
            + (f" (its stages: {', '.join(sorted(groups))})" if groups else "")
        )
    targets = dataset_names(dataset)
    root = os.path.join(str(target["checkpoint_dir"]), "stages")
    shared = {k: target[k] for k in SHARED_KEYS if k in target.final_config_dict}
    shared["data_path"] = target["data_root"]
    outputs, planned = {}, []
    for stage in stages:
        datasets = dataset_names(stage["datasets"])
        if stage.get("sources"):
            if not datasets:
                raise RecipeError(
                    f"{target['model']} on {dataset} needs source_datasets: none given and "
                    f"no shipped domain of its kind besides the target"
                )
            inside = [name for name in datasets if name in targets]
            if inside:
                raise RecipeError(
                    f"source_datasets must not include the target dataset '{inside[0]}'"
                )
        settings = dict(shared)
        settings.update(
            {k: target[k] for k in stage["inherit"] if k in target.final_config_dict}
        )
        declared = stage.get("settings", {})
        settings.update(_resolve(declared, outputs))
        settings.update(scoped.get(stage.get("group", stage["name"]), {}))
        stage = dict(stage, datasets=datasets)
        with _settings_only():
            config = Config(stage["model"], ",".join(datasets), config_dict=settings)
        key, identity = stage_key(config, stage)
        folder = os.path.join(root, f"{stage['model']}-{','.join(datasets)}-{key}")
        inputs = {k: settings[k] for k, v in declared.items() if _refers(v)}
        planned.append(
            dict(
                stage,
                settings=settings,
                key=key,
                identity=identity,
                folder=folder,
                inputs=inputs,
            )
        )
        outputs[stage["name"]] = _output_path(folder, stage)
    resolved = {k: _resolve(v, outputs) for k, v in feeds.items()}
    return target, planned, resolved


def _output_path(folder, stage):
    """Where the stage's output is once finished: its folder output, or its final checkpoint as output.pth."""
    return os.path.join(folder, "output" if stage["output_key"] else "output.pth")


def cached(stage):
    """Whether the stage's folder holds a finished output of exactly these settings."""
    info = os.path.join(stage["folder"], STAGE_INFO)
    if not os.path.isfile(info):
        return False
    try:
        with open(info, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return False
    return (
        saved.get("key") == stage["key"]
        and saved.get("identity") == stage["identity"]
        and os.path.exists(_output_path(stage["folder"], stage))
    )


def _resumable_checkpoint(partial):
    """The newest checkpoint a stage that stopped part-way left in its partial folder (not a snapshot)."""
    found = [
        os.path.join(partial, name)
        for name in os.listdir(partial)
        if name.endswith(".pth") and "-pretrain-" not in name and name != "output.pth"
    ]
    return max(found, key=os.path.getmtime) if found else None


def run_stage(stage, number, total, run_args):
    """Run one stage into ``<folder>.partial`` and move it into place once finished; returns its output path."""
    label = (
        f"[stage {number}/{total}] {stage['name']}: {stage['model']} on "
        f"{','.join(stage['datasets'])}"
    )
    folder = stage["folder"]
    if cached(stage):
        output = _output_path(folder, stage)
        print(f"{label}: reusing cached stage {output}", flush=True)
        return output
    if os.path.isdir(
        folder
    ):  # settings changed under the same key, or a damaged folder
        print(f"{label}: cached folder {folder} does not match; running again")
        shutil.rmtree(folder)
    partial = folder + PARTIAL
    settings = dict(stage["settings"], checkpoint_dir=partial)
    resume = None
    if os.path.isdir(partial):
        resume = None if stage["output_key"] else _resumable_checkpoint(partial)
        if resume is None:
            shutil.rmtree(partial)
    os.makedirs(partial, exist_ok=True)
    if stage["output_key"]:
        settings[stage["output_key"]] = os.path.join(partial, "output")
    if resume:
        settings["resume_checkpoint"] = resume
    inputs = stage["inputs"]
    print(
        f"{label} -> {folder}"
        + (f" (resuming from {resume})" if resume else "")
        + (f"; inputs: {inputs}" if inputs else ""),
        flush=True,
    )
    started = time.time()
    try:
        result = run(
            stage["model"],
            ",".join(stage["datasets"]),
            config_dict=settings,
            **run_args,
        )
    except UserInputError as err:
        raise RecipeError(f"stage {stage['name']} ({stage['model']}): {err}") from err
    except Exception as err:
        raise RecipeError(
            f"stage {stage['name']} ({stage['model']} on {','.join(stage['datasets'])}) failed: "
            f"{type(err).__name__}: {err}; its partial output stays in {partial}"
        ) from err
    if not stage["output_key"]:
        os.replace(result["checkpoint"], os.path.join(partial, "output.pth"))
    else:  # the trainer's own checkpoint duplicates the exported folder
        for name in os.listdir(partial):
            if name.endswith(".pth"):
                os.remove(os.path.join(partial, name))
    info = {
        "stage": stage["name"],
        "model": stage["model"],
        "datasets": stage["datasets"],
        "key": stage["key"],
        "identity": stage["identity"],
        "minutes": round((time.time() - started) / 60, 2),
    }
    atomic_write_text(
        os.path.join(partial, STAGE_INFO), json.dumps(info, indent=1) + "\n"
    )
    os.replace(partial, folder)
    output = _output_path(folder, stage)
    print(f"{label}: done in {info['minutes']} min -> {output}", flush=True)
    return output


def run_input_stages(
    model,
    dataset,
    config_file_list=None,
    config_dict=None,
    scoped=None,
    **run_args,
):
    """Run (or reuse) the stages ``model``'s inputs come from, without the model itself. Returns
    ``(stages, feeds)``: ``feeds`` are the model's keys set to the finished outputs (add them to its config_dict).
    """
    _, stages, feeds = plan(model, dataset, config_file_list, config_dict, scoped)
    for number, stage in enumerate(stages, 1):
        stage["output"] = run_stage(stage, number, len(stages), run_args)
    return stages, feeds


def run_recipe(
    model,
    dataset,
    config_file_list=None,
    config_dict=None,
    scoped=None,
    **run_args,
):
    """Run ``model`` on ``dataset``, first running (or reusing) the stages its inputs come from. ``scoped``:
    ``{stage group: {key: value}}`` for the stages only. Returns ``{'stages': [...], 'result': <run's result>}``.
    """
    stages, feeds = run_input_stages(
        model, dataset, config_file_list, config_dict, scoped, **run_args
    )
    result = run(
        registry.resolve_model_name(model),
        dataset,
        config_file_list,
        dict(config_dict or {}, **feeds),
        **run_args,
    )
    return {"stages": stages, "result": result}
