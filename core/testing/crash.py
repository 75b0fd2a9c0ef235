"""Crash helpers for tests: a consumer group member that lives in a child process and is killed
with SIGKILL, so a "crash" is a real one (no commit, no leaving the group, heartbeats stop) on any
bus adapter, and production classes carry no test-only hooks."""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

from winnow.core.ports.bus import Bus, Consumer, Message, Offsets

BusOpener = Callable[[], Bus]  # picklable (a module-level function or a functools.partial of a bus class)

_REPLY_TIMEOUT_S = 120.0


def _serve_member(open_bus: BusOpener, topics: Sequence[str], group: str, conn: Connection) -> None:
    """Child process body: join ``group`` on ``topics``, then run the parent's calls until killed."""
    bus = open_bus()
    consumer = bus.consumer(list(topics), group)
    conn.send(("ok", None))
    while True:
        method, args = conn.recv()
        try:
            conn.send(("ok", getattr(consumer, method)(*args)))
        except Exception as e:  # reported to the parent, which raises it there
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class KillableMember(Consumer):
    """A ``Consumer`` run in a child process (spawned, so no lock or thread of the parent is copied).

    ``poll``, ``commit`` and ``lag`` run in the child and return there what the member returned;
    ``kill`` sends SIGKILL, as an operator's ``kill -9`` or the OOM killer would. ``close`` leaves
    the group properly (for a member a test decides not to crash after all).
    """

    def __init__(self, open_bus: BusOpener, topics: Sequence[str], group: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._process = ctx.Process(target=_serve_member, args=(open_bus, tuple(topics), group, child_conn),
                                    name=f"killable-member-{group}", daemon=True)
        self._process.start()
        child_conn.close()
        self._reply()  # joined (or failed to)

    def _reply(self) -> Any:
        if not self._conn.poll(_REPLY_TIMEOUT_S):
            self.kill()
            raise RuntimeError(f"the member process gave no reply within {_REPLY_TIMEOUT_S} s")
        status, value = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"in the member process: {value}")
        return value

    def _call(self, method: str, *args: object) -> Any:
        if not self._process.is_alive():
            raise RuntimeError("the member process is not running")
        self._conn.send((method, args))
        return self._reply()

    def poll(self, max_messages: int = 500, timeout_s: float = 0.0) -> list[Message]:
        return self._call("poll", max_messages, timeout_s)

    def commit(self, offsets: Offsets | None = None) -> None:
        self._call("commit", None if offsets is None else dict(offsets))

    def lag(self) -> int:
        return self._call("lag")

    def close(self, commit: bool = False) -> None:
        """Leave the group as a live member would (commit first if asked), then end the process."""
        if self._process.is_alive():
            self._call("close", commit)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the member's process and wait for it: nothing it had not committed is committed."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=30.0)
        self._conn.close()
