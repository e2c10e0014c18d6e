"""Model name -> (model class, dataset class, trainer class).

Plugin models are looked up first; any other name goes to stock RecBole. RecBole's own ``get_model`` cannot see
plugin classes and, for unknown names, fails on an unrelated optional import, so unknown names are caught here with
the closest known names in the message.
"""

import difflib
import importlib
import os
import re
from functools import lru_cache

from recbole_transfer.errors import UserInputError

_RECBOLE_MODEL_FOLDERS = [
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
]

# name -> ("module:ModelClass", "module:DatasetClass" or None, "module:TrainerClass" or None)
_PLUGIN_MODELS = {}


class UnknownModelError(UserInputError):
    pass


def register(name, model, dataset=None, trainer=None):
    """Register a plugin model. Each of ``model``/``dataset``/``trainer`` is a class or a ``"module:Class"`` path
    (imported only when the model is used). ``dataset`` and ``trainer`` may also be dicts ``{train_stage: ...}``:
    stages not in them use RecBole's choice for the model type."""
    _PLUGIN_MODELS[name] = (model, dataset, trainer)


def plugin_model_names():
    return sorted(_PLUGIN_MODELS)


@lru_cache(maxsize=1)
def recbole_model_families():
    """``{family folder: (model names)}`` of every model class RecBole ships, read from its source files
    (importing them all would pull optional dependencies such as lightgbm/xgboost)."""
    import recbole.model

    root = os.path.dirname(recbole.model.__file__)
    families = {}
    for folder in _RECBOLE_MODEL_FOLDERS:
        path = os.path.join(root, folder)
        names = []
        for file in sorted(os.listdir(path)):
            if not file.endswith(".py") or file.startswith("__"):
                continue
            module_name = file[:-3]
            with open(os.path.join(path, file), encoding="utf-8") as f:
                for class_name in re.findall(r"^class (\w+)\(", f.read(), flags=re.M):
                    if class_name.lower() == module_name:
                        names.append(class_name)
        families[folder] = tuple(sorted(set(names)))
    return families


def recbole_model_names():
    return tuple(
        sorted({n for names in recbole_model_families().values() for n in names})
    )


def models_summary():
    """The plugin's models and RecBole's model families, one line each (for --help and error messages)."""
    lines = [f"plugin: {', '.join(plugin_model_names())}"]
    for folder, names in recbole_model_families().items():
        family = folder.replace("_recommender", "").replace("_", "-")
        lines.append(f"RecBole {family}: {', '.join(names)}")
    return lines


def resolve_model_name(name):
    """The canonical spelling of a plugin or RecBole model name (case-insensitive); unknown names raise
    ``UnknownModelError`` listing the close matches."""
    known = list(_PLUGIN_MODELS) + [
        n for n in recbole_model_names() if n not in _PLUGIN_MODELS
    ]
    if name in known:
        return name
    by_lower = {n.lower(): n for n in known}
    if str(name).lower() in by_lower:
        return by_lower[str(name).lower()]
    close = [
        by_lower[n]
        for n in difflib.get_close_matches(
            str(name).lower(), list(by_lower), n=5, cutoff=0.5
        )
    ]
    hint = (
        f"; close matches: {', '.join(close)}"
        if close
        else f"; plugin models: {', '.join(plugin_model_names())}; or any RecBole model "
        "(python run_recbole_transfer.py --help lists them)"
    )
    raise UnknownModelError(f"unknown model '{name}'{hint}")


def _load(target):
    if target is None or not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def is_plugin_model(name):
    return name in _PLUGIN_MODELS


# stock RecBole models that train on all positions (``train_positions: all``) through a plugin subclass
_ALL_POSITIONS_STOCK = {
    "SASRec": "recbole_transfer.model.positions:AllPositionsSASRec",
    "GRU4Rec": "recbole_transfer.model.positions:AllPositionsGRU4Rec",
}
# stock RecBole models that cannot, and why (one line each)
_ALL_POSITIONS_REFUSED = {
    "NextItNet": "RecBole's NextItNet scores from the last column of each padded row, not from the history's newest "
    "item, so no position of a one-pass history gives a prefix's prediction",
}


def get_model_class(name, train_positions="last", train_stage=None):
    """The model class of ``name``; with ``train_positions`` ``all`` the class that trains on all positions of a
    history (a stock model's plugin subclass), or an error naming the model (and ``train_stage``) and why not.
    """
    name = resolve_model_name(name)
    if train_positions == "all" and name in _ALL_POSITIONS_STOCK:
        return _load(_ALL_POSITIONS_STOCK[name])
    if train_positions == "all" and name in _ALL_POSITIONS_REFUSED:
        raise UserInputError(
            f"train_positions=all is not supported by {name}: {_ALL_POSITIONS_REFUSED[name]}"
        )
    if name in _PLUGIN_MODELS:
        model_class = _load(_PLUGIN_MODELS[name][0])
    else:
        from recbole.utils import get_model

        model_class = get_model(name)
    if train_positions == "all":
        from recbole_transfer.model.positions import all_positions_refusal

        reason = all_positions_refusal(model_class, train_stage)
        if reason is not None:
            staged = isinstance(vars(model_class).get("all_positions"), dict)
            stage = f" {train_stage}" if staged else ""
            raise UserInputError(
                f"train_positions=all is not supported by {name}{stage}"
                + (f": {reason}" if reason else " yet")
            )
    return model_class


def get_dataset_class(name, train_stage=None):
    """The plugin dataset class of a model (for ``train_stage``), or None (then RecBole's ``create_dataset`` picks
    the stock one)."""
    name = resolve_model_name(name)
    dataset = _PLUGIN_MODELS[name][1] if name in _PLUGIN_MODELS else None
    if isinstance(dataset, dict):
        dataset = dataset.get(train_stage)
    return _load(dataset)


def has_stage(name, train_stage):
    """Whether a plugin model registers a trainer for ``train_stage`` (e.g. "pretrain")."""
    trainer = _PLUGIN_MODELS.get(resolve_model_name(name), (None, None, None))[2]
    return isinstance(trainer, dict) and train_stage in trainer


def get_trainer_class(name, model_type, train_stage=None):
    name = resolve_model_name(name)
    trainer = _PLUGIN_MODELS[name][2] if name in _PLUGIN_MODELS else None
    if isinstance(trainer, dict):
        trainer = trainer.get(train_stage)
    from recbole_transfer.compat import plugin_trainer

    if trainer is not None:
        return plugin_trainer(_load(trainer))
    from recbole.utils import get_trainer

    return plugin_trainer(get_trainer(model_type, name))


register(
    "UniSRec",
    "recbole_transfer.model.unisrec:UniSRec",
    "recbole_transfer.data.dataset:TextSequentialDataset",
    {"pretrain": "recbole_transfer.trainer.pretrain:PretrainTrainer"},
)
register(
    "BehaviorTuning",
    "recbole_transfer.model.plm_init:BehaviorTuning",
    "recbole_transfer.data.dataset:BehaviorTuningDataset",
    "recbole_transfer.trainer.lm:BehaviorTuningTrainer",
)
for _name in ("PLMInitSASRec", "PLMInitBERT4Rec"):
    register(
        _name,
        f"recbole_transfer.model.plm_init:{_name}",
        "recbole_transfer.data.dataset:PLMInitDataset",
    )
register(
    "PeterRec",
    "recbole_transfer.model.peterrec:PeterRec",
    {"finetune": "recbole_transfer.data.dataset:TargetTaskDataset"},
    {"finetune": "recbole_transfer.trainer.finetune:TargetTaskTrainer"},
)
register("LRURec", "recbole_transfer.model.lrurec:LRURec")
register(
    "MetaRec",
    "recbole_transfer.model.metarec:MetaRec",
    "recbole_transfer.data.dataset:MetaRecDataset",
    "recbole_transfer.trainer.meta:MetaTrainer",
)
register(
    "PromptLoRA",
    "recbole_transfer.model.xcross:PromptLoRA",
    "recbole_transfer.data.dataset:ItemTextDataset",
    "recbole_transfer.trainer.lm:PromptLoRATrainer",
)
register(
    "XCross",
    "recbole_transfer.model.xcross:XCross",
    "recbole_transfer.data.dataset:ItemTextDataset",
    "recbole_transfer.trainer.lm:XCrossTrainer",
)
