"""Receives the peers' exit notices on the strategies' side channels before `MPI_Finalize`.

Every rank sends each peer an exit notice as it ends (`_departure.announce_exit` on
`COMM_WORLD`, the watchdog's on each strategy's side channel). A peer that is itself ending
never receives them, and UCX (the network path between hosts) then prints "unexpected
tag-receive descriptor ... was not matched" once per notice as it shuts down. Receiving them
first silences that without sending fewer notices (`_departure.linger` does it on
`COMM_WORLD`). The wait costs nothing in a normal exit: `MPI_Finalize` waits for every rank
anyway; a peer still running after `_departure.EXIT_LINGER` s (or one that died) is given up
on, and its notice may still draw UCX's warning.
"""

from __future__ import annotations

import time

from distopt.collectives import _departure


def await_channel_exits(channel, answer, exited: dict, is_exit) -> set[int]:
    """After `channel.notify_all(exit message)`: receives the other ranks' notices on the
    side channel (answering census requests with `answer()` meanwhile) until every rank not
    already in `exited` has sent one for which `is_exit(message)` holds, and records it there
    ({rank: message}); waits at most until `_departure.exit_deadline()`. Returns the ranks not
    heard from."""
    missing = set(range(channel.size)) - {channel.rank} - set(exited)
    end = _departure.exit_deadline()
    while missing and time.monotonic() < end:
        for source, message in channel.poll(answer):
            if is_exit(message):
                exited[source] = message
                missing.discard(source)
        if missing:
            time.sleep(0.002)
    return missing
