"""The sandbox end of the stdio relay (standard library only).

When a sandbox cannot open a connection to the host, the runner still dials a local address: a
unix socket served by this relay, which carries the bytes of every connection over the process's
own stdin/stdout — the one channel every provider's exec API streams both ways. Frames are text
lines, so providers whose exec streams are text-only carry them unchanged::

    <connection id> O -          a connection was opened (sandbox -> host)
    <connection id> D <base64>   bytes for that connection (both ways)
    <connection id> C -          that connection was closed (both ways)
    0 J <base64 JSON>            host -> sandbox: join uploaded parts into one file
    0 j <base64 JSON>            sandbox -> host: the join's outcome ({"id", "error"})

The host end (``rlm.environments.relay``) opens one connection to the broker per ``O``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import socket
import sys
import threading

CHUNK = 48 * 1024
#: connection id of the relay's own control frames
CONTROL = 0


class StdioRelay:
    """Serves ``listen_path`` and multiplexes its connections over two file descriptors."""

    def __init__(self, listen_path: str, in_fd: int, out_fd: int) -> None:
        self.listen_path = listen_path
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._write_lock = threading.Lock()
        self._connections: dict[int, socket.socket] = {}
        self._ids = itertools.count(1)
        self.closed = threading.Event()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen_path)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(listen_path)
        self._server.listen(16)

    @classmethod
    def over_stdio(cls, listen_path: str) -> StdioRelay:
        """Takes the process's stdin/stdout for the relay: fds 0 and 1 are duplicated for it and
        then pointed at /dev/null, so nothing the user's code writes can corrupt the frames."""
        in_fd, out_fd = os.dup(0), os.dup(1)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        return cls(listen_path, in_fd, out_fd)

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="relay-accept").start()
        threading.Thread(target=self._from_host, daemon=True, name="relay-in").start()

    def _send(self, conn_id: int, kind: str, data: bytes = b"") -> None:
        payload = base64.b64encode(data) if data else b"-"
        line = b"%d %s %s\n" % (conn_id, kind.encode(), payload)
        with self._write_lock:
            view = memoryview(line)
            while view:
                written = os.write(self._out_fd, view)
                view = view[written:]

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            conn_id = next(self._ids)
            self._connections[conn_id] = connection
            self._send(conn_id, "O")
            threading.Thread(
                target=self._to_host, args=(conn_id, connection), daemon=True, name="relay-out"
            ).start()

    def _to_host(self, conn_id: int, connection: socket.socket) -> None:
        try:
            while True:
                data = connection.recv(CHUNK)
                if not data:
                    break
                self._send(conn_id, "D", data)
        except OSError:
            pass
        finally:
            if self._connections.pop(conn_id, None) is not None:
                with contextlib.suppress(OSError):
                    self._send(conn_id, "C")
            connection.close()

    def _from_host(self) -> None:
        pending = b""
        try:
            while True:
                data = os.read(self._in_fd, 1 << 20)
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._dispatch(line)
        except OSError:
            pass
        finally:
            self.close()

    def _dispatch(self, line: bytes) -> None:
        parts = line.split(b" ")
        if len(parts) != 3:
            print(f"rlm-relay: bad frame {line[:80]!r}", file=sys.__stderr__)
            return
        conn_id, kind, payload = int(parts[0]), parts[1], parts[2]
        if conn_id == CONTROL:
            if kind == b"J":
                threading.Thread(target=self._join, args=(payload,), daemon=True).start()
            return
        connection = self._connections.get(conn_id)
        if connection is None:
            return
        if kind == b"D":
            try:
                connection.sendall(base64.b64decode(payload))
            except OSError:
                self._connections.pop(conn_id, None)
                connection.close()
        elif kind == b"C":
            self._connections.pop(conn_id, None)
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _join(self, payload: bytes) -> None:
        """Concatenates uploaded parts (a file the provider could not take whole) in order into
        the target file, deletes the parts and tells the host how it went."""
        request: dict = {}
        error = ""
        try:
            request = json.loads(base64.b64decode(payload))
            with open(request["path"], "wb") as target:
                for part in request["parts"]:
                    with open(part, "rb") as source:
                        shutil.copyfileobj(source, target, 1 << 20)
            for part in request["parts"]:
                os.unlink(part)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        answer = {"id": request.get("id") if isinstance(request, dict) else None, "error": error}
        with contextlib.suppress(OSError):
            self._send(CONTROL, "j", json.dumps(answer).encode())

    def close(self) -> None:
        """The host is gone: every relayed connection ends (the runner then sees its broker
        vanish and exits)."""
        self.closed.set()
        for connection in list(self._connections.values()):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._connections.clear()
        with contextlib.suppress(OSError):
            self._server.close()
