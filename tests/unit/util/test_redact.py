"""A chain endpoint's URL is shown without the API key, password or token it carries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qdspace.util.redact import redact_url, redact_url_in


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161",
         "https://mainnet.infura.io/v3/…"),
        ("https://eth-mainnet.g.alchemy.com/v2/AbCdEfGhIjKlMnOpQrStUvWxYz012345",
         "https://eth-mainnet.g.alchemy.com/v2/…"),
        ("https://white-snow.quiknode.pro/0123456789abcdef0123456789abcdef01234567/",
         "https://white-snow.quiknode.pro/…/"),
        ("https://api.etherscan.io/api?module=proxy&apikey=YourApiKeyToken",
         "https://api.etherscan.io/api?…"),
        ("https://alice:s3cret@rpc.example.org:8545/", "https://rpc.example.org:8545/"),
        ("https://alice:secret#1@rpc.example.org/", "https://rpc.example.org/"),
        ("https://alice:Xy7/Kp2q@rpc.example.org/v3/abc", "https://rpc.example.org/v3/abc"),
        ("https://a:b?c@rpc.example.org:8545", "https://rpc.example.org:8545"),
        ("https://rpc.example.org/rpc#token=abc", "https://rpc.example.org/rpc#…"),
        ("https://api.avax.network/ext/bc/C/rpc", "https://api.avax.network/ext/bc/C/rpc"),
        ("https://rpc.ankr.com/eth/a%2Fb", "https://rpc.ankr.com/eth/…"),
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("http://[::1]:8545/rpc", "http://[::1]:8545/rpc"),
        ("http://[::1", "…"),  # unreadable: nothing of it shown
        ("", ""),
    ],
)  # fmt: skip
def test_a_url_is_shown_with_scheme_host_port_and_short_words_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # shown again, it stays as it is


#: key-like text longer than the longest segment shown (8 letters and 2 digits)
KEY = st.text("abcdefABCDEF0123456789-_", min_size=11, max_size=64)


#: a password as pasted: anything, unencoded (``/``, ``?``, ``#``, ``@``, ``:`` too)
PASSWORD = st.text("abcdefABCDEF0123456789-_/?#@:%", min_size=11, max_size=64)


@given(key=KEY, password=PASSWORD, query=KEY, port=st.integers(1, 65535))
def test_no_key_in_the_path_query_or_userinfo_is_ever_shown(
    key: str, password: str, query: str, port: int
) -> None:
    url = f"https://user:{password}@rpc.example.org:{port}/v3/{key}?apikey={query}"
    shown = redact_url(url)
    assert shown == f"https://rpc.example.org:{port}/v3/…?…"
    for secret in (key, password, query):
        assert secret not in shown


def test_a_url_without_a_scheme_shows_no_user_or_password() -> None:
    shown = redact_url("alice:s3cretpw@host:8545/")
    assert "alice" not in shown and "s3cretpw" not in shown


def test_an_error_message_naming_the_url_names_it_redacted() -> None:
    url = "https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161"
    said = redact_url_in(f"chain at {url} is unreachable (ConnectTimeout)", url)
    assert said == "chain at https://mainnet.infura.io/v3/… is unreachable (ConnectTimeout)"
    assert redact_url_in("nothing named", "") == "nothing named"
