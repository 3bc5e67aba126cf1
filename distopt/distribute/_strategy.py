"""`Strategy` (and the default, one-replica strategy)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

import numpy as np

from distopt._variable import Variable, _VariableCreationHook
from distopt.collectives import BucketPlan, allreduce_plan
from distopt.collectives._bucket import DEFAULT_BUCKET_BYTES
from distopt.comm import Communicator, LocalCommunicator
from distopt.distribute import _context, _structure
from distopt.distribute._reduce_op import ReduceOp
from distopt.distribute._replica_context import ReplicaContext

_OP_NAMES = {ReduceOp.SUM: "sum", ReduceOp.MEAN: "sum", ReduceOp.MIN: "min", ReduceOp.MAX: "max"}


class Strategy:
    """A data-parallel strategy over a communicator: one replica per rank.

    `scope()` enters the cross-replica context (variables and optimizers created there are
    bound to the strategy and start from rank 0's values); `run(fn)` calls `fn` in this rank's
    replica context, where `optimizer.apply_gradients` all-reduces the gradients.
    """

    _is_default = False

    def __init__(
        self,
        communicator: Communicator,
        *,
        gradient_reduce_op=ReduceOp.SUM,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ):
        if not isinstance(communicator, Communicator):
            raise TypeError(
                "Argument `communicator` must be a `distopt.comm.Communicator`. "
                f"Received: {communicator!r}"
            )
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
        self._communicator = communicator
        self._gradient_reduce_op = op
        self._bucket_bytes = bucket_bytes
        self._plans: dict[tuple, BucketPlan] = {}
        self._plans_lock = threading.Lock()

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

    def _replica_context(self, replica_id: int) -> ReplicaContext:
        return ReplicaContext(self, replica_id)

    # -- contexts ---------------------------------------------------------------------------
    def _check_not_other(self, what: str) -> None:
        current = _context.get_strategy()
        if current is not self and not current._is_default:
            raise ValueError(
                f"Cannot {what} of {self!r} inside the scope of another strategy ({current!r}). "
                "Mixing strategies is not supported: leave the other strategy's scope first."
            )

    @contextlib.contextmanager
    def scope(self):
        """Enters the cross-replica context of this strategy.

        Variables and optimizers created inside are bound to this strategy; a variable's
        initial value is broadcast from rank 0, so creating one is collective: create the same
        variables, in the same order, on all ranks. Inside `run()` of the same strategy this is
        a no-op (the replica context stays current).
        """
        self._check_not_other("enter the scope")
        strategy, replica_context = _context.current()
        if strategy is self and replica_context is not None:
            yield self
            return
        with _VariableCreationHook(self._on_variable_created), _context._entered(self, None):
            yield self

    def run(self, fn, args=(), kwargs=None):
        """Calls `fn(*args, **kwargs)` in this rank's replica context and returns its result.

        Collective when `fn` aggregates (e.g. calls `apply_gradients`): call on all ranks.
        """
        if not callable(fn):
            raise TypeError(f"Argument `fn` must be callable. Received: fn={fn!r}")
        self._check_not_other("call run()")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"Argument `args` must be a tuple or list. Received: args={args!r}")
        replica_context = self._replica_context(self._communicator.rank)
        with (
            _VariableCreationHook(self._on_variable_created),
            _context._entered(self, replica_context),
        ):
            return fn(*args, **(kwargs or {}))

    # -- variables --------------------------------------------------------------------------
    def _on_variable_created(self, variable: Variable) -> None:
        variable._strategy = self
        self._broadcast_inplace(variable.value, 0)

    def _broadcast_inplace(self, array: np.ndarray, root: int) -> None:
        self._communicator.bcast(array, root)

    def broadcast(self, value, root: int = 0) -> np.ndarray:
        """Returns root's `value` on every rank (a new array; Variables are assigned in place).

        Collective: call on all ranks, in the same order, with the same shape and dtype.
        """
        size = self._communicator.size
        if not isinstance(root, int) or not 0 <= root < size:
            raise ValueError(f"Argument `root` must be a rank in [0, {size}). Received: {root!r}")
        if isinstance(value, Variable):
            self._broadcast_inplace(value.value, root)
            return value
        arr = np.array(value, copy=True, order="C")
        self._broadcast_inplace(arr, root)
        return arr

    # -- reductions -------------------------------------------------------------------------
    def _reduce_leaves(self, op: ReduceOp, leaves: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = [np.asarray(x, order="C") for x in leaves]
        if not arrays:
            return []
        plan = BucketPlan([a.shape for a in arrays], [a.dtype for a in arrays], self._bucket_bytes)
        plan.pack(arrays)
        allreduce_plan(self._communicator, plan, _OP_NAMES[op])
        out = [v.copy() for v in plan.views]
        if op is ReduceOp.MEAN:
            out = [np.divide(v, self.num_replicas_in_sync) for v in out]
        return out

    def _all_reduce_structure(self, op: ReduceOp, value):
        leaves = _structure.flatten(value)
        for leaf in leaves:
            if not isinstance(leaf, (np.ndarray, np.generic, int, float, bool, Variable)):
                raise TypeError(
                    "all_reduce takes arrays, numbers or nested lists/tuples/dicts of them. "
                    f"Received a leaf of type {type(leaf).__name__}: {leaf!r}"
                )
        arrays = [np.asarray(x) for x in leaves]
        return _structure.pack_as(value, self._reduce_leaves(op, arrays))

    def reduce(self, reduce_op, value, axis=None):
        """Reduces this rank's `value` across replicas (and along `axis` first, if given).

        With `axis`, MEAN is the mean over every replica's elements along that axis (a global
        batch mean). Collective: call on all ranks, in the same order.
        """
        op = ReduceOp.from_any(reduce_op)
        arr = np.asarray(value)
        if axis is None:
            return self._reduce_leaves(op, [arr])[0]
        if op is ReduceOp.MEAN:
            total, count = self._reduce_leaves(
                ReduceOp.SUM,
                [np.sum(arr, axis=axis), np.asarray(arr.shape[axis], dtype=np.int64)],
            )
            return total / count
        local = {ReduceOp.SUM: np.sum, ReduceOp.MIN: np.min, ReduceOp.MAX: np.max}[op]
        return self._reduce_leaves(op, [local(arr, axis=axis)])[0]

    # -- gradients --------------------------------------------------------------------------
    def _plan_for(self, variables: Sequence[Variable]) -> BucketPlan:
        key = tuple(id(v) for v in variables)
        shapes = [v.shape for v in variables]
        dtypes = [v.dtype for v in variables]
        with self._plans_lock:
            plan = self._plans.get(key)
            if plan is None or not plan.matches(shapes, dtypes):
                plan = BucketPlan(shapes, dtypes, self._bucket_bytes)
                self._plans[key] = plan
        return plan

    def gradient_buffers(self, var_list: Sequence[Variable]) -> list[np.ndarray]:
        """Writable arrays shaped like `var_list`, living in the aggregation buckets.

        Compute gradients into them in place (`out=` or `[...] =`) and pass them to
        `apply_gradients` with the same variables in the same order: they are reduced where
        they are, without a pack copy. Their contents are overwritten by each reduction.
        """
        var_list = list(var_list)
        for v in var_list:
            if not isinstance(v, Variable):
                raise TypeError(
                    f"`gradient_buffers` takes distopt.Variable objects. Received: {v!r}"
                )
        return list(self._plan_for(var_list).views)

    def _reduce_gradients(
        self, grads: Sequence[np.ndarray], variables: Sequence[Variable]
    ) -> list[np.ndarray]:
        """SUM- (or MEAN-) all-reduces gradients, cast to their variables' dtypes.

        Returns views into the strategy's buckets, valid until the next reduction.
        Collective: call on all ranks, in the same order, with the same shapes and dtypes.
        """
        plan = self._plan_for(variables)
        plan.pack(grads)
        allreduce_plan(self._communicator, plan, "sum")
        if self._gradient_reduce_op is ReduceOp.MEAN and self.num_replicas_in_sync > 1:
            for buf in plan.buffers.values():
                np.divide(buf, self.num_replicas_in_sync, out=buf)
        return list(plan.views)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_replicas_in_sync={self.num_replicas_in_sync})"


class _DefaultStrategy(Strategy):
    """The strategy in force outside every scope: one replica, no communication."""

    _is_default = True

    def __init__(self):
        super().__init__(LocalCommunicator())

    @contextlib.contextmanager
    def scope(self):
        yield self

    def _on_variable_created(self, variable: Variable) -> None:
        return None

    def _reduce_gradients(self, grads, variables):
        return [
            g if (isinstance(g, np.ndarray) and g.dtype == v.dtype) else np.asarray(g, v.dtype)
            for g, v in zip(grads, variables)
        ]


_DEFAULT: list = []
_DEFAULT_LOCK = threading.Lock()


def _default_strategy() -> _DefaultStrategy:
    with _DEFAULT_LOCK:
        if not _DEFAULT:
            _DEFAULT.append(_DefaultStrategy())
    return _DEFAULT[0]
