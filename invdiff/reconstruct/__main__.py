"""``python -m invdiff.reconstruct``: the same as ``invdiff reconstruct``."""
import sys

from . import main

sys.exit(main())
