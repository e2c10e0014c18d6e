"""Hyper-parameter sweeps over a RecBole ``.hyper`` file, for plugin and stock models alike.

``tool="hyperopt"`` runs RecBole's HyperTuning (exhaustive, random or bayes) with the plugin's objective function;
``tool="ray"`` samples the space at random with ray tune and stops bad trials early (ASHA on the validation metric).
Either way the sweep ends in ``<output>.md`` and ``<output>.json``: one row per trial, the best parameters on top.

A hyperopt sweep trains in ``<output>-work/`` (one folder per trial, each trial ``resumable``) until it ends: the same
command continues an interrupted sweep, reading back the trials that finished and continuing the interrupted one from
its last epoch; when the sweep ends, each trial's best model goes to ``checkpoint_dir`` and the folder is removed.

``.hyper`` lines (RecBole's format, nothing else): ``name choice [a,b,...]`` | ``name uniform low,high`` |
``name loguniform low,high`` (natural-log bounds: values exp(U(low, high))) | ``name quniform low,high,q``.
"""

import ast
import contextlib
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import sys
from datetime import datetime

import pandas as pd

from recbole_transfer.utils import atomic_write_text
from recbole_transfer.errors import UserInputError

TOOLS = ("hyperopt", "ray")
ALGOS = ("exhaustive", "random", "bayes")
KINDS = ("choice", "uniform", "loguniform", "quniform")
DEFAULT_MAX_EVALS = 10
LINE_FORMATS = "'name choice [a,b]', 'name uniform low,high', 'name loguniform low,high' or 'name quniform low,high,q'"


class HyperFileError(UserInputError):
    pass


def _parse_line(line):
    """``'name kind values'`` -> ``(name, kind, values)``, or None when the line does not fit the format."""
    tokens = line.split()
    if len(tokens) < 3 or tokens[1] not in KINDS:
        return None
    name, kind, text = tokens[0], tokens[1], "".join(tokens[2:])
    if kind == "choice":
        try:
            values = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
        return (
            (name, kind, list(values))
            if isinstance(values, (list, tuple)) and values
            else None
        )
    try:
        bounds = [float(value) for value in text.split(",")]
    except ValueError:
        return None
    if len(bounds) != (3 if kind == "quniform" else 2) or not all(
        map(math.isfinite, bounds)
    ):
        return None
    if not bounds[0] < bounds[1] or (kind == "quniform" and bounds[2] <= 0):
        return None
    return name, kind, bounds


def read_space(hyper_file):
    """The ``.hyper`` file as ``[(name, kind, values)]`` in file order; any line that RecBole would misread or skip
    is refused, so a typo never silently narrows the sweep."""
    if not os.path.isfile(hyper_file):
        raise HyperFileError(f"hyper file '{hyper_file}' not found")
    space = []
    with open(hyper_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parsed = _parse_line(line)
            if parsed is None:
                raise HyperFileError(
                    f"malformed line {number} of {hyper_file}: '{line.strip()}'; "
                    f"expected {LINE_FORMATS}"
                )
            if parsed[0] in (name for name, _, _ in space):
                raise HyperFileError(
                    f"line {number} of {hyper_file}: parameter '{parsed[0]}' given twice"
                )
            space.append(parsed)
    if not space:
        raise HyperFileError(
            f"hyper file '{hyper_file}' has no parameters; expected lines like {LINE_FORMATS}"
        )
    return space


def hyperopt_params_dict(space):
    """``{kind: {name: values}}``: the ``params_dict`` RecBole's HyperTuning builds its hyperopt space from."""
    params = {}
    for name, kind, values in space:
        params.setdefault(kind, {})[name] = values
    return params


def ray_space(space):
    """The same space for ray tune; hyperopt's loguniform bounds are logs, ray's are the values themselves."""
    from ray import tune

    converted = {}
    for name, kind, values in space:
        if kind == "choice":
            converted[name] = tune.choice(values)
        elif kind == "uniform":
            converted[name] = tune.uniform(*values)
        elif kind == "loguniform":
            converted[name] = tune.loguniform(math.exp(values[0]), math.exp(values[1]))
        else:
            converted[name] = tune.quniform(*values)
    return converted


def config_values(space, sample):
    """A sampled point as plain config values: numpy scalars become Python ones, and a quniform over whole numbers
    gives ints (RecBole keys like n_layers break on 2.0)."""
    values = {}
    for name, kind, bounds in space:
        value = sample[name]
        value = value.item() if hasattr(value, "item") else value
        if (
            kind == "quniform"
            and float(bounds[0]).is_integer()
            and float(bounds[2]).is_integer()
        ):
            value = int(round(value))
        values[name] = value
    return values


def _metrics(result):
    return (
        None if result is None else {key: float(value) for key, value in result.items()}
    )


def _trial(
    params, best_valid_score, best_valid_result, test_result, status="completed"
):
    score = None if best_valid_score is None else float(best_valid_score)
    return {
        "params": params,
        "best_valid_score": score,
        "best_valid_result": _metrics(best_valid_result),
        "test_result": _metrics(test_result),
        "status": status,
    }


def _plain_result(result):
    """An objective's result as JSON: its metrics as floats."""
    score = result["best_valid_score"]
    return {
        "model": result["model"],
        "best_valid_score": None if score is None else float(score),
        "valid_score_bigger": bool(result["valid_score_bigger"]),
        "best_valid_result": _metrics(result["best_valid_result"]),
        "test_result": _metrics(result["test_result"]),
    }


def _sweep_settings(space, base, config_file_list, algo, max_evals):
    return json.loads(
        json.dumps(
            {
                "space": space,
                "settings": base,
                "config_files": config_file_list,
                "algo": algo,
                "max_evals": max_evals,
            },
            sort_keys=True,
            default=str,
        )
    )


def _open_work_folder(work, settings):
    """Create the sweep's work folder, or check that an interrupted sweep's one was started with these settings."""
    manifest = os.path.join(work, "sweep.json")
    if os.path.exists(manifest):
        with open(manifest) as file:
            if json.load(file) != settings:
                raise UserInputError(
                    f"'{work}' holds an interrupted sweep with other settings: delete it to start this one, "
                    f"or choose another --hyper_output"
                )
        finished = len(glob.glob(os.path.join(glob.escape(work), "*", "result.json")))
        logging.getLogger(__name__).warning(
            f"continuing the interrupted sweep in '{work}' ({finished} trial(s) finished); delete it to start over"
        )
    else:
        atomic_write_text(manifest, json.dumps(settings, indent=2) + "\n")


def _trial_folder(work, params):
    key = json.dumps(params, sort_keys=True, default=str)
    return os.path.join(work, "trial-" + hashlib.sha1(key.encode()).hexdigest()[:12])


def _close_work_folder(work, checkpoint_dir):
    """Move each trial's best model to ``checkpoint_dir`` (where a sweep's models go) and remove the work folder."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    for path in glob.glob(os.path.join(glob.escape(work), "*", "*.pth")):
        if not path.endswith("-latest.pth"):
            shutil.move(path, os.path.join(checkpoint_dir, os.path.basename(path)))
    shutil.rmtree(work)


@contextlib.contextmanager
def _hyperopt_seed(seed):
    """hyperopt draws its trials from an unseeded RandomState unless ``HYPEROPT_FMIN_SEED`` is set (RecBole's
    HyperTuning passes no ``rstate``); a value the user set wins."""
    if os.environ.get("HYPEROPT_FMIN_SEED"):
        yield
        return
    os.environ["HYPEROPT_FMIN_SEED"] = str(seed)
    try:
        yield
    finally:
        os.environ.pop("HYPEROPT_FMIN_SEED", None)


def _hyperopt_trials(space, base, config_file_list, algo, max_evals, work, seed):
    from recbole.trainer import HyperTuning

    from recbole_transfer.measure import resumable_in
    from recbole_transfer.quick_start import objective_function

    trials = []

    def objective(params, fixed_config_file_list):
        params = config_values(space, params)
        folder = _trial_folder(work, params)
        finished = os.path.join(folder, "result.json")
        if os.path.exists(finished):
            with open(finished) as file:
                result = json.load(file)
        else:
            result = _plain_result(
                objective_function(
                    dict(base, **params, **resumable_in(folder)),
                    fixed_config_file_list,
                )
            )
            atomic_write_text(finished, json.dumps(result, indent=2) + "\n")
        trials.append(
            _trial(
                params,
                result["best_valid_score"],
                result["best_valid_result"],
                result["test_result"],
            )
        )
        return result

    tuner = HyperTuning(
        objective,
        params_dict=hyperopt_params_dict(space),
        fixed_config_file_list=config_file_list,
        algo=algo,
        max_evals=max_evals or DEFAULT_MAX_EVALS,
    )
    if algo == "exhaustive" and max_evals:
        tuner.max_evals = min(int(tuner.max_evals), max_evals)
    # drawn from the sweep's seed, the same command visits the same points in the same order: a rerun reads back
    # the trials that finished and continues the interrupted one next (random and bayes included)
    with _hyperopt_seed(seed):
        tuner.run()
    return trials


def _ray_trial(params, space, base, config_file_list, metric, cpus):
    """One ray trial: report the validation metric after every validation (ASHA stops bad trials on it), then one
    final result with the best validation score under the same key and the test metrics (``test/<metric>``).
    """
    import ray
    import torch
    from ray.air import session

    from recbole_transfer.quick_start import build

    # RecBole's Config reads --key=value from sys.argv; a ray worker's argv holds ray's own flags
    sys.argv = sys.argv[:1]
    torch.set_num_threads(cpus)
    gpu_ids = [str(gpu) for gpu in ray.get_gpu_ids()]
    # every trial its own checkpoint folder: trials that start in the same second would share a file name
    config_dict = dict(
        base,
        **config_values(space, params),
        checkpoint_dir=session.get_trial_dir(),
        use_gpu=bool(gpu_ids),
        gpu_id=",".join(gpu_ids),
    )
    config, model, trainer, (train_data, valid_data, test_data) = build(
        config_file_list=config_file_list, config_dict=config_dict
    )

    def report_validation(epoch_idx, valid_score):
        session.report(
            {
                metric: float(valid_score),
                "best_valid_score": float(trainer.best_valid_score),
                "epoch": epoch_idx,
            }
        )

    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, verbose=False, saved=True, callback_fn=report_validation
    )
    test_result = trainer.evaluate(test_data, load_best_model=True)
    final = {
        metric: float(best_valid_score),
        "best_valid_score": float(best_valid_score),
    }
    final.update(
        {
            f"valid/{key}": float(value)
            for key, value in (best_valid_result or {}).items()
        }
    )
    final.update({f"test/{key}": float(value) for key, value in test_result.items()})
    session.report(final)


def _prefixed(metrics, prefix):
    found = {
        key[len(prefix) :]: value
        for key, value in metrics.items()
        if key.startswith(prefix)
    }
    return found or None


def _ray_trials(
    space,
    base,
    config_file_list,
    max_evals,
    cpus,
    gpus,
    folder,
    metric,
    bigger,
    reports,
):
    import ray
    from ray import air, tune
    from ray.tune.schedulers import ASHAScheduler

    if not ray.is_initialized():
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    available = ray.cluster_resources()
    for name, wanted in (("CPU", cpus), ("GPU", gpus)):
        if wanted > available.get(name, 0):
            # ray would keep such trials pending forever
            raise UserInputError(
                f"a trial asks for {wanted:g} {name}s but ray has {available.get(name, 0):g}: "
                f"lower --{name.lower()}s_per_trial"
            )
    trainable = tune.with_parameters(
        _ray_trial,
        space=space,
        base=base,
        config_file_list=config_file_list,
        metric=metric,
        cpus=cpus,
    )
    mode = "max" if bigger else "min"
    # every validation is one report, and the final result one more: ASHA must not stop a trial before that
    scheduler = ASHAScheduler(
        metric=metric, mode=mode, max_t=reports + 1, grace_period=1
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus}),
        param_space=ray_space(space),
        tune_config=tune.TuneConfig(
            num_samples=max_evals, scheduler=scheduler, chdir_to_trial_dir=False
        ),
        run_config=air.RunConfig(
            name=datetime.now().strftime("%Y-%m-%d_%H-%M-%S"),
            storage_path=folder,
            verbose=1,
        ),
    )
    trials, errors = [], []
    for result in tuner.fit():
        params = config_values(space, result.config)
        if result.error is not None:
            errors.append(str(result.error).strip().splitlines()[-1])
            trials.append(
                _trial(params, None, None, None, status=f"error: {errors[-1]}")
            )
            continue
        metrics = result.metrics or {}
        test_result = _prefixed(metrics, "test/")
        trials.append(
            _trial(
                params,
                metrics.get("best_valid_score"),
                _prefixed(metrics, "valid/"),
                test_result,
                status="completed" if test_result else "stopped early",
            )
        )
    if len(errors) == len(trials):
        raise RuntimeError(
            f"every ray trial failed; the first: {errors[0] if errors else 'no trials ran'}"
        )
    return trials


def best_trial(trials, bigger):
    """The trial with the best validation score (the first of equals), among those that reached the test split."""
    scored = [trial for trial in trials if trial["best_valid_score"] is not None]
    pool = [trial for trial in scored if trial["test_result"] is not None] or scored
    sign = 1 if bigger else -1
    return max(pool, key=lambda trial: sign * trial["best_valid_score"], default=None)


def sweep_command(
    model, dataset, hyper_file, tool, algo, max_evals, config_file_list, config_dict
):
    """The command line that reruns this sweep (for the results file)."""
    args = [
        f"--model={model}",
        f"--dataset={dataset}",
        f"--hyper={hyper_file}",
        f"--tool={tool}",
        f"--algo={algo}",
    ]
    if max_evals:
        args.append(f"--max_evals={max_evals}")
    if config_file_list:
        args.append(f"--config_files=\"{' '.join(config_file_list)}\"")
    args += [f"--{key}={value}" for key, value in (config_dict or {}).items()]
    return "python run_recbole_transfer.py " + " ".join(args)


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown(summary):
    params = list(summary["space"])
    best = summary["best_trial"]
    valid_metric = summary["valid_metric"]
    test_keys = list(
        dict.fromkeys(
            key for trial in summary["trials"] for key in (trial["test_result"] or {})
        )
    )
    columns = (
        ["trial"]
        + params
        + [f"best valid {valid_metric}"]
        + [f"test {key}" for key in test_keys]
        + ["status"]
    )
    best_params = ", ".join(
        f"`{name}={_cell(value)}`" for name, value in summary["best_params"].items()
    )
    lines = [
        f"# Hyper-parameter sweep: {summary['model']} on {summary['dataset']} ({summary['tool']}, {summary['algo']})",
        "",
        f"<!-- {summary['command']}; {summary['date']} -->",
        "",
        f"Best parameters (trial {best}): {best_params}; best valid {valid_metric} = "
        f"{summary['best_valid_score']:.4f}",
        "",
    ]
    cells_by_trial = []
    for number, trial in enumerate(summary["trials"], 1):
        score = trial["best_valid_score"]
        test = trial["test_result"] or {}
        cells = [f"**{number}**" if number == best else str(number)]
        cells += [_cell(trial["params"].get(name, "")) for name in params]
        cells.append("" if score is None else f"{score:.4f}")
        cells += [f"{test[key]:.4f}" if key in test else "" for key in test_keys]
        cells.append(_cell(trial["status"]))
        cells_by_trial.append(cells)
    table = pd.DataFrame(cells_by_trial, columns=columns).to_markdown(
        index=False, disable_numparse=True
    )
    return "\n".join(lines + [table]) + "\n"


def run_hyper(
    model,
    dataset,
    hyper_file,
    tool="hyperopt",
    algo=None,
    max_evals=None,
    config_file_list=None,
    config_dict=None,
    output=None,
    cpus_per_trial=None,
    gpus_per_trial=None,
):
    """Sweep ``hyper_file``'s space for ``model`` on ``dataset`` (``config_dict`` and ``config_file_list`` fixed for
    every trial) and write ``<output>.md`` and ``<output>.json``.

    ``algo``: exhaustive (the default for hyperopt; choice parameters only), random or bayes; ray samples at random.
    ``max_evals``: trials (exhaustive: at most the grid; default 10 otherwise).
    Returns ``{best_params, best_valid_score, best_test_result, trials, ...}``.
    """
    from recbole_transfer.config import Config, shipped_file

    hyper_file = shipped_file(hyper_file)
    if tool not in TOOLS:
        raise UserInputError(f"unknown tool '{tool}': use {' or '.join(TOOLS)}")
    algo = algo or ("exhaustive" if tool == "hyperopt" else "random")
    if algo not in ALGOS:
        raise UserInputError(f"unknown algo '{algo}': use {', '.join(ALGOS)}")
    if tool == "ray" and algo != "random":
        raise UserInputError(
            f"--tool=ray samples the space at random; --algo={algo} needs --tool=hyperopt"
        )
    if max_evals is not None and max_evals < 1:
        raise UserInputError(f"--max_evals must be at least 1, got {max_evals}")
    space = read_space(hyper_file)
    if algo == "exhaustive":
        sampled = [name for name, kind, _ in space if kind != "choice"]
        if sampled:
            raise UserInputError(
                f"exhaustive search needs 'choice' parameters only ({', '.join(sampled)} in "
                f"{hyper_file} are not): use --algo=random or --algo=bayes"
            )

    base = dict(config_dict or {}, model=model, dataset=dataset)
    # only read here; with use_gpu it would pin CUDA_VISIBLE_DEVICES to gpu_id before ray counts the GPUs
    config = Config(
        config_file_list=config_file_list, config_dict=dict(base, use_gpu=False)
    )
    unknown = [name for name, _, _ in space if name not in config.final_config_dict]
    if unknown:
        raise HyperFileError(
            f"hyper file '{hyper_file}' sets {', '.join(unknown)}: not in {config['model']}'s "
            f"config (a typo?)"
        )
    model, metric, bigger = (
        config["model"],
        config["valid_metric"].lower(),
        config["valid_metric_bigger"],
    )
    output = output or os.path.join("results", f"hyper_{model}_{dataset}_{tool}")

    work = f"{output}-work"
    if tool == "hyperopt":
        _open_work_folder(
            work, _sweep_settings(space, base, config_file_list, algo, max_evals)
        )
        trials = _hyperopt_trials(
            space, base, config_file_list, algo, max_evals, work, config["seed"]
        )
    else:
        import torch

        cpus = cpus_per_trial or 1
        gpus = (
            (1 if torch.cuda.is_available() else 0)
            if gpus_per_trial is None
            else gpus_per_trial
        )
        # trials run in other processes: paths relative to this working directory must not depend on theirs
        if "data_path" in base:
            base["data_path"] = os.path.abspath(str(base["data_path"]))
        base["text_cache_dir"] = os.path.abspath(
            str(base.get("text_cache_dir", config["text_cache_dir"]))
        )
        reports = (
            config["epochs"] // config["eval_step"] if config["eval_step"] > 0 else 0
        )
        trials = _ray_trials(
            space,
            base,
            config_file_list,
            max_evals or DEFAULT_MAX_EVALS,
            cpus,
            gpus,
            os.path.abspath(f"{output}_ray"),
            metric,
            bigger,
            reports,
        )

    best = best_trial(trials, bigger)
    if best is None:
        raise RuntimeError(
            f"no trial of the sweep over {hyper_file} produced a validation score"
        )
    summary = {
        "model": model,
        "dataset": dataset,
        "tool": tool,
        "algo": algo,
        "command": sweep_command(
            model,
            dataset,
            hyper_file,
            tool,
            algo,
            max_evals,
            config_file_list,
            config_dict,
        ),
        "date": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "space": {
            name: {"kind": kind, "values": values} for name, kind, values in space
        },
        "valid_metric": metric,
        "valid_score_bigger": bigger,
        "best_trial": trials.index(best) + 1,
        "best_params": best["params"],
        "best_valid_score": best["best_valid_score"],
        "best_test_result": best["test_result"],
        "trials": trials,
        "files": [f"{output}.md", f"{output}.json"],
    }
    atomic_write_text(f"{output}.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(f"{output}.md", markdown(summary))
    if tool == "hyperopt":
        _close_work_folder(work, config["checkpoint_dir"])
    return summary
