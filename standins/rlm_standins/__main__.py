"""``python -m rlm_standins NAME [KEY=VALUE ...]``: one provider's stand-in in this interpreter.

For a process that cannot import the provider's SDK (it lives in a venv of its own): prints one
JSON line, ``{"kwargs": ..., "hermetic": {"prefix", "names", "values"}}`` (the adapter's
``environment_kwargs`` and the environment its SDK must see), then answers each ``creates`` line
on stdin with the number of sandboxes created so far. At end of input (or on SIGTERM) it stops
the stand-in, killing every sandbox, and exits.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys

from .launch import launch


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    name, options = argv[0], dict(arg.split("=", 1) for arg in argv[1:])
    # SIGTERM unwinds like end of input: the stand-in's sandboxes are killed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with launch(name, **{k: _value(v) for k, v in options.items()}) as launched:
        facts = {"kwargs": launched.kwargs, "hermetic": dataclasses.asdict(launched.hermetic)}
        print(json.dumps(facts), flush=True)
        for line in sys.stdin:
            if line.strip() == "creates":
                print(launched.sandbox_creates(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
