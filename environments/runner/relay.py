"""The sandbox end of the stdio relay (standard library only).

When a sandbox cannot open a connection to the host, the runner still dials a local address: a
unix socket served by this relay, which carries the bytes of every connection over the process's
own stdin/stdout — the one channel every provider's exec API streams both ways. Frames are text
lines, so providers whose exec streams are text-only carry them unchanged::

    <seq> <ack> <conn> <kind> <payload> <crc32>

``seq`` numbers the frames one side sends (from 1; 0 for the unnumbered ``K``/``R``), ``ack``
is the last frame it received in order from the other side, ``payload`` is base64 (``-`` when
empty) and ``crc32`` (8 hex digits) covers everything before it. Kinds::

    O    a connection was opened (sandbox -> host)
    D    bytes for that connection (both ways)
    C    that connection was closed (both ways)
    J/j  join uploaded parts into one file (host -> sandbox) / the outcome (sandbox -> host)
    K    acknowledgement only (both ways, unnumbered)
    R    resend everything from frame ``int(payload)`` on (both ways, unnumbered)

Each side keeps what it sent until the other acknowledges it (a bounded replay buffer: a full
one makes the sender wait). A frame out of order (a provider dropped output while nobody was
attached, or re-attached without replaying it) or a corrupt line (checksum) makes the receiver
ask for a resend from the first frame it lacks; duplicates (a provider replaying its whole
log) are dropped. A sender whose frames stay unacknowledged sends its newest frame again, so a
receiver that lost the last frames before a quiet spell learns of the gap. So a stream that drops and re-attaches resumes without a gap.

The host end (``rlm.environments.relay``) opens one connection to the broker per ``O``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import itertools
import json
import os
import shutil
import socket
import sys
import threading
import time
import zlib
from typing import NamedTuple

CHUNK = 48 * 1024
#: connections waiting to be accepted: every runner of a shared sandbox dials the one relay
LISTEN_BACKLOG = 512
#: connection id of the relay's own control frames
CONTROL = 0
#: bytes of sent frames kept for a resend; a sender with this much unacknowledged waits
REPLAY_LIMIT = 32 << 20
#: a receiver acknowledges at least this often while it has something to acknowledge
ACK_SECONDS = 0.1
#: a resend request that brought nothing (it or the resent frames were lost too) is repeated
#: after this long, then after twice as long each time (up to RESEND_MAX_SECONDS) while nothing
#: arrives in order: on a slow link the resent frames may sit behind seconds of backlog, and
#: every repeat would queue the whole replay again
RESEND_SECONDS = 0.5
RESEND_MAX_SECONDS = 30.0
#: a sender whose frames have gone unacknowledged this long sends its newest one again: a
#: receiver that lost the frames before it (a stream re-attached without replaying what was
#: written meanwhile) then sees the gap and asks for them
PROBE_SECONDS = 1.0


class FrameError(ValueError):
    """A line that is not an intact frame (corrupted or cut by the transport)."""


class Frame(NamedTuple):
    seq: int
    ack: int
    conn: int
    kind: bytes
    data: bytes


def encode_frame(seq: int, ack: int, conn: int, kind: bytes, data: bytes = b"") -> bytes:
    """One frame line (with its newline)."""
    payload = base64.b64encode(data) if data else b"-"
    body = b"%d %d %d %s %s" % (seq, ack, conn, kind, payload)
    return body + b" %08x\n" % zlib.crc32(body)


def decode_frame(line: bytes) -> Frame:
    """The frame in ``line`` (without its newline); :class:`FrameError` when it is not one."""
    body, _, crc = line.rpartition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
            raise FrameError(f"checksum mismatch in {line[:60]!r}")
        seq, ack, conn, kind, payload = body.split(b" ")
        data = b"" if payload == b"-" else base64.b64decode(payload, validate=True)
        return Frame(int(seq), int(ack), int(conn), kind, data)
    except (ValueError, binascii.Error) as error:
        if isinstance(error, FrameError):
            raise
        raise FrameError(f"malformed frame {line[:60]!r}: {error}") from None


class FrameGap(Exception):
    """Frames are missing before this one: ask for a resend from ``expected``."""

    def __init__(self, expected: int) -> None:
        super().__init__(f"frame {expected} is missing")
        self.expected = expected


class Sequencer:
    """One side's sequence state (no I/O, not thread-safe: callers hold their own lock)."""

    def __init__(self, replay_limit: int = REPLAY_LIMIT) -> None:
        self.replay_limit = replay_limit
        self.next_seq = 1
        #: the last frame received in order from the other side
        self.received = 0
        #: the ``received`` value last sent to the other side
        self.ack_sent = 0
        #: (seq, line, when it was last sent) of every frame not yet acknowledged
        self._buffer: collections.deque[tuple[int, bytes, float]] = collections.deque()
        self.buffered_bytes = 0
        self._asked = (-1, 0.0)  # (received, when) of the last resend request
        self._ask_interval = RESEND_SECONDS  # how long until that request may be repeated
        self._heard_at = time.monotonic()  # when the last line of any kind arrived
        self._replayed = (0, -1e9)  # (from seq, when) of the last replay sent
        #: seconds from sending a frame to its acknowledgement, last measured (backlog included)
        self.link_delay = 0.0
        #: resend requests sent and replays answered (each replay resends every kept frame)
        self.resend_requests = 0
        self.replays = 0
        self._progress_at = time.monotonic()  # when the other side last acknowledged anything

    @property
    def full(self) -> bool:
        return self.buffered_bytes >= self.replay_limit

    @property
    def needs_ack(self) -> bool:
        return self.received > self.ack_sent

    def stamp(self, conn: int, kind: bytes, data: bytes = b"") -> bytes:
        """A numbered frame, kept for a resend until acknowledged."""
        line = encode_frame(self.next_seq, self.received, conn, kind, data)
        now = time.monotonic()
        if not self._buffer:
            self._progress_at = now
        self._buffer.append((self.next_seq, line, now))
        self.buffered_bytes += len(line)
        self.next_seq += 1
        self.ack_sent = self.received
        return line

    def control(self, kind: bytes, data: bytes = b"") -> bytes:
        """An unnumbered frame (``K`` or ``R``), never replayed."""
        self.ack_sent = self.received
        return encode_frame(0, self.received, CONTROL, kind, data)

    def resend_request(self, force: bool = False) -> bytes | None:
        """An ``R`` asking for everything after the last frame received in order, or None when
        the same was asked for too recently (unless ``force``): RESEND_SECONDS after the first
        request, then twice as long after each repeat, up to RESEND_MAX_SECONDS."""
        now = time.monotonic()
        asked_for, asked_at = self._asked
        if asked_for != self.received:
            self._ask_interval = RESEND_SECONDS
        elif not force and now - asked_at < self._ask_interval:
            return None
        else:
            self._ask_interval = min(self._ask_interval * 2, RESEND_MAX_SECONDS)
        self._asked = (self.received, now)
        self.resend_requests += 1
        return self.control(b"R", b"%d" % (self.received + 1))

    def overdue_resend(self) -> bytes | None:
        """The resend request again when nothing arrived in order since the last one and the
        link has been quiet for RESEND_SECONDS (it, or what it brought, was lost as well);
        None otherwise. While lines keep arriving the replay may be behind them."""
        if self._asked[0] != self.received:
            return None
        if time.monotonic() - self._heard_at < RESEND_SECONDS:
            return None
        return self.resend_request()

    def receive(self, line: bytes) -> Frame | None:
        """The frame to act on; None for a duplicate. Raises FrameError (corrupt) or FrameGap
        (frames missing before it); either way the caller asks for a resend."""
        self._heard_at = time.monotonic()
        frame = decode_frame(line)
        self._acknowledged(frame.ack)
        if frame.seq == 0:
            return frame
        if frame.seq <= self.received:
            return None
        if frame.seq > self.received + 1:
            raise FrameGap(self.received + 1)
        self.received = frame.seq
        return frame

    def replay_from(self, seq: int) -> list[bytes]:
        """The kept frames from ``seq`` on; FrameError when some were already dropped (the
        other side acknowledged them, so it cannot be asking for them honestly). Empty when a
        replay covering ``seq`` went out less than the link's delay ago (at least
        RESEND_SECONDS): the request was sent before that replay could arrive."""
        if self._buffer and self._buffer[0][0] > seq:
            raise FrameError(f"frame {seq} was acknowledged and is gone")
        now = time.monotonic()
        since, when = self._replayed
        if since <= seq and now - when < max(RESEND_SECONDS, self.link_delay):
            return []
        self._replayed = (seq, now)
        self.replays += 1
        self._buffer = collections.deque(
            (number, line, now if number >= seq else sent) for number, line, sent in self._buffer
        )
        return [line for number, line, _sent in self._buffer if number >= seq]

    def probe(self) -> bytes | None:
        """The newest unacknowledged frame when nothing was acknowledged for PROBE_SECONDS."""
        now = time.monotonic()
        if not self._buffer or now - self._progress_at < PROBE_SECONDS:
            return None
        self._progress_at = now
        return self._buffer[-1][1]

    def _acknowledged(self, ack: int) -> None:
        now = time.monotonic()
        if self._buffer and self._buffer[0][0] <= ack:
            self._progress_at = now
        while self._buffer and self._buffer[0][0] <= ack:
            _seq, line, sent = self._buffer.popleft()
            self.buffered_bytes -= len(line)
            self.link_delay = now - sent


class StdioRelay:
    """Serves ``listen_path`` and multiplexes its connections over two file descriptors."""

    def __init__(self, listen_path: str, in_fd: int, out_fd: int) -> None:
        self.listen_path = listen_path
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._state = Sequencer()
        self._lock = threading.Condition()
        self._connections: dict[int, socket.socket] = {}
        self._ids = itertools.count(1)
        #: what went wrong on the stream (corrupt lines, gaps), for the runner's diagnostics
        self.problems: list[str] = []
        self.closed = threading.Event()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen_path)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(listen_path)
        self._server.listen(LISTEN_BACKLOG)

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

    def announce(self) -> None:
        """Tells the host that the socket listens: an acknowledgement frame, before any other."""
        with self._lock:
            self._write(self._state.control(b"K"))

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="relay-accept").start()
        threading.Thread(target=self._from_host, daemon=True, name="relay-in").start()
        threading.Thread(target=self._acker, daemon=True, name="relay-ack").start()

    # ---- writing -----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._out_fd, view) :]

    def _send(self, conn_id: int, kind: str, data: bytes = b"") -> None:
        with self._lock:
            while self._state.full and not self.closed.is_set():
                self._lock.wait(1.0)
            self._write(self._state.stamp(conn_id, kind.encode(), data))

    def _send_control(self, line: bytes) -> None:
        with self._lock:
            self._write(line)

    def _acker(self) -> None:
        while not self.closed.wait(ACK_SECONDS):
            with self._lock:
                line = self._state.overdue_resend()
                if line is None and self._state.needs_ack:
                    line = self._state.control(b"K")
                probe = self._state.probe()
                with contextlib.suppress(OSError):
                    for frame in (line, probe):
                        if frame is not None:
                            self._write(frame)

    # ---- connections -------------------------------------------------------------------------

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

    # ---- reading -----------------------------------------------------------------------------

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
                    self._on_line(line)
        except OSError:
            pass
        finally:
            self.close()

    def _on_line(self, line: bytes) -> None:
        with self._lock:
            try:
                frame = self._state.receive(line)
            except (FrameError, FrameGap) as error:
                self._report(str(error))
                if (request := self._state.resend_request()) is not None:
                    self._write(request)
                return
            self._lock.notify_all()  # acknowledgements may have made room
        if frame is not None:
            self._dispatch(frame)

    def _report(self, problem: str) -> None:
        self.problems.append(problem)
        print(f"rlm-relay: {problem}; asking the host to resend", file=sys.__stderr__)

    def _dispatch(self, frame: Frame) -> None:
        if frame.kind == b"R":
            with self._lock:
                try:
                    lines = self._state.replay_from(int(frame.data))
                except (FrameError, ValueError) as error:
                    self._report(f"cannot resend: {error}")
                    return
                for line in lines:
                    self._write(line)
            return
        if frame.conn == CONTROL:
            if frame.kind == b"J":
                threading.Thread(target=self._join, args=(frame.data,), daemon=True).start()
            return
        connection = self._connections.get(frame.conn)
        if connection is None:
            return
        if frame.kind == b"D":
            try:
                connection.sendall(frame.data)
            except OSError:
                # Its runner is gone: the host must hear of it (the broker then ends its session's
                # stream), whichever thread saw it first.
                if self._connections.pop(frame.conn, None) is not None:
                    with contextlib.suppress(OSError):
                        self._send(frame.conn, "C")
                connection.close()
        elif frame.kind == b"C":
            self._connections.pop(frame.conn, None)
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _join(self, payload: bytes) -> None:
        """Concatenates uploaded parts (a file the provider could not take whole) in order into
        the target file, deletes the parts and tells the host how it went."""
        request: dict = {}
        error = ""
        try:
            request = json.loads(payload)
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
        with self._lock:
            self._lock.notify_all()
        for connection in list(self._connections.values()):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._connections.clear()
        with contextlib.suppress(OSError):
            self._server.close()


def serve(listen_path: str) -> int:
    """The relay of a sandbox shared by one RLM tree (``runner.pyz --relay-stdio PATH``): serves
    ``listen_path`` for every runner of the sandbox (each connection carries its own session
    token) until the host closes stdin, then ends every relayed connection."""
    relay = StdioRelay.over_stdio(listen_path)
    relay.start()
    relay.announce()
    relay.closed.wait()
    return 0
