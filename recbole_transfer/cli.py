"""The command line: run any plugin or stock RecBole model through the recbole_transfer pipeline.

    python run_recbole_transfer.py --model=SASRec --dataset=Scientific [--config_files="a.yaml b.yaml"] [--key=value ...]
    python -m recbole_transfer --model=SASRec --dataset=Scientific ...   (the same, from an installed package)

``--nproc=N`` trains with N processes through torch.distributed (NCCL on GPUs, gloo on CPU).
``--source_datasets=A,B`` with UniSRec first runs its pretrain stage on A and B merged, then fine-tunes on --dataset
from that checkpoint (the other --key=value pairs apply to both stages; train_stage to the fine-tuning one).
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
    from recbole_transfer.quick_start import (
        pretrains_on_sources,
        run,
        run_pretrain_then_finetune,
    )

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
        cli = parse_cli_overrides(overrides)
        # UniSRec with source_datasets: pretrain on them first (other models read source_datasets themselves)
        recipe = "source_datasets" in cli and pretrains_on_sources(args.model)
        if args.hyper and (args.nproc != 1 or recipe):
            raise UserInputError(
                "--hyper runs every trial in one process on one dataset; drop --nproc and "
                "--source_datasets"
            )
        if args.hyper:
            # the overrides go to every trial through config_dict; RecBole's Config must not read them again
            sys.argv = [sys.argv[0]]
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
        elif recipe:
            # both stages get the overrides through config_dict, so each stage can set its own train_stage
            sys.argv = [sys.argv[0]]
            sources = cli.pop("source_datasets")
            run_pretrain_then_finetune(
                args.model,
                args.dataset,
                sources,
                config_file_list=config_files,
                config_dict=cli,
                **distributed,
            )
        else:
            # RecBole's Config reads the remaining --key=value pairs from sys.argv.
            sys.argv = [sys.argv[0]] + overrides
            run(args.model, args.dataset, config_file_list=config_files, **distributed)
    except UserInputError as err:
        return report(err)
    return 0
