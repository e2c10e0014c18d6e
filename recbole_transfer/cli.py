"""The command line: run any plugin or stock RecBole model through the recbole_transfer pipeline.

    python run_recbole_transfer.py --model=SASRec --dataset=Scientific [--config_files="a.yaml b.yaml"] [--key=value ...]
    python -m recbole_transfer --model=SASRec --dataset=Scientific ...   (the same, from an installed package)

``--nproc=N`` trains with N processes through torch.distributed (NCCL on GPUs, gloo on CPU).
A model whose inputs come from earlier stages runs them first, or reuses them from ``<checkpoint_dir>/stages``:
PLMInitSASRec/BERT4Rec (behavior tuning PT on the sources, FT on the target), XCross (one PromptLoRA per source),
PeterRec fine-tuning (pretraining on its source), UniSRec with ``--source_datasets`` (pretraining on them).
``--<stage>.key=value`` sets a key of that stage only (``--PT.epochs=1``, ``--source.max_train_examples=500``).
``--hyper=FILE.hyper`` sweeps that space instead of training once (``--tool=hyperopt|ray``, ``--algo``,
``--max_evals``); the --key=value pairs are fixed for every trial. Results: ``--hyper_output`` (.md and .json).
"""

import argparse
import sys


def help_epilog():
    """The models and the datasets found, for --help (importing the package costs seconds: --help only)."""
    from recbole_transfer.config import DATASET_DIR
    from recbole_transfer.data.folders import (
        RECBOLE_BUILTIN_DATASETS,
        available_datasets,
    )
    from recbole_transfer.registry import models_summary

    datasets = available_datasets(DATASET_DIR) + list(RECBOLE_BUILTIN_DATASETS)
    lines = ["models (--model, case-insensitive):"] + [
        f"  {line}" for line in models_summary()
    ]
    lines += [
        f"datasets (--dataset; shipped in {DATASET_DIR}):",
        f"  {', '.join(datasets)}",
    ]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    wants_help = any(arg in ("-h", "--help") for arg in argv)
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=help_epilog() if wants_help else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", "-m", required=True, help="plugin or RecBole model name"
    )
    parser.add_argument(
        "--dataset",
        "-d",
        required=True,
        help="dataset name (folder in dataset/), or A,B,C to merge",
    )
    parser.add_argument(
        "--config_files", default=None, help="yaml files, separated by spaces or commas"
    )
    parser.add_argument(
        "--nproc", type=int, default=1, help="processes for distributed training"
    )
    parser.add_argument(
        "--world_size", type=int, default=-1, help="total processes over all nodes"
    )
    parser.add_argument("--ip", default="localhost", help="address of the rank-0 node")
    parser.add_argument("--port", default="5678", help="port of the rank-0 node")
    parser.add_argument(
        "--group_offset", type=int, default=0, help="rank offset of this node"
    )
    parser.add_argument(
        "--hyper",
        default=None,
        help="a .hyper file: sweep its space instead of training once",
    )
    parser.add_argument(
        "--tool",
        default="hyperopt",
        help="sweep with hyperopt (RecBole's HyperTuning) or ray",
    )
    parser.add_argument(
        "--algo",
        default=None,
        help="hyperopt: exhaustive (default), random or bayes; ray samples at random",
    )
    parser.add_argument(
        "--max_evals",
        type=int,
        default=None,
        help="trials (exhaustive: at most the grid)",
    )
    parser.add_argument(
        "--hyper_output",
        default=None,
        help="results prefix: <prefix>.md and <prefix>.json (default results/hyper_<M>_<D>_<tool>)",
    )
    parser.add_argument(
        "--cpus_per_trial",
        type=int,
        default=None,
        help="ray: CPU cores per trial (default 1)",
    )
    parser.add_argument(
        "--gpus_per_trial",
        type=float,
        default=None,
        help="ray: GPUs per trial (default 1 with CUDA, else 0)",
    )
    args, overrides = parser.parse_known_args(argv)

    from recbole_transfer.config import parse_cli_overrides
    from recbole_transfer.errors import UserInputError, report
    from recbole_transfer.hyper import run_hyper
    from recbole_transfer.recipe import run_recipe, split_stage_overrides

    config_files = (
        args.config_files.replace(",", " ").split() if args.config_files else None
    )
    distributed = dict(
        nproc=args.nproc,
        world_size=args.world_size,
        ip=args.ip,
        port=args.port,
        group_offset=args.group_offset,
    )
    try:
        scoped, cli = split_stage_overrides(parse_cli_overrides(overrides))
        # the overrides reach every run through config_dict; RecBole's Config must not read them again
        sys.argv = [sys.argv[0]]
        if args.hyper:
            if scoped:
                raise UserInputError(
                    f"--hyper sweeps one model: --{next(iter(scoped))}.KEY sets a recipe stage; "
                    "run the recipe once and sweep with its outputs given"
                )
            summary = run_hyper(
                args.model,
                args.dataset,
                args.hyper,
                tool=args.tool,
                algo=args.algo,
                max_evals=args.max_evals,
                config_file_list=config_files,
                config_dict=cli,
                output=args.hyper_output,
                cpus_per_trial=args.cpus_per_trial,
                gpus_per_trial=args.gpus_per_trial,
            )
            print(
                f"best params: {summary['best_params']} (best valid {summary['valid_metric']} = "
                f"{summary['best_valid_score']:.4f})"
            )
            print(f"results: {' and '.join(summary['files'])}")
        else:
            # the stages the model's inputs come from run first (or are reused from the cache)
            run_recipe(
                args.model,
                args.dataset,
                config_file_list=config_files,
                config_dict=cli,
                scoped=scoped,
                **distributed,
            )
    except UserInputError as err:
        return report(err)
    return 0
