"""The relay and file path shared by the cloud adapters, through the local pipe adapter
(``stdio_adapter.py``): big files split under a provider's cap, joined in the sandbox."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from stdio_adapter import PipeProcess, StdioRelayEnvironment

from rlm.broker.loop import run_sync
from rlm.environments.relay import split_sizes, upload_timeout
from rlm.errors import SandboxError

MIB = 1 << 20


class CappedEnvironment(StdioRelayEnvironment):
    """A provider that refuses files above 1 MiB, as Prime does above 16 MiB."""

    max_file_bytes = MIB
    upload_concurrency = 3

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.uploads: list[tuple[str, int]] = []

    async def _write_file(self, path: str, data: bytes) -> None:
        if len(data) > self.max_file_bytes:
            raise SandboxError(f"413: {path} is {len(data)} bytes")
        self.uploads.append((path, len(data)))
        await super()._write_file(path, data)


def start(cls: type, broker: Any, handler: Any, **kwargs: Any) -> Any:
    """A started session with a sandbox and a relay of its own (the runner's own exec stream is
    under test; a tree's shared relay is tested in test_cloud_contract.py)."""
    env = cls(
        broker=broker,
        handler=handler,
        label="test",
        max_output_chars=1_000_000,
        child_sandbox="own",
        **kwargs,
    )
    run_sync(env.start())
    return env


def test_a_context_above_the_file_cap_goes_up_in_parts_and_arrives_whole(broker, handler):
    env = start(CappedEnvironment, broker, handler)
    try:
        context = "".join(chr(ord("a") + i % 26) for i in range(26)) * (140 * 1024) + "END"
        run_sync(env.load_context(context))
        sizes = [size for path, size in env.uploads if ".part" in path]
        assert len(sizes) == 4 and max(sizes) <= MIB and sum(sizes) == len(context)
        code = "import hashlib\nprint(len(context), hashlib.sha256(context.encode()).hexdigest())"
        out = run_sync(env.execute(code)).stdout.split()
        import hashlib

        assert out == [str(len(context)), hashlib.sha256(context.encode()).hexdigest()]
        # The parts were joined and removed; the joined file was consumed by the runner.
        leftovers = [name for name in os.listdir(env.sandbox_dir) if "context" in name]
        assert leftovers == []
    finally:
        run_sync(env.aclose())


def test_a_failed_part_fails_the_load_with_the_providers_message(broker, handler):
    class Refusing(CappedEnvironment):
        async def _write_file(self, path: str, data: bytes) -> None:
            if path.endswith(".part2"):
                raise SandboxError("413 Request Entity Too Large")
            await super()._write_file(path, data)

    env = start(Refusing, broker, handler)
    try:
        with pytest.raises(SandboxError, match="413"):
            run_sync(env.load_context("x" * (3 * MIB)))
        assert run_sync(env.execute("print(1)")).stdout == "1\n"
    finally:
        run_sync(env.aclose())


def test_parts_cover_the_file_under_the_cap():
    assert split_sizes(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert split_sizes(8, 4) == [(0, 4), (4, 8)]
    assert split_sizes(0, 4) == [(0, 0)]
    with pytest.raises(ValueError):
        split_sizes(1, 0)


def test_upload_deadlines_grow_with_the_size():
    # 50 MB at E2B's fixed 60 s would need 0.85 MB/s; the deadline leaves room for 256 KiB/s.
    assert upload_timeout(0) == 30
    assert upload_timeout(50 * MIB) > 50 * MIB / (256 * 1024)


class FaultyPipe(PipeProcess):
    """The exec stream of a provider that misbehaves once, at a byte offset of the output:
    ``corrupt`` flips a byte; ``hole`` loses that many bytes (Prime re-attaching without
    replaying); ``detach`` ends the output stream there and throws away what the runner
    writes until the adapter re-attaches (E2B while nobody is subscribed). ``corrupt_stdin``
    flips a byte of the stdin stream at that offset."""

    def __init__(self, process: Any, faults: dict[str, int], can_reattach: bool) -> None:
        super().__init__(process)
        self.faults = dict(faults)
        self.can_reattach = can_reattach
        self.reattach_calls = 0
        self._read = 0
        self._written = 0
        self._discard = False

    async def write(self, data: bytes) -> None:
        at = self.faults.get("corrupt_stdin")
        if at is not None and self._written <= at < self._written + len(data):
            del self.faults["corrupt_stdin"]
            i = at - self._written
            data = data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1 :]
        self._written += len(data)
        await super().write(data)

    async def output(self) -> AsyncGenerator[bytes, None]:
        async for data in super().output():
            if self._discard:  # bytes written while detached are gone
                self._discard = False
                continue
            start, self._read = self._read, self._read + len(data)
            if (at := self.faults.get("corrupt")) is not None and start <= at < self._read:
                del self.faults["corrupt"]
                i = at - start
                data = data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1 :]
            if (at := self.faults.get("hole")) is not None and start <= at < self._read:
                del self.faults["hole"]
                i = at - start
                data = data[:i] + data[i + 70_000 :]
            if (at := self.faults.get("detach")) is not None and start <= at < self._read:
                del self.faults["detach"]
                yield data[: at - start]
                self._discard = True
                return
            yield data

    async def reattach(self) -> bool:
        self.reattach_calls += 1
        return self.can_reattach


class FaultyEnvironment(StdioRelayEnvironment):
    """The pipe adapter with one fault in its exec stream (``FaultyPipe``)."""

    def __init__(self, *, faults: dict[str, int], can_reattach: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.faults = faults
        self.can_reattach = can_reattach

    async def _exec(self, argv: list[str]) -> Any:
        process = await super()._exec(argv)
        self.process = FaultyPipe(process._process, self.faults, self.can_reattach)
        self.faults = {}  # once: a restarted runner gets a healthy stream
        return self.process


def start_faulty(broker: Any, handler: Any, **kwargs: Any) -> Any:
    return start(FaultyEnvironment, broker, handler, **kwargs)


def big_round_trip(env: Any) -> None:
    """A context and a cell output of several frames each way; both must arrive intact."""
    run_sync(env.load_context("c" * 400_000 + "END"))
    result = run_sync(env.execute("print(len(context), context[-3:])\nprint('r' * 600_000)"))
    assert result.stdout == f"400003 END\n{'r' * 600_000}\n", result.error
    assert not result.restarted
    assert run_sync(env.execute("print('after')")).stdout == "after\n"


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ("corrupt", "checksum mismatch"),
        ("hole", "asking the sandbox to resend"),
        ("corrupt_stdin", None),
        ("detach", "re-attached"),
    ],
)
def test_the_relay_repairs_what_the_transport_breaks(broker, handler, fault, problem):
    env = start_faulty(broker, handler, faults={fault: 300_000})
    try:
        big_round_trip(env)
        assert env.process.faults == {}, "the fault was not triggered"
        relay = env._relay
        if problem is not None:
            assert any(problem in p for p in relay.problems), relay.problems
        assert relay.reattachments == (1 if fault == "detach" else 0)
    finally:
        run_sync(env.aclose())


def test_a_provider_that_cannot_reattach_restarts_the_runner_with_a_note(broker, handler):
    env = start_faulty(broker, handler, faults={"detach": 300_000}, can_reattach=False)
    try:
        run_sync(env.execute("x = 1"))
        result = run_sync(env.execute("print('r' * 600_000)"))
        assert result.restarted and "was restarted" in result.error
        assert run_sync(env.execute("print('back')")).stdout == "back\n"
    finally:
        run_sync(env.aclose())


def test_fd_output_of_a_cell_is_the_cells_and_grpc_log_lines_are_not(broker, handler):
    """What a cell's subprocesses and forks write to fds 1 and 2 is its output (with the relay,
    nothing else may reach the runner's stdout); gRPC's own log line about the fork is not."""
    env = start(StdioRelayEnvironment, broker, handler)
    try:
        code = (
            "import os, subprocess\n"
            "_ = subprocess.run(['sh', '-c', 'echo out; echo err >&2; printf tail >&2'])\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.write(1, b'from the child\\n')\n"
            "    os._exit(0)\n"
            "_ = os.waitpid(pid, 0)\n"
        )
        result = run_sync(env.execute(code))
        assert result.stdout == "out\nfrom the child\n"
        assert result.stderr == "err\ntail"
    finally:
        run_sync(env.aclose())


def test_the_stderr_tail_keeps_the_last_bytes_and_no_more():
    from rlm.environments.relay import OutputTail

    tail = OutputTail(limit=100)
    for i in range(1000):
        tail.add(f"line {i}\n" if i % 2 else f"line {i}\n".encode())
    text = tail.text()
    assert len(text) == 100 and text.endswith("line 999\n")
    assert sum(len(piece) for piece in tail._pieces) < 2 * 100  # bounded, not the whole stream
    broken = OutputTail(limit=10)
    broken.add(b"\xff\xfe ok")
    assert broken.text().endswith(" ok")
