"""``RLMLogger``: one JSONL file per RLM instance with every event of every run."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from typing import Any

from rlm.events import RLMEvent


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


class RLMLogger:
    """Writes trajectories as JSON lines: ``<log_dir>/<file_name>_<time>_<id>.jsonl``.

    Each line is one event (see ``rlm.events.EVENT_KINDS``); child runs carry their
    ``parent_run_id``, so the whole tree can be rebuilt from one file.
    """

    def __init__(self, log_dir: str = "logs", file_name: str = "rlm") -> None:
        os.makedirs(log_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_file_path = os.path.join(
            log_dir, f"{file_name}_{stamp}_{uuid.uuid4().hex[:8]}.jsonl"
        )
        self._lock = threading.Lock()
        self._file = open(self.log_file_path, "a", encoding="utf-8")  # noqa: SIM115

    def __call__(self, event: RLMEvent) -> None:
        line = json.dumps(_jsonable(event.to_dict()), ensure_ascii=False)
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    @staticmethod
    def read(path: str) -> list[dict[str, Any]]:
        """All events of a log file, in order."""
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
