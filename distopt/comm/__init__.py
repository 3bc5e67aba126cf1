"""Communicators: the one place that talks to MPI.

`MPICommunicator` wraps a private `Dup()` of `COMM_WORLD` (or of the communicator you pass);
`LocalCommunicator` is the one-process stand-in used by the default strategy. Both use the
buffer (uppercase) MPI API on contiguous numpy arrays, reduced in place.
"""

from distopt.comm._base import Communicator, ReduceOpName
from distopt.comm._local import LocalCommunicator
from distopt.comm._mpi import MPICommunicator

__all__ = ["Communicator", "LocalCommunicator", "MPICommunicator", "ReduceOpName"]
