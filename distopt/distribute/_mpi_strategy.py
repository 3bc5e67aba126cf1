"""`MPIStrategy`: one replica per MPI rank."""

from __future__ import annotations

from distopt.collectives import _timeline
from distopt.collectives._bucket import DEFAULT_BUCKET_BYTES
from distopt.collectives._compress import make_compression
from distopt.collectives._creation import dup_with_deadline
from distopt.collectives._deadline import resolve_timeout
from distopt.collectives._guard import Signature
from distopt.collectives._nodes import ranks_per_node_from_env
from distopt.collectives._reducers import make_reducer, resolve_shared_memory
from distopt.collectives._sharding import Sharding
from distopt.comm import MPICommunicator
from distopt.distribute._abort import install_excepthook
from distopt.distribute._reduce_op import ReduceOp
from distopt.distribute._safety import CREATION, PARAMETER_ALLGATHER
from distopt.distribute._strategy import Strategy


class MPIStrategy(Strategy):
    """Synchronous data parallelism over MPI: every rank is one replica.

    Gradients are SUM-all-reduced, as tf.keras (scale your loss by the global batch, e.g. with
    `distopt.losses.compute_average_loss`); `gradient_reduce_op=ReduceOp.MEAN` gives Horovod's
    average. `comm` defaults to a private `Dup()` of `MPI.COMM_WORLD`. Creating the strategy is
    collective: do it on all ranks, in the same order, with the same options (ranks that pass
    different ones all raise `CollectiveMismatchError`); it has the deadline below, and names
    the ranks that never arrived (up to 64 ranks, each sends the others one 8-byte message on
    `comm` for this). `close()` frees the strategy's communicators and windows.

    Safety: ranks that disagree about a collective all raise `CollectiveMismatchError`; a
    collective that takes longer than `collective_timeout` seconds (default
    `$DISTOPT_COLLECTIVE_TIMEOUT`, else 600; `math.inf` disables it) aborts the job with a
    message naming the operation, the step and the ranks that did not arrive; and an
    unhandled exception on any rank aborts the job (a `sys.excepthook` installed here), also
    under a plain `mpiexec python script.py`.

    `shared_memory` ("auto", True, False): ranks of one node sum gradients through an MPI-3
    shared-memory window and only node leaders talk across nodes ("auto": when some node
    holds several ranks; env DISTOPT_SHARED_MEMORY=0/1). Gradient buckets then live in the
    window, so `gradient_buffers(var_list)` is collective too: call it on all ranks, in the
    same order. Env DISTOPT_RANKS_PER_NODE=k groups each host's ranks into "nodes" of k
    consecutive ranks. Either way gradients are summed in rank order, ((x0 + x1) + x2) + ...,
    so the bits depend on the world size alone, not on the placement of ranks. A window that
    /dev/shm has no room for is not mapped: those gradients go over plain MPI (one warning).

    `shard_optimizer_state=True` (ZeRO-1): each rank keeps the state of an elementwise
    optimizer (created under this strategy's scope) for 1/N of every flat parameter arena,
    updates only that part, and all-gathers the parameters: 1/N of the state memory and of
    the update work, same bits as unsharded. Slot variables then hold this rank's part (1-D);
    `save_own_variables` saves that part, to be loaded at the same world size. Adafactor,
    Lamb and Muon, whose maths needs whole tensors, are sharded by tensor instead: each rank
    owns a balanced set of whole variables (by state size), keeps their state, updates them,
    and the others' slot variables are empty placeholders (same names and order).

    `compression="bf16"` or `"fp16"` rounds float gradient buckets to 16 bits on the MPI wire
    (fp16 divides by the number of ranks before summing, against overflow); the sum is then
    approximate. Ranks of one node that sum through shared memory are not rounded: only the
    traffic between nodes (or all of it with `shared_memory=False`) is compressed.
    """

    def __init__(
        self,
        *,
        comm=None,
        gradient_reduce_op=ReduceOp.SUM,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        collective_timeout: float | None = None,
        shared_memory="auto",
        shard_optimizer_state: bool = False,
        compression=None,
    ):
        if shared_memory not in (True, False, "auto"):
            raise ValueError(
                "Argument `shared_memory` must be True, False or 'auto'. "
                f"Received: shared_memory={shared_memory!r}"
            )
        wire = make_compression(compression)
        if not isinstance(shard_optimizer_state, bool):
            raise ValueError(
                "Argument `shard_optimizer_state` must be True or False. "
                f"Received: shard_optimizer_state={shard_optimizer_state!r}"
            )
        # Bad values fail here, before the collective Dup.
        timeout = resolve_timeout(collective_timeout)
        op = self._check_options(gradient_reduce_op, bucket_bytes)
        shared_memory = resolve_shared_memory(shared_memory)
        ranks_per_node = ranks_per_node_from_env()
        communicator = MPICommunicator(comm, dup=lambda base: dup_with_deadline(base, timeout))
        self._gradient_reducer = self._optimizer_sharding = None
        try:
            super().__init__(
                communicator,
                gradient_reduce_op=op,
                bucket_bytes=bucket_bytes,
                collective_timeout=timeout,
            )
            options = (f"gradient_reduce_op={op.name}, bucket_bytes={bucket_bytes}, "
                       f"shared_memory={shared_memory!r}, ranks_per_node={ranks_per_node}, "
                       f"shard_optimizer_state={shard_optimizer_state}, "
                       f"compression={compression!r}")  # fmt: skip
            with self._safety.creating(Signature(CREATION, options, ())):
                self._gradient_reducer = make_reducer(
                    communicator, shared_memory, wire, _ranks_per_node=ranks_per_node
                )
                if shard_optimizer_state:
                    sharding = Sharding(communicator, self._gradient_reducer)
                    allgather = self._safety.watched(PARAMETER_ALLGATHER, sharding.allgather)
                    sharding.allgather = allgather
                    self._optimizer_sharding = sharding
                _timeline.bind(communicator)
        except BaseException:
            if self._gradient_reducer is not None:
                self._gradient_reducer.close()
            if "_safety" in self.__dict__:
                self._safety.close("its creation failed.")
            communicator.close()
            raise
        if self.num_replicas_in_sync > 1:
            install_excepthook()

    def _free_resources(self) -> None:
        if self._optimizer_sharding is not None:
            self._optimizer_sharding.close()
        super()._free_resources()
