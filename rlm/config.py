"""Settings for ``rlm run`` and ``rlm serve``: CLI flag > env var > config file > default.

The config file is TOML, found at ``$RLM_CONFIG``, else ``./rlm.toml``, else
``$XDG_CONFIG_HOME/rlm/config.toml`` (``~/.config/rlm/config.toml``); only the first one found is
read. Every key is optional; moving to Docker is one line::

    environment = "docker"
    model = "gpt-4o-mini"
    max_depth = 2
    max_budget = 1.0            # US dollars, whole tree
    price_per_million = [0.15, 0.6]   # input, output USD for a model the price table lacks

    [backend_kwargs]            # passed to the LM client as is
    timeout = 120

    [environment_kwargs]        # passed to the sandbox, checked against what it accepts
    mem_limit = "2g"

Each top-level key also reads from an env var: ``RLM_`` + the key in upper case (``RLM_MODEL``,
``RLM_ENVIRONMENT``, ``RLM_MAX_DEPTH``, ...). Unknown keys are an error, so a typo cannot silently
leave a user on the local sandbox when they meant Docker; so are ``environment_kwargs`` the
chosen environment does not accept (``check_environment_kwargs``), before anything starts.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rlm.errors import ConfigurationError

__all__ = [
    "DEFAULT_MAX_ERRORS",
    "DEFAULT_MODEL",
    "Settings",
    "check_environment_kwargs",
    "find_config_file",
    "load_settings",
    "parse_price",
    "request_limits",
]

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_MAX_ERRORS = 5
"""Failing iterations in a row after which ``rlm run`` stops: a model that cannot write working
code for five iterations will not start at the twenty-sixth, and each one costs a call."""


def _option(
    default: Any,
    kind: type,
    help: str,
    *,
    request: str | None = None,
    short: str | None = None,
) -> Any:
    """A setting: its type (``tuple`` for a price), its help text, and, where a request to
    ``rlm serve`` may lower it, the request field that does. Its flag (``--max-depth``), env var
    (``RLM_MAX_DEPTH``) and config-file key (``max_depth``) follow from its name: every layer is
    derived from this one declaration."""
    metadata = {"kind": kind, "help": help, "request": request, "short": short}
    return field(default=default, metadata=metadata)


@dataclass
class Settings:
    """Everything needed to build an ``RLM``; ``sources`` says where each value came from.

    The fields declared with ``_option`` are the options schema: the config file's keys, the
    ``RLM_*`` env vars, the flags of ``rlm run`` / ``rlm serve`` and the limits a ``rlm serve``
    request may lower (``request_limits``) all come from it."""

    backend: str = _option(
        "openai", str, "LM backend: openai, openrouter, vllm, ollama, lmstudio, vercel, "
        "anthropic, gemini, local (default openai; local, the offline SmolLM2 model, when it is "
        "installed and there is no key and no --base-url)",
    )  # fmt: skip
    model: str = _option(DEFAULT_MODEL, str, f"model name (default {DEFAULT_MODEL})")
    base_url: str | None = _option(
        None, str, "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1"
    )
    api_key: str | None = _option(
        None, str, "LM API key (prefer the provider's env var, e.g. OPENAI_API_KEY)"
    )
    sub_model: str | None = _option(
        None, str, "model for llm_query/rlm_query calls (default: --model)"
    )
    environment: str = _option(
        "local", str, "where the generated code runs: local, docker, ... (default local)",
        short="-e",
    )  # fmt: skip
    max_depth: int = _option(
        1, int, "recursion depth (1 = no child RLMs; default 1)", request="max_depth"
    )
    max_iterations: int = _option(30, int, "root iterations (default 30)", request="max_iterations")
    max_budget: float | None = _option(
        None, float, "stop after spending this many US dollars", request="max_budget"
    )
    max_timeout: float | None = _option(
        None, float, "stop after this many seconds", request="max_timeout"
    )
    max_tokens: int | None = _option(
        None, int, "stop after this many tokens (whole tree)", request="max_tree_tokens"
    )
    max_errors: int | None = _option(
        DEFAULT_MAX_ERRORS, int, "stop after this many failing iterations in a row "
        f"(default {DEFAULT_MAX_ERRORS})", request="max_errors",
    )  # fmt: skip
    price_per_million: tuple[float, float] | str | None = _option(
        None, tuple, "IN,OUT: US dollars per million input and output tokens, for a model the "
        "price table lacks (needed by --max-budget); or 'reported' for an endpoint that reports "
        "each call's usage.cost",
    )  # fmt: skip
    """(input, output) USD per million tokens, or ``"reported"``: the endpoint's usage.cost."""
    cell_timeout: float = _option(120.0, float, "seconds per code block (default 120)")
    log_dir: str | None = _option(None, str, "write JSONL trajectories to this directory")
    backend_kwargs: dict[str, Any] = field(default_factory=dict)
    environment_kwargs: dict[str, Any] = field(default_factory=dict)
    config_file: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Refuses ``environment_kwargs`` the environment does not take, naming where each came
        from, so a typo fails before any sandbox or model is started."""
        for origin_kind, origin in (("cli", "--environment-kwarg"), ("file", "")):
            keys = {
                key: value
                for key, value in self.environment_kwargs.items()
                if self.sources.get(f"environment_kwargs.{key}", "").startswith(origin_kind)
            }
            where = origin or f"{self.config_file} [environment_kwargs]"
            check_environment_kwargs(self.environment, keys, where)

    def rlm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``RLM(...)`` (all but ``logger``, ``verbose`` and ``on_event``)."""
        backend_kwargs: dict[str, Any] = {**self.backend_kwargs, "model_name": self.model}
        if self.price_per_million == "reported":
            backend_kwargs["reports_cost"] = True
        elif self.price_per_million is not None:
            backend_kwargs["price_per_million"] = self.price_per_million
        if self.base_url:
            backend_kwargs["base_url"] = self.base_url
        if self.api_key:
            backend_kwargs["api_key"] = self.api_key
        others: list[str] = []
        other_kwargs: list[dict[str, Any]] = []
        if self.sub_model:
            others = [self.backend]
            other_kwargs = [{**backend_kwargs, "model_name": self.sub_model}]
        return {
            "backend": self.backend,
            "backend_kwargs": backend_kwargs,
            "environment": self.environment,
            "environment_kwargs": {"cell_timeout": self.cell_timeout, **self.environment_kwargs},
            "max_depth": self.max_depth,
            "max_iterations": self.max_iterations,
            "max_budget": self.max_budget,
            "max_timeout": self.max_timeout,
            "max_tokens": self.max_tokens,
            "max_errors": self.max_errors,
            "other_backends": others,
            "other_backend_kwargs": other_kwargs,
        }


_TABLES = ("backend_kwargs", "environment_kwargs")
_OPTIONS = [f for f in fields(Settings) if "kind" in f.metadata]
_SCALARS: dict[str, type] = {f.name: f.metadata["kind"] for f in _OPTIONS}
"""Top-level key -> the type its value must have (None is allowed where the default is None)."""


def request_limits() -> dict[str, tuple[str, type]]:
    """The limits a ``rlm serve`` request may lower: request field -> (setting, type)."""
    return {
        f.metadata["request"]: (f.name, f.metadata["kind"])
        for f in _OPTIONS
        if f.metadata["request"]
    }


def find_config_file(
    env: Mapping[str, str] | None = None, cwd: str | Path | None = None
) -> Path | None:
    """The config file to read: ``$RLM_CONFIG`` (which must exist), ``./rlm.toml`` or the user's."""
    env = os.environ if env is None else env
    explicit = env.get("RLM_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigurationError(f"RLM_CONFIG={explicit!r} is not a file; fix or unset it")
        return path
    local = Path(cwd or os.getcwd()) / "rlm.toml"
    if local.is_file():
        return local
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
    user = Path(base).expanduser() / "rlm" / "config.toml"
    return user if user.is_file() else None


def _coerce(key: str, value: Any, origin: str) -> Any:
    """``value`` as the type of ``key``; ``origin`` names where it came from, for the error."""
    wanted = _SCALARS[key]
    if wanted is tuple:
        return parse_price(value, origin)
    if isinstance(value, str) and wanted is not str:
        try:
            return wanted(value.strip())
        except ValueError:
            raise ConfigurationError(
                f"{origin}: {key} must be a{'n' if wanted is int else ''} {wanted.__name__}, "
                f"got {value!r}"
            ) from None
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, wanted) or isinstance(value, bool):
        raise ConfigurationError(
            f"{origin}: {key} must be a {wanted.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def parse_price(value: Any, origin: str = "--price-per-million") -> tuple[float, float] | str:
    """``"0.15,0.6"`` or ``[0.15, 0.6]``: US dollars per million input and output tokens; or
    ``"reported"``: each call's cost as the endpoint reports it (``usage.cost``)."""
    if isinstance(value, str) and value.strip().lower() == "reported":
        return "reported"
    parts = value.split(",") if isinstance(value, str) else value
    try:
        if isinstance(parts, (str, bytes)) or len(parts) != 2:
            raise ValueError
        price = (float(parts[0]), float(parts[1]))
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{origin}: give the price as IN,OUT (US dollars per million input and output "
            f"tokens, e.g. 0.15,0.6) or 'reported' (the endpoint reports usage.cost), "
            f"got {value!r}"
        ) from None
    if not all(math.isfinite(p) and p >= 0 for p in price):
        raise ConfigurationError(f"{origin}: prices must be finite and >= 0, got {value!r}")
    return price


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{path} is not valid TOML: {error}") from error
    unknown = sorted(set(data) - set(_SCALARS) - set(_TABLES))
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join([*_SCALARS, *_TABLES])}"
        )
    for table in _TABLES:
        if table in data and not isinstance(data[table], dict):
            raise ConfigurationError(f"{path}: {table} must be a table ([{table}])")
    return data


def load_settings(
    cli: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Merges the layers: ``cli`` (values that are None count as not given) > ``RLM_*`` env vars >
    the config file (``config_file``, else ``find_config_file``) > the defaults of ``Settings``."""
    env = os.environ if env is None else env
    cli = cli or {}
    path = Path(config_file) if config_file else find_config_file(env, cwd)
    file_data = _read_file(path) if path else {}
    settings = Settings(config_file=str(path) if path else None)
    for key in _SCALARS:
        env_name = f"RLM_{key.upper()}"
        if cli.get(key) is not None:
            value, source = _coerce(key, cli[key], f"--{key.replace('_', '-')}"), "cli"
        elif env.get(env_name, "").strip():
            value, source = _coerce(key, env[env_name], env_name), f"env {env_name}"
        elif key in file_data:
            value, source = _coerce(key, file_data[key], str(path)), f"file {path}"
        else:
            continue
        setattr(settings, key, value)
        settings.sources[key] = source
    for table in _TABLES:
        from_file, from_cli = file_data.get(table, {}), cli.get(table) or {}
        setattr(settings, table, {**from_file, **from_cli})
        for key in from_file:
            settings.sources[f"{table}.{key}"] = f"file {path}"
        for key in from_cli:
            settings.sources[f"{table}.{key}"] = "cli"
    _choose_default_backend(settings, env)
    return settings


def _choose_default_backend(settings: Settings, env: Mapping[str, str]) -> None:
    """With no backend chosen anywhere: the offline model when there is no key and no endpoint
    (so ``rlm run`` works on a fresh machine), else OpenAI-compatible."""
    from rlm.broker.clients.local_llama import DEFAULT_MODEL as LOCAL_MODEL
    from rlm.broker.clients.local_llama import local_model_available

    if "backend" not in settings.sources:
        has_endpoint = settings.base_url or settings.api_key or env.get("OPENAI_API_KEY")
        if not has_endpoint and local_model_available():
            settings.backend = "local"
            settings.sources["backend"] = "default (no key, no --base-url: offline model)"
    if settings.backend == "local" and "model" not in settings.sources:
        settings.model = LOCAL_MODEL
        settings.sources["model"] = "default for the local backend"


def add_settings_arguments(parser: Any, *, api_key_flag: str = "--api-key") -> None:
    """Adds ``--config`` and one flag per setting to an argparse parser; every default is None so
    that ``settings_from_args`` can tell a flag that was given from one that was not."""
    parser.add_argument("--config", help="TOML config file (default: $RLM_CONFIG, ./rlm.toml, "
                        "~/.config/rlm/config.toml)")  # fmt: skip
    for option in _OPTIONS:
        key = option.name
        flag = api_key_flag if key == "api_key" else f"--{key.replace('_', '-')}"
        short = [option.metadata["short"]] if option.metadata["short"] else []
        kind = str if option.metadata["kind"] is tuple else option.metadata["kind"]
        parser.add_argument(
            flag, *short, dest=key, type=kind, default=None,
            help=f"{option.metadata['help']} [env RLM_{key.upper()}]",
        )  # fmt: skip
    parser.add_argument(
        "--environment-kwarg", "--environment-kwargs", dest="environment_kwargs",
        action="append", default=None, metavar="KEY=VALUE",
        help="an option of the environment, e.g. mem_limit=4g or runtime=runsc for docker "
        "(repeat for more; VALUE is read as JSON when it parses, else as a string)",
    )  # fmt: skip


def settings_from_args(args: Any) -> Settings:
    """``load_settings`` with the flags added by ``add_settings_arguments``."""
    values: dict[str, Any] = {key: getattr(args, key, None) for key in _SCALARS}
    values["environment_kwargs"] = parse_key_values(getattr(args, "environment_kwargs", None))
    return load_settings(values, config_file=getattr(args, "config", None))


def parse_key_values(items: list[str] | None, flag: str = "--environment-kwarg") -> dict[str, Any]:
    """``["mem_limit=4g", "cpus=2"]`` -> ``{"mem_limit": "4g", "cpus": 2}`` (JSON values)."""
    parsed: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"{flag} takes KEY=VALUE (e.g. mem_limit=4g), got {item!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        parsed[key.strip()] = value
    return parsed


_ENVIRONMENT_OWN = frozenset({"broker", "handler", "label"})
"""Constructor arguments that the run supplies itself, never the user."""

_RUN_OPTIONS = frozenset({"setup_code"})
"""``environment_kwargs`` keys the run consumes before the environment is built."""


def environment_options(environment: str) -> list[str]:
    """The ``environment_kwargs`` keys ``environment`` accepts: its constructor's keywords and
    those of the base classes it passes ``**kwargs`` on to."""
    from rlm.environments import environment_class

    accepted: list[str] = []
    for klass in environment_class(environment).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        accepted += [
            p.name
            for p in parameters
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return sorted(set(accepted) - _ENVIRONMENT_OWN | _RUN_OPTIONS)


def check_environment_kwargs(environment: str, kwargs: Mapping[str, Any], origin: str) -> None:
    """Refuses keys ``environment`` does not accept, with a close match and the valid choices
    (rather than a ``TypeError`` from its constructor once the run has started)."""
    accepted = environment_options(environment)
    for key in kwargs:
        if key in accepted:
            continue
        close = difflib.get_close_matches(key, accepted, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ConfigurationError(
            f"{origin}: environment {environment!r} has no option {key!r}; {hint}"
            f"its options: {', '.join(accepted)}"
        )
