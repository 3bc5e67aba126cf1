"""distopt: the Keras optimizer API on numpy and MPI, for data-parallel training."""

from distopt import checkpoint, distribute, losses, optimizers, utils
from distopt._variable import Variable

__version__ = "0.1.0"
__all__ = ["Variable", "checkpoint", "distribute", "losses", "optimizers", "utils", "__version__"]
