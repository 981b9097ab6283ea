"""The anchoring transaction's plain facts (its gas limits, the record of a signed
transaction), apart from the web3 client: a node reads its ledger settings (whose default
gas limit is `ANCHOR_GAS`) and opens its leaf queue (which stores `SignedAnchor`s) without
importing web3 and eth_account, about half a second of start-up that a node or host
without a chain never pays."""

from __future__ import annotations

from dataclasses import dataclass

#: Headroom over an ``eth_estimateGas`` answer when the anchorer asks the chain.
GAS_MARGIN = 1.25
# ``anchor`` costs the same every call: 21k intrinsic + calldata + two fresh storage slots +
# one log, measured at 70.7k-71.1k gas used (eth_estimateGas: 80.0k-80.4k) on py-evm. A
# fixed limit with ~1.5x margin over the estimate spares an EVM execution (and a round
# trip) per transaction; the tests check the estimate stays under it on py-evm and ganache.
ANCHOR_GAS = 120_000
#: the most the node signs to pay a gas unit (wei; 500 gwei: some fifty times what busy
#: public chains asked in 2025), and the highest gas limit it signs (``max_fee_gwei``,
#: ``max_gas`` in ``ledger.json``): the endpoint quotes both, and may be a third party's
DEFAULT_MAX_FEE_PER_GAS = 500 * 10**9
DEFAULT_MAX_GAS = 1_000_000
#: Anchor transactions the anchorer sends (consecutive nonces) before awaiting receipts.
DEFAULT_MAX_IN_FLIGHT = 16


@dataclass(frozen=True, slots=True)
class SignedAnchor:
    """A signed ``anchor`` transaction, stored before it is sent so it can be resent as is."""

    raw: bytes
    tx_hash: bytes
    nonce: int
    sender: str
