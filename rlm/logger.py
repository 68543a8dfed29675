"""``RLMLogger``: a run's trajectory (configuration + iterations), in memory and optionally as JSONL.

The file has the reference ``rlms`` package's layout, so its visualizer opens our logs: one
``{"type": "metadata", ...}`` line (``RLMMetadata``), then one ``{"type": "iteration", ...}`` line
per iteration (``RLMIteration``: prompt, response, code blocks with their results and nested
sub-calls, final answer). What we record beyond that (sub-call kinds and costs, child runs' own
trajectories, sandbox restarts, run ids) rides along in extra keys that the reference ignores.
``rlm view`` renders these files, ours and the reference's.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from datetime import datetime
from typing import Any

from rlm.types import RLMIteration, RLMMetadata

__all__ = [
    "RLMLogger",
    "iteration_entry",
]  # and VerbosePrinter, imported on first use (it needs rich)


MAX_LOG_BYTES = 1024 * 1024 * 1024
"""What one log file may grow to (1 GiB). The entry that would pass it is replaced by a single
``{"type": "log_truncated", ...}`` line and nothing more is written; the trajectory in memory
(``get_trajectory()``, the completion's ``metadata``) is kept whole."""

_log = logging.getLogger(__name__)


def iteration_entry(number: int, iteration: RLMIteration) -> dict[str, Any]:
    """One iteration as a log line: ``type``, ``iteration`` (1-based), ``timestamp`` + its dict."""
    return {
        "type": "iteration",
        "iteration": number,
        "timestamp": datetime.now().isoformat(),
        **iteration.to_dict(),
    }


def _json_line(entry: dict[str, Any]) -> bytes:
    """``entry`` as one UTF-8 JSON line. Text from a model or a sandbox can hold lone surrogates
    (which UTF-8 cannot encode): such a line is written with ASCII escapes instead."""
    try:
        return (json.dumps(entry, ensure_ascii=False, default=repr) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(entry, default=repr) + "\n").encode("ascii")


class RLMLogger:
    """Captures the trajectory of each completion; with ``log_dir`` also appends it to
    ``<log_dir>/<file_name>_<YYYY-mm-dd_HH-MM-SS>_<8 hex>.jsonl``.

    Without ``log_dir`` nothing touches the disk: ``get_trajectory()`` (and the completion's
    ``metadata``) hold the same data.
    """

    def __init__(
        self, log_dir: str | None = None, file_name: str = "rlm", max_bytes: int = MAX_LOG_BYTES
    ) -> None:
        self.log_dir = log_dir
        self.max_bytes = max_bytes
        self.log_file_path: str | None = None
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            self.log_file_path = os.path.join(
                log_dir, f"{file_name}_{stamp}_{uuid.uuid4().hex[:8]}.jsonl"
            )
        self._lock = threading.Lock()
        self._file: Any = None
        self._written = 0
        self._truncated = False
        self._run_metadata: dict[str, Any] | None = None
        self._iterations: list[dict[str, Any]] = []

    def log_metadata(self, metadata: RLMMetadata) -> None:
        """Records the run's configuration (once per logger, as the first line of the file)."""
        with self._lock:
            if self._run_metadata is not None:
                return
            self._run_metadata = metadata.to_dict()
            self._write(
                {"type": "metadata", "timestamp": datetime.now().isoformat(), **self._run_metadata}
            )

    def log(self, iteration: RLMIteration) -> dict[str, Any]:
        """Records one iteration; returns its entry (what ``get_trajectory`` lists)."""
        with self._lock:
            entry = iteration_entry(len(self._iterations) + 1, iteration)
            self._iterations.append(entry)
            self._write(entry)
            return entry

    def clear_iterations(self) -> None:
        """Starts the next completion's trajectory (the file keeps every completion)."""
        with self._lock:
            self._iterations = []

    def get_trajectory(self) -> dict[str, Any] | None:
        """``{"run_metadata", "iterations"}`` of the current completion, or None before any."""
        with self._lock:
            if self._run_metadata is None:
                return None
            return {"run_metadata": self._run_metadata, "iterations": list(self._iterations)}

    @property
    def iteration_count(self) -> int:
        return len(self._iterations)

    def _write(self, entry: dict[str, Any]) -> None:
        if self.log_file_path is None or self._truncated:
            return
        line = _json_line(entry)
        if self._written + len(line) > self.max_bytes:
            self._truncated = True
            _log.warning(
                "log %s reached its size limit of %d bytes; later entries are not written "
                "(RLMLogger(max_bytes=...) raises it)",
                self.log_file_path,
                self.max_bytes,
            )
            line = _json_line(
                {
                    "type": "log_truncated",
                    "timestamp": datetime.now().isoformat(),
                    "max_bytes": self.max_bytes,
                    "reason": f"the next entry ({len(line):,} bytes) would pass the log's limit",
                }
            )
        if self._file is None or self._file.closed:
            self._file = open(self.log_file_path, "ab")  # noqa: SIM115
        self._file.write(line)
        self._file.flush()
        self._written += len(line)

    def close(self) -> None:
        """Closes the file (a later entry reopens it)."""
        with self._lock:
            if self._file is not None:
                self._file.close()

    @staticmethod
    def read(path: str) -> list[dict[str, Any]]:
        """Every entry of a log file, in order."""
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]


def __getattr__(name: str) -> Any:
    if name == "VerbosePrinter":  # rich is imported only when the trace is wanted
        from rlm.progress import VerbosePrinter

        return VerbosePrinter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
