"""What each kind of delivered row takes: its columns, for users and for validation.

`COLUMNS` lists, per QDM kind, the columns a delivered row may carry, in the order a
CSV header should list them, with whether each is required and what its values look
like; `FIELDS` is the set of their names, which `connector.validate.parse_row` holds
rows to. `template` and `parameters` add what the data dictionary allows (units with
their conversions, codes with their synonyms, ranges, grades) for
``qdspace ingest --kind K --template``.

Why separate: this is documentation, kept as data so it cannot drift from the
parsers: a new field has to be listed here to be accepted at all (`parse_row` refuses
a field its kind's `FIELDS` lacks), and once listed it shows up in ``--template``.
"""

from __future__ import annotations

from dataclasses import dataclass

from qdspace.connector.dictionary import DataDictionary, EnumDomain, UnitDomain


@dataclass(frozen=True)
class Column:
    """One column a delivered row of a kind may carry, for users (``--template``)."""

    name: str
    required: str  # "yes", "no" or the condition under which it is needed
    kind: str  # what a value looks like
    element: str | None = None  # data-dictionary element giving units / allowed values
    note: str = ""


_TIME = "ISO-8601 time with zone"
_ID = "text (<= 64)"

#: what each kind takes, in the order a CSV header should list it (a parser in
#: `connector.validate` reads exactly these fields)
COLUMNS: dict[str, tuple[Column, ...]] = {
    "order": (
        Column("order_id", "yes", _ID),
        Column("customer", "yes", _ID, note="member name of the buyer"),
        Column("supplier", "yes", _ID, note="member name of the seller"),
        Column("product", "yes", "text (<= 128)"),
        Column("quantity", "yes", "integer 1..2147483647"),
        Column("status", "no", "code", "order_status", "default open"),
        Column("opened_at", "yes", _TIME),
        Column("closed_at", "if status is closed", _TIME, note="not before opened_at"),
    ),
    "product": (
        Column("serial", "yes", _ID),
        Column("product_type", "yes", _ID),
        Column("order_id", "no", _ID),
        Column("batch_id", "no", _ID),
        Column("made_at", "yes", _TIME),
    ),
    "batch": (
        Column("batch_id", "yes", _ID),
        Column("material", "yes", "text (<= 128)"),
        Column("kind", "yes", "code", "batch_kind"),
        Column("producer", "yes", _ID),
        Column("quantity", "yes", "number >= 0"),
        Column("made_at", "yes", _TIME),
        Column("customer", "no", _ID),
        Column("order_id", "no", _ID),
    ),
    "genealogy": (
        Column("child_batch_id", "yes", _ID),
        Column("parent_batch_id", "yes", _ID, note="not the child itself"),
        Column("quantity_used", "no", "number >= 0"),
    ),
    "inspection": (
        Column("inspection_id", "yes", "text (<= 96)"),
        Column("station", "yes", _ID),
        Column("inspected_at", "yes", _TIME),
        Column("verdict", "yes", "code", "verdict"),
        Column("defect_class", "no", "code", "defect_class", "default none when verdict is pass"),
        Column("score", "no", "number 0..1"),
        Column("model_version", "no", "text (<= 80)"),
        Column("image_hash", "no", "16-64 hex digits", note="SHA-256 of the image"),
        Column("frame_id", "no", "text (<= 96)"),
        Column("latency_ms", "no", "number >= 0", note="ms"),
        Column("order_id", "no", _ID),
        Column("serial", "no", _ID),
        Column("batch_id", "no", _ID),
    ),
    "measurement": (
        Column("equipment", "yes", _ID),
        Column("parameter", "yes", "data element", note="a process parameter, listed below"),
        Column("value", "yes", "number or grade code", note="in `unit`"),
        Column("unit", "no", "text (<= 16)", note="default: the parameter's unit"),
        Column("measured_at", "yes", _TIME),
        Column("batch_id", "no", _ID),
        Column("order_id", "no", _ID),
    ),
    "environment": (
        Column("location", "yes", _ID),
        Column("measured_at", "yes", _TIME),
        Column("temperature", "temperature or humidity", "number", "ambient_temperature"),
        Column("temperature_unit", "no", "text (<= 16)", note="default °C"),
        Column("humidity", "temperature or humidity", "number", "relative_humidity"),
        Column("humidity_unit", "no", "text (<= 16)", note="default %RH"),
    ),
    "operator_log": (
        Column("operator_id", "yes", "pseudonym", note="3-64 of A-Z a-z 0-9 _.:-, no e-mail"),
        Column("logged_at", "yes", _TIME),
        Column("action", "yes", _ID),
        Column("station", "no", _ID),
        Column("order_id", "no", _ID),
        Column("batch_id", "no", _ID),
        Column("note", "no", "text (<= 500)"),
    ),
    "calibration": (
        Column("certificate_id", "yes", _ID),
        Column("equipment", "yes", _ID, note="as named in measurements"),
        Column("valid_from", "yes", _TIME),
        Column("valid_until", "yes", _TIME, note="after valid_from"),
        Column("result", "no", "code", "calibration_result", "default pass"),
        Column("issuer", "no", "text (<= 128)", note="the calibration laboratory"),
    ),
}

#: the fields a delivered row of each kind may carry
FIELDS: dict[str, frozenset[str]] = {
    kind: frozenset(c.name for c in columns) for kind, columns in COLUMNS.items()
}


@dataclass(frozen=True)
class TemplateRow:
    """A column of a kind, with what the data dictionary allows in it."""

    name: str
    required: str
    kind: str
    allowed: str  # units with conversions, or codes; "" when free


def _allowed(d: DataDictionary, element: str | None) -> str:
    if element is None:
        return ""
    domain = d.element(element).domain
    if isinstance(domain, EnumDomain):
        synonyms = ", ".join(f"{s}={v}" for s, v in sorted(domain.synonyms.items()) if s != v)
        return " | ".join(domain.values) + (f" (also {synonyms})" if synonyms else "")
    return _unit_text(domain)


def _unit_text(domain: UnitDomain) -> str:
    spelled: dict[str, str] = {}  # one spelling per unit: "kPa", not also "kpa"
    for unit in sorted(domain.conversions):
        spelled.setdefault(unit.lower(), unit)
    canonical = domain.canonical_unit
    others = [u for k, u in sorted(spelled.items()) if k != canonical.lower()]
    out = canonical + (f" (also {', '.join(others)})" if others else "")
    if domain.minimum is not None or domain.maximum is not None:
        low = "" if domain.minimum is None else f"{domain.minimum:g}"
        high = "" if domain.maximum is None else f"{domain.maximum:g}"
        out += f"; {low}..{high}" + ("" if canonical == "1" else f" {canonical}")
    if domain.grades:
        out += "; grades " + ", ".join(domain.grades)
    return out


def template(kind: str, d: DataDictionary) -> list[TemplateRow]:
    """The columns ``kind`` takes, with units and allowed values from the dictionary."""
    return [
        TemplateRow(
            c.name, c.required, c.kind, "; ".join(x for x in (_allowed(d, c.element), c.note) if x)
        )
        for c in COLUMNS[kind]
    ]


def parameters(d: DataDictionary) -> list[TemplateRow]:
    """The process parameters a measurement may name, with their units (and aliases)."""
    out = []
    for element in d:
        if isinstance(element.domain, UnitDomain):
            also = f"alias {', '.join(element.aliases)}; " if element.aliases else ""
            out.append(
                TemplateRow(element.name, "", element.definition, also + _unit_text(element.domain))
            )
    return out
