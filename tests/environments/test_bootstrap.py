"""The bootstrap line: one typed definition that the host writes and the runner reads."""

from __future__ import annotations

import json

import pytest

from rlm.environments.runner.bootstrap import Bootstrap


def test_a_bootstrap_survives_the_line_whole():
    sent = Bootstrap(
        address="unix:/s/broker.sock", token="secret", limits={"memory_bytes": 1 << 30},
        env={"HOME": "/w"}, workdir="/w", make_workdir=True, parent_pid=42,
    )  # fmt: skip
    line = sent.to_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert Bootstrap.from_line(line) == sent
    assert "secret" not in repr(sent)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokn": "x"}, "unknown bootstrap fields: tokn"),
        ({"parent_pid": "42"}, "'parent_pid' has the wrong type"),
        ({"make_workdir": 1}, "'make_workdir' has the wrong type"),
        ({"parent_pid": True}, "'parent_pid' has the wrong type"),
        ({"limits": {"memory_bytes": "1g"}}, "'limits' maps names to ints"),
        ({"env": {"HOME": 3}}, "'env' maps names to strs"),
        ({"token": None}, "'token' has the wrong type"),
    ],
)
def test_a_malformed_bootstrap_is_refused_with_what_is_wrong(change, message):
    line = json.dumps({"address": "unix:/s", "token": "t", **change})
    with pytest.raises(ValueError, match=message):
        Bootstrap.from_line(line)


def test_a_missing_field_or_a_non_object_is_refused():
    with pytest.raises(ValueError, match="incomplete bootstrap"):
        Bootstrap.from_line('{"address": "unix:/s"}')
    with pytest.raises(ValueError, match="not a JSON object"):
        Bootstrap.from_line("[1, 2]")
