"""`Strategy` (and the default, one-replica strategy)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

import numpy as np

from distopt._variable import Variable, _VariableCreationHook
from distopt.collectives import BucketPlan
from distopt.collectives._bucket import DEFAULT_BUCKET_BYTES
from distopt.collectives._guard import Signature
from distopt.collectives._reducers import PieceReducer
from distopt.comm import Communicator, LocalCommunicator
from distopt.distribute import _context, _datasets
from distopt.distribute._collective_methods import CollectiveMethods
from distopt.distribute._plan_cache import PlanCache
from distopt.distribute._reduce_op import ReduceOp
from distopt.distribute._replica_context import ReplicaContext
from distopt.distribute._safety import (
    BUFFERS,
    CLOSE,
    GRADIENTS,
    VARIABLE_BROADCAST,
    CollectiveSafety,
)


class Strategy(CollectiveMethods, _datasets.DatasetMethods):
    """A data-parallel strategy over a communicator: one replica per rank.

    `scope()` enters the cross-replica context (variables and optimizers created there are
    bound to the strategy and start from rank 0's values); `run(fn)` calls `fn` in this rank's
    replica context, where `optimizer.apply_gradients` all-reduces the gradients. Every
    collective is guarded (ranks that disagree all raise `CollectiveMismatchError`) and has a
    deadline of `collective_timeout` seconds (default `$DISTOPT_COLLECTIVE_TIMEOUT` or 600).
    Gradient bucket plans, one per variable list, are kept least recently used first within
    256 MB per rank, freed once their variables are gone, and all freed by `close()`.
    """

    _is_default = False

    def __init__(
        self,
        communicator: Communicator,
        *,
        gradient_reduce_op=ReduceOp.SUM,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        collective_timeout: float | None = None,
    ):
        if not isinstance(communicator, Communicator):
            raise TypeError(
                "Argument `communicator` must be a `distopt.comm.Communicator`. "
                f"Received: {communicator!r}"
            )
        op = self._check_options(gradient_reduce_op, bucket_bytes)
        self._safety = CollectiveSafety(communicator, collective_timeout)
        self._communicator = communicator
        self._gradient_reduce_op = op
        self._bucket_bytes = bucket_bytes
        self._plan_cache = PlanCache()

    @staticmethod
    def _check_options(gradient_reduce_op, bucket_bytes) -> ReduceOp:
        op = ReduceOp.from_any(gradient_reduce_op)
        if op not in (ReduceOp.SUM, ReduceOp.MEAN):
            raise ValueError(
                "Argument `gradient_reduce_op` must be ReduceOp.SUM (as tf.keras) or "
                f"ReduceOp.MEAN (as Horovod). Received: gradient_reduce_op={gradient_reduce_op!r}"
            )
        if not isinstance(bucket_bytes, int) or bucket_bytes <= 0:
            raise ValueError(
                f"Argument `bucket_bytes` must be a positive int. Received: {bucket_bytes!r}"
            )
        return op

    # -- properties -------------------------------------------------------------------------
    @property
    def num_replicas_in_sync(self) -> int:
        return self._communicator.size

    @property
    def communicator(self) -> Communicator:
        return self._communicator

    @property
    def gradient_reduce_op(self) -> ReduceOp:
        return self._gradient_reduce_op

    @property
    def collective_timeout(self) -> float:
        """Seconds any collective may take before the job is aborted (inf: no deadline)."""
        return self._safety.timeout

    def _replica_context(self, replica_id: int) -> ReplicaContext:
        return ReplicaContext(self, replica_id)

    # -- contexts ---------------------------------------------------------------------------
    def _check_not_mixing(self, what: str) -> None:
        current = _context.get_strategy()
        if current is not self and not current._is_default:
            raise RuntimeError(
                f"Mixing different distopt.distribute.Strategy objects: {current!r} is not "
                f"{self!r}. `{what}` of one strategy was called inside the scope or `run` of "
                "another; leave the other strategy's scope first."
            )

    def _require_cross_replica(self, what: str) -> None:
        """tf.distribute's rule for scope(), run(), reduce(): not inside our own `run`."""
        self._check_not_mixing(what)
        strategy, replica_context = _context.current()
        if strategy is self and replica_context is not None:
            raise RuntimeError(
                f"`{what}` requires the cross-replica context, but it was called inside "
                f"`run` of {self!r} (a replica context). Call it outside `run`, or from "
                "`get_replica_context().merge_call(fn)`."
            )

    @contextlib.contextmanager
    def scope(self):
        """Enters the cross-replica context of this strategy.

        Variables and optimizers created inside are bound to this strategy; a variable's
        initial value is broadcast from rank 0, so creating one is collective: create the same
        variables, in the same order, on all ranks. Re-entering the same scope is allowed;
        entering it inside `run` or inside another strategy's scope raises RuntimeError.
        """
        self._check_open("scope()")
        self._require_cross_replica("scope()")
        with _VariableCreationHook(self._on_variable_created), _context._entered(self, None):
            yield self

    def run(self, fn, args=(), kwargs=None):
        """Calls `fn(*args, **kwargs)` in this rank's replica context and returns its result.

        Collective when `fn` aggregates (e.g. calls `apply_gradients`): call on all ranks.
        """
        if not callable(fn):
            raise TypeError(f"Argument `fn` must be callable. Received: fn={fn!r}")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"Argument `args` must be a tuple or list. Received: args={args!r}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"Argument `kwargs` must be a dict. Received: kwargs={kwargs!r}")
        self._check_open("run()")
        self._require_cross_replica("run()")
        replica_context = self._replica_context(self._communicator.rank)
        with (
            _VariableCreationHook(self._on_variable_created),
            _context._entered(self, replica_context),
        ):
            return fn(*args, **(kwargs or {}))

    def experimental_local_results(self, value) -> tuple:
        """The values of this process's replicas: `(value,)` (one replica per rank)."""
        return (value,)

    # -- variables --------------------------------------------------------------------------
    def _on_variable_created(self, variable: Variable) -> None:
        variable._strategy = self
        self._broadcast_arrays([variable.value], 0, VARIABLE_BROADCAST, [variable.path])

    # -- gradients --------------------------------------------------------------------------
    def _cached_plan(self, variables: Sequence[Variable]) -> BucketPlan | None:
        return self._plan_cache.lookup(variables)

    def _new_plan(self, variables: Sequence[Variable]) -> BucketPlan:
        # Collective with shared-memory buckets (windows made and freed): only after the
        # guard. Old plans go first, so that their windows' room is free again.
        reducer = self._reducer
        shapes, dtypes = [v.shape for v in variables], [v.dtype for v in variables]
        nbytes = sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for s, d in zip(shapes, dtypes))
        agree = self._agree_min if reducer.shared_memory else _local
        self._safety.forget(self._plan_cache.make_room(nbytes, reducer, agree))
        plan = reducer.make_plan(shapes, dtypes, self._bucket_bytes)
        self._plan_cache.add(variables, plan, nbytes)
        return plan

    def _agree_min(self, flags: np.ndarray) -> np.ndarray:
        self._communicator.allreduce(flags, "min")
        return flags

    def _plan_for(self, variables: Sequence[Variable]) -> BucketPlan:
        plan = self._cached_plan(variables)
        return plan if plan is not None else self._new_plan(variables)

    def gradient_buffers(self, var_list: Sequence[Variable]) -> list[np.ndarray]:
        """Writable arrays shaped like `var_list`, living in the aggregation buckets.

        Compute gradients into them in place (`out=` or `[...] =`) and pass them to
        `apply_gradients` with the same variables in the same order: they are reduced where
        they are, without a pack copy. Their contents are overwritten by each reduction.
        They stay valid while the variables live (their plan is kept; the strategy's other
        plans are freed least recently used first beyond a byte budget, or once their
        variables are gone).
        With shared-memory buckets this is collective: call it on all ranks, in the same order.
        """
        var_list = list(var_list)
        for v in var_list:
            if not isinstance(v, Variable):
                raise TypeError(
                    f"`gradient_buffers` takes distopt.Variable objects. Received: {v!r}"
                )
        self._check_open("gradient_buffers()")
        plan = self._cached_plan(var_list)
        if plan is None:
            if not getattr(self._reducer, "shared_memory", False):  # local plans: no agreement
                plan = self._new_plan(var_list)
                self._plan_cache.pin(var_list)
                return list(plan.views)
            safety = self._safety
            safety.begin(BUFFERS, safety.gradient_signature(None, var_list, BUFFERS))
            try:
                plan = self._new_plan(var_list)
            finally:
                safety.end()
        self._plan_cache.pin(var_list)
        return list(plan.views)

    def _reduce_gradients(
        self, grads: Sequence[np.ndarray], variables: Sequence[Variable], scatter=None
    ) -> list[np.ndarray]:
        """SUM- (or MEAN-) all-reduces gradients, cast to their variables' dtypes.

        Returns views into the strategy's buckets, valid until the next reduction.
        `scatter` (dtype -> every rank's [start, stop) in that dtype's flat gradients): this
        rank reads only its range, which the reducer may then reduce alone (ZeRO-1).
        Collective: call on all ranks, in the same order, with the same shapes and dtypes.
        """
        plan = self._cached_plan(variables)
        safety = self._safety
        signature = safety.gradient_signature(plan, variables)
        safety.begin(GRADIENTS, signature)
        try:
            if plan is None:
                plan = self._new_plan(variables)
                safety.remember(plan, signature)
            mean = self._gradient_reduce_op is ReduceOp.MEAN
            return self._reducer.allreduce(plan, mean, grads, scatter)
        finally:
            safety.end()

    def _skip_reduction(self, grads, variables, scatter=None) -> list[np.ndarray]:
        """Stands in for `_reduce_gradients` when the caller skips aggregation: the ranks
        check that every one of them skips (else all raise), and each keeps its own gradients,
        cast to their variables' dtypes. Collective: call on all ranks, in the same order."""
        self._agree_on_skip(variables)
        return [
            g if (type(g) is np.ndarray and g.dtype == v._value.dtype) else np.asarray(g, v.dtype)
            for g, v in zip(grads, variables)
        ]

    def _agree_on_skip(self, variables) -> None:
        """Raises `CollectiveMismatchError` on every rank unless every rank skips this
        aggregation. Collective: call on all ranks, in the same order."""
        self._safety.skip_aggregation(variables)

    def _agree_on_config(self, config: dict) -> None:
        """Raises `CollectiveMismatchError` on every rank unless all ranks pass equal
        optimizer configs. Collective: call on all ranks, in the same order."""
        self._safety.agree_on_config(config)

    def _release_gradients(self) -> None:
        """The gradients `_reduce_gradients` returned have been consumed (by every rank).

        Collective: call on all ranks, in the same order, after each reduction's consumer.
        """
        self._reducer.release()

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Frees the communicators and shared-memory windows this strategy created.

        Afterwards `scope()`, `run()`, `gradient_buffers()` and every collective of this
        strategy raise RuntimeError (so does `apply_gradients` of an optimizer bound to it),
        and arrays returned by `gradient_buffers` must not be used again. Closing twice does
        nothing. The garbage collector never closes a strategy, since freeing is collective.
        Collective: call on all ranks, in the same order.
        """
        safety = self._safety
        if safety.closed is not None:
            return
        self._require_cross_replica("close()")
        safety.begin(CLOSE, Signature(CLOSE, "", ()) if safety.active else None)
        try:
            self._free_resources()
        finally:
            safety.end()
        self._plan_cache.clear()
        safety.forget()
        safety.close(
            f"{self!r} was closed: `close()` freed its communicator and shared memory. Create "
            "a new strategy (and the variables and optimizers under its scope) to go on."
        )
        self._communicator.close()

    def _free_resources(self) -> None:
        """Frees the reducer's windows and communicators (the strategy's own one comes last)."""
        self._reducer.close()

    def _check_open(self, what: str) -> None:
        if self._safety.closed is not None:
            raise RuntimeError(f"Cannot call `{what}`: {self._safety.closed}")

    @property
    def _reducer(self):
        """Allocates gradient buckets and all-reduces them (collectives/_reducers.py)."""
        reducer = self.__dict__.get("_gradient_reducer")
        if reducer is None:
            reducer = self.__dict__["_gradient_reducer"] = PieceReducer(self._communicator)
        return reducer

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_replicas_in_sync={self.num_replicas_in_sync})"


class _DefaultStrategy(Strategy):
    """The strategy in force outside every scope: one replica, no communication."""

    _is_default = True

    def __init__(self):
        super().__init__(LocalCommunicator())

    def _require_cross_replica(self, what: str) -> None:
        current = _context.get_strategy()
        if current is not self:
            raise RuntimeError(
                f"Must not nest distopt.distribute.Strategy scopes: `{what}` of the default "
                f"strategy was called inside the scope or `run` of {current!r}."
            )

    @contextlib.contextmanager
    def scope(self):
        self._require_cross_replica("scope()")
        yield self

    def _on_variable_created(self, variable: Variable) -> None:
        return None

    def close(self) -> None:
        raise RuntimeError(
            "The default strategy cannot be closed: it holds no communicator. Call `close()` "
            "on the strategy you created (e.g. your MPIStrategy)."
        )

    def _reduce_gradients(self, grads, variables, scatter=None):
        return [
            g if (type(g) is np.ndarray and g.dtype == v._value.dtype) else np.asarray(g, v.dtype)
            for g, v in zip(grads, variables)
        ]


_DEFAULT: list = []
_DEFAULT_LOCK = threading.Lock()


def _local(flags: np.ndarray) -> np.ndarray:
    return flags


def _default_strategy() -> _DefaultStrategy:
    with _DEFAULT_LOCK:
        if not _DEFAULT:
            _DEFAULT.append(_DefaultStrategy())
    return _DEFAULT[0]
