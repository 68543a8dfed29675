"""``RLMLogger`` on disk: the file's size is capped (with a marker line ``rlm view`` shows), and
text a model or a sandbox can produce (lone surrogates) never breaks a line."""

from __future__ import annotations

import json
from pathlib import Path

from rlm import RLMLogger
from rlm.types import CodeBlock, REPLResult, RLMIteration, RLMMetadata
from rlm.viewer import read_log, render_html


def iteration(text: str) -> RLMIteration:
    return RLMIteration(
        prompt=[{"role": "user", "content": "q"}],
        response=text,
        code_blocks=[
            CodeBlock(code="print(1)", result=REPLResult(stdout=text, stderr="", locals={}))
        ],
    )


def metadata() -> RLMMetadata:
    return RLMMetadata(
        root_model="m", max_depth=1, max_iterations=3, backend="openai", backend_kwargs={},
        environment_type="local", environment_kwargs={},
    )  # fmt: skip


def test_the_log_stops_at_its_size_limit_with_a_marker_the_viewer_shows(tmp_path: Path):
    logger = RLMLogger(str(tmp_path), max_bytes=20_000)
    logger.log_metadata(metadata())
    for _ in range(10):
        logger.log(iteration("x" * 3_000))
    logger.close()
    path = Path(logger.log_file_path or "")
    lines = path.read_text().splitlines()
    assert path.stat().st_size <= 20_000 + 500  # the marker line may follow the last entry
    assert json.loads(lines[-1])["type"] == "log_truncated"
    assert json.loads(lines[-1])["max_bytes"] == 20_000
    assert 1 < len(lines) < 11
    assert logger.iteration_count == 10  # the trajectory in memory is whole
    assert len(logger.get_trajectory()["iterations"]) == 10
    log = read_log(str(path))
    assert log.truncated_at == 20_000 and log.skipped_lines == 0
    assert "reached its size limit (20,000 bytes)" in render_html([log])


def test_lone_surrogates_from_a_model_are_written_as_escapes(tmp_path: Path):
    logger = RLMLogger(str(tmp_path))
    logger.log_metadata(metadata())
    logger.log(iteration("bad \ud800 text é"))
    logger.close()
    raw = Path(logger.log_file_path or "").read_bytes()
    raw.decode("utf-8")  # valid UTF-8 throughout
    (entry,) = [json.loads(line) for line in raw.splitlines() if b'"iteration"' in line]
    assert entry["response"] == "bad \ud800 text é"
    log = read_log(logger.log_file_path or "")
    assert "bad" in render_html([log])
