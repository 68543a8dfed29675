"""The relay and file path shared by the cloud adapters, through the local pipe adapter
(``stdio_adapter.py``): big files split under a provider's cap, joined in the sandbox."""

from __future__ import annotations

import os
from typing import Any

import pytest
from stdio_adapter import StdioRelayEnvironment

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


def start(cls: type, broker: Any, handler: Any) -> Any:
    env = cls(broker=broker, handler=handler, label="test")
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
