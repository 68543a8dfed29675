"""``rlm providers check``: the smoke against the stand-ins, and what each row says."""

from __future__ import annotations

import sys

import pytest

from rlm.cli import main
from rlm.providers_check import HEADER, Row, check, format_row
from rlm.sandbox_pricing import RATES, estimate_usd


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch):
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "E2B_API_KEY", "DAYTONA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("PRIME_API_KEY", raising=False)


def test_without_credentials_the_smoke_runs_on_the_standin_and_says_so():
    pytest.importorskip("modal")
    row = check("modal")
    assert row.passed, row
    assert row.target.startswith("stand-in")
    for value in (
        row.create_to_first_cell_s,
        row.cell_rtt_ms,
        row.callback_rtt_ms,
        row.upload_mb_s,
        row.teardown_s,
        row.sandbox_s,
    ):
        assert value is not None and value > 0
    # A stand-in costs nothing: its cost column says what it is instead of an estimate.
    assert row.cost_usd is None
    assert format_row(row).split()[-2:] == ["stand-in", "pass"]


def test_every_row_names_its_target_and_a_failure_names_its_step(capsys):
    pytest.importorskip("daytona")
    assert main(["providers", "check", "daytona"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == HEADER
    assert lines[1].startswith("daytona") and "stand-in (no DAYTONA_API_KEY)" in lines[1]
    assert lines[1].endswith("stand-in  pass") and "cost (est.)" in lines[0]
    failed = Row("e2b", "stand-in", failed_step="upload", error="413")
    assert format_row(failed).endswith("FAIL at upload: 413")


def test_an_unknown_provider_is_refused_with_the_choices(capsys):
    assert main(["providers", "check", "modall"]) == 2
    assert "modal, e2b, daytona, prime" in capsys.readouterr().out


def test_without_the_standins_installed_the_row_says_how_to_get_them(monkeypatch):
    """The stand-ins are not in the rlm wheel (they are the rlm-standins distribution)."""
    for module in ("rlm_standins", "rlm_standins.modal"):
        monkeypatch.setitem(sys.modules, module, None)
    row = check("modal")
    assert not row.passed and row.failed_step == "stand-in"
    assert "pip install ./standins" in row.error and "MODAL_TOKEN_ID" in row.error
    assert format_row(row).endswith(row.error)


def test_a_live_row_estimates_its_cost_from_the_published_rates():
    # E2B's default sandbox (2 vCPU, 0.5 GiB) for an hour: about $0.109 (E2B's worked example).
    assert estimate_usd("e2b", 2.0, 0.5, 3600) == pytest.approx(0.1089, abs=1e-4)
    # Modal bills physical cores: 0.125 cores and 4 GiB for 100 s.
    modal = RATES["modal"]
    assert estimate_usd("modal", 0.125, 4.0, 100) == pytest.approx(
        100 * (0.125 * modal.cpu + 4 * modal.gib)
    )
    live = Row("daytona", "live", sandbox_s=60.0, reserved=(1.0, 4.0))
    assert live.cost_usd == pytest.approx(60 * (0.000014 + 4 * 0.0000045))
    assert "$0.0019 est." in format_row(live)
    # Prime publishes no per-second rate: the row says so rather than guess.
    prime = Row("prime", "live", sandbox_s=60.0, reserved=(1.0, 4.0))
    assert prime.cost_usd is None and "no public rate" in format_row(prime)
