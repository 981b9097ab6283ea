"""The chain account that pays for anchoring: loaded from a file or an environment variable.

The private key never appears in a repr, a log line or an error message; only the address
does. A key is 32 bytes as hex (with or without ``0x``), the whole content of the file or
variable apart from surrounding whitespace.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# libsecp256k1 through coincurve: eth_keys uses it whenever it can be imported, else falls
# back to pure-Python elliptic curves. Signing an anchor transaction then costs 0.8 ms instead
# of 3.8 ms, and the embedded chain's sender recovery (every sent transaction, every receipt)
# 2 ms instead of 7 ms. Imported here so that an install without it fails loudly.
import coincurve  # noqa: F401
from eth_account import Account
from eth_account.datastructures import SignedTransaction
from eth_account.signers.local import LocalAccount

from qdspace.ledger.errors import AccountKeyError

_HEX_KEY = re.compile(r"(0x)?[0-9a-fA-F]{64}")
DEFAULT_KEY_ENV = "QDSPACE_CHAIN_KEY"


@dataclass(frozen=True, slots=True)
class ChainSigner:
    """Signs anchoring transactions; ``repr`` shows the address only."""

    address: str
    _account: LocalAccount = field(repr=False, compare=False)

    @classmethod
    def from_hex(cls, key_hex: str, *, source: str) -> ChainSigner:
        """Parse a hex private key; ``source`` names where it came from, for errors."""
        text = key_hex.strip()
        if not _HEX_KEY.fullmatch(text):
            raise AccountKeyError(f"{source}: not a 32-byte hex private key")
        try:
            account: LocalAccount = Account.from_key(text)
        except (ValueError, TypeError):
            raise AccountKeyError(f"{source}: not a valid secp256k1 private key") from None
        return cls(account.address, account)

    def sign(self, tx: dict[str, Any]) -> SignedTransaction:
        """Sign a transaction dict (EIP-1559 or legacy) for this account."""
        return self._account.sign_transaction(tx)


def load_signer(key_file: Path | None = None, key_env: str | None = DEFAULT_KEY_ENV) -> ChainSigner:
    """The signer from ``key_file`` if given, else from the environment variable ``key_env``."""
    if key_file is not None:
        try:
            text = key_file.read_text(encoding="ascii")
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise AccountKeyError(f"chain key file {key_file}: cannot read ({why})") from None
        except UnicodeDecodeError:
            raise AccountKeyError(f"chain key file {key_file}: not ASCII hex") from None
        return ChainSigner.from_hex(text, source=f"chain key file {key_file}")
    if key_env:
        value = os.environ.get(key_env)
        if value:
            return ChainSigner.from_hex(value, source=f"environment variable {key_env}")
    raise AccountKeyError(
        f"no chain account key: pass a key file or set the environment variable {key_env}"
    )


def new_key_file(path: Path) -> ChainSigner:
    """Create a fresh private key file (mode 0600) for a dev or test account."""
    account: LocalAccount = Account.create()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(account.key.hex() + "\n")
    return ChainSigner(account.address, account)
