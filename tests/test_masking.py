"""Secrets in URLs are masked in everything the plugin prints: one function, ``masking.mask``."""

from __future__ import annotations

import pytest

from pytest_rollback import Service
from pytest_rollback.masking import mask


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://user:s3cret@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
        # an unescaped "@" or "/" in the password (base64 passwords have "/") hides all of it
        ("redis://:p@ss/w0rd@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("http://elastic:s3cret@[::1]:9200", "http://elastic:***@[::1]:9200"),
        (
            "mongodb://u:s3cret@h1:1,h2:2/db?authSource=admin&authMechanismProperties=AWS_SESSION_TOKEN:t0k",
            "mongodb://u:***@h1:1,h2:2/db?authSource=admin&authMechanismProperties=***",
        ),
        (
            "http://h:9200/?api_key=k3y&access_token=t0k&Password=pw;sig=s1g&pretty=true#x?token=kept",
            "http://h:9200/?api_key=***&access_token=***&Password=***;sig=***&pretty=true#x?token=kept",
        ),
        # in a message: each URL, and a mistyped one without a scheme
        (
            "bad URL 'redis://:s3cret@h:1/x': no; bad URL 'elastic:s3cret@127.0.0.1:9200': no",
            "bad URL 'redis://:***@h:1/x': no; bad URL 'elastic:***@127.0.0.1:9200': no",
        ),
        # nothing secret: unchanged
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user@127.0.0.1:6379/0?db=2&protocol=3", "redis://user@127.0.0.1:6379/0?db=2&protocol=3"),
        ("redis at 127.0.0.1:6379 stopped answering", "redis at 127.0.0.1:6379 stopped answering"),
        ("in-process", "in-process"),
    ],
)
def test_mask(text: str, masked: str) -> None:
    assert mask(text) == masked
    assert mask(masked) == masked


def test_a_service_keeps_its_password_and_never_shows_it() -> None:
    service = Service("redis", "external", "redis://:s3cret@127.0.0.1:6379/0", "127.0.0.1", 6379, "7.0.15")
    assert service.url == "redis://:s3cret@127.0.0.1:6379/0", "clients need the password"
    assert service.describe().startswith("pytest-rollback: redis via external at redis://:***@127.0.0.1:6379/0,")
    assert "s3cret" not in repr(service)
    assert "url='redis://:***@127.0.0.1:6379/0'" in repr(service)
