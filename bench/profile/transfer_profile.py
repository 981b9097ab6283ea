"""Where a transfer's time goes: py-spy samples of the supplier and the OEM node.

Sets up the network of ``bench/transfer.py`` (N inspection records, one agreement), then
samples the supplier while the policy stream runs four times, and both nodes during one
node-to-node pull; prints each profile's busy samples by own time and by inclusive time.
Idle threads (waiting on a queue, a lock or the poller) are left out.

    python bench/profile/transfer_profile.py before          # 100k records
    python bench/profile/transfer_profile.py after 30000

Needs py-spy (the dev extra) and the right to attach to a child process (root, or
``kernel.yama.ptrace_scope=0``). The raw profiles are written to ``/tmp/qdspace-profile``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))

import transfer as bench  # noqa: E402  (bench/transfer.py)

OUT = Path("/tmp/qdspace-profile")
# a thread waiting for work: the pool's queue, a condition, the selector
IDLE = ("_worker (thread.py:81)", "wait (threading.py", "select (selectors.py", "get (queue.py")


def _spy(pid: int, path: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [spy, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(path)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(2)
    for spy in spies:
        spy.wait()


def summarize(path: Path, top: int = 25) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [re.sub(r" \((.*/)?", " (", f) for f in stack.split(";")]
        if any(k in frames[-1] for k in IDLE):
            continue
        total += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            inclusive[frame] += int(n)
    print(f"== {path.name}: {total} busy samples")
    for title, counter in (("own", own), ("inclusive", inclusive)):
        print(f"-- {title}")
        for frame, n in counter.most_common(top):
            print(f"{100 * n / max(total, 1):5.1f}% {frame}")


def main() -> None:
    tag = sys.argv[1] if len(sys.argv) > 1 else "profile"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        net, agreement_id = bench._setup(Path(tmp) / "space", n)
        try:
            asyncio.run(bench._policy_stream(net, agreement_id))  # warm-up
            supplier, oem = net["cellex"].process, net["sunarc"].process
            assert supplier is not None and oem is not None
            spies = [_spy(supplier.pid, OUT / f"{tag}-supplier.txt")]
            time.sleep(1.5)  # py-spy attaches
            for _ in range(4):
                rows, seconds, _ = asyncio.run(bench._policy_stream(net, agreement_id))
                print(f"policy stream: {rows / seconds:.0f} records/s")
            _stop(spies)
            spies = [
                _spy(oem.pid, OUT / f"{tag}-oem.txt"),
                _spy(supplier.pid, OUT / f"{tag}-supplier-n2n.txt"),
            ]
            time.sleep(1.5)
            rows, seconds = bench._timed_pull(net, agreement_id, since_last=False)
            print(f"node to node: {rows / seconds:.0f} records/s")
            _stop(spies)
        finally:
            net.stop()
    print(f"load average: {os.getloadavg()}")
    for name in ("supplier", "oem", "supplier-n2n"):
        summarize(OUT / f"{tag}-{name}.txt")


if __name__ == "__main__":
    main()
