"""The bootstrap line: the first thing a runner reads, one JSON object on its stdin.

One definition for both sides (standard library only: it ships inside the runner's zipapp). The
host builds a :class:`Bootstrap` and sends :meth:`Bootstrap.to_line`; the runner (and the fork
server inside a shared sandbox) reads it with :meth:`Bootstrap.from_line`, which refuses unknown
fields and wrong types instead of guessing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

#: The JSON types each field may have (None allowed where the default is None).
_TYPES: dict[str, tuple[type, ...]] = {
    "address": (str,),
    "token": (str,),
    "shell": (str,),
    "limits": (dict,),
    "env": (dict,),
    "workdir": (str,),
    "make_workdir": (bool,),
    "parent_pid": (int,),
    "relay": (str,),
    "relay_socket": (str,),
}


@dataclass(frozen=True)
class Bootstrap:
    """What one runner needs to serve one session."""

    address: str
    """Where the broker listens, as gRPC dials it (``unix:/path`` or ``host:port``)."""
    token: str = field(repr=False)
    """The session's token: kept by the runner only in its channel's interceptor."""
    shell: str = "python"
    """How cells run: ``python`` (exec of the parsed cell) or ``ipython``."""
    limits: dict[str, int] = field(default_factory=dict)
    """Self-imposed rlimits: ``memory_bytes``, ``file_bytes``."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to the runner's environment (``HOME``, ``TMPDIR``...)."""
    workdir: str | None = None
    """The working directory of the session."""
    make_workdir: bool = False
    """Create ``workdir`` first (a session of a shared sandbox; removed when its runner ends)."""
    parent_pid: int | None = None
    """A process whose end ends the runner (the local host)."""
    relay: str | None = None
    """``"stdio"``: the runner's gRPC connection rides its stdin/stdout (cloud sandboxes)."""
    relay_socket: str | None = None
    """With the stdio relay: the unix socket inside the sandbox that the runner dials."""

    def to_line(self) -> bytes:
        """The line the host writes to the runner's stdin."""
        return json.dumps(dataclasses.asdict(self)).encode() + b"\n"

    @classmethod
    def from_line(cls, line: str | bytes) -> Bootstrap:
        """The bootstrap in ``line``; ``ValueError`` saying what is wrong with it."""
        data: Any = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("the bootstrap line is not a JSON object")
        unknown = sorted(set(data) - set(_TYPES))
        if unknown:
            raise ValueError(f"unknown bootstrap fields: {', '.join(unknown)}")
        for name, value in data.items():
            if value is None and name not in ("address", "token"):
                continue
            if not isinstance(value, _TYPES[name]) or (
                isinstance(value, bool) and bool not in _TYPES[name]
            ):
                raise ValueError(f"bootstrap field {name!r} has the wrong type")
        for name, kind in (("limits", int), ("env", str)):
            entries = (data.get(name) or {}).items()
            if any(not isinstance(k, str) or type(v) is not kind for k, v in entries):
                raise ValueError(f"bootstrap field {name!r} maps names to {kind.__name__}s")
        try:
            return cls(**data)
        except TypeError as error:  # a required field is missing
            raise ValueError(f"incomplete bootstrap: {error}") from None
