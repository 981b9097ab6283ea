"""A real mosquitto for the line-in tests, and a line tool publishing on it (QoS 1)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("paho.mqtt", reason="the connect extra (paho-mqtt) is not installed")
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from qdspace.util.ports import free_port

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
)
if MOSQUITTO is None:
    pytest.skip(
        "mosquitto is not installed (apt-get install mosquitto; .ci/run does)",
        allow_module_level=True,
    )


class Broker:
    """mosquitto on loopback, its sessions saved on disk across a restart."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp / "mosquitto"
        self.dir.mkdir()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            # as root mosquitto drops to user mosquitto, who may not write our folder
            f"user {getpass.getuser()}\n"
            f"persistence true\npersistence_location {self.dir}/\n"
            "max_queued_messages 10000\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        with (self.dir / "log").open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not start: {(self.dir / 'log').read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # saves the sessions to persistence_location
            self.proc.wait(10)
            self.proc = None


class Publisher:
    """A line tool publishing QoS 1 readings (waits for each PUBACK from the broker)."""

    def __init__(self, port: int, client_id: str = "pecvd-tool") -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, body: Any, *, retain: bool = False) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
