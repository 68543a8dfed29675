"""Whether the provider stand-ins can run here (keeping the developer's settings away from the
SDKs while one runs is ``rlm_standins.launch``'s job)."""

from __future__ import annotations

import os


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
