"""Keeping the developer's provider settings away from the SDKs while a stand-in runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def hermetic_environ(
    prefix: str, *, names: tuple[str, ...] = (), values: Mapping[str, str] | None = None
) -> Iterator[None]:
    """Hides every variable starting with ``prefix`` (and those in ``names``), sets ``values``,
    and puts the caller's variables back afterwards, so that a stand-in run can never reach (or
    bill) the real provider and none of its settings leak out."""

    def ours(name: str) -> bool:
        return name.startswith(prefix) or name in names

    saved = {k: v for k, v in os.environ.items() if ours(k)}
    for name in saved:
        del os.environ[name]
    os.environ.update(values or {})
    try:
        yield
    finally:
        for name in [k for k in os.environ if ours(k)]:
            del os.environ[name]
        os.environ.update(saved)


def standins_missing() -> str | None:
    """Why the provider stand-ins cannot run here (they are the ``rlm-standins`` distribution in
    ``standins/``, not part of the rlm wheel), or None. Under ``RLM_REQUIRE_STANDINS=1`` (set by
    .ci/run) their absence is an error instead of a reason to skip."""
    import importlib.util

    if importlib.util.find_spec("rlm_standins") is not None:
        return None
    reason = "the provider stand-ins are not installed: pip install -e ./standins"
    if os.environ.get("RLM_REQUIRE_STANDINS") == "1":
        raise RuntimeError(reason)
    return reason
