"""A URL as it may be shown: in a report, a log line, a JSON answer, an error message.

Hosted JSON-RPC endpoints carry their API key in the URL itself: in the path
(``https://mainnet.infura.io/v3/KEY``, ``https://eth-mainnet.g.alchemy.com/v2/KEY``,
``https://NAME.quiknode.pro/KEY/``), in the query (``?apikey=KEY``), or as user and
password (``https://user:pass@host``). What the verifier and the CLI print ends up in
tickets, chat and logs, so a URL is shown with what says *which* endpoint it is and
nothing that lets someone else use it. The rule, in one place (`redact_url`):

- scheme, host and port are kept as written;
- user and password (``user:pass@``) are dropped;
- a query becomes ``?…``, a fragment ``#…``;
- a path segment is kept only when it is a short word: 1 to 8 ASCII letters, then at
  most 2 digits (``v3``, ``rpc``, ``eth``, ``mainnet``, ``ext``, ``C``); any other
  segment (a key, a token, a UUID, anything with ``%``) becomes ``…``.

A key is long and random; a word of up to 8 letters is not one. What is stored (the
node's ``ledger.json``, a tenant's settings) keeps the URL whole: only what is shown
is redacted.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

#: a path segment shown as written: a short word, maybe a version number after it
_SHOWN_SEGMENT = re.compile(r"[A-Za-z]{1,8}[0-9]{0,2}")
#: what stands for whatever was left out
HIDDEN = "…"


def redact_url(url: str) -> str:
    """`url` with its credentials left out, by the rule of the module docstring:
    ``https://u:p@mainnet.infura.io:443/v3/KEY?apikey=K`` is shown as
    ``https://mainnet.infura.io:443/v3/…?…``."""
    if "@" in url:  # user and password go, whatever they hold (see `_without_userinfo`)
        url = _without_userinfo(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: nothing of it is shown
        return HIDDEN
    host = parts.netloc.rpartition("@")[2]
    shown = f"{parts.scheme}:" if parts.scheme else ""
    if parts.netloc or url.startswith(f"{shown}//"):
        shown += f"//{host}"
    if parts.path:
        shown += "/".join(_segment(s) for s in parts.path.split("/"))
    if parts.query:
        shown += "?" + HIDDEN
    if parts.fragment:
        shown += "#" + HIDDEN
    return shown


def _without_userinfo(url: str) -> str:
    """`url` without everything up to its last ``@`` (the scheme kept): a password pasted
    unencoded may hold ``/``, ``?`` or ``#``, where a URL parser ends the host part, so
    that the ``@`` after it was read as part of the path and the password was shown. An
    ``@`` in a path or a query takes more with it: shown less, never more."""
    scheme, sep, rest = url.partition("//")
    if sep and "@" in rest:
        return f"{scheme}//{rest.rpartition('@')[2]}"
    return url.rpartition("@")[2]


def _segment(segment: str) -> str:
    return segment if not segment or _SHOWN_SEGMENT.fullmatch(segment) else HIDDEN


def redact_url_in(text: str, url: str) -> str:
    """`text` (an error message, say) with every occurrence of `url` redacted."""
    return text.replace(url, redact_url(url)) if url else text
