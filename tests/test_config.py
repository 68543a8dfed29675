"""Settings: CLI flag > env var > config file > default, from one function for run and serve."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rlm import RLM, ConfigurationError
from rlm.config import (
    Settings,
    add_settings_arguments,
    find_config_file,
    load_settings,
    settings_from_args,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def no_offline_model(monkeypatch):
    """These tests are about precedence; whether the offline model is installed here must not
    change the defaults they see (its own test below sets it explicitly)."""
    monkeypatch.setattr("rlm.broker.clients.local_llama.local_model_available", lambda: False)


@pytest.mark.parametrize(
    ("env", "cli", "expected"),
    [
        ({}, {}, ("local", "SmolLM2-135M-Instruct")),
        ({"OPENAI_API_KEY": "sk-x"}, {}, ("openai", "gpt-4o-mini")),
        ({}, {"base_url": "http://127.0.0.1:8000/v1"}, ("openai", "gpt-4o-mini")),
        ({}, {"backend": "openai"}, ("openai", "gpt-4o-mini")),
    ],
    ids=["no-key-offline", "key", "base-url", "explicit"],
)
def test_offline_model_is_the_default_only_without_key_or_endpoint(
    tmp_path, monkeypatch, env, cli, expected
):
    monkeypatch.setattr("rlm.broker.clients.local_llama.local_model_available", lambda: True)
    settings = load_settings(cli, env={"HOME": str(tmp_path), **env}, cwd=tmp_path)
    assert (settings.backend, settings.model) == expected


def test_defaults_without_file_or_env(tmp_path):
    settings = load_settings(env={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert settings == Settings()
    assert settings.config_file is None and settings.sources == {}


def test_flag_beats_env_beats_file_beats_default(tmp_path):
    write(tmp_path / "rlm.toml", 'model = "from-file"\nmax_depth = 2\nmax_budget = 1\n')
    env = {"HOME": str(tmp_path), "RLM_MODEL": "from-env", "RLM_MAX_DEPTH": "3"}
    settings = load_settings({"model": "from-flag", "max_depth": None}, env=env, cwd=tmp_path)
    assert (settings.model, settings.max_depth, settings.max_budget) == ("from-flag", 3, 1.0)
    assert settings.max_iterations == 30
    assert settings.sources == {
        "model": "cli",
        "max_depth": "env RLM_MAX_DEPTH",
        "max_budget": f"file {tmp_path / 'rlm.toml'}",
    }


def test_one_line_moves_to_docker(tmp_path):
    home = {"HOME": str(tmp_path)}
    before = load_settings(env=home, cwd=tmp_path).rlm_kwargs()
    write(tmp_path / "rlm.toml", 'environment = "docker"\n')
    after = load_settings(env=home, cwd=tmp_path).rlm_kwargs()
    assert after["environment"] == "docker"
    assert {k: v for k, v in after.items() if k != "environment"} == {
        k: v for k, v in before.items() if k != "environment"
    }


def test_which_file_is_read(tmp_path):
    user = write(tmp_path / "home" / ".config" / "rlm" / "config.toml", 'model = "user"\n')
    project = tmp_path / "project"
    project.mkdir()
    env = {"HOME": str(tmp_path / "home")}
    assert find_config_file(env, project) == user
    local = write(project / "rlm.toml", 'model = "project"\n')
    assert find_config_file(env, project) == local
    explicit = write(tmp_path / "elsewhere.toml", 'model = "explicit"\n')
    assert load_settings(env={**env, "RLM_CONFIG": str(explicit)}, cwd=project).model == "explicit"
    with pytest.raises(ConfigurationError, match="RLM_CONFIG"):
        find_config_file({"RLM_CONFIG": str(tmp_path / "missing.toml")}, project)


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ('enviroment = "docker"\n', {}, "unknown key.*enviroment.*known keys"),
        ("max_depth = 'two'\n", {}, "max_depth must be an int"),
        ("model = \n", {}, "not valid TOML"),
        ("backend_kwargs = 3\n", {}, r"\[backend_kwargs\]"),
        ("", {"RLM_MAX_BUDGET": "lots"}, "RLM_MAX_BUDGET: max_budget must be a float"),
    ],
)
def test_mistakes_say_where_and_what(tmp_path, toml, env, message):
    write(tmp_path / "rlm.toml", toml)
    with pytest.raises(ConfigurationError, match=message):
        load_settings(env={"HOME": str(tmp_path), **env}, cwd=tmp_path)


def test_rlm_kwargs_build_an_rlm(tmp_path):
    write(
        tmp_path / "rlm.toml",
        'base_url = "http://127.0.0.1:9/v1"\napi_key = "k"\nsub_model = "small"\n'
        "max_tokens = 1000\n\n[backend_kwargs]\ntimeout = 5\n\n"
        "[environment_kwargs]\nmax_output_chars = 500\n",
    )
    settings = load_settings(env={"HOME": str(tmp_path)}, cwd=tmp_path)
    kwargs = settings.rlm_kwargs()
    assert kwargs["backend_kwargs"] == {
        "timeout": 5,
        "model_name": "gpt-4o-mini",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key": "k",
    }
    assert kwargs["other_backend_kwargs"][0]["model_name"] == "small"
    assert kwargs["environment_kwargs"] == {"cell_timeout": 120.0, "max_output_chars": 500}
    with RLM(**kwargs) as rlm:  # every key is one RLM accepts
        assert rlm.limits.max_tokens == 1000


def test_cli_flags_default_to_not_given(tmp_path):
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    config = write(tmp_path / "c.toml", 'model = "file"\nmax_iterations = 7\n')
    args = parser.parse_args(["--config", str(config), "--max-iterations", "9", "-e", "docker"])
    settings = settings_from_args(args)
    assert (settings.model, settings.max_iterations, settings.environment) == ("file", 9, "docker")


# ---- one options schema: every layer is derived from Settings' declarations ------------------

#: A value of each option's type, as a flag / env var would spell it and as TOML writes it.
SAMPLES = {str: ("some-text", '"some-text"'), int: ("7", "7"), float: ("2.5", "2.5")}
PRICE = ("0.5,2", "[0.5, 2.0]")


def option_fields() -> list:
    import dataclasses

    return [f for f in dataclasses.fields(Settings) if "kind" in f.metadata]


@pytest.mark.parametrize("option", option_fields(), ids=lambda f: f.name)
def test_each_option_is_a_flag_an_env_var_and_a_file_key_with_the_same_meaning(option, tmp_path):
    """A setting declared once in ``Settings`` is read the same from all three layers."""
    spelled, toml = PRICE if option.metadata["kind"] is tuple else SAMPLES[option.metadata["kind"]]
    flag = f"--{option.name.replace('_', '-')}"
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    from_flag = settings_from_args(parser.parse_args([flag, spelled]))
    home = {"HOME": str(tmp_path)}
    from_env = load_settings(env={**home, f"RLM_{option.name.upper()}": spelled}, cwd=tmp_path)
    write(tmp_path / "rlm.toml", f"{option.name} = {toml}\n")
    from_file = load_settings(env=home, cwd=tmp_path)
    values = [getattr(s, option.name) for s in (from_flag, from_env, from_file)]
    assert values[0] == values[1] == values[2] != option.default, values
    assert [s.sources[option.name].split()[0] for s in (from_flag, from_env, from_file)] == [
        "cli",
        "env",
        "file",
    ]


def test_the_limits_a_serve_request_may_lower_are_the_rlm_limits_of_the_schema():
    import inspect

    from rlm.config import request_limits
    from rlm.serve import OVERRIDES

    assert request_limits() == OVERRIDES
    kwargs = Settings().rlm_kwargs()
    rlm_limits = {
        p
        for p in inspect.signature(RLM.__init__).parameters
        if p.startswith("max_") and not p.startswith("max_concurrent_")  # throughput, not limits
    }
    # Every RLM limit is a setting a request may lower, under its own name or a clearer one.
    assert {setting for setting, _kind in OVERRIDES.values()} == rlm_limits
    assert all(setting in kwargs for setting in rlm_limits)


def test_rlm_serve_takes_every_setting_as_a_flag():
    from rlm.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("run", "serve"):
        dests = {a.dest for a in subparsers.choices[command]._actions}
        assert {f.name for f in option_fields()} <= dests, command
