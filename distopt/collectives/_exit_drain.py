"""Receives the peers' exit notices before `MPI_Finalize`, so none is left unmatched.

Every rank sends each peer an exit notice as it ends (`_departure.announce_exit` on
`COMM_WORLD`, the watchdog's on each strategy's side channel). A peer that is itself ending
never receives them, and UCX (the network path between hosts) then prints "unexpected
tag-receive descriptor ... was not matched" once per notice as it shuts down. Receiving them
first silences that without sending fewer notices. The wait costs nothing in a normal exit:
`MPI_Finalize` waits for every rank anyway; a peer still running after `timeout` (or one that
died) is given up on, and its notice may still draw UCX's warning.
"""

from __future__ import annotations

import time

from distopt.collectives import _departure

DRAIN_TIMEOUT = 10.0  # seconds; bounded so a peer that never exits cannot hold this one


def await_exit_notices(world, timeout: float = DRAIN_TIMEOUT) -> set[int]:
    """After `_departure.announce_exit(world)`: receives (and records, as `exited_ranks`
    does) every other rank's exit notice; waits at most `timeout` s. Returns the world ranks
    not heard from."""
    size, rank = world.Get_size(), world.Get_rank()
    if not 1 < size <= _departure.MAX_NOTICES:
        return set()  # no rank sent one
    peers = set(range(size)) - {rank}
    end = time.monotonic() + timeout
    while True:
        missing = peers - _departure.exited_ranks(world)
        if not missing or time.monotonic() >= end:
            return missing
        time.sleep(0.002)


def await_channel_exits(
    channel, answer, exited: dict, is_exit, timeout: float = DRAIN_TIMEOUT
) -> set[int]:
    """After `channel.notify_all(exit message)`: receives the other ranks' notices on the
    side channel (answering census requests with `answer()` meanwhile) until every rank not
    already in `exited` has sent one for which `is_exit(message)` holds, and records it there
    ({rank: message}); waits at most `timeout` s. Returns the ranks not heard from."""
    missing = set(range(channel.size)) - {channel.rank} - set(exited)
    end = time.monotonic() + timeout
    while missing and time.monotonic() < end:
        for source, message in channel.poll(answer):
            if is_exit(message):
                exited[source] = message
                missing.discard(source)
        if missing:
            time.sleep(0.002)
    return missing
