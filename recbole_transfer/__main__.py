"""``python -m recbole_transfer --model=M --dataset=D [--key=value ...]``: the command line of an installed package."""

import sys

from recbole_transfer.cli import main

sys.exit(main())
