"""ODRL 2.2 in full: the model, the evaluator with its report, and the DSP JSON-LD form.

`policies.model` is the node's own, smaller policy form, which agreements
between nodes are signed over; `bridge` reads it as ODRL so one evaluator
(`evaluate.evaluate_policy`) explains both, and `codec` reads and writes the
JSON-LD form other Dataspace Protocol connectors (Eclipse EDC) exchange.
"""
