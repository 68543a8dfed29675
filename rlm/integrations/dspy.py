"""DSPy's ``CodeInterpreter`` protocol on rlm's sandboxes, for ``dspy.RLM`` and friends.

    import dspy
    from rlm.integrations.dspy import SandboxInterpreter

    rlm_module = dspy.RLM(
        "context, question -> answer",
        interpreter_factory=lambda: SandboxInterpreter(environment="docker"),
    )
    # or for every module: dspy.configure(interpreter_factory=SandboxInterpreter.factory("docker"))

Each interpreter is one :class:`rlm.Sandbox`: the code runs in rlm's runner (a separate process
for ``local``, a locked-down container for ``docker``, a cloud sandbox for the others), DSPy's
tools (``llm_query``, the user's tools, its facade) run on the host with JSON arguments, and
``SUBMIT(...)`` ends a cell with :class:`dspy.primitives.code_interpreter.FinalOutput`. Errors
follow the protocol: the code's own errors are :class:`CodeExecutionError` (recoverable,
shown to the model), a syntax error is a :class:`SyntaxError`, and a sandbox that died, was
restarted or spent its budget is a terminal :class:`CodeInterpreterError`.
"""

from __future__ import annotations

import json
import keyword
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from rlm.integrations import require

require("dspy", "dspy")

from dspy.primitives.code_interpreter import (  # noqa: E402
    CodeExecutionError,
    CodeInterpreterError,
    FinalOutput,
)

from rlm.environments.base import CellResult  # noqa: E402
from rlm.errors import ConfigurationError, SandboxError  # noqa: E402
from rlm.sandbox import Sandbox, SandboxPool  # noqa: E402

__all__ = ["InterpreterFactory", "SandboxInterpreter"]

#: marks the answer that SUBMIT leaves, so that no other value of ``answer`` is taken for it
SUBMIT_MARK = "__rlm_dspy_submit__"

# Installed by a hidden cell when the sandbox starts. SUBMIT checks the fields, leaves them in
# ``answer`` (which the runner reports after every cell) and stops the cell; the host puts the
# code's own ``answer`` back afterwards.
_PRELUDE = """
class _RLMSubmitted(BaseException):
    "Raised by SUBMIT to end the cell: the values are in the cell's answer."


def SUBMIT(*args, **kwargs):
    "Submit the final output: SUBMIT(field=value, ...) or SUBMIT(value, ...) in field order."
    import json as _json

    names = globals().get("_rlm_dspy_fields")
    if names is None:
        if len(args) != 1 or kwargs:
            raise TypeError("SUBMIT requires one output value")
        values = {"output": args[0]}
    else:
        if args and kwargs:
            raise TypeError("SUBMIT accepts positional or keyword values, not both")
        values = dict(zip(names, args)) if args else dict(kwargs)
        if set(values) != set(names) or len(args) > len(names):
            raise TypeError("SUBMIT takes exactly these fields: " + ", ".join(names))
    content = _json.dumps({@MARK@: values}, default=repr)
    globals()["_rlm_dspy_saved_answer"] = globals().get("answer")
    globals()["answer"] = {"content": content, "ready": True}
    raise _RLMSubmitted()


def _rlm_dspy_restore_answer():
    saved = globals().pop("_rlm_dspy_saved_answer", None)
    globals()["answer"] = saved if saved is not None else {"content": "", "ready": False}
""".replace("@MARK@", repr(SUBMIT_MARK))

#: how the code runs, for DSPy's action prompt (DSPy reads it from the interpreter factory)
EXECUTION_INSTRUCTIONS = (
    "Code runs as Python in an isolated rlm sandbox (a separate process or container): a "
    "persistent interpreter, so variables, imports and functions persist across steps. Host "
    "tools and SUBMIT are global functions; their arguments and results must be "
    "JSON-compatible. The value of a final bare expression is printed."
)
_OWN_NAMES = frozenset({"SUBMIT", "__builtins__", "_rlm_dspy_fields"})
_SYNTAX_ERRORS = ("SyntaxError", "IndentationError", "TabError")


def _is_name(name: object) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


class SandboxInterpreter:
    """A DSPy ``CodeInterpreter`` whose code runs in one of rlm's sandboxes.

    ``environment`` is any rlm environment name (``"local"``, ``"docker"``, ``"modal"``...);
    other keywords go to that environment (``cell_timeout``, ``memory_mb``, ``image``...).
    ``tools`` and ``output_fields`` are as in DSPy's interpreters; DSPy's RLM fills both.
    ``start()`` pre-warms (DSPy's pooling: start several, then hand out ``execute`` calls);
    ``pool`` puts the interpreter on a :class:`rlm.SandboxPool` (shared broker, warm runners),
    as :meth:`factory` does.
    """

    execution_instructions: ClassVar[str] = EXECUTION_INSTRUCTIONS

    def __init__(
        self,
        environment: str = "local",
        *,
        tools: dict[str, Callable[..., Any]] | None = None,
        output_fields: list[dict[str, Any]] | None = None,
        pool: SandboxPool | None = None,
        **environment_kwargs: Any,
    ) -> None:
        self.environment = environment
        if pool is not None:
            if environment_kwargs or environment != pool.environment_name:
                raise ConfigurationError(
                    "with pool=, the environment and its keywords come from the pool: "
                    f"pass them to SandboxPool({pool.environment_name!r}, ...) instead"
                )
            self._sandbox = pool.sandbox(tools=dict(tools or {}), label="dspy interpreter")
        else:
            self._sandbox = Sandbox(
                environment,
                tools=dict(tools or {}),
                label="dspy interpreter",
                **environment_kwargs,
            )
        self.output_fields = output_fields
        self._lock = threading.Lock()
        self._ended = False
        self._installed = False
        self._sent_fields: object = ()

    @classmethod
    def factory(
        cls, environment: str = "local", *, pool_size: int = 0, **environment_kwargs: Any
    ) -> InterpreterFactory:
        """A zero-argument factory for ``interpreter_factory=`` / ``dspy.configure`` whose
        interpreters share one broker and, with ``pool_size=N``, N runners started ahead."""
        if pool_size:
            environment_kwargs["pool_size"] = pool_size
        return InterpreterFactory(SandboxPool(environment, **environment_kwargs))

    @property
    def tools(self) -> dict[str, Callable[..., Any]]:
        """Host functions the code can call by name (mutable; sent before the next cell)."""
        return self._sandbox.tools

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Creates the sandbox (idempotent); after ``shutdown`` it is an error."""
        if self._ended:
            raise CodeInterpreterError(
                "this SandboxInterpreter was shut down; create a new one for a new session"
            )
        try:
            self._sandbox.start()
            if not self._installed:
                self._check(self._sandbox.execute(_PRELUDE), "installing SUBMIT")
                self._installed = True
        except (SandboxError, ConfigurationError) as error:
            self._terminal(f"the {self.environment} sandbox failed to start: {error}", error)

    def shutdown(self) -> None:
        """Destroys the sandbox; the interpreter cannot be used again."""
        self._ended = True
        self._sandbox.close()

    def __enter__(self) -> SandboxInterpreter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __call__(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        return self.execute(code, variables)

    def _terminal(self, message: str, cause: BaseException | None = None) -> None:
        self.shutdown()
        raise CodeInterpreterError(message) from cause

    def _check(self, cell: CellResult, what: str) -> None:
        if cell.error:
            self._terminal(f"the sandbox failed while {what}: {cell.error}")

    # ---- running code ----------------------------------------------------------------------

    def _validate(self, code: object, variables: object) -> dict[str, Any]:
        if not isinstance(code, str):
            raise CodeInterpreterError("code must be a string")
        if variables is None:
            return {}
        if not isinstance(variables, dict):
            raise CodeInterpreterError("variables must be a dict of names to values")
        invalid = [
            name
            for name in variables
            if not _is_name(name) or name in _OWN_NAMES or name in self.tools
        ]
        if invalid:
            raise CodeInterpreterError(
                "variable names must be Python identifiers other than SUBMIT and the tool names; "
                f"invalid: {invalid!r}"
            )
        bad_tools = [name for name in self.tools if not _is_name(name) or name in _OWN_NAMES]
        if bad_tools:
            raise CodeInterpreterError(f"invalid tool names: {bad_tools!r}")
        return variables

    def _field_names(self) -> list[str] | None:
        if self.output_fields is None:
            return None
        names = [
            field.get("name") if isinstance(field, dict) else None for field in self.output_fields
        ]
        if not all(_is_name(name) for name in names) or len(set(names)) != len(names):
            raise CodeInterpreterError("output field names must be unique Python identifiers")
        return [str(name) for name in names]

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        """Runs ``code`` with ``variables`` bound first. Returns :class:`FinalOutput` after
        ``SUBMIT(...)``, else what the cell printed (None when nothing)."""
        if not self._lock.acquire(blocking=False):
            raise CodeInterpreterError("this SandboxInterpreter is already running a cell")
        try:
            values = dict(self._validate(code, variables))
            names = self._field_names()
            self.start()
            if names != self._sent_fields:
                values["_rlm_dspy_fields"] = names
            try:
                if values:
                    self._sandbox.set_variables(values)
                    self._sent_fields = names
                cell = self._sandbox.execute(code)
            except (SandboxError, ConfigurationError) as error:
                self._terminal(f"the {self.environment} sandbox failed: {error}", error)
            return self._outcome(cell)
        finally:
            self._lock.release()

    def _outcome(self, cell: CellResult) -> Any:
        if cell.answer_ready:
            submitted = _submitted(cell.answer_content)
            if submitted is not None:
                self._check(self._sandbox.execute("_rlm_dspy_restore_answer()"), "after SUBMIT")
                return FinalOutput(submitted)
        if cell.restarted or cell.fatal:
            self._terminal(
                f"the {self.environment} sandbox can no longer run this session: {cell.error}"
            )
        output = cell.stdout
        if cell.stderr:
            output = f"{output}{cell.stderr}"
        if cell.error:
            last = cell.error.strip().splitlines()[-1] if cell.error.strip() else ""
            if last.startswith(_SYNTAX_ERRORS) and not cell.stdout:
                raise SyntaxError(cell.error)
            raise CodeExecutionError(f"{output}{cell.error}" if output else cell.error)
        return output or None


class InterpreterFactory:
    """Makes :class:`SandboxInterpreter` s on one :class:`rlm.SandboxPool` (DSPy may call it
    concurrently). ``close()`` ends the pool and any interpreter still open."""

    execution_instructions: ClassVar[str] = EXECUTION_INSTRUCTIONS

    def __init__(self, pool: SandboxPool) -> None:
        self.pool = pool

    def __call__(self) -> SandboxInterpreter:
        return SandboxInterpreter(self.pool.environment_name, pool=self.pool)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> InterpreterFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _submitted(content: str) -> dict[str, Any] | None:
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if (
        isinstance(data, dict)
        and set(data) == {SUBMIT_MARK}
        and isinstance(data[SUBMIT_MARK], dict)
    ):
        return data[SUBMIT_MARK]
    return None
