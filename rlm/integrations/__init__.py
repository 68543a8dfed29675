"""Our sandboxes inside other frameworks: :mod:`rlm.integrations.dspy` (a DSPy
``CodeInterpreter``) and :mod:`rlm.integrations.verifiers` (a ``verifiers`` Environment).

Each module imports its framework when it is imported itself (never from ``import rlm``) and
says which extra to install when the framework is missing.
"""


def require(module: str, extra: str) -> None:
    """Raise an ImportError saying ``pip install 'rlm[extra]'`` when ``module`` is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"rlm.integrations.{extra} needs the {module!r} package: pip install 'rlm[{extra}]'"
        )
