"""Line data in: OPC UA, MQTT and export-folder connectors that feed the QDM store.

Why a room of its own: shop-floor data arrives on protocols the rest of the node never
speaks, and each protocol fails in its own way (a PLC restarts, a broker redelivers, an
MES writes half a file). Each connector is a thin adapter: decode what arrived, map it
to a QDM row with the pure code of :mod:`connector.linein.mapping`, and hand the rows
to one ingest call (:class:`connector.linein.sink.MeasurementSink`), which validates them
through the data dictionary and stores them idempotently by their natural keys. So a
re-delivered reading (an OPC UA re-subscription, an MQTT redelivery, a file dropped
twice) is a duplicate stored once, and a malformed one is reported with its source
(node id, topic, file:line) without stopping the connector.
"""
