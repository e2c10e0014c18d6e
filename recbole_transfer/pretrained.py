"""Shrink a pretrain checkpoint to what a later stage loads, for shipping:

    python -m recbole_transfer.pretrained saved/UniSRec-A,B-pretrain-10.pth pretrained/UniSRec-A,B.pth

Keeps the model's transferable weights (``Model.TRANSFERABLE`` prefixes: no text tables, no optimizer state) and
the plain config, so ``pretrained_path=`` checks (model, architecture keys) work on the exported file too.
"""

import argparse
import os
import sys

from recbole_transfer import registry
from recbole_transfer.utils import atomic_torch_save, load_checkpoint


def export(src, dst):
    checkpoint = load_checkpoint(src, what="source checkpoint")
    model_class = registry.get_model_class(checkpoint["config"]["model"])
    keep = model_class.TRANSFERABLE
    state = {
        k: v for k, v in checkpoint["state_dict"].items() if k.split(".")[0] in keep
    }
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    atomic_torch_save(
        {
            "config": checkpoint["config"],
            "epoch": checkpoint["epoch"],
            "state_dict": state,
        },
        dst,
    )
    return dst


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", help="checkpoint written by a pretrain stage")
    parser.add_argument("dst", help="output file")
    args = parser.parse_args(argv)
    print(export(args.src, args.dst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
