"""invdiff: inverse problems in imaging and medicine with diffusion priors."""
from .solvers.base import Reconstruction, solve

__version__ = "0.1.0"
__all__ = ["solve", "Reconstruction", "__version__"]
