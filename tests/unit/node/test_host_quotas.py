"""The quota arithmetic of a managed host (token bucket, slots, the growth check, values,
time passed in by hand) and a tenant's admission of writes, with real threads where
writes race.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from qdspace.node import faults
from qdspace.node.disk_room import MIB, DiskRoom
from qdspace.node.errors import DiskLow
from qdspace.node.host import admission as admission_module
from qdspace.node.host.admission import TenantAdmission
from qdspace.node.host.errors import (
    CallQuotaExceeded,
    QuotaValueRefused,
    RateLimited,
    RowQuotaExceeded,
    StorageQuotaExceeded,
    StreamQuotaExceeded,
)
from qdspace.node.host.quotas import (
    GIB,
    Quota,
    QuotaSettings,
    Slots,
    Usage,
    check_growth,
    parse_count,
    parse_rate,
    parse_size,
    rate_refusal,
)
from qdspace.util.token_bucket import TokenBucket


def test_the_bucket_gives_its_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=3, now=100.0)  # (times exact in binary)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = bucket.take(100.0)
    assert wait == 0.25  # one token comes every 1/4 s
    assert bucket.take(100.125) == 0.125
    assert bucket.take(100.25) == 0.0
    assert bucket.take(100.25) > 0
    assert [bucket.take(1000.0) for _ in range(4)].count(0.0) == 3  # never above the burst


def test_a_bucket_ignores_a_clock_that_goes_back_and_keeps_tokens_on_change() -> None:
    bucket = TokenBucket(rate=1.0, burst=2, now=50.0)
    assert bucket.take(50.0) == 0.0
    assert bucket.take(10.0) == 0.0  # earlier "now": no refill, no negative time
    assert bucket.take(10.0) > 0
    bucket.change(rate=64.0, burst=1, now=50.0)
    assert bucket.take(50.015625) == 0.0  # refilled at the new rate (1/64 s)
    assert bucket.take(50.015625) == 0.015625


def test_slots_racing_takers_never_exceed_the_limit() -> None:
    slots = Slots(limit=5)
    won: list[bool] = []
    start = threading.Barrier(40)

    def take() -> None:
        start.wait()
        won.append(slots.take())

    threads = [threading.Thread(target=take) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won.count(True) == 5 and slots.held == 5
    slots.give_back()
    assert slots.take() and not slots.take()
    unlimited = Slots(None)
    assert all(unlimited.take() for _ in range(1000))
    with pytest.raises(RuntimeError):
        Slots(1).give_back()


def test_an_ingest_that_could_pass_a_quota_is_refused_naming_it() -> None:
    quota = Quota(max_rows=100, max_storage=1000)
    check_growth("t", quota, Usage(rows=90, size=500), rows=10, size=500)  # exactly fits
    with pytest.raises(RowQuotaExceeded, match=r"stores 90 rows .* up to 11 .* quota of 100 rows"):
        check_growth("t", quota, Usage(rows=90, size=0), rows=11, size=1)
    with pytest.raises(StorageQuotaExceeded, match=r"storage quota of 1000 B"):
        check_growth("t", quota, Usage(rows=0, size=999), rows=1, size=2)
    check_growth("t", Quota(max_rows=None, max_storage=None), Usage(10**15, 10**18), 10**9, 1)
    with pytest.raises(ValueError):
        check_growth("t", quota, Usage(0, 0), rows=-1, size=0)


@pytest.mark.parametrize(
    ("text", "size"),
    [("2GiB", 2 * GIB), ("500MB", 500_000_000), ("1.5 KiB", 1536), ("4096", 4096), ("1b", 1)],
)
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["-1GiB", "2XB", "2 gigs", "1.5.2GiB", "nan", "inf", "0.1B", "0", "9999999TiB", ""]
)
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(QuotaValueRefused, match="max-storage"):
        parse_size(text)


def test_unlimited_and_counts_and_rates_parse() -> None:
    assert parse_size("unlimited") is None and parse_count("None", "max-rows") is None
    assert parse_count("1_000", "max-rows") == 1000
    assert parse_rate("0.5") == 0.5
    for bad in ("1.5", "ten", "1e3", ""):
        with pytest.raises(QuotaValueRefused, match="max-rows"):
            parse_count(bad, "max-rows")
    for bad in ("nan", "inf", "-inf", "fast"):
        with pytest.raises(QuotaValueRefused, match="rps"):
            parse_rate(bad)


@pytest.mark.parametrize(
    "changes",
    [
        {"max_rows": 0},
        {"max_rows": -5},
        {"max_rows": 10**13},
        {"max_rows": 1.5},
        {"max_rows": True},
        {"max_storage": 0},
        {"rps": 0},
        {"rps": -1.0},
        {"rps": math.nan},
        {"rps": math.inf},
        {"rps": 10**7},
        {"burst": 0},
        {"burst": None},  # a rate without a burst
        {"max_streams": 0},
        {"max_calls": 10**6},
        {"nonsense": 1},
    ],
)
def test_hostile_quota_values_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(QuotaValueRefused, match="quota"):
        Quota().with_changes(changes)


def test_a_new_rate_brings_its_burst_and_unlimited_is_none() -> None:
    assert Quota().with_changes({"rps": 5}).burst == 10
    assert Quota().with_changes({"rps": 0.2}).burst == 1
    assert Quota().with_changes({"rps": 5, "burst": 7}).burst == 7
    free = Quota().with_changes({"rps": None})
    assert (free.rps, free.burst) == (None, None)
    stored = QuotaSettings.of(Quota(max_rows=7))
    assert QuotaSettings.model_validate_json(stored.model_dump_json()).quota() == Quota(max_rows=7)
    with pytest.raises(ValueError, match="at least 1"):
        QuotaSettings(max_streams=0)


def test_each_quota_error_has_its_row_in_the_fault_table() -> None:
    assert faults.grpc_status_name(RateLimited) == "RESOURCE_EXHAUSTED"
    assert faults.http_status(RateLimited) == 429
    assert faults.http_status(CallQuotaExceeded) == 429
    assert faults.http_status(StreamQuotaExceeded) == 429
    assert faults.http_status(RowQuotaExceeded) == 507
    assert faults.http_status(StorageQuotaExceeded) == 507
    assert faults.grpc_status_name(StorageQuotaExceeded) == "RESOURCE_EXHAUSTED"
    assert faults.http_status(QuotaValueRefused) == 400
    refusal = rate_refusal("busyco", Quota(rps=2, burst=4), 0.2)
    assert refusal.retry_after_s == 1
    assert "busyco" in str(refusal) and "2 requests per second, burst 4" in str(refusal)


def _receive(admission: TenantAdmission, rows: int, size: int) -> None:
    """A group of received rows let in and written (here: nothing to write)."""
    with admission.receive(rows, size):
        pass


def test_rows_received_from_a_provider_are_let_in_while_they_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A measure stands for a while, grown by every group let in; a refused group grows
    nothing; a fresh measure (a re-delivery stored nothing) lets in what fits again."""
    held = [70]
    measures: list[int] = []

    def measure() -> Usage:
        measures.append(held[0])
        return Usage(held[0], 1000)

    admission = TenantAdmission("sunarc", Quota(max_rows=100, max_storage=5000), measure)
    _receive(admission, 20, 100)
    assert admission.usage == Usage(90, 1100) and measures == [70]
    with pytest.raises(RowQuotaExceeded, match=r"stores 90 rows and rows received .* up to 11"):
        _receive(admission, 11, 1)
    with pytest.raises(StorageQuotaExceeded, match=r"they were not stored"):
        _receive(admission, 1, 4000)
    _receive(admission, 10, 0)  # exactly fits, on the same measure
    assert admission.usage == Usage(100, 1100) and measures == [70]
    monkeypatch.setattr(admission_module, "RECEIVED_MEASURE_S", 0.0)
    held[0] = 80  # of the 30 let in, 10 were re-deliveries: measured again, 20 fit
    _receive(admission, 20, 0)
    assert measures == [70, 80] and admission.usage == Usage(100, 1000)

    unlimited = TenantAdmission("oem", Quota(max_rows=None, max_storage=None), measure)
    _receive(unlimited, 10**9, 10**12)  # nothing to check: nothing measured
    assert measures == [70, 80]


def test_an_ingest_in_flight_counts_against_the_rows_a_provider_sends() -> None:
    """An ingest let in holds its rows until it ends: a group received meanwhile sees
    them, though no measure does yet, and the two cannot both take the last rows."""
    held = [70]
    admission = TenantAdmission(
        "sunarc", Quota(max_rows=100, max_storage=None), lambda: Usage(held[0], 0)
    )

    async def ingest_then_receive() -> None:
        async with admission.admit(25, 10):
            # the ingest's 25 rows are not written yet: a fresh measure still reads 70
            assert admission.usage == Usage(95, 10)
            with pytest.raises(RowQuotaExceeded, match=r"stores 95 rows"):
                _receive(admission, 10, 0)
            _receive(admission, 5, 0)  # what is left after the ingest fits
            held[0] = 100  # both written
        assert admission.usage == Usage(100, 0)  # measured again at the ingest's end

    asyncio.run(ingest_then_receive())


def test_a_group_in_flight_counts_against_an_ingest_measured_meanwhile() -> None:
    """An ingest measures afresh, and a group let in but not yet written is not in the
    tables it counts: the group is counted in on top, so the ingest cannot take the rows
    the group was let in with. Once the group has ended, the next measure counts it."""
    held = [60]
    admission = TenantAdmission(
        "sunarc", Quota(max_rows=100, max_storage=None), lambda: Usage(held[0], 0)
    )
    group_in = threading.Event()
    write = threading.Event()

    def receive_group() -> None:
        with admission.receive(30, 0):
            group_in.set()
            write.wait(5)
            held[0] = 90  # written

    writer = threading.Thread(target=receive_group)
    writer.start()
    assert group_in.wait(5)

    async def ingest(rows: int) -> None:
        async with admission.admit(rows, 0):
            pass

    try:
        with pytest.raises(RowQuotaExceeded, match=r"stores 90 rows and this ingest"):
            asyncio.run(ingest(11))  # 60 measured + 30 in flight + 11 > 100
        asyncio.run(ingest(10))
    finally:
        write.set()
        writer.join(5)
    assert admission.usage == Usage(90, 0)
    with pytest.raises(RowQuotaExceeded, match=r"stores 90 rows"):
        asyncio.run(ingest(11))  # the group's 30 measured now, no longer in flight


def test_concurrent_groups_never_pass_the_row_quota_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight writers race groups of 7 rows at a quota of 100, each group measured afresh
    and written a moment after it is let in: the rows let in never pass the quota."""
    monkeypatch.setattr(admission_module, "RECEIVED_MEASURE_S", 0.0)
    stored = [0]
    lock = threading.Lock()
    admission = TenantAdmission(
        "sunarc", Quota(max_rows=100, max_storage=None), lambda: Usage(stored[0], 0)
    )
    let_in: list[int] = []

    def writer() -> None:
        for _ in range(10):
            try:
                with admission.receive(7, 0):
                    let_in.append(7)
                    time.sleep(0.002)  # the write takes a while: no measure sees it yet
                    with lock:
                        stored[0] += 7
            except RowQuotaExceeded:
                pass

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert 0 < sum(let_in) <= 100


def test_a_tenant_s_writes_ask_the_host_s_free_disk_before_its_quotas(tmp_path: Path) -> None:
    """The tenants share the host's disk: a write that would leave less free than a
    tenant's node keeps is refused even with no quota set."""
    tight = DiskRoom(tmp_path, shutil.disk_usage(tmp_path).free + 100 * MIB)
    admission = TenantAdmission("sunarc", Quota(max_rows=None, max_storage=None), None, tight)
    with pytest.raises(DiskLow, match="rows received from a provider"):
        _receive(admission, 1, 1)

    async def ingest() -> None:
        async with admission.admit(1, 1):
            raise AssertionError("admitted")

    with pytest.raises(DiskLow, match="this ingest brings"):
        asyncio.run(ingest())
    roomy = TenantAdmission("sunarc", Quota(max_rows=None, max_storage=None), None, None)
    _receive(roomy, 1, 1)


def test_quality_case_data_and_uploads_are_checked_against_the_storage_quota(
    tmp_path: Path,
) -> None:
    """Case data (a member's or the staff's) and an upload as it arrives are checked
    against the storage quota on the last measure (quality cases were kept on no quota:
    a tenant's database grew to 150x it). An upload reserves nothing (its ingest is
    measured afresh); case data let in counts until the next measure, so cases written
    one after another on the same measure cannot together pass the quota."""
    measures: list[int] = []

    def measure() -> Usage:
        measures.append(1)
        return Usage(10, 4000)

    admission = TenantAdmission("calmco", Quota(max_rows=None, max_storage=5000), measure)
    admission.check_upload(1000)
    with pytest.raises(StorageQuotaExceeded, match="this ingest carries"):
        admission.check_upload(1001)
    assert admission.usage == Usage(10, 4000) and len(measures) == 1  # nothing reserved
    with pytest.raises(StorageQuotaExceeded) as refused:
        admission.check_kept(1001, "quality case data from sunarc")
    assert "quality case data from sunarc brings 1001 B" in str(refused.value)
    assert "it was not kept" in str(refused.value)
    admission.check_kept(600, "quality case data from sunarc")
    assert admission.usage == Usage(10, 4600)  # counted in until the next measure
    with pytest.raises(StorageQuotaExceeded):  # the first would have let this one in too
        admission.check_kept(600, "quality case data from sunarc")
    admission.check_kept(400, "quality case data from sunarc")  # exactly fits
    assert len(measures) == 1
    room = DiskRoom(tmp_path, 0)
    room.check_kept(10, "this quality case")
    with pytest.raises(DiskLow, match="this quality case brings"):
        room.check_kept(shutil.disk_usage(tmp_path).free + 1, "this quality case")


def test_one_member_takes_at_most_half_the_tenant_s_rate() -> None:
    """A member flooding a tenant is refused at half its burst, its own refusal naming
    the share; another member still gets the other half, the staff their own bucket
    (all three drew on one bucket: the flooding member took it all)."""
    admission = TenantAdmission("calmco", Quota(rps=0.001, burst=4))
    flood, other = b"flooding member's certificate", b"another member's certificate"
    for _ in range(2):
        admission.admit_call(stream=False, member=flood)()
    with pytest.raises(RateLimited, match="share one member may take") as refused:
        admission.admit_call(stream=False, member=flood)
    assert "(half of 0.001 requests per second, burst 4)" in str(refused.value)
    for _ in range(2):
        admission.admit_call(stream=False, member=other)()
    with pytest.raises(RateLimited, match="over its request rate quota"):  # the tenant's
        admission.admit_call(stream=False, member=b"a third member")
    for _ in range(4):
        admission.admit_call(stream=False, staff=True)()


def test_members_flooding_together_leave_another_member_its_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two members flooding a tenant (each at most half of its rate) took all of it, and
    a third member was refused for as long as they kept at it. Now the third one's
    first try makes the rate three shares: the two flooding ones are held to a third
    each from their next call, and the third member is served from what they leave.
    When it has not called for the window, the two get half each again."""
    clock = [1000.0]
    monkeypatch.setattr(admission_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    admission = TenantAdmission("calmco", Quota(rps=30, burst=30))
    floods = (b"first flooding member", b"second flooding member")
    third = b"a member that calls 50 times a second"
    served = dict.fromkeys((*floods, third), 0)
    refused: list[str] = []

    def run(seconds: float, *, with_third: bool) -> None:
        for step in range(round(seconds * 1000)):  # 1 ms steps; the floods call every one
            clock[0] += 0.001
            for member in (*floods, third) if with_third and step % 20 == 0 else floods:
                try:
                    admission.admit_call(stream=False, member=member)()
                    served[member] += 1
                except RateLimited as exc:
                    if member == third:
                        refused.append(str(exc))

    run(2, with_third=False)  # the floods alone: half each, all of the tenant's rate
    assert served[floods[0]] + served[floods[1]] == pytest.approx(30 + 30 * 2, abs=2)
    served = dict.fromkeys(served, 0)
    run(10, with_third=True)  # 10 s at 30 a second: 100 for each of the three, about
    assert 90 <= served[third] <= 110, served
    assert all(served[f] <= 100 + 10 for f in floods), served
    assert any("(1/3 of 30 requests per second, burst 30; 3 members call it)" in r for r in refused)
    run(admission_module.MEMBER_WINDOW_S + 1, with_third=False)
    served = dict.fromkeys(served, 0)
    run(5, with_third=False)
    assert served[floods[0]] == pytest.approx(75, abs=2), served  # half of 30 a second again
