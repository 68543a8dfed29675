"""``rlm view``: the page for a real depth-2 log, checked in headless Chromium (with a screenshot)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rlm import RLMLogger
from rlm.testing import RecordedRequest
from rlm.viewer import build_runs, main, render_html

ARTIFACTS = Path(__file__).parent / "artifacts" / "viewer"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)

PLANS = {
    "root": [
        'Delegating.\n```repl\nr = rlm_query("CHILD: summarise the task")\nprint(r)\n```',
        "```repl\nprint(undefined_name)\n```",
        '```repl\nanswer["content"] = "root got: " + r\nanswer["ready"] = True\n```',
    ],
    "child": [
        '```repl\ng = rlm_query("GRANDCHILD: go deeper")\nprint(g)\n```',
        '```repl\nanswer.update({"content": "child got: " + g, "ready": True})\n```',
    ],
    "grandchild": [
        '```repl\nv = llm_query_batched(["leaf one", "leaf two"])\nprint(v)\n```',
        '```repl\nanswer = {"content": "grand got: " + v[0], "ready": True}\n```',
    ],
}


def depth_two_script(request: RecordedRequest) -> str:
    """Root → child (rlm_query) → grandchild (rlm_query) → two leaf llm_query calls; the root's
    second block raises a NameError so that the page has an error to highlight."""
    if not any(m.get("role") == "system" for m in request.messages):
        return "leaf answer"
    first_user = request.messages[1]["content"]
    who = (
        "grandchild" if "GRANDCHILD" in first_user else "child" if "CHILD" in first_user else "root"
    )
    return PLANS[who][sum(1 for m in request.messages if m.get("role") == "assistant")]


@pytest.fixture
def depth_two_log(lm_server, make_rlm, tmp_path) -> Path:
    lm_server.set_script(depth_two_script)
    logger = RLMLogger(log_dir=str(tmp_path), file_name="depth2")
    rlm = make_rlm(max_depth=3, logger=logger)
    result = rlm.completion("ROOT DATA", root_prompt="go")
    assert result.response == "root got: child got: grand got: leaf answer"
    rlm.close()
    return Path(logger.log_file_path)


def test_the_tree_is_rebuilt_from_the_events(depth_two_log):
    (root,) = build_runs(RLMLogger.read(str(depth_two_log)))
    assert [len(i.cells) for i in root.iterations] == [1, 1, 1]
    (to_child,) = root.iterations[0].cells[0].subcalls
    child = to_child.child
    assert child is not None and child.depth == 1 and child.parent_run_id == root.run_id
    grandchild = child.iterations[0].cells[0].subcalls[0].child
    assert grandchild is not None and grandchild.depth == 2
    leaves = grandchild.iterations[0].cells[0].subcalls
    assert [c.started["call"] for c in leaves] == ["llm_query", "llm_query"]
    assert all(c.finished and c.child is None for c in leaves)
    assert "NameError" in root.iterations[1].cells[0].data["error"]
    assert root.tree_usage[0] == 9  # 3 root + 2 child + 2 grandchild + 2 leaf calls


def test_a_run_cut_off_mid_block_keeps_its_subcalls(depth_two_log):
    events = RLMLogger.read(str(depth_two_log))
    first_cell = next(i for i, e in enumerate(events) if e["kind"] == "cell_executed")
    (root,) = build_runs(events[:first_cell])  # the log of a run still in its first block
    assert root.finished is None
    cell = root.iterations[-1].cells[-1]
    assert cell.data["error"] == "interrupted"
    assert cell.subcalls[0].child is not None
    assert "running" in render_html(events[:first_cell])


# The page reports, from inside Chromium, what it laid out: each code block's rendered text and
# size, and each run's chain of enclosing runs. Test-only; the product page does not carry it.
PROBE = """<script>
(function () {
  function shown(el) {
    var r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== "hidden";
  }
  var report = {
    cells: Array.from(document.querySelectorAll(".cell")).map(function (c) {
      return {code: c.querySelector(".code").innerText, visible: shown(c),
              error: !!c.querySelector("pre.error"), color: getComputedStyle(c).borderTopColor};
    }),
    runs: Array.from(document.querySelectorAll("section.run")).map(function (r) {
      var chain = [], p = r.parentElement && r.parentElement.closest("section.run");
      while (p) { chain.push(p.dataset.runId); p = p.parentElement && p.parentElement.closest("section.run"); }
      return {id: r.dataset.runId, depth: +r.dataset.depth, parents: chain, visible: shown(r)};
    })
  };
  var pre = document.createElement("pre");
  pre.id = "layout-report";
  pre.textContent = JSON.stringify(report);
  document.body.appendChild(pre);
})();
</script>"""


def chromium(*args: str, tmp_path: Path) -> str:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install -y chromium")
def test_the_page_renders_the_subcall_tree_and_every_code_block_in_chromium(
    depth_two_log, tmp_path, capsys
):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = ARTIFACTS / "depth2.html"
    assert main([str(depth_two_log), "-o", str(page)]) == 0  # `rlm view LOG -o PAGE`
    assert capsys.readouterr().out.strip() == str(page)
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "the page must be offline"

    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"))
    dom = chromium("--dump-dom", "--virtual-time-budget=5000", probed.as_uri(), tmp_path=tmp_path)
    found = re.search(r'<pre id="layout-report">(.*?)</pre>', dom, re.S)
    assert found, "the page did not run its script in Chromium"
    report = json.loads(html.unescape(found.group(1)))

    events = RLMLogger.read(str(depth_two_log))
    codes = [e["code"] for e in events if e["kind"] == "cell_executed"]
    rendered = [c["code"].strip() for c in report["cells"]]
    assert sorted(rendered) == sorted(code.strip() for code in codes)
    assert all(c["visible"] for c in report["cells"]), report["cells"]
    failing = [c for c in report["cells"] if c["error"]]
    assert [c["code"].strip() for c in failing] == ["print(undefined_name)"]
    assert failing[0]["color"] != report["cells"][0]["color"]  # the error is highlighted

    runs = {r["depth"]: r for r in report["runs"]}
    assert sorted(runs) == [0, 1, 2] and all(r["visible"] for r in report["runs"])
    assert runs[0]["parents"] == []
    assert runs[1]["parents"] == [runs[0]["id"]]
    assert runs[2]["parents"] == [runs[1]["id"], runs[0]["id"]]

    shot = ARTIFACTS / "depth2.png"
    shot.unlink(missing_ok=True)
    chromium(f"--screenshot={shot}", "--window-size=1280,2200", page.as_uri(), tmp_path=tmp_path)
    assert shot.stat().st_size > 20_000, "the screenshot looks blank"
    print(f"\nviewer page: {page}\nscreenshot: {shot}")
