"""A TCP fault-injection proxy for tests that cut a process off from PostgreSQL.

One daemon thread runs a ``selectors`` loop that owns every socket; the public methods hand it
commands and wait until they are done, so ``cut()`` has taken effect when it returns. Nothing
depends on the caller's event loop: sync and async tests use it alike.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from psycopg.conninfo import conninfo_to_dict, make_conninfo

CutMode = Literal["reset", "blackhole"]
_CHUNK = 65536
_LINGER_0 = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
_Command = tuple[Callable[[], None], threading.Event, list[BaseException]]


@dataclass(eq=False)
class _Side:
    """One socket of a forwarded connection, with the bytes still waiting to be written to it."""

    sock: socket.socket
    conn: _Conn
    pending: bytearray = field(default_factory=bytearray)
    eof: bool = False  # its far end has sent a FIN
    shut: bool = False  # we have sent its far end a FIN
    events: int = 0  # the selector registration: 0 when not registered

    @property
    def peer(self) -> _Side | None:
        return self.conn.upstream if self is self.conn.client else self.conn.client


class _Conn:
    """A client connection and its upstream (none when accepted while blackholed)."""

    def __init__(self, client: socket.socket) -> None:
        self.client = _Side(client, self)
        self.upstream: _Side | None = None

    def sides(self) -> list[_Side]:
        return [self.client] if self.upstream is None else [self.client, self.upstream]


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to a target, and cut or blackhole the link on demand.

    ``cut("reset")`` aborts every open connection (the client sees a reset) and refuses new
    ones; ``cut("blackhole")`` keeps connections open but moves no bytes, and accepts new ones
    that hang. ``restore()`` forwards again, on the same port. Use it as a context manager, or
    call ``close()``.
    """

    def __init__(self, host: str, port: int, *, name: str = "faultproxy") -> None:
        """Start forwarding to ``(host, port)`` at once, on a free port of 127.0.0.1."""
        target: str | tuple[object, ...]
        if host.startswith("/"):  # a Unix-socket directory, as libpq names it
            family, target = socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
        else:
            family, _, _, _, target = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self._target_family, self._target = family, target
        self._mode: Literal["forward", "reset", "blackhole"] = "forward"
        self._conns: set[_Conn] = set()
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._stopping = False
        self._closed = False
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._run_commands)
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connections(self) -> int:
        """How many forwarded connections are open now (blackholed ones included).

        A connection counts once the loop has accepted it and stops counting once the loop has
        seen it close, so right after a client disconnects the count may lag a moment.
        """
        return len(self._conns)

    def dsn(self, dsn: str) -> str:
        """Return ``dsn`` rewritten to connect through this proxy."""
        over: dict[str, str | int] = {"host": "127.0.0.1", "port": self.port}
        if "hostaddr" in conninfo_to_dict(dsn):
            over["hostaddr"] = "127.0.0.1"
        return make_conninfo(dsn, **over)

    def cut(self, mode: CutMode = "reset") -> None:
        """Cut the link: ``"reset"`` aborts and refuses connections, ``"blackhole"`` stalls them.

        Takes effect before it returns. Under ``"blackhole"`` bytes from either side are read
        and dropped, and neither side learns that the other closed; ``restore()`` aborts them.
        """
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"unknown cut mode: {mode!r}")
        self._call(lambda: self._cut(mode))

    def restore(self) -> None:
        """Forward normally again, on the same port; blackholed connections are aborted."""
        self._call(self._restore)

    def close(self) -> None:
        """Stop the proxy: abort every connection, close every socket, join the thread."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):  # the loop has stopped already
            self._call(self._stop)
        self._thread.join(timeout=10)
        self._wake_r.close()
        self._wake_w.close()

    # Everything below runs on the proxy's thread, except _call.

    def _call(self, command: Callable[[], None]) -> None:
        if self._stopping or not self._thread.is_alive():
            raise RuntimeError("the proxy is closed")
        done = threading.Event()
        error: list[BaseException] = []
        self._commands.put((command, done, error))
        with contextlib.suppress(BlockingIOError):  # else the loop has wake-ups queued already
            self._wake_w.send(b"\0")
        if not done.wait(10):
            raise TimeoutError("the proxy's thread did not answer")
        if error:
            raise error[0]

    def _run_commands(self) -> None:
        self._wake_r.recv(4096)
        while True:
            try:
                command, done, error = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command()
            except BaseException as exc:
                error.append(exc)
            done.set()

    def _loop(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._sel.select():
                    if isinstance(key.data, _Side):
                        if key.data.events:  # not closed by an earlier event of this batch
                            self._service(key.data, mask)
                    else:
                        key.data()
        finally:
            self._stop()
            self._sel.close()
            while not self._commands.empty():  # commands that came too late
                _, done, error = self._commands.get_nowait()
                error.append(RuntimeError("the proxy is closed"))
                done.set()

    def _stop(self) -> None:
        self._stopping = True
        self._unlisten()
        self._abort_all()

    def _cut(self, mode: CutMode) -> None:
        self._mode = mode
        if mode == "reset":
            self._unlisten()
            self._abort_all()
            return
        self._listen()
        for conn in self._conns:
            for side in conn.sides():
                side.pending.clear()
                self._refresh(side)

    def _restore(self) -> None:
        if self._mode == "blackhole":
            self._abort_all()
        self._mode = "forward"
        self._listen()

    def _listen(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._sel.register(listener, selectors.EVENT_READ, self._accept)

    def _unlisten(self) -> None:
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _accept(self) -> None:
        if self._listener is None:  # closed by a command earlier in this batch of events
            return
        try:
            client, _ = self._listener.accept()
        except OSError:  # the client gave up already
            return
        client.setblocking(False)
        conn = _Conn(client)
        self._conns.add(conn)
        if self._mode == "forward":
            upstream = socket.socket(self._target_family, socket.SOCK_STREAM)
            upstream.setblocking(False)
            conn.upstream = _Side(upstream, conn)
            # The connect completes in the background; bytes for it wait in `pending` meanwhile,
            # and a failed connect shows up as an error on its first send or recv.
            if upstream.connect_ex(self._target) not in (0, errno.EINPROGRESS):
                self._abort(conn)
                return
        for side in conn.sides():
            self._refresh(side)

    def _service(self, side: _Side, mask: int) -> None:
        conn = side.conn
        try:
            if mask & selectors.EVENT_READ:
                self._read(side)
            if mask & selectors.EVENT_WRITE:
                self._flush(side)
        except OSError:
            self._abort(conn)
            return
        if all(each.eof and not each.pending for each in conn.sides()):
            self._close(conn, abort=False)  # both sides are done: close with a FIN
            return
        for each in conn.sides():
            self._refresh(each)

    def _read(self, side: _Side) -> None:
        try:
            data = side.sock.recv(_CHUNK)
        except BlockingIOError:
            return
        peer = side.peer
        if not data:
            side.eof = True
            if self._mode == "forward" and peer is not None:
                self._flush(peer)  # pass the FIN on once the bytes before it are out
        elif self._mode == "forward" and peer is not None:
            peer.pending += data
            self._flush(peer)
        # else: blackholed, the bytes vanish

    def _flush(self, side: _Side) -> None:
        if side.pending:
            try:
                sent = side.sock.send(side.pending)
            except BlockingIOError:  # full, or still connecting
                return
            del side.pending[:sent]
        peer = side.peer
        if not side.pending and peer is not None and peer.eof and not side.shut:
            side.sock.shutdown(socket.SHUT_WR)
            side.shut = True

    def _refresh(self, side: _Side) -> None:
        """Register for what this side waits on: reads while its peer can take more bytes."""
        peer = side.peer
        if self._mode == "blackhole":
            events = 0 if side.eof else selectors.EVENT_READ
        else:
            events = selectors.EVENT_WRITE if side.pending else 0
            if not side.eof and peer is not None and not peer.pending:
                events |= selectors.EVENT_READ
        if events == side.events:
            return
        if not events:
            self._sel.unregister(side.sock)
        elif not side.events:
            self._sel.register(side.sock, events, side)
        else:
            self._sel.modify(side.sock, events, side)
        side.events = events

    def _abort_all(self) -> None:
        for conn in list(self._conns):
            self._abort(conn)

    def _abort(self, conn: _Conn) -> None:
        self._close(conn, abort=True)

    def _close(self, conn: _Conn, *, abort: bool) -> None:
        """Close both sides; an abort sends a reset (SO_LINGER 0) instead of a FIN."""
        self._conns.discard(conn)
        for side in conn.sides():
            if side.events:
                self._sel.unregister(side.sock)
                side.events = 0
            if abort:
                with contextlib.suppress(OSError):
                    side.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
            side.sock.close()
