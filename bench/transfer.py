"""Transfer throughput: records/s through the mTLS, policy-filtered stream, against a plain
gRPC stream of the same serialized payload, in the same run.

Setup: a supplier node (a real ``qdspace node start`` process) holds N inspection records
of one order; an OEM node negotiates an agreement for them. Then three measurements:

1. ``policy_stream``: a client with the OEM's certificate pulls the transfer straight from
   the supplier over mutual TLS: the supplier's node reads its QDM a page at a time (only
   the granted columns of rows in the order scope), checks and encodes the page as JSON
   lines, chains the sha256 checkpoint over the batch and streams it; the client decodes
   each batch (rows and their orders) and verifies its checkpoint (the consumer's
   integrity check), storing nothing.
2. ``plain_stream`` (baseline): a bare gRPC server in its own process streams the very same
   serialized batches (captured from run 1) over an insecure channel; the client decodes
   them the same way, without the checkpoint check.

3. ``unfiltered`` (baseline): a server in its own process, on the supplier's own mTLS
   credentials, reads the very same rows and columns from the supplier's database, encodes
   each page as JSON lines (the rows as read: no gate, no record envelope, no pseudonyms,
   no saved cursor), chains the same checkpoint and streams the batches; the client is the
   policy stream's (decode and checkpoint check). The policy stream over it is what the
   agreement's enforcement and bookkeeping cost.
4. ``bare_read``: the same pages read from the supplier's database and nothing else, in
   this process (the floor under every stream above).

Each stream is timed three times after a warm-up and the fastest run is reported.
5. ``node_to_node``: the OEM node itself pulls the transfer (``POST /v1/contracts/transfers``)
   and stores every row encrypted under the agreement's data key: the full consumer path.
6. ``incremental``: the supplier then changes 1 % of the order (half of it new
   inspections, half corrections of stored ones) and the OEM pulls with ``since_last``:
   only the changed rows move; against it, a full pull of the same order in the same run
   (which moves every row and, the copy being keyed by record, stores none twice).

    python bench/transfer.py                 # 100k records
    python bench/transfer.py --records 20000 --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc

from qdspace.connector.transfer_wire import Checkpoint, RowBatch
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.contracts_transfer_serde import row_batch_from_proto
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.protocols.v1 import transfer_pb2, transfer_pb2_grpc

ORDER = "PO-2026-0042"
BATCH_ROWS = 2000
REPEATS = 3  # each stream is timed 3 times; the fastest run counts (a shared machine is noisy)
PLAIN_METHOD = "/bench.Plain/Pull"
UNFILTERED_METHOD = "/bench.Unfiltered/Pull"


def _records(path: Path, n: int, first: int = 0, corrected: bool = False) -> Path:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    with path.open("w") as out:
        for i in range(first, first + n):
            at = (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
            out.write(
                json.dumps(
                    {
                        "inspection_id": f"B-{i:08d}",
                        "station": f"EL-{1 + i % 4}",
                        "inspected_at": at,
                        "verdict": "pass" if (i % 23 != 0) != corrected else "fail",
                        "score": round((i % 997) / 1000, 3),
                        "model_version": "el-2026.11",
                        "image_hash": f"{i:064x}",
                        "frame_id": f"F{i}",
                        "order_id": ORDER,
                        "batch_id": f"CX-CB-{i % 12:06d}",
                    }
                )
                + "\n"
            )
    return path


def _setup(workdir: Path, n: int) -> tuple[LocalNetwork, str]:
    net = LocalNetwork(
        workdir, [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")], chain=False
    )
    net.create()
    net.start()
    order = {
        "order_id": ORDER,
        "customer": "sunarc",
        "supplier": "cellex",
        "product": "cells",
        "quantity": n,
        "status": "open",
        "opened_at": "2026-10-01T00:00:00Z",
    }
    with net["cellex"].client(timeout=600) as supplier:
        supplier.post("/v1/ingest/order", json={"rows": [order]}).raise_for_status()
        data = _records(workdir / "records.jsonl", n).read_bytes()
        r = supplier.post(
            "/v1/ingest/inspection", content=data, headers={"content-type": "application/x-ndjson"}
        )
        r.raise_for_status()
    with net["sunarc"].client() as oem:
        r = oem.post(
            "/v1/contracts/negotiations",
            json={
                "peer": "cellex",
                "asset_id": "inspections",
                "purposes": ["quality-assurance"],
                "orders": [ORDER],
            },
        )
        r.raise_for_status()
    return net, r.json()["agreement_id"]


def _decode(batch: RowBatch) -> int:
    """What a consumer does with a batch before storing it: split it into rows and
    their orders (both clients do the same)."""
    payloads, orders = batch.payloads(), batch.orders()
    assert len(payloads) == len(orders) == batch.count
    return batch.count


async def _policy_stream(net: LocalNetwork, agreement_id: str) -> tuple[int, float, list[bytes]]:
    """Pull straight from the supplier as the OEM; returns rows, seconds, raw batches."""
    from qdspace.connector.transfer_messages import TransferRequest
    from qdspace.node.rpc.contracts_transfer_serde import transfer_message_to_proto

    keys = load_member_keys(net["sunarc"].directory)
    peers = PeerDirectory(keys, {"cellex": net["cellex"].grpc_address})
    stub = transfer_pb2_grpc.TransferStub(peers.channel("cellex"))
    provider = load_member_keys(net["cellex"].directory).identity.member_id
    tid = f"trf-bench-{uuid.uuid4().hex}"
    request = TransferRequest(
        f"{tid}:c",
        tid,
        keys.identity.member_id,
        agreement_id,
        provider,
        datetime.now(UTC),
        purpose="quality-assurance",
        order_id=ORDER,
    )
    raw: list[bytes] = []
    started = time.perf_counter()
    ack = await stub.Send(transfer_message_to_proto(request))
    pull = transfer_pb2.PullRequest(
        transfer_id=tid, resume_from=ack.checkpoint, max_batch_rows=BATCH_ROWS
    )
    checkpoint = Checkpoint.genesis(tid)
    rows = 0
    async for message in stub.Pull(pull):
        batch = row_batch_from_proto(message)
        checkpoint = checkpoint.extend_payload(
            batch.payload, batch.count, batch.checkpoint.position
        )
        if checkpoint != batch.checkpoint:
            raise SystemExit("checkpoint mismatch: the stream is corrupt")
        rows += _decode(batch)
        raw.append(message.SerializeToString())
    seconds = time.perf_counter() - started
    await peers.close()
    return rows, seconds, raw


def _plain_server(path: str, port_file: str) -> None:
    """The baseline: stream the captured batches as they are, no TLS, no auth, no policy."""
    batches = json.loads(Path(path).read_text())
    payloads = [bytes.fromhex(b) for b in batches]

    async def pull(request: bytes, context: grpc.aio.ServicerContext) -> Any:
        for payload in payloads:
            yield payload

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20)])
        handler = grpc.unary_stream_rpc_method_handler(pull)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("bench.Plain", {"Pull": handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        Path(port_file).write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(main())


def _page_source(db_url: str, fields: list[str]) -> Any:
    """The supplier's database and the scoped page reader of the bench's order."""
    from sqlalchemy import create_engine

    from qdspace.connector.paging import INSPECTION_TABLE, read_pages

    engine = create_engine(db_url)
    where = INSPECTION_TABLE.c.order_id == ORDER

    def pages() -> Any:
        return read_pages(engine, INSPECTION_TABLE, fields, where, page_size=BATCH_ROWS)

    return pages


def _unfiltered_batches(tid: str, pages: Any, fields: list[str]) -> Any:
    """RowBatches of the rows as read: one JSON call per page, the checkpoint chained."""
    from itertools import repeat

    import orjson

    checkpoint = Checkpoint.genesis(tid)
    for page, last in pages():
        rows = list(map(dict, map(zip, repeat(fields), page)))
        payload = orjson.dumps(rows)[1:-1].replace(b'},{"', b'}\n{"') if rows else b""
        position = str(page[-1][-1]) if page else None
        checkpoint = checkpoint.extend_payload(payload, len(rows), position)
        orders = (ORDER,) if rows else ()
        yield RowBatch(tid, payload, len(rows), orders, (), checkpoint, last)


def _unfiltered_server(member_dir: str, db_url: str, fields: list[str], port_file: str) -> None:
    """The baseline: read, encode and send the same rows over the supplier's mTLS, without
    the agreement (no gate, envelope, pseudonyms or saved cursor)."""
    from qdspace.node.rpc.contracts_transfer_serde import row_batch_wire
    from qdspace.node.rpc.server import server_credentials

    keys = load_member_keys(Path(member_dir))
    pages = _page_source(db_url, fields)

    async def pull(request: bytes, context: grpc.aio.ServicerContext) -> Any:
        batches = _unfiltered_batches(request.decode(), pages, fields)
        ahead = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
        while True:  # one batch ahead in a worker thread, like the node's Pull
            batch = await ahead
            if batch is None:
                return
            ahead = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
            yield row_batch_wire(batch)  # serialised as the node's Pull does (payload copied once)

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20)])
        handler = grpc.unary_stream_rpc_method_handler(pull, response_serializer=bytes)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("bench.Unfiltered", {"Pull": handler})]
        )
        port = server.add_secure_port("127.0.0.1:0", server_credentials(keys))
        await server.start()
        Path(port_file).write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(main())


async def _unfiltered_stream(net: LocalNetwork, port: int) -> tuple[int, float]:
    """The policy stream's client against the unfiltered server (same mTLS, same checks)."""
    keys = load_member_keys(net["sunarc"].directory)
    peers = PeerDirectory(keys, {"cellex": f"127.0.0.1:{port}"})
    call = peers.channel("cellex").unary_stream(
        UNFILTERED_METHOD, response_deserializer=transfer_pb2.RowBatch.FromString
    )
    tid = f"trf-bench-{uuid.uuid4().hex}"
    checkpoint = Checkpoint.genesis(tid)
    rows = 0
    started = time.perf_counter()
    async for message in call(tid.encode()):
        batch = row_batch_from_proto(message)
        checkpoint = checkpoint.extend_payload(
            batch.payload, batch.count, batch.checkpoint.position
        )
        if checkpoint != batch.checkpoint:
            raise SystemExit("checkpoint mismatch: the stream is corrupt")
        rows += _decode(batch)
    seconds = time.perf_counter() - started
    await peers.close()
    return rows, seconds


def _bare_read(db_url: str, fields: list[str]) -> tuple[int, float]:
    pages = _page_source(db_url, fields)
    started = time.perf_counter()
    rows = sum(len(page) for page, _ in pages())
    return rows, time.perf_counter() - started


def _serve(target: Any, args: tuple[Any, ...], port_file: Path) -> tuple[Any, int]:
    """Start a baseline server in its own process; returns it and its port."""
    server = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    server.start()
    while not port_file.exists():
        if not server.is_alive():
            raise SystemExit(f"baseline server {target.__name__} exited ({server.exitcode})")
        time.sleep(0.05)
    return server, int(port_file.read_text())


def _fastest(runs: list[tuple[int, float]]) -> tuple[int, float]:
    return min(runs, key=lambda run: run[1])


async def _plain_stream(port: int) -> tuple[int, float]:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call = channel.unary_stream(
            PLAIN_METHOD, response_deserializer=transfer_pb2.RowBatch.FromString
        )
        rows = 0
        started = time.perf_counter()
        async for message in call(b""):
            rows += _decode(row_batch_from_proto(message))
        return rows, time.perf_counter() - started


def _timed_pull(net: LocalNetwork, agreement_id: str, since_last: bool) -> tuple[int, float]:
    with net["sunarc"].client(timeout=600) as oem:
        started = time.perf_counter()
        r = oem.post(
            "/v1/contracts/transfers",
            json={
                "agreement_id": agreement_id,
                "purpose": "quality-assurance",
                "order_id": ORDER,
                "batch_rows": BATCH_ROWS,
                "since_last": since_last,
            },
        )
        r.raise_for_status()
        elapsed = time.perf_counter() - started
    done = r.json()
    assert done["state"] == "COMPLETED", done
    return int(done["offset"]), elapsed


def _change_one_percent(net: LocalNetwork, workdir: Path, n: int) -> tuple[int, int]:
    """The supplier adds 0.5 % new inspections and corrects 0.5 % of the stored ones."""
    changed = max(2, n // 100)
    new, fixed = changed // 2, changed - changed // 2
    with net["cellex"].client(timeout=600) as supplier:
        for path, field, expect in (
            (_records(workdir / "new.jsonl", new, first=n), "accepted", new),
            (_records(workdir / "fixed.jsonl", fixed, n // 3, True), "corrected", fixed),
        ):
            r = supplier.post(
                "/v1/ingest/inspection",
                content=path.read_bytes(),
                headers={"content-type": "application/x-ndjson"},
            )
            r.raise_for_status()
            assert r.json()[field] == expect, r.json()
    return new, fixed


def _pid_cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) a process has used so far (Linux; None elsewhere): a
    figure the machine's other load moves far less than the wall clock."""
    try:
        assert pid is not None
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (AssertionError, OSError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(net: LocalNetwork, name: str) -> float | None:
    process = net[name].process
    return None if process is None else _pid_cpu_seconds(process.pid)


def _per_row(after: float | None, before: float | None, rows: int) -> float | None:
    """Microseconds of CPU per record between two `_cpu_seconds` readings."""
    if after is None or before is None or not rows:
        return None
    return (after - before) * 1e6 / rows


def _held(net: LocalNetwork, agreement_id: str) -> int:
    with net["sunarc"].client(timeout=600) as oem:
        r = oem.get("/v1/contracts/received", params={"agreement_id": agreement_id, "limit": 1})
        r.raise_for_status()
        return int(r.json()["total"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="5,000 records (CI)")
    args = parser.parse_args()
    if args.quick:
        args.records = 5_000
    results: dict[str, Any] = {
        "records": args.records,
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory(prefix="qdspace-bench-transfer-") as tmp:
        net, agreement_id = _setup(Path(tmp) / "space", args.records)
        try:
            asyncio.run(_policy_stream(net, agreement_id))  # warm-up (page cache, channels)
            spent = _cpu_seconds(net, "cellex")
            runs = [asyncio.run(_policy_stream(net, agreement_id)) for _ in range(REPEATS)]
            rows, seconds, raw = min(runs, key=lambda run: run[1])
            results["policy_stream_records_per_s"] = rows / seconds
            results["policy_stream_supplier_cpu_us_per_record"] = _per_row(
                _cpu_seconds(net, "cellex"), spent, rows * REPEATS
            )
            captured = Path(tmp) / "batches.json"
            captured.write_text(json.dumps([b.hex() for b in raw]))
            server, port = _serve(
                _plain_server, (str(captured), str(Path(tmp) / "port")), Path(tmp) / "port"
            )
            try:
                asyncio.run(_plain_stream(port))  # warm-up
                plain_rows, plain_s = _fastest(
                    [asyncio.run(_plain_stream(port)) for _ in range(REPEATS)]
                )
            finally:
                server.terminate()
                server.join()
            assert plain_rows == rows, (plain_rows, rows)
            results["plain_stream_records_per_s"] = plain_rows / plain_s
            results["policy_over_plain_ratio"] = (
                results["policy_stream_records_per_s"] / results["plain_stream_records_per_s"]
            )
            # the same granted fields, as the policy stream sent them (envelope aside)
            first = json.loads(
                row_batch_from_proto(transfer_pb2.RowBatch.FromString(raw[0])).payloads()[0]
            )
            fields = sorted(name for name in first if not name.startswith("@"))
            db_url = net["cellex"].db_url
            port_file = Path(tmp) / "port-unfiltered"
            args_u = (str(net["cellex"].directory), db_url, fields, str(port_file))
            server, port = _serve(_unfiltered_server, args_u, port_file)
            try:
                asyncio.run(_unfiltered_stream(net, port))  # warm-up
                spent = _pid_cpu_seconds(server.pid)
                open_rows, open_s = _fastest(
                    [asyncio.run(_unfiltered_stream(net, port)) for _ in range(REPEATS)]
                )
                open_cpu = _per_row(_pid_cpu_seconds(server.pid), spent, open_rows * REPEATS)
            finally:
                server.terminate()
                server.join()
            assert open_rows == rows, (open_rows, rows)
            results["unfiltered_stream_records_per_s"] = open_rows / open_s
            results["unfiltered_server_cpu_us_per_record"] = open_cpu
            policy_cpu = results["policy_stream_supplier_cpu_us_per_record"]
            results["policy_over_unfiltered_cpu_ratio"] = (
                None if policy_cpu is None or not open_cpu else open_cpu / policy_cpu
            )
            results["policy_over_unfiltered_ratio"] = (
                results["policy_stream_records_per_s"] / results["unfiltered_stream_records_per_s"]
            )
            bare_rows, bare_s = _fastest([_bare_read(db_url, fields) for _ in range(REPEATS)])
            assert bare_rows == rows, (bare_rows, rows)
            results["bare_read_records_per_s"] = bare_rows / bare_s
            spent = {name: _cpu_seconds(net, name) for name in ("cellex", "sunarc")}
            stored, elapsed = _timed_pull(net, agreement_id, since_last=False)
            results["node_to_node_stored_records_per_s"] = stored / elapsed
            for name, role in (("cellex", "supplier"), ("sunarc", "consumer")):
                results[f"node_to_node_{role}_cpu_us_per_record"] = _per_row(
                    _cpu_seconds(net, name), spent[name], stored
                )
            new, fixed = _change_one_percent(net, Path(tmp), args.records)
            moved, incremental_s = _timed_pull(net, agreement_id, since_last=True)
            assert moved == new + fixed, (moved, new, fixed)
            full_rows, full_s = _timed_pull(net, agreement_id, since_last=False)
            assert full_rows == args.records + new, full_rows
            held = _held(net, agreement_id)
            assert held == args.records + new, held  # each record once, after three pulls
            results["incremental"] = {
                "changed_rows": moved,
                "new_rows": new,
                "corrected_rows": fixed,
                "incremental_pull_s": incremental_s,
                "full_pull_rows": full_rows,
                "full_pull_s": full_s,
                "full_over_incremental": full_s / incremental_s,
                "held_records": held,
            }
        finally:
            net.stop()
    print(f"transfer.records: {rows} records")
    print(f"transfer.policy_stream: {results['policy_stream_records_per_s']:.0f} records/s")
    print(f"transfer.plain_stream: {results['plain_stream_records_per_s']:.0f} records/s")
    print(f"transfer.policy_over_plain: {results['policy_over_plain_ratio']:.3f} ratio")
    print(f"transfer.unfiltered_stream: {results['unfiltered_stream_records_per_s']:.0f} records/s")
    print(f"transfer.policy_over_unfiltered: {results['policy_over_unfiltered_ratio']:.3f} ratio")
    print(f"transfer.bare_read: {results['bare_read_records_per_s']:.0f} records/s")
    print(
        f"transfer.node_to_node_stored: {results['node_to_node_stored_records_per_s']:.0f} "
        "records/s"
    )
    for key, label in (
        ("policy_stream_supplier_cpu_us_per_record", "policy_stream_supplier_cpu"),
        ("unfiltered_server_cpu_us_per_record", "unfiltered_server_cpu"),
        ("node_to_node_supplier_cpu_us_per_record", "node_to_node_supplier_cpu"),
        ("node_to_node_consumer_cpu_us_per_record", "node_to_node_consumer_cpu"),
    ):
        if results[key] is not None:
            print(f"transfer.{label}: {results[key]:.2f} us/record")
    if results["policy_over_unfiltered_cpu_ratio"] is not None:
        ratio = results["policy_over_unfiltered_cpu_ratio"]
        print(f"transfer.policy_over_unfiltered_cpu: {ratio:.3f} ratio (unfiltered/policy CPU)")
    inc = results["incremental"]
    print(
        f"transfer.incremental_1pct: {inc['changed_rows']} rows in "
        f"{inc['incremental_pull_s']:.2f} s ({inc['new_rows']} new, "
        f"{inc['corrected_rows']} corrected)"
    )
    print(
        f"transfer.full_pull_same_order: {inc['full_pull_rows']} rows in {inc['full_pull_s']:.2f} s"
    )
    print(f"transfer.full_over_incremental: {inc['full_over_incremental']:.1f} ratio")
    print(f"transfer.held_after_all_pulls: {inc['held_records']} records")
    print(f"transfer.cpus: {results['cpus']} cores")
    results["loadavg_1m_end"] = os.getloadavg()[0]
    print(f"transfer.loadavg_1m: {results['loadavg_1m']:.2f} load")
    print(f"transfer.loadavg_1m_end: {results['loadavg_1m_end']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
