"""A peer's text in the markup the console builds itself, and where markup may come from.

The templates autoescape (`node.console.render`); four values skip that, marked ``safe``:
the SVG the server draws (the network, the trace graph, the drift and accuracy charts),
built by string formatting from a peer's names, keys, ids and job ids. Here each is
drawn from a peer's markup and parsed as XML: only the drawing's own SVG elements, no
event handler or link attribute, the text as written. The other tests pin where markup
may come from at all: no template marks anything else ``safe`` or turns autoescaping
off, and the console's own scripts write text, never markup, but for the one fragment
the server rendered (a dropped proof's verdict). The browser test of the same
(`tests/integration/contracts/test_console_hostile_text.py`) opens the pages.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qdspace.node.console.federation_pages import accuracy_chart
from qdspace.node.console.ledger_pages import download_name
from qdspace.node.console.overview import Link, network_svg
from qdspace.node.console.svg_chart import Limit, Line, line_chart
from qdspace.node.console.trace_graph import trace_svg

CONSOLE = Path(__file__).resolve().parents[3] / "node" / "console"
TEXT = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>&amp;</text></svg>"
SVG = "{http://www.w3.org/2000/svg}"
DRAWN = {"svg", "title", "desc", "defs", "marker", "path", "line", "polyline", "circle"}
DRAWN |= {"rect", "text", "g"}


def _parsed(svg: str) -> ET.Element:
    """The drawing as XML, checked to be nothing but the drawing's own elements."""
    root = ET.fromstring(svg)  # a peer's `<` or `"` left as it is would not parse
    for element in root.iter():
        assert element.tag.startswith(SVG) and element.tag[len(SVG) :] in DRAWN, element.tag
        for name in element.attrib:
            assert not name.lower().startswith("on") and "href" not in name, name
    return root


def _texts(root: ET.Element) -> list[str]:
    return ["".join(e.itertext()) for e in root.iter(f"{SVG}text")]


def test_the_network_picture_names_a_peer_as_text() -> None:
    root = _parsed(network_svg(TEXT, [Link(TEXT, provides=1, owed=2), Link("cellex")]))
    assert _texts(root).count(TEXT) == 2  # the peer on its circle, this member in the middle
    assert "".join(root.iter(f"{SVG}desc").__next__().itertext()).startswith(TEXT)


def test_the_trace_graph_draws_every_text_of_a_report_as_text() -> None:
    step = {"member": TEXT, "level": TEXT, "ids": [TEXT, TEXT, TEXT], "start": TEXT}
    report = {
        "causes": [
            {"rank": TEXT, "member": TEXT, "reported_by": TEXT, "key": TEXT,
             "significant": True, "score": 0.5, "path": [step, {**step, "level": "window"}]},
        ]
    }  # fmt: skip
    root = _parsed(trace_svg(report))
    cause = next(g for g in root.iter(f"{SVG}g") if "cause" in g.attrib.get("class", ""))
    assert cause.attrib["data-member"] == TEXT
    assert f"#{TEXT} {TEXT} via {TEXT}: {TEXT}"[:34] in _texts(root)


def test_a_chart_holds_a_peers_job_id_and_labels_as_text() -> None:
    events = [{"kind": "version", "version": 1, "scores": {"accuracy": 0.5, TEXT: 0.1}}]
    root = _parsed(accuracy_chart(events, TEXT))
    assert "".join(next(root.iter(f"{SVG}title")).itertext()) == (
        f"Held-out scores of job {TEXT} by version"
    )
    chart = line_chart(
        TEXT,
        [Line(TEXT, TEXT, [(0.0, 0.1), (1.0, 0.2)]), Line("one", TEXT, [(0.5, 0.3)])],
        [Limit(TEXT, TEXT, 0.5)],
        x_labels=(TEXT, TEXT),
        css=TEXT,
    )
    root = _parsed(chart)
    assert _texts(root).count(TEXT) == 4  # both ends of the x axis, the limit, the legend
    assert all(TEXT in e.attrib["class"] for e in root.iter(f"{SVG}polyline"))


def test_no_template_marks_anything_else_safe_or_stops_escaping() -> None:
    marked = {}
    for template in sorted((CONSOLE / "templates").glob("*.html")):
        text = template.read_text()
        assert not re.search(r"autoescape\s+(false|off)|\|\s*e\b|Markup", text), template
        for value in re.findall(r"\{\{\s*([^{}]*?)\s*\|\s*safe\s*\}\}", text):
            marked[value] = template.name
    assert marked == {
        "graph": "_trace_panel.html",  # trace_graph.trace_svg
        "drift_svg": "inspection.html",  # inspection.drift_chart (svg_chart)
        "network_svg": "overview.html",  # overview.network_svg
        "charts[s.session_id]": "federation.html",  # federation_pages.accuracy_chart
    }
    for module in CONSOLE.glob("*.py"):
        source = module.read_text()
        assert not re.search(r"\bMarkup\b|markupsafe|from_string|autoescape=False", source), module


@pytest.mark.parametrize("script", ["console.js", "spc.js"])
def test_the_consoles_scripts_write_text_not_markup(script: str) -> None:
    source = (CONSOLE / "static" / script).read_text()
    sinks = re.findall(
        r".{0,30}(?:innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|"
        r"new Function|setTimeout\(\s*['\"]|setAttribute\(\s*['\"](?:on|href|src)).{0,10}",
        source,
    )
    # the one: a dropped proof's verdict, a fragment the server rendered (autoescaped)
    allowed = ["        result.innerHTML = html;"] if script == "console.js" else []
    assert sinks == allowed, sinks


def test_a_proof_file_is_named_in_ascii_whatever_the_record_id() -> None:
    assert download_name("quality_case", '检查-1/../é"x') == "proof-quality_case-__-1_..___x.json"
    name = download_name("agreement", "a" * 300)
    assert name == f"proof-agreement-{'a' * 80}.json"
    name.encode("ascii")


def test_a_job_status_with_part_of_its_history_says_so() -> None:
    """A status carries a job's last 100 rounds (`round_status.STATUS_HISTORY`): the
    federation page says how many of how many it shows, and says nothing of a job whose
    whole history it holds."""
    from qdspace.node.console.render import Console

    env = Console.build(None, "/console").env  # type: ignore[arg-type]
    template = env.get_template("federation.html")

    def job(shown: int, version: int) -> dict[str, object]:
        rounds = [{"round": r, "version": r, "members": ["cellex"], "bounded": [],
                   "epsilon": None} for r in range(version - shown + 1, version + 1)]  # fmt: skip
        return {"job_id": "j1", "phase": "training", "round": version + 1, "rounds": 500,
                "version": version, "attempt": 1, "finished": False, "agreement_asset": None,
                "detail": "", "history": rounds}  # fmt: skip

    page = template.render(root="/console", nav=(), jobs=[job(100, 150)], job_members={})
    assert "The last 100 of 150 rounds" in page
    assert page.count("<tr><td>") >= 100
    whole = template.render(root="/console", nav=(), jobs=[job(2, 2)], job_members={})
    assert "The last" not in whole
