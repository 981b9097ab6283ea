"""An export whose last line is cut off (no newline at its end) is not stored as a row.

An exporter that stops mid-line (it died, or paused past ``settle_s``) leaves a file
whose last line is a valid-looking row: ``...,800.5`` cut to ``...,8`` was stored as
8 °C, and the rest of the line, written later, was never read (the file was in done/)
or came as a "correction". The folder now waits ``unended_s`` for a file that does not
end with a newline, and then refuses its last line as cut off (or stores it, where the
operator says the exporter never ends its last line). Real connector, real folder,
real SQLite (the rig of the hostile-exporter tests); no clock: ``unended_s`` is either
far longer than any test or 0.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from qdspace.connector.linein.config import FolderConfig
from tests.unit.connector.test_linein_folder_hostile import ERRORS_SUFFIX, Rig, make_rig

HEAD = "equipment,parameter,unit,measured_at,value\n"
FULL = "F1,firing_peak_temperature,°C,2026-12-01T10:00:00Z,800.5\n"
CUT = "F1,firing_peak_temperature,°C,2026-12-01T10:00:01Z,8"


def values(rig: Rig) -> list[float]:
    with rig.store.engine.connect() as c:
        query = "SELECT value FROM qdm_measurement ORDER BY measured_at"
        return [float(v) for v in c.execute(text(query)).scalars()]


def test_a_cut_off_file_waits_and_the_resumed_line_is_read_whole(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, unended_s=3600)
    (rig.watch / "export.csv").write_text(HEAD + FULL + CUT, encoding="utf-8")
    rig.scan(4)
    assert values(rig) == [] and (rig.watch / "export.csv").exists()
    with (rig.watch / "export.csv").open("a", encoding="utf-8") as f:
        f.write("00.5\n")  # the exporter resumes
    rig.scan(2)
    assert values(rig) == [800.5, 800.5]
    assert (rig.folder.done / "export.csv").exists()


def test_a_cut_off_last_line_is_refused_once_it_has_waited(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, unended_s=0)
    (rig.watch / "export.csv").write_text(HEAD + FULL + CUT, encoding="utf-8")
    rig.scan(3)
    assert values(rig) == [800.5]
    errors = (rig.folder.failed / ("export.csv" + ERRORS_SUFFIX)).read_text(encoding="utf-8")
    assert "3" in errors and "incomplete last line (file cut off?)" in errors
    assert (rig.folder.failed / "export.csv").exists()


def test_an_exporter_that_never_ends_its_last_line_can_have_it_stored(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, unended_s=0, unended_last_line="store")
    (rig.watch / "export.csv").write_text(HEAD + FULL + CUT + "00.5", encoding="utf-8")
    rig.scan(3)
    assert values(rig) == [800.5, 800.5]
    assert (rig.folder.done / "export.csv").exists()


def test_a_file_ending_with_a_newline_is_read_at_once(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, unended_s=3600)
    (rig.watch / "export.csv").write_text(HEAD + FULL, encoding="utf-8")
    rig.scan(2)
    assert values(rig) == [800.5]


def test_jsonl_cut_off_is_refused_too(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, unended_s=0)
    line = (
        '{"equipment": "F1", "parameter": "firing_peak_temperature", "unit": "°C", '
        '"measured_at": "2026-12-01T10:00:0%dZ", "value": %s}'
    )
    body = line % (0, "800.5") + "\n" + line % (1, "8")  # "8" is valid JSON: a whole row
    (rig.watch / "export.jsonl").write_text(body, encoding="utf-8")
    rig.scan(3)
    assert values(rig) == [800.5]
    assert (rig.folder.failed / "export.jsonl").exists()


def test_the_wait_for_a_last_line_is_longer_than_the_settle_time_by_default() -> None:
    rule = {"pattern": "*", "kind": "measurement"}
    config = FolderConfig.model_validate({"watch": "/x", "files": [rule]})
    assert config.unended_s >= 60 > config.settle_s
    assert config.unended_last_line == "refuse"
