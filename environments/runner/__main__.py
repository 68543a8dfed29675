"""Entry point: ``python runner.pyz`` (or ``python -m rlm.environments.runner``) inside a sandbox."""

from rlm.environments.runner.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
