"""Keeps one interpreter's state between cells and calls back into the broker.

Protocol: the host writes one JSON line to stdin (``{"address": ..., "token": ...}``); the runner
dials ``address`` (a unix socket or a loopback port inside the sandbox), opens the ``Attach``
stream and serves what arrives on it until the host says ``Shutdown`` or the stream breaks.
The token never appears in the process environment, and once the channel is built it is kept
only by the interceptor that adds it to each call (not on the :class:`Runner`). ``"shell":
"ipython"`` in the bootstrap runs every cell through a real IPython shell (imported only then:
the runner itself needs only grpcio and protobuf).
"""

from __future__ import annotations

import ast
import builtins
import codecs
import collections
import contextlib
import io
import json
import os
import pickle
import queue
import re
import resource
import select
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import grpc

from rlm.environments.runner.bootstrap import Bootstrap
from rlm.protos import rlm_sandbox_pb2 as pb
from rlm.protos import rlm_sandbox_pb2_grpc as pb_grpc

RUNNER_VERSION = "1"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The broker reads at most 2 MiB in one message (so an open call cannot make the host buffer
#: more); a request or a result bigger than this part size travels as parts of this size.
PART_BYTES = 1024 * 1024
#: The largest ``answer["content"]`` a cell can hand back (UTF-8 bytes): well under one gRPC
#: message, so a huge answer is refused with a message to the model instead of ending the runner.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
DEFAULT_CALL_TIMEOUT = 3600.0
# How long a runner whose broker vanished lets a running cell go on before it exits anyway.
ORPHAN_GRACE_SECONDS = 5.0
HELPER_NAMES = frozenset(
    {"llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched", "SHOW_VARS"}
)
#: How cells can be run: ``exec`` of the parsed cell, or a real IPython shell.
SHELLS = ("python", "ipython")
#: The fork server imports what the runners it forks will need, listed in this variable of its
#: environment (comma-separated; only "ipython" is known), so that forking stays a few ms.
PRELOAD_ENV = "RLM_RUNNER_PRELOAD"
#: Set to "1" by the local environment, whose runners share the machine and the user with the host
#: and with each other: the runner then makes itself non-dumpable before it reads its token, drops
#: CAP_SYS_PTRACE and becomes a child subreaper (see :func:`contain_process`).
SHARED_HOST_ENV = "RLM_RUNNER_SHARED_HOST"
IPYTHON_MISSING = (
    "the 'ipython' shell needs IPython in the sandbox's Python ({python}): install the "
    "`ipython` package in the sandbox image (pip install 'ipython>=8'); for the local "
    "environment, pip install 'rlm[ipython]' into that interpreter ({error})"
)


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class BudgetExhausted(BaseException):
    """A limit of the whole RLM tree is spent. A BaseException so ``except Exception`` in
    generated code cannot swallow it: the cell stops and the run ends."""


class BrokerUnavailableError(RuntimeError):
    """The host-side broker cannot be reached any more; the run cannot go on."""


class SubcallError(RuntimeError):
    """A sub-LM call, child RLM or host tool failed; the message says why."""


class ShellUnavailableError(RuntimeError):
    """The bootstrap asked for a shell that this sandbox's Python cannot provide."""


class _ReportedError(Exception):
    """A cell error whose message is already the whole report (no traceback to add)."""


# Shown to the model as "SubcallError: ..." rather than with the runner's module path.
for _error_class in (BudgetExhausted, BrokerUnavailableError, SubcallError):
    _error_class.__module__ = "builtins"


class _CellOutput(io.TextIOBase):
    """Installed once as sys.stdout / sys.stderr: keeps the first ``limit`` characters written
    during the current cell and counts the rest, so a huge print costs no memory."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._kept = 0
        self._dropped = 0
        self._limit = 0

    def begin(self, limit: int) -> None:
        with self._lock:
            self._parts, self._kept, self._dropped, self._limit = [], 0, 0, limit

    def end(self) -> tuple[str, int]:
        with self._lock:
            text, dropped = "".join(self._parts), self._dropped
            self._parts, self._kept, self._dropped, self._limit = [], 0, 0, 0
            return text, dropped

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        with self._lock:
            room = self._limit - self._kept
            if room > 0:
                piece = s[:room]
                self._parts.append(piece)
                self._kept += len(piece)
                self._dropped += len(s) - len(piece)
            else:
                self._dropped += len(s)
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _RunnerLogFilter:
    """Between fd 2 and the cell's stderr: gRPC's own log lines (``I1130 08:16:26.287488 16189
    fork_posix.cc:71] ...``, e.g. when the cell forks) are the runner's, so they go to its
    original stderr; everything else is the cell's. Lines are held until complete, and a
    partial one until the end of the cell."""

    _GRPC_LOG = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")

    def __init__(self, output: _CellOutput) -> None:
        self._output = output
        self._partial = ""

    def write(self, text: str) -> None:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            found = self._GRPC_LOG.search(line)
            if found is None:
                self._output.write(line + "\n")
                continue
            if found.start():  # the cell's unfinished line, cut by gRPC's
                self._output.write(line[: found.start()])
            print(line[found.start() :], file=sys.__stderr__)

    def flush(self) -> None:
        if self._partial:
            self._output.write(self._partial)
            self._partial = ""


class _FdCapture:
    """Points fds 1 and 2 at pipes whose bytes become the cell's stdout and stderr, so that what
    subprocesses and C code write is the model's to see and never reaches the runner's own
    stdout/stderr (with the stdio relay, the provider's stream: only relay frames may go there;
    on Daytona both streams share one log). The runner's own messages keep the original fd 2
    through ``sys.__stderr__``."""

    #: how long the end of a cell waits for the pipes to be read up to that point
    SYNC_SECONDS = 2.0

    def __init__(self, outputs: dict[int, _CellOutput]) -> None:
        self._marker = b"\0rlm-sync-" + os.urandom(8).hex().encode() + b"\0"
        self._streams: list[tuple[int, threading.Event]] = []
        diagnostics = os.dup(2)
        # sys.__stderr__ is the runner's own: its messages keep going to the original fd 2.
        setattr(sys, "__stderr__", open(diagnostics, "w", buffering=1, closefd=False))  # noqa: B010, SIM115
        pumps: dict[int, _Pump] = {}
        for fd, output in outputs.items():
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            synced = threading.Event()
            self._streams.append((write_end, synced))
            sink = _RunnerLogFilter(output) if fd == 2 else output
            pumps[read_end] = _Pump(self._marker, sink, synced)
        threading.Thread(target=_pump, args=(pumps,), daemon=True, name="fd-capture").start()

    def sync(self) -> None:
        """Returns once everything written to fds 1 and 2 before the call has reached the
        cell's outputs (bounded: a writer that holds the pipe full cannot stall the runner)."""
        for write_end, synced in self._streams:
            synced.clear()
            try:
                os.write(write_end, self._marker)
            except OSError:
                continue
            synced.wait(self.SYNC_SECONDS)


class _Pump:
    """One captured fd's bytes on their way to the cell's output: decoded as UTF-8, with the
    sync markers taken out (each one seen sets ``synced``)."""

    def __init__(self, marker: bytes, output: Any, synced: threading.Event) -> None:
        self._marker = marker
        self._output = output
        self._synced = synced
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = b""

    def feed(self, data: bytes) -> None:
        pending = self._pending + data
        while (at := pending.find(self._marker)) != -1:
            if at:
                self._output.write(self._decoder.decode(pending[:at]))
            self._output.flush()
            pending = pending[at + len(self._marker) :]
            self._synced.set()
        # Keep a tail that may be the start of a marker split across reads.
        keep = len(self._marker) - 1
        if len(pending) > keep:
            self._output.write(self._decoder.decode(pending[:-keep]))
            pending = pending[-keep:]
        self._pending = pending


def _pump(pumps: dict[int, _Pump]) -> None:
    """Reads every captured fd's pipe on one thread (a runner's threads are few: each one is
    a task of the sandbox's pids limit and costs its start and exit)."""
    poller = select.poll()
    for fd in pumps:
        poller.register(fd, select.POLLIN)
    while pumps:
        for fd, _event in poller.poll():
            data = os.read(fd, 1 << 16)
            if data:
                pumps[fd].feed(data)
            else:
                poller.unregister(fd)
                del pumps[fd]


def _import_ipython() -> Any:
    """IPython's interactive shell module, or ShellUnavailableError saying what to install."""
    try:
        from IPython.core import interactiveshell
    except ImportError as error:
        raise ShellUnavailableError(
            IPYTHON_MISSING.format(python=sys.executable, error=error)
        ) from error
    return interactiveshell


def preload(names: str) -> None:
    """Imports what the comma-separated ``names`` ask for ahead of any session (the fork server
    calls it, so forked runners start with it imported); anything missing is left to the
    runner that needs it, which then fails with a clear message."""
    if "ipython" in {name.strip() for name in names.split(",")}:
        with contextlib.suppress(ShellUnavailableError):
            _import_ipython()


class IPythonCells:
    """Runs cells through a real IPython ``InteractiveShell`` whose user namespace is the
    runner's: ``%magics``, ``!shell`` escapes and IPython's display of the last expression, with
    the runner's helpers, contexts and tools in reach.

    The shell shows no tracebacks: the cell's own error is re-raised for the runner to report as
    with the plain shell (tracebacks start at the ``<cell N>`` frame); errors that a magic shows
    without raising them (``%run``, ``%time``) go to the cell's stderr.
    """

    def __init__(self, namespace: dict[str, Any]) -> None:
        interactiveshell = _import_ipython()
        from IPython.core.compilerop import CachingCompiler
        from IPython.core.error import UsageError
        from traitlets import Type
        from traitlets.config import Config

        class CellCompiler(CachingCompiler):
            """Names each cell's code ``<cell N>``, as the plain shell does."""

            cell_name = "<cell>"

            def get_code_name(self, raw_code: str, transformed_code: str, number: int) -> str:
                return self.cell_name

        shown: list[tuple[BaseException | None, str]] = []
        helpers = {name: namespace[name] for name in HELPER_NAMES}

        class Shell(interactiveshell.InteractiveShell):  # type: ignore[name-defined]
            """Keeps what IPython would print as tracebacks instead of printing it."""

            compiler_class = Type(CellCompiler)

            def init_user_ns(self) -> None:
                # Also after %reset: the llm_query family and SHOW_VARS stay, hidden from %who.
                super().init_user_ns()
                self.user_ns.update(helpers)
                self.user_ns_hidden.update(helpers)

            def _showtraceback(self, etype: Any, evalue: Any, stb: Any) -> None:
                shown.append((evalue, self.InteractiveTB.stb2text(stb)))

            def show_usage_error(self, exc: BaseException) -> None:
                shown.append((exc, f"UsageError: {exc}"))

        config = Config()
        config.HistoryAccessor.enabled = False  # no history database, no saving thread
        config.InteractiveShell.colors = "nocolor"  # lower case: IPython 8 and 9 both take it
        self._usage_error = UsageError
        self._shown = shown
        # The process's singleton, so that IPython.get_ipython() and display() find it.
        self.shell = Shell.instance(config=config, user_ns=namespace)
        #: what IPython and the runner put in the namespace (In, Out, get_ipython, llm_query...):
        #: left out of %who and of the runner's variable list while not rebound
        self.hidden: dict[str, Any] = self.shell.user_ns_hidden
        # IPython warns after SystemExit; the runner's report says the REPL goes on.
        warnings.filterwarnings(
            "ignore", message="To exit: use 'exit', 'quit'", category=UserWarning
        )

    def run(self, code: str, filename: str) -> None:
        """Runs one cell; raises the cell's error (the shell caught it) for the runner to report."""
        self.shell.compile.cell_name = filename
        self._shown.clear()
        try:
            result = self.shell.run_cell(code, store_history=True)
        finally:
            shown, self._shown[:] = list(self._shown), []
        error = result.error_before_exec or result.error_in_exec
        for value, text in shown:
            if value is not error:
                print(text, file=sys.stderr)
        if error is None:
            return
        if isinstance(error, self._usage_error):
            raise _ReportedError(f"UsageError: {error}")
        raise error


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """A call's details with the session's authorization added."""


class _SessionAuth(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the session's bearer token to every call: the one place the token is kept."""

    def __init__(self, token: str) -> None:
        self.__metadata = (("authorization", f"Bearer {token}"),)

    def _with_token(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), *self.__metadata),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


#: gRPC keepalive of a runner that dials the broker directly (ping every 20 s, 10 s to answer)
DIRECT_KEEPALIVE_MS = (20_000, 10_000)
#: ... and of one behind the stdio relay. Its ping queues behind every frame the relay has not
#: delivered yet: up to the relay's replay limit (32 MiB), which on the slowest link the adapters
#: accept (256 KiB/s, ``UPLOAD_MIN_BYTES_PER_SECOND``) takes 128 s, plus a provider's re-attach
#: that replays a whole log. A dead host needs no ping to be noticed there: the relay sees its
#: stdin close.
RELAYED_KEEPALIVE_MS = (60_000, 180_000)


#: Set by the fork server that forked this runner: the unix socket of its session proxy
#: (``sessionproxy.py``), through which the runner's calls share the server's connections.
SESSION_PROXY: str | None = None


def channel_options(relayed: bool) -> list[tuple[str, int]]:
    """The options of a channel to the broker (a runner's own, or the session proxy's)."""
    ping_every, ping_timeout = RELAYED_KEEPALIVE_MS if relayed else DIRECT_KEEPALIVE_MS
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", ping_every),
        ("grpc.keepalive_timeout_ms", ping_timeout),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _broker_stub(address: str, token: str, relayed: bool) -> Any:
    """A stub on a gRPC channel of the runner's own, every call carrying the session's token."""
    channel = grpc.insecure_channel(address, options=channel_options(relayed))
    return pb_grpc.BrokerStub(grpc.intercept_channel(channel, _SessionAuth(token)))


def _proxied_stub(proxy: str | None, address: str, token: str, relayed: bool) -> Any:
    """The same calls through the fork server's session proxy; None when there is none (or it
    cannot be reached: the runner then dials the broker itself)."""
    if not proxy:
        return None
    from rlm.environments.runner.sessionproxy import ProxyConnection

    try:
        return ProxyConnection(proxy, address, token, relayed=relayed)
    except OSError as error:
        print(f"rlm-runner: session proxy unreachable ({error})", file=sys.__stderr__)
        return None


class Runner:
    """One persistent interpreter attached to one broker session."""

    def __init__(
        self,
        address: str,
        token: str,
        shell: str = "python",
        relayed: bool = False,
        proxy: str | None = None,
    ) -> None:
        if shell not in SHELLS:
            raise ValueError(f"unknown shell {shell!r}; choose one of: {', '.join(SHELLS)}")
        self.namespace: dict[str, Any] = {}
        self._reset_namespace()
        # Made first: a sandbox without IPython fails here, before anything is attached.
        self._ipython = IPythonCells(self.namespace) if shell == "ipython" else None
        self._stub = _proxied_stub(proxy, address, token, relayed) or _broker_stub(
            address, token, relayed
        )
        self._outbox: Any = None  # where messages to the host go (``put``); set by ``serve``
        self._work: queue.SimpleQueue[pb.HostMessage | None] = queue.SimpleQueue()
        self._stdout = _CellOutput()
        self._stderr = _CellOutput()
        self._fd_capture: _FdCapture | None = None
        self._cell_id = 0
        self._in_cell = threading.Event()
        self._cell_deadline = 0.0
        self._contexts: dict[str, tuple[bytearray, int]] = {}
        self.broker_gone = threading.Event()

    # ---- namespace -------------------------------------------------------------------------

    def _reset_namespace(self) -> None:
        self.namespace.clear()
        self.namespace.update(
            __name__="__main__",
            __builtins__=builtins,
            llm_query=self.llm_query,
            llm_query_batched=self.llm_query_batched,
            rlm_query=self.rlm_query,
            rlm_query_batched=self.rlm_query_batched,
            SHOW_VARS=self.show_vars,
            answer={"content": "", "ready": False},
        )

    def user_variables(self) -> list[str]:
        """Names the model defined (helpers, dunder names and the shell's own names left out)."""
        hidden = self._ipython.hidden if self._ipython is not None else {}
        return [
            name
            for name, value in self.namespace.items()
            if not name.startswith("_")
            and name not in HELPER_NAMES
            and not (name in hidden and hidden[name] is value)
        ]

    def show_vars(self) -> str:
        """Lists the REPL's variables with their types (and lengths where they have one)."""
        lines = []
        for name in self.user_variables():
            value = self.namespace[name]
            kind = type(value).__name__
            try:
                size = f", len={len(value)}"
            except Exception:
                size = ""
            lines.append(f"{name}: {kind}{size}")
        text = "\n".join(lines) or "(no variables)"
        print(text)
        return text

    # ---- call-backs into the broker --------------------------------------------------------

    def _timeout(self) -> float:
        remaining = self._cell_deadline - time.monotonic()
        return max(1.0, remaining) if self._cell_deadline else DEFAULT_CALL_TIMEOUT

    def _raise_for(self, error: grpc.RpcError) -> None:
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else str(error)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise BudgetExhausted(details) from None
        if code == grpc.StatusCode.UNAVAILABLE:
            raise BrokerUnavailableError(
                f"the host broker is unreachable ({details}); the run cannot continue"
            ) from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise TimeoutError("the call ran past the cell's time limit") from None
        raise SubcallError(details) from None

    def _complete_request(self, prompt: Any, model: str | None) -> pb.CompleteRequest:
        request = pb.CompleteRequest(model=model or "", cell_id=self._cell_id)
        if isinstance(prompt, str):
            request.prompt = prompt
        elif isinstance(prompt, list):
            request.messages_json = json.dumps(prompt)
        else:
            raise TypeError(
                f"prompt must be a str or a list of chat messages, not {type(prompt).__name__}"
            )
        return request

    def llm_query(self, prompt: str | list[dict], model: str | None = None) -> str:
        """One plain LM call; returns the reply text, or "Error: ..." if the call failed (a
        spent limit or a vanished broker still raise: the run cannot go on)."""
        request = self._complete_request(prompt, model)
        if request.ByteSize() > PART_BYTES:
            return self._batch([pb.BatchCall(complete=request)])[0]
        try:
            reply = self._stub.Complete(request, timeout=self._timeout())
        except grpc.RpcError as error:
            return self._error_text(error)
        return reply.text

    def _error_text(self, error: grpc.RpcError) -> str:
        """A failed call as the string the model gets back; raises where the run must stop."""
        if error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
            self._raise_for(error)
        return f"Error: {error.details()}"

    def llm_query_batched(self, prompts: list[str], model: str | None = None) -> list[str]:
        """Many LM calls at once; a failed item becomes the string 'Error: ...'."""
        calls = [pb.BatchCall(complete=self._complete_request(p, model)) for p in prompts]
        return self._batch(calls)

    def rlm_query(self, prompt: str, model: str | None = None) -> str:
        """A child RLM whose context is ``prompt``; a plain LM call at max_depth."""
        request = pb.SubcallRequest(prompt=prompt, model=model or "", cell_id=self._cell_id)
        if request.ByteSize() > PART_BYTES:
            return self._batch([pb.BatchCall(subcall=request)])[0]
        try:
            reply = self._stub.Subcall(request, timeout=self._timeout())
        except grpc.RpcError as error:
            return self._error_text(error)
        return reply.text

    def rlm_query_batched(self, prompts: list[str], model: str | None = None) -> list[str]:
        """Many child RLMs at once; a failed item becomes the string 'Error: ...'."""
        calls = [
            pb.BatchCall(
                subcall=pb.SubcallRequest(prompt=p, model=model or "", cell_id=self._cell_id)
            )
            for p in prompts
        ]
        return self._batch(calls)

    def _batch(self, calls: list[pb.BatchCall]) -> list[str]:
        """Sends ``calls`` on one ``CompleteBatch`` stream and collects the results by index.

        A spent limit or a vanished broker raises as for one call (and cancels the rest); any
        other failure of an item, or of the stream, becomes that item's "Error: ..." string.
        """
        results: list[str | None] = [None] * len(calls)
        items = self._batch_results(calls)
        try:
            for item in items:
                results[item.index] = item.reply.text if item.code == 0 else self._item_error(item)
        except grpc.RpcError as error:
            failed = self._error_text(error)
            return [failed if text is None else text for text in results]
        finally:
            items.close()  # cancels the stream now, also when an item's error raises
        missing = "Error: the broker ended the batch without a result for this item"
        return [missing if text is None else text for text in results]

    def _batch_results(self, calls: list[pb.BatchCall]) -> Generator[pb.BatchResult, None, None]:
        """The results of ``calls`` sent on one ``CompleteBatch`` stream, as they finish (only
        indexes of ``calls``); the stream is cancelled once every item has its result."""
        if not calls:
            return
        seen: set[int] = set()
        stream = self._stub.CompleteBatch(_in_parts(calls, seen), timeout=self._timeout())
        try:
            for item in stream:
                if item.index < len(calls):
                    seen.add(item.index)  # a refused item's remaining parts are not sent
                    yield item
                if len(seen) == len(calls):
                    break  # a refused item's parts need not be sent
        finally:
            stream.cancel()

    def _item_error(self, item: pb.BatchResult) -> str:
        """A failed batch item as the string the model gets back; raises where the run must
        stop, as :meth:`_error_text` does for a single call."""
        code = _STATUS_CODES.get(item.code, grpc.StatusCode.UNKNOWN)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise BudgetExhausted(item.details)
        if code == grpc.StatusCode.UNAVAILABLE:
            raise BrokerUnavailableError(
                f"the host broker is unreachable ({item.details}); the run cannot continue"
            )
        return f"Error: {item.details}"

    def _call_tool(self, request: pb.ToolRequest) -> pb.ToolReply:
        """One host-side tool call: unary when small, else one item sent in parts."""
        if request.ByteSize() <= PART_BYTES:
            try:
                return self._stub.CallTool(request, timeout=self._timeout())
            except grpc.RpcError as error:
                self._raise_for(error)
        items = self._batch_results([pb.BatchCall(tool=request)])
        try:
            for item in items:
                if item.code == 0:
                    return item.tool_reply
                self._item_error(item)  # raises for a spent limit or a vanished broker
                raise SubcallError(item.details)
        except grpc.RpcError as error:
            self._raise_for(error)
        finally:
            items.close()
        raise SubcallError("the broker ended the call without a result")

    def make_tool(self, name: str, description: str) -> Any:
        """A stand-in for a host-side callable: arguments go to the host as JSON."""

        def tool(*args: Any, **kwargs: Any) -> Any:
            payload = json.dumps({"args": args, "kwargs": kwargs}).encode()
            request = pb.ToolRequest(name=name, args_json=payload, cell_id=self._cell_id)
            reply = self._call_tool(request)
            if reply.result_pickle:
                return _load_from_host(reply.result_pickle, f"the value tool {name!r} returned")
            return json.loads(reply.result_json) if reply.result_json else None

        tool.__name__ = name
        tool.__doc__ = description or f"Host-side tool {name!r}."
        return tool

    # ---- the host's requests ---------------------------------------------------------------

    def _on_context(self, chunk: pb.ContextChunk) -> None:
        if chunk.path:
            try:
                with open(chunk.path, "rb") as handle:
                    data = handle.read()
                os.unlink(chunk.path)
            except OSError as exc:
                self._send(
                    pb.RunnerMessage(ack=pb.Ack(what=f"context:{chunk.name}", error=str(exc)))
                )
                return
            chunk = pb.ContextChunk(
                name=chunk.name,
                data=data,
                last=True,
                encoding=chunk.encoding,
                total_bytes=len(data),
                aliases=chunk.aliases,
            )
            del data
        buffer, filled = self._contexts.get(chunk.name, (None, 0))
        if buffer is None:
            buffer = bytearray(chunk.total_bytes) if chunk.total_bytes else bytearray()
        end = filled + len(chunk.data)
        if end <= len(buffer):
            buffer[filled:end] = chunk.data
        else:
            del buffer[filled:]
            buffer += chunk.data
        if not chunk.last:
            self._contexts[chunk.name] = (buffer, end)
            return
        self._contexts.pop(chunk.name, None)
        del buffer[end:]
        error = ""
        try:
            if chunk.encoding == pb.JSON:
                value: Any = json.loads(buffer)
            else:
                value = buffer.decode("utf-8")
            del buffer
            self.namespace[chunk.name] = value
            for alias in chunk.aliases:
                self.namespace[alias] = value
        except (ValueError, MemoryError) as exc:
            error = f"could not load {chunk.name}: {type(exc).__name__}: {exc}"
        self._send(pb.RunnerMessage(ack=pb.Ack(what=f"context:{chunk.name}", error=error)))

    def _on_set_variables(self, message: pb.SetVariables) -> None:
        error = ""
        try:
            if message.values_json:
                self.namespace.update(json.loads(message.values_json))
            if message.values_pickle:
                self.namespace.update(_load_from_host(message.values_pickle, "custom tool values"))
            for spec in message.tools:
                self.namespace[spec.name] = self.make_tool(spec.name, spec.description)
        except (ValueError, SubcallError) as exc:
            error = f"could not set variables: {exc}"
        self._send(pb.RunnerMessage(ack=pb.Ack(what="variables", error=error)))

    def _run_code(self, code: str, filename: str) -> None:
        if self._ipython is not None:
            self._ipython.run(code, filename)
            return
        tree = ast.parse(code, filename=filename, mode="exec")
        last_expr = None
        last = tree.body[-1] if tree.body else None
        if isinstance(last, ast.Expr):
            tree.body.pop()
            last_expr = ast.Expression(last.value)
        exec(compile(tree, filename, "exec"), self.namespace)
        if last_expr is not None:
            value = eval(compile(last_expr, filename, "eval"), self.namespace)
            if value is not None:
                print(repr(value))

    def execute(self, request: pb.ExecuteRequest) -> pb.ExecuteResult:
        """Runs one cell in the persistent namespace and reports what it printed."""
        limit = request.max_output_chars or 100_000
        self._cell_id = request.cell_id
        self._cell_deadline = (
            time.monotonic() + request.timeout_seconds if request.timeout_seconds else 0.0
        )
        self._stdout.begin(limit)
        self._stderr.begin(limit)
        result = pb.ExecuteResult(cell_id=request.cell_id)
        started = time.perf_counter()
        self._in_cell.set()
        try:
            self._run_code(request.code, f"<cell {request.cell_id}>")
        except KeyboardInterrupt:
            result.interrupted = True
            result.error = "TimeoutError: the cell ran past its time limit and was interrupted"
        except BudgetExhausted as exc:
            result.fatal = True
            result.error = f"BudgetExhausted: {exc}"
        except SystemExit as exc:
            result.error = f"SystemExit({exc.code!r}) ignored: the REPL keeps running"
        except _ReportedError as exc:
            result.error = str(exc)
        except BaseException as exc:
            result.error = _format_user_traceback(exc)
        finally:
            self._in_cell.clear()
        result.seconds = time.perf_counter() - started
        if self._fd_capture is not None:
            self._fd_capture.sync()
        stdout, result.stdout_dropped_chars = self._stdout.end()
        stderr, result.stderr_dropped_chars = self._stderr.end()
        result.stdout, result.stderr = wire_text(stdout), wire_text(stderr)
        result.error = wire_text(result.error)
        self._report_answer(result)
        result.variables.extend(self.user_variables()[:200])
        return result

    def _report_answer(self, result: pb.ExecuteResult) -> None:
        answer = self.namespace.get("answer")
        if not isinstance(answer, Mapping):
            return
        content = answer.get("content", "")
        text = wire_text(content if isinstance(content, str) else str(content))
        size = len(text.encode("utf-8"))
        if size > MAX_ANSWER_BYTES:
            refusal = (
                f"AnswerTooLarge: answer['content'] is {size:,} bytes; the limit is "
                f"{MAX_ANSWER_BYTES:,} (16 MiB). Put a shorter answer in answer['content'] "
                "(a summary, or where the rest can be found)."
            )
            result.error = f"{result.error}\n{refusal}" if result.error else refusal
            return
        result.answer_ready = bool(answer.get("ready"))
        result.answer_content = text

    # ---- plumbing --------------------------------------------------------------------------

    def _send(self, message: pb.RunnerMessage) -> None:
        if message.ByteSize() <= PART_BYTES:
            self._outbox.put(message)
            return
        data = memoryview(message.SerializeToString())
        for start in range(0, len(data), PART_BYTES):
            part = pb.MessagePart(data=bytes(data[start : start + PART_BYTES]))
            if start == 0:
                part.total_bytes = len(data)
            self._outbox.put(pb.RunnerMessage(part=part))

    def _on_host_message(self, message: pb.HostMessage) -> None:
        """Each message from the host, on the thread that reads them (which must not block)."""
        if message.WhichOneof("kind") == "interrupt":
            main = threading.main_thread().ident
            in_cell = self._in_cell.is_set() and message.interrupt.cell_id == self._cell_id
            if in_cell and main is not None:
                signal.pthread_kill(main, signal.SIGINT)
            return
        self._work.put(message)

    def _on_host_end(self, error: grpc.RpcError | None) -> None:
        if error is not None:
            print(f"rlm-runner: broker stream ended: {error.details()}", file=sys.__stderr__)
        self.orphan()

    def orphan(self) -> None:
        """Nothing can use this runner any more (the host's stream ended, or serving did): the
        serving loop returns, and a cell still running gets ``ORPHAN_GRACE_SECONDS``, then the
        process exits (and with it the sandbox, for container-based ones). A process that
        lingers after serving (a thread that is not a daemon) ends the same way."""
        if self.broker_gone.is_set():
            return
        self.broker_gone.set()
        self._work.put(None)
        orphaned = threading.Timer(ORPHAN_GRACE_SECONDS, os._exit, args=(3,))
        orphaned.daemon = True
        orphaned.start()

    def _attach(self) -> Any:
        """Opens the session's stream to the host; returns where outgoing messages are ``put``
        (None ends the stream). Through the session proxy its frames are read by the proxy
        connection's reader; over gRPC a thread reads the responses."""
        attach = getattr(self._stub, "attach", None)
        if attach is not None:
            return attach(self._on_host_message, self._on_host_end)
        outbox: queue.SimpleQueue[pb.RunnerMessage | None] = queue.SimpleQueue()
        responses = self._stub.Attach(iter(outbox.get, None))
        threading.Thread(target=self._read_host, args=(responses,), daemon=True).start()
        return outbox

    def _read_host(self, responses: Any) -> None:
        error: grpc.RpcError | None = None
        try:
            for message in responses:
                self._on_host_message(message)
        except grpc.RpcError as raised:
            error = raised
        finally:
            self._on_host_end(error)

    def serve(self) -> int:
        """Attaches to the broker and serves until Shutdown or until the broker is gone."""
        self._outbox = self._attach()
        self._send(
            pb.RunnerMessage(
                hello=pb.Hello(
                    runner_version=RUNNER_VERSION,
                    pid=os.getpid(),
                    python_version=sys.version.split()[0],
                )
            )
        )
        sys.stdout, sys.stderr = self._stdout, self._stderr
        self._fd_capture = _FdCapture({1: self._stdout, 2: self._stderr})
        sys.stdin = io.StringIO("")
        while True:
            try:
                message = self._work.get()
                if message is None:
                    return 3
                kind = message.WhichOneof("kind")
                if kind == "execute":
                    self._send(pb.RunnerMessage(result=self.execute(message.execute)))
                elif kind == "context":
                    self._on_context(message.context)
                elif kind == "set_variables":
                    self._on_set_variables(message.set_variables)
                elif kind == "shutdown":
                    self._outbox.put(None)
                    return 0
            except KeyboardInterrupt:
                # An interrupt that arrived just after its cell finished: nothing to stop.
                continue


def _in_parts(calls: list[pb.BatchCall], answered: set[int]) -> Iterator[pb.BatchCall]:
    """The batch's request stream: each call whole, or, when bigger than ``PART_BYTES``, its
    size and then its serialized bytes in parts (the broker accepts 2 MiB in one message). The
    parts of an item already in ``answered`` (refused on its size) are left unsent."""
    for index, call in enumerate(calls):
        if call.ByteSize() <= PART_BYTES:
            yield call
            continue
        data = memoryview(call.SerializeToString())
        yield pb.BatchCall(parts_total_bytes=len(data))
        for start in range(0, len(data), PART_BYTES):
            if index in answered:
                break
            yield pb.BatchCall(part=bytes(data[start : start + PART_BYTES]))


def wire_text(text: str) -> str:
    """``text`` as gRPC can carry it: lone surrogates (which UTF-8 cannot encode, and which a
    cell can print or put in its answer) are written as ``\\udXXX`` escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _load_from_host(data: bytes, what: str) -> Any:
    """Unpickles a value the host sent (the host is trusted; the host never unpickles ours)."""
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise SubcallError(
            f"{what} could not be loaded in the sandbox ({type(exc).__name__}: {exc}); "
            "its type's package must be installed in the sandbox image"
        ) from None


def _format_user_traceback(exc: BaseException) -> str:
    """The traceback without the runner's own frames."""
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell"):
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) or tb is None:
        return "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


def _apply_limits(limits: dict[str, int]) -> None:
    """Self-imposed rlimits (soft = hard, so the cell's code cannot raise them again)."""
    if limits.get("memory_bytes"):
        # Under an address-space cap, glibc's per-thread malloc arenas (64 MiB of reservation
        # each) would leave no room for gRPC's threads: two arenas are plenty for the runner.
        try:
            import ctypes

            ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX
        except (OSError, AttributeError):
            pass

    names = {
        "memory_bytes": resource.RLIMIT_AS,
        "file_bytes": resource.RLIMIT_FSIZE,
        "open_files": resource.RLIMIT_NOFILE,
        "cpu_seconds": resource.RLIMIT_CPU,
    }
    for key, value in limits.items():
        if key in names and value:
            resource.setrlimit(names[key], (int(value), int(value)))


PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
CAP_SYS_PTRACE = 19
_CAPABILITY_VERSION_3 = 0x20080522


def prctl(option: int, arg: int) -> bool:
    """Linux ``prctl(option, arg)``; False where it failed or there is no such call."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def drop_ptrace_capability() -> None:
    """Removes CAP_SYS_PTRACE from this thread's capabilities and from its bounding set (what any
    program it starts can get), where it has it: for a runner running as root, the capability
    would override the non-dumpable flag and let it read any other process's memory. A no-op
    for other users (who do not hold it) and off Linux."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0)  # needs CAP_SETPCAP: root only
        header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()  # (effective, permitted, inheritable) x 2 words
        if libc.capget(header, data) != 0:
            return
        for word in range(3):  # the first word holds capabilities 0-31
            data[word] &= ~(1 << CAP_SYS_PTRACE) & 0xFFFFFFFF
        libc.capset(header, data)
    except (OSError, AttributeError):
        pass


def contain_process(*, before_bootstrap: bool) -> None:
    """The local environment's runner (``RLM_RUNNER_SHARED_HOST=1``) shares the user with the
    host and with the other sessions' runners. Before the bootstrap (the token) is read: it
    becomes non-dumpable, so that no other process of the user can ptrace it or open its
    ``/proc/<pid>/mem``. After it, before any cell: it drops CAP_SYS_PTRACE (which would
    override that for root) and becomes a child subreaper, so that whatever its cells start
    and orphan (double fork, ``nohup``, ``setsid``) is re-parented to it rather than to init,
    and stays in the tree the host kills at close. Linux only; elsewhere a no-op."""
    if os.environ.get(SHARED_HOST_ENV) != "1":
        return
    if before_bootstrap:
        prctl(PR_SET_DUMPABLE, 0)
        return
    drop_ptrace_capability()
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def watch_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this process when its parent (``parent_pid``) dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os._exit(3)


def _read_bootstrap_line(forked: bool) -> str:
    """One line from fd 0. A forked runner's stdin is a pipe that holds the line alone, read a
    pipe's worth at a time; otherwise byte by byte: nothing after the line may be buffered
    away, because with the stdio relay the rest of stdin carries relay frames."""
    size = 1 << 16 if forked else 1
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = os.read(0, size)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")


def main(*, forked: bool = False) -> int:
    """Reads the bootstrap line from stdin and serves the session. ``forked``: started by a
    fork server, which gives it a stdin of its own and ends it with ``os._exit`` on return."""
    contain_process(before_bootstrap=True)
    line = _read_bootstrap_line(forked)
    if not line.strip():
        print("rlm-runner: expected a bootstrap JSON line on stdin", file=sys.stderr)
        return 2
    try:
        boot = Bootstrap.from_line(line)
    except ValueError as error:
        print(f"rlm-runner: bad bootstrap line: {error}", file=sys.stderr)
        return 2
    del line
    contain_process(before_bootstrap=False)
    if boot.relay == "stdio" and boot.relay_socket:
        from rlm.environments.runner.relay import StdioRelay

        relay = StdioRelay.over_stdio(boot.relay_socket)
        relay.start()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too-big files fail with EFBIG, not a kill
    _apply_limits(boot.limits)
    if boot.parent_pid and not forked:  # a forked runner's server set this up before main
        watch_parent(boot.parent_pid)
    os.environ.update(boot.env)
    if boot.workdir:
        if boot.make_workdir:  # a session of a shared sandbox: a directory of its own
            os.makedirs(boot.workdir, mode=0o700, exist_ok=True)
        os.chdir(boot.workdir)
    try:
        runner = Runner(
            boot.address,
            boot.token,
            shell=boot.shell or "python",
            relayed=boot.relay == "stdio",
            # A runner with a relay of its own (not forked) keeps its own connection.
            proxy=SESSION_PROXY if boot.relay is None else None,
        )
    except (ShellUnavailableError, ValueError) as error:
        print(f"rlm-runner: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        del boot  # the token stays in the channel's interceptor only
    try:
        return runner.serve()
    except BaseException:
        # Never linger half-alive (non-daemon gRPC threads would keep the process up).
        if sys.__stderr__ is not None:
            traceback.print_exc(file=sys.__stderr__)
            sys.__stderr__.flush()
        os._exit(4)
    finally:
        if not forked:  # a forked runner ends at once when this returns
            runner.orphan()
