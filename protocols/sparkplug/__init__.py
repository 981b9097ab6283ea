"""Sparkplug B payloads (the subset the MQTT connector reads); stubs generated, committed."""
