"""The thread-local context stack: which strategy is current, and in which context.

An entry is (strategy, replica_context); replica_context None means cross-replica context.
The bottom of every thread's stack is the default strategy's replica context.
"""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def _stack() -> list:
    stack = getattr(_state, "stack", None)
    if stack is None:
        from distopt.distribute._strategy import _default_strategy

        default = _default_strategy()
        stack = _state.stack = [(default, default._replica_context(0))]
    return stack


def current():
    """(strategy, replica_context or None) at the top of this thread's stack."""
    return _stack()[-1]


@contextlib.contextmanager
def _entered(strategy, replica_context):
    stack = _stack()
    depth = len(stack)
    stack.append((strategy, replica_context))
    try:
        yield
    finally:
        del stack[depth:]


def get_strategy():
    """The current strategy: the one whose `scope()` or `run()` we are in, else the default."""
    return current()[0]


def has_strategy() -> bool:
    """True inside a non-default strategy's `scope()` or `run()`."""
    return not current()[0]._is_default


def get_replica_context():
    """The current `ReplicaContext`, or None in a cross-replica context.

    Outside any strategy this is the default strategy's context (one replica). Inside
    `strategy.scope()` it is None; inside `strategy.run(fn)` it is that strategy's replica
    context for this rank.
    """
    return current()[1]


def in_cross_replica_context() -> bool:
    """True inside `strategy.scope()` (and `merge_call`), outside `strategy.run`."""
    return current()[1] is None
