"""``python -m invdiff.training ...`` = ``invdiff train-prior ...`` (the module torchrun launches)."""
import sys

from .cli import train_prior_main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_prior_main())
