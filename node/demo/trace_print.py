"""The summary of the root-cause chapter (`node.demo.trace`): what SunArc saw, the ranked
causes held against what the sample data planted, the investigation's life, the
regulator's verdicts. Reads only ``report.chapters['trace']``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from qdspace.node.demo.report import DemoReport

CHAPTER = "trace"
TOP = 3


def _confidence(c: dict[str, Any]) -> str:
    calibrated = "unknown" if c["calibrated"] is None else f"{c['calibrated']:.0%}"
    return (
        f"{c['score']:.2f}: complete {c['completeness']:.0%}, anchored {c['anchored']:.0%}, "
        f"calibrated {calibrated}"
    )


def _at(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%d %b %H:%M")


def _span(start: str, end: str) -> str:
    return f"{_at(start)}-{_at(end)[-5:]}"


def _step(s: dict[str, Any]) -> str:
    if s["level"] == "window":
        return f"{s['ids'][0]} {_span(s['start'], s['end'])} ({s['member']})"
    return f"{s['level']} {', '.join(s['ids'])} ({s['member']})"


def _causes(console: Console, trace: dict[str, Any]) -> None:
    table = Table(
        title=f"root-cause trace {trace['trace_id']}: the ranked causes (top {TOP})",
        title_justify="left",
        caption="significant causes first, then the strongest of the rest; score: "
        "strength x data confidence",
        caption_justify="left",
    )
    for col in ("rank", "member", "cause", "significant", "adj. p", "score", "data confidence"):
        table.add_column(col)
    for c in trace["causes"][:TOP]:
        table.add_row(
            str(c["rank"]),
            c["member"],
            c["key"],
            "[green]yes[/green]" if c["significant"] else "no",
            f"{c['adjusted_p']:.1e}",
            f"{c['score']:.3f}",
            _confidence(c["confidence"]),
        )
    console.print(table)


def _trace(say: Any, doc: dict[str, Any]) -> None:
    trace, planted = doc["trace"], doc["planted"]
    say("  path: " + " -> ".join(_step(s) for s in trace["path"]))
    if trace["causes"]:
        top = trace["causes"][0]
        hit = (top["member"], top["key"]) == (planted["member"], planted["key"])
        say(
            f"  first: {top['key']} at {top['member']}, {trace['shift']} shift; planted in the "
            f"sample data: {planted['key']} {_span(planted['start'], planted['end'])}, "
            f"{planted['shift']} shift: " + ("[green]found[/green]" if hit else "[red]MISSED[/red]")
        )
    decoy = trace["decoy"]
    where = f"rank {decoy['rank']}, not significant" if decoy["rank"] else "not a candidate cause"
    if decoy["significant"]:
        where = f"[red]rank {decoy['rank']}, significant[/red]"
    say(f"  decoy {decoy['key']} (ran hot in {planted['batch']}, certificate expired): {where}")
    shares = ", ".join(f"{m} {s:.0%}" for m, s in trace["responsibility"].items())
    say(f"  responsibility, weighted by the confidence of each member's data: {shares}")
    wafer = doc["agreements"][1]
    findings = trace["wafer_findings"]
    state = "[red]implicated: " + ", ".join(findings) + "[/red]" if findings else "clean"
    answered = wafer["provider"] in trace["tiers"]
    say(
        f"  {wafer['provider']} (hosted by {wafer.get('host', '-')}) "
        + (f"answered for {', '.join(planted['wafers'])}: {state}" if answered else "NO ANSWER")
        + f"; tiers missing: {', '.join(m['member'] for m in trace['missing']) or 'none'}"
    )
    tiers = ", ".join(
        f"{k.partition(':')[2]} {v:.0f} ms" for k, v in trace["timings_ms"].items() if "tier" in k
    )
    say(
        f"  start to report {trace['seconds']:.2f} s (each tier with those below it: {tiers}); "
        f"report sha256 {trace['report_sha256'][:16]}.."
    )


def _investigation(console: Console, say: Any, case: dict[str, Any]) -> None:
    table = Table(
        title=f"investigation {case['case_id'][:15]}.. ({case['severity']}): {case['subject']}",
        title_justify="left",
    )
    for col in ("action", "kind", "owner", "due", "state", "what"):
        table.add_column(col)
    for a in case["actions"]:
        table.add_row(a["action_id"], a["kind"], a["owner"], a["due"], a["state"], a["title"])
    console.print(table)
    steps = " -> ".join(
        f"{step}{' ' + action if action else ''} ({who})" for step, who, action in case["events"]
    )
    say(f"  signed moves: {steps}")
    seen = "; ".join(f"{who}: {' -> '.join(states)}" for who, states in case["states_seen"].items())
    say(
        f"  states seen on each side: {seen}; trace report {case['trace_report_id']} "
        f"referenced; {case['seconds']:.1f} s"
    )


def _regulator(say: Any, checks: list[dict[str, Any]] | str) -> None:
    if isinstance(checks, str):
        say(f"  regulator: not verified ({checks})")
        return
    for c in checks:
        verdict = "[green]VALID[/green]" if c["valid"] else f"[red]INVALID[/red] ({c['reason']})"
        extra = ""
        if "record_is_report" in c:
            extra = (
                ", the anchored bytes are the report SunArc shows"
                if c["record_is_report"]
                else ", [red]the anchored bytes differ from the report shown[/red]"
            )
        say(
            f"  regulator: {c['kind']} {c['ref_id'][:40]} at {c['member']}: {verdict}{extra} "
            f"(root {c['root'][:10]}.., block {c['block']})"
        )


def print_trace(console: Console, report: DemoReport) -> None:
    """The chapter's part of the summary."""
    doc = report.chapters.get(CHAPTER)
    if not doc:
        return

    def say(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    cluster = doc["cluster"]
    say(
        f"sunarc's EL line: {cluster['microcracks']} of {cluster['inspected']} modules of "
        f"{cluster['module_batch']} with microcracks ({cluster['elsewhere']} in the other "
        f"{cluster['other_batches']} module batches)"
    )
    say(
        "traceability agreements (root-cause-analysis): "
        + ", ".join(
            f"{a['consumer']} -> {a['provider']}"
            + (f" at {a['host']}" if "host" in a else "")
            + f" ({a['order']}, {a['negotiation_ms']:.0f} ms)"
            for a in doc["agreements"]
        )
    )
    _causes(console, doc["trace"])
    _trace(say, doc)
    _investigation(console, say, doc["investigation"])
    _regulator(say, doc["regulator"])
