"""MQTT connector (paho-mqtt 2): QoS 1 readings stored exactly once, acknowledged after commit.

Payloads are a JSON object per message, or Sparkplug B protobuf (``payload_format:
sparkplug_b``, one reading per mapped metric: :mod:`connector.linein.sparkplug`).

Exactly once *on our side* is two halves. The broker keeps a persistent session for our
fixed client id (MQTT 5: ``clean_start=False`` and a session that never expires; 3.1.1:
``clean_session=False``), so a QoS 1 message we have not acknowledged
is delivered again when we reconnect, whether we crashed, were killed or lost the
network: nothing is lost. We acknowledge a message (``manual_ack``: paho sends no
PUBACK by itself) only after :class:`~connector.linein.sink.MeasurementSink` committed
it, and the store keys each reading by (equipment, element, measured_at) with ``ON
CONFLICT DO NOTHING``: a message delivered again after the commit but before its
PUBACK is a duplicate, stored once.

paho's network thread only queues messages onto the event loop; the loop stores them
in batches (one ingest call per batch, then the PUBACKs in the order the messages
arrived, as MQTT asks). A message acknowledged on another connection than the
one it came on is left alone: the broker sends it again on the new one. A payload
that cannot be read, or a reading the dictionary refuses, is reported with its topic
and acknowledged (sending it again would not mend it); so is one that breaks the
mapping or the ingest in a way no rule foresaw (an exception: it is refused with it as
the reason, never the end of the listener). Only a store that cannot be written ends
the session without acknowledging, and the next session gets the messages again.

Messages wait for the store in a queue bounded by count and by bytes (`QUEUED`,
`QUEUED_BYTES`: :mod:`connector.linein.mqtt_queue`): while the store is behind, paho's
network thread waits for room and reads no more, and TCP holds the broker back (an
unbounded queue took 380 MB in eight seconds of a QoS 0 flood while the database was
locked; 2,000 messages of 128 KiB are some 260 MB, hence the bytes). A batch ends at
`BATCH_READINGS` readings too: a Sparkplug B message brings up to 10,000, and a batch of
500 such messages (3.5 million readings, some 900 MB, read on the event loop for two
minutes) was read whole before any was stored; and a batch keeps of a message it read
only what acknowledging it takes, not its payload.

Every refused reading counts once in the rejected count (the sink's totals, logged and
printed as the connector's status), though not every one has a line of its own: a
Sparkplug B message's refusals are one logged line per reason, with the count (7,000
metrics of an unknown alias are one line, not 7,000), and the sink counts lines, so the
connector hands the sink the metrics such lines stand for (before, the 7,000 counted as
one).

A message far larger than a reading can be (`MAX_PAYLOAD_BYTES`) never reaches us: we speak
MQTT 5 (``protocol: mqtt5``, the default) and declare a Maximum Packet Size in CONNECT
(`MAX_PACKET_BYTES`), and a broker must not send a larger packet to us, so a hostile
publisher on a shared broker cannot make paho read megabytes. The declared size leaves
room for the topic and properties, so a payload a little over the limit still arrives
and is refused here for its size (the second line, and the only one with ``protocol:
mqtt311``, for a broker without MQTT 5: there paho reads a payload whole before it is
refused, so set the broker's ``message_size_limit`` (mosquitto) to 65536).

Nothing on our side records a message the broker dropped for its size (over
`MAX_PACKET_BYTES`). MQTT 5 has the
server discard it and "behave as if it had completed sending" it [MQTT-3.1.2-25]: we
get nothing, no disconnect, no reason code; the publisher's PUBACK says Success; and
mosquitto (2.0) counts it in no ``$SYS`` topic (``publish/messages/dropped`` counts
queue-limit drops only; tried). The one record is the broker's log, at notice level
(in mosquitto's default ``log_type``): ``Dropping too large outgoing PUBLISH for
<client id> (<n> bytes)``; watch it there. Sparkplug B shows the loss indirectly: the
edge node's next message skips a ``seq``, logged here with a rebirth request. An operator
who would rather have every message reach the connector (and an oversized one refused
and counted here, read whole first) sets ``protocol: mqtt311``, which declares no size;
the broker's ``message_size_limit`` then bounds what is read.

Sparkplug B 3.0 runs over MQTT 3.1.1 or 5; this connector only reads its messages (it is
no edge node) and keeps a persistent session under either, as it did under 3.1.1. A
broker that does not speak 5 refuses the connection, logged as an error that names the
setting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from typing import Any

from qdspace.connector.errors import StorageError
from qdspace.connector.linein.config import MqttConfig
from qdspace.connector.linein.mapping import MAX_PAYLOAD_BYTES, mqtt_mapping, mqtt_row
from qdspace.connector.linein.mqtt_queue import Message, MessageQueue, Receipt
from qdspace.connector.linein.sink import Item, MeasurementSink
from qdspace.connector.linein.sparkplug import BirthBook, read_sparkplug, rebirth_request

log = logging.getLogger("qdspace.connector.linein.mqtt")

#: messages stored per ingest call at most (the broker's in-flight window is the
#: real bound: mosquitto sends 20 unacknowledged QoS 1 messages per client by default)
BATCH = 500
#: readings read for one ingest call, at most (one more message may bring
#: `sparkplug.MAX_METRICS`): a Sparkplug B payload of 64 kB carries some 7,000 readings,
#: and 500 such messages read before storing them took over 1 GB
BATCH_READINGS = 20_000
#: messages received and not yet stored, at most (an unbounded queue grew by 380 MB in
#: eight seconds of a QoS 0 flood while the database was locked)
QUEUED = 4 * BATCH
#: their payloads and topics, bytes at most (2,000 messages of `MAX_PACKET_BYTES` were
#: some 260 MB; the queue overshoots by the one message let in below it)
QUEUED_BYTES = 32 * 1024 * 1024
#: Sparkplug B: a rebirth is asked of one edge node at most this often
REBIRTH_HOLDOFF_S = 10.0
#: Sparkplug B: rebirths asked per holdoff window at most (edge node names are the
#: publisher's to invent: one NCMD each would be an amplifier, and a table that grows)
MAX_REBIRTHS = 100
#: MQTT 5: the largest packet the broker may send us (Maximum Packet Size): a payload of
#: `MAX_PAYLOAD_BYTES` with a topic, header and properties of up to as much again
MAX_PACKET_BYTES = 2 * MAX_PAYLOAD_BYTES
#: MQTT 5 Session Expiry Interval meaning "never": the broker keeps our session and its
#: messages until we come back, as ``clean_session=False`` does in MQTT 3.1.1
SESSION_NEVER_EXPIRES = 0xFFFFFFFF


def _session(config: MqttConfig) -> dict[str, Any]:
    """MQTT 5 CONNECT options: resume the session we left, keep it while we are away,
    and send us no packet over `MAX_PACKET_BYTES` (3.1.1: none, the client was given
    ``clean_session=False`` and the broker cannot be told a size)."""
    if config.protocol != "mqtt5":
        return {}
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = SESSION_NEVER_EXPIRES
    properties.MaximumPacketSize = MAX_PACKET_BYTES
    return {"clean_start": False, "properties": properties}


def _source(topic: str) -> str:
    """The source a message's readings are reported with. A topic is a publisher's
    text: one that is not printable (U+2028, U+202E: mosquitto passes them) is written
    escaped, not as a line break or as reordered text in the log."""
    return f"mqtt:{topic}" if topic.isprintable() else f"mqtt:{topic!a}"


class MqttConnector:
    def __init__(self, config: MqttConfig, sink: MeasurementSink) -> None:
        self.config = config
        self.sink = sink
        #: connections made (a restart that resumes the session is one more)
        self.sessions = 0
        #: whether the broker still had our session at the last connection
        self.session_present = False
        self._lock = threading.Lock()
        self._connected = False
        #: Sparkplug B: what each edge node's / device's last BIRTH said (kept across
        #: reconnections: an edge node sends its BIRTH once per its own session)
        self._births = BirthBook()
        self._rebirth_asked: dict[tuple[str, str], float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Store messages until ``stop`` is set; a store failure restarts the client."""
        while not stop.is_set():
            try:
                await self._client_run(stop)
            except StorageError as exc:
                log.error(
                    "mqtt %s:%d: store failed, nothing acknowledged, reconnecting in %.1f s: %s",
                    self.config.host,
                    self.config.port,
                    self.config.reconnect_s,
                    exc,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.reconnect_s)

    async def _client_run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        queue = MessageQueue(QUEUED, QUEUED_BYTES)
        ending = threading.Event()
        client = self._client(loop, queue, ending)
        client.connect_async(
            self.config.host, self.config.port, self.config.keepalive_s, **_session(self.config)
        )
        client.loop_start()  # connects, and reconnects after every loss, in its thread
        try:
            await self._pump(client, queue, stop)
        finally:
            ending.set()  # a message waiting for room in the queue is dropped (not acked)
            with self._lock:
                self._connected = False
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    def _client(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: MessageQueue,
        ending: threading.Event,
    ) -> Any:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        config = self.config
        if config.protocol == "mqtt5":  # the session is asked for in CONNECT: _session
            version: dict[str, Any] = {"protocol": paho.MQTTv5}
        else:
            version = {"protocol": paho.MQTTv311, "clean_session": False}
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=config.client_id, manual_ack=True, **version
        )
        client.reconnect_delay_set(
            min_delay=max(1, round(config.reconnect_s)),
            max_delay=max(1, round(config.reconnect_s * 16)),
        )
        if config.username is not None:
            password = None
            if config.password_file is not None:
                password = config.password_file.read_text(encoding="utf-8").strip()
            client.username_pw_set(config.username, password)
        if config.ca_file is not None or config.cert_file is not None:
            client.tls_set(
                ca_certs=str(config.ca_file) if config.ca_file else None,
                certfile=str(config.cert_file) if config.cert_file else None,
                keyfile=str(config.key_file) if config.key_file else None,
            )

        def on_connect(client: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                if config.protocol == "mqtt5" and "protocol version" in str(reason).lower():
                    log.error(
                        "mqtt %s:%d: the broker does not speak MQTT 5 (%s): set "
                        "'protocol: mqtt311' in the connector's configuration",
                        config.host,
                        config.port,
                        reason,
                    )
                    return
                log.warning("mqtt %s:%d: connection refused: %s", config.host, config.port, reason)
                return
            with self._lock:
                self.sessions += 1
                self._connected = True
                self.session_present = bool(flags.session_present)
            log.info(
                "mqtt %s:%d: connected as %s (session %s)",
                config.host,
                config.port,
                config.client_id,
                "resumed" if flags.session_present else "new",
            )
            client.subscribe([(t.topic, config.qos) for t in config.topics])

        def on_disconnect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            with self._lock:
                self._connected = False
            log.warning("mqtt %s:%d: disconnected: %s", config.host, config.port, reason)

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            try:
                topic: str | None = msg.topic
            except UnicodeDecodeError:
                topic = None
            message = Message(self.sessions, topic, bytes(msg.payload), msg.mid, msg.qos)
            # the queue is bounded (messages and bytes): while the store is behind, paho's
            # thread waits here and reads no more from the broker (TCP holds the rest back)
            queued = asyncio.run_coroutine_threadsafe(queue.put(message), loop)
            while True:
                try:
                    queued.result(timeout=0.5)
                    return
                except concurrent.futures.TimeoutError:
                    if ending.is_set():
                        queued.cancel()
                        return

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        return client

    async def _pump(self, client: Any, queue: MessageQueue, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                first = await asyncio.wait_for(queue.get(), 0.2)
            except TimeoutError:
                continue
            items, more = self._read(first)
            receipts = [first.receipt]
            while not queue.empty() and len(receipts) < BATCH and len(items) < BATCH_READINGS:
                message = queue.get_nowait()
                read, n = self._read(message)
                items.extend(read)
                more += n
                receipts.append(message.receipt)
            await asyncio.to_thread(self.sink.put, items, more)
            self._ack(client, receipts)
            self._ask_rebirth(client)

    def _read(self, message: Message) -> tuple[list[Item], int]:
        """The readings of one message, and how many readings its refusal lines stand
        for beyond one each. One that breaks the mapping is refused with the exception
        as its reason (and acknowledged): raised, it would end the listener, and the
        broker would deliver it again after every restart."""
        try:
            return self._items(message)
        except Exception as exc:
            source = _source(message.topic or "?")
            return [(source, ("-", f"could not be read: {type(exc).__name__}: {exc}"))], 0

    def _items(self, message: Message) -> tuple[list[Item], int]:
        """The readings of one message (a Sparkplug B payload may carry many, or none),
        and the readings its refusal lines stand for beyond one each."""
        if message.topic is None:
            return [("mqtt:?", ("topic", "topic is not UTF-8"))], 0
        source = _source(message.topic)
        if self.config.payload_format == "sparkplug_b":
            read = read_sparkplug(self.config, self._births, message.topic, message.payload)
            lines = sum(isinstance(row, tuple) for row in read.rows)
            return [(source, row) for row in read.rows], read.refused - lines
        mapping = mqtt_mapping(self.config, message.topic)
        if mapping is None:
            return [(source, ("topic", "matches no configured topic filter"))], 0
        return [(source, mqtt_row(self.config, mapping, message.topic, message.payload))], 0

    def _ask_rebirth(self, client: Any) -> None:
        """Sparkplug B: ask each edge node that used an unknown alias to be born again
        (once per ``REBIRTH_HOLDOFF_S`` per node: its BIRTH may be on the way)."""
        if not self._births.unknown:
            return
        now = time.monotonic()
        self._rebirth_asked = {
            k: t for k, t in self._rebirth_asked.items() if now - t < REBIRTH_HOLDOFF_S
        }
        for group, node in sorted(self._births.unknown):
            if (group, node) in self._rebirth_asked:
                continue
            if len(self._rebirth_asked) >= MAX_REBIRTHS:
                log.warning(
                    "mqtt %s:%d: %d rebirths asked in %.0f s; %s/%s and others not asked now",
                    self.config.host,
                    self.config.port,
                    MAX_REBIRTHS,
                    REBIRTH_HOLDOFF_S,
                    group,
                    node,
                )
                break
            topic, payload = rebirth_request(group, node, int(time.time() * 1000))
            client.publish(topic, payload, qos=0)
            self._rebirth_asked[(group, node)] = now
            log.warning(
                "mqtt %s:%d: edge node %s/%s: a metric no BIRTH seen named or typed, or a gap "
                "in seq: rebirth asked on %s",
                self.config.host,
                self.config.port,
                group,
                node,
                topic,
            )
        self._births.unknown.clear()

    def _ack(self, client: Any, batch: list[Receipt]) -> None:
        """PUBACK every stored message that came on the current connection, in order."""
        with self._lock:
            for m in batch:
                if m.qos and self._connected and m.session == self.sessions:
                    client.ack(m.mid, m.qos)
