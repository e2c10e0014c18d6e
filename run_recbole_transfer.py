"""Run any plugin or stock RecBole model through the recbole_transfer pipeline (see ``--help``).

python run_recbole_transfer.py --model=SASRec --dataset=Scientific [--key=value ...]
"""

import sys

from recbole_transfer.cli import main

if __name__ == "__main__":
    sys.exit(main())
