"""A minimal relayed adapter over a local subprocess: the shape of a cloud adapter, with pipes
for the provider's exec stream and a directory for its file API. It proves the relay and the
file path of big contexts without any provider."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncGenerator

from rlm.environments.relay import RelayedSandboxEnvironment, RemoteProcess


class PipeProcess(RemoteProcess):
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    async def write(self, data: bytes) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(data)
        await self._process.stdin.drain()

    async def output(self) -> AsyncGenerator[bytes, None]:
        assert self._process.stdout is not None
        while data := await self._process.stdout.read(65536):
            yield data

    def exit_code(self) -> int | None:
        return self._process.returncode

    async def kill(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
        # Read what is left: a reader that stopped early (a dropped stream) leaves asyncio's
        # transport paused with a full buffer, and wait() would never see the pipe's end.
        if self._process.stdout is not None:
            while await self._process.stdout.read(1 << 16):
                pass
        await self._process.wait()


class StdioRelayEnvironment(RelayedSandboxEnvironment):
    name = "stdio-relay"
    python = sys.executable

    async def _create_sandbox(self) -> None:
        os.makedirs(self.sandbox_dir, mode=0o700)

    async def _write_file(self, path: str, data: bytes) -> None:
        assert path.startswith(self.sandbox_dir)
        with open(path, "wb") as handle:
            handle.write(data)

    async def _exec(self, argv: list[str]) -> RemoteProcess:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": self.sandbox_dir}
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=self.sandbox_dir,
            env=env,
            start_new_session=True,
        )
        return PipeProcess(process)

    async def _destroy_sandbox(self) -> None:
        shutil.rmtree(self.sandbox_dir, ignore_errors=True)
