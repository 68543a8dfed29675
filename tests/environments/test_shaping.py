"""The stand-ins' shared network shaping (``RLM_STANDIN_SHAPING``)."""

from __future__ import annotations

import pytest
from hermetic import standins_missing

if reason := standins_missing():
    pytest.skip(reason, allow_module_level=True)

from rlm_standins._shaping import ENV_VAR, Shaping


def test_the_spec_names_rtt_bandwidth_and_one_drop():
    shaping = Shaping.parse("rtt=0.08, bandwidth=4e6,drop=200000")
    assert shaping == Shaping(rtt=0.08, bandwidth=4e6, drop_after=200_000)
    assert shaping.active
    with pytest.raises(ValueError, match="unknown key 'latency'"):
        Shaping.parse("latency=1")


def test_shaping_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert not Shaping.from_env().active
    monkeypatch.setenv(ENV_VAR, "rtt=0.05")
    assert Shaping.from_env() == Shaping(rtt=0.05)


def test_each_standin_takes_its_drop_from_the_shaping_unless_given(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "drop=1234")
    daytona = pytest.importorskip("rlm_standins.daytona")
    assert daytona.DaytonaStandIn().drop_log_stream_after == 1234
    assert daytona.DaytonaStandIn(drop_log_stream_after=5).drop_log_stream_after == 5
    modal = pytest.importorskip("rlm_standins.modal")
    assert modal.ModalStandIn().drop_stdout_stream_after == 1234
