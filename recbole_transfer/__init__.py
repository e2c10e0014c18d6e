"""recbole_transfer: transfer learning for sequential recommendation as a RecBole plugin."""

from recbole_transfer import compat

__version__ = "0.1.0"

compat.apply()
