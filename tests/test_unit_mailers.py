"""newsletter.delivery.mailers' fast paths against the standard library they replace."""

from __future__ import annotations

import smtplib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from newsletter.delivery.mailers import _stuffed, quoteaddr
from newsletter.mime import DotFree

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"


@pytest.mark.parametrize(
    "address",
    ["reader000123@example.com", "bounce+4711.k3j@news.example.org", "a.b-c_d@x-y.example", "o'brien@example.ie", "ann@bücher.de",
     "Ann <ann@example.com>", "<ann@example.com>", "a..b@example.com", ".a@example.com", "a@", "@example.com", "", "a b@example.com",
     '"a b"@example.com', "a@[127.0.0.1]", "a@example.com (comment)"],
)  # fmt: skip
def test_quoteaddr_is_smtplib_s(address: str) -> None:
    assert quoteaddr(address) == smtplib.quoteaddr(address)


@given(local=st.text(st.sampled_from(ATEXT + ".\"() <>@,;:[]\\ é"), min_size=0, max_size=20),
       domain=st.text(st.sampled_from("abz09-.[]é "), min_size=0, max_size=20))  # fmt: skip
def test_quoteaddr_is_smtplib_s_for_any_address(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    assert quoteaddr(address) == smtplib.quoteaddr(address)


@pytest.mark.parametrize("message", [b"a\r\nb\r\n", b"a\r\nb", b"QUJD\r\n=\r\n", b""])
def test_a_dot_free_message_is_sent_as_stuffing_would_send_it(message: bytes) -> None:
    assert _stuffed(DotFree(message)) == _stuffed(message)
    assert _stuffed(b".a\r\n.\r\nb") == b"..a\r\n..\r\nb\r\n.\r\n"  # and a plain one is stuffed (RFC 5321 §4.5.2)
