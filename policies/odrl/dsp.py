"""The node's policies in the forms the Dataspace Protocol exchanges them.

A catalog offer goes out without ``target`` (the dataset it hangs under is the
target); an agreement carries both parties, its target and the ``timestamp``
at which it was agreed. Both are compacted with the DSP 2025-1 context and
declare the node's profile (`vocab.QDS_PROFILE`) for the terms it adds.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from qdspace.policies.model import Policy
from qdspace.policies.odrl.bridge import to_odrl
from qdspace.policies.odrl.codec import policy_to_jsonld


def offer_jsonld(offer: Policy, *, embedded: bool = True) -> dict[str, Any]:
    """A dataset's offer (``hasPolicy`` item) in the DSP catalog form."""
    return policy_to_jsonld(to_odrl(offer), catalog=True, embedded=embedded)


def agreement_jsonld(agreement: Policy, agreed_at: datetime) -> dict[str, Any]:
    """An agreement's policy as a DSP ODRL Agreement, timestamped when it was agreed."""
    policy = replace(to_odrl(agreement), timestamp=agreed_at)
    return policy_to_jsonld(policy)
