"""Secrets out of what the plugin prints: passwords and tokens in URLs are masked.

Every line the plugin writes or raises that may hold a URL (the header's service
lines, errors, reports) goes through :func:`mask`. The URL itself
(``Service.url``) keeps its password: the clients need it.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import re

#: What a masked secret reads as.
MASK = "***"

#: A URL inside any text: its scheme, then everything up to a blank or a quote.
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>`]*)")
#: ``user:password@host`` without a scheme (a URL the user mistyped, shown back in an error).
_BARE = re.compile(r"(?<![\w/:@.%+-])(?P<user>[\w.%+-]*):(?P<password>[^\s@'\"<>`]+)@(?=[\w\[])")
#: A query parameter (``name=value``, separated by ``&`` or ``;``).
_PARAM = re.compile(r"(?P<sep>^|[?&;])(?P<name>[^=&;#?]+)=(?P<value>[^&;#]*)")
#: Parameter names (lower case, without ``_`` and ``-``) that hold secrets when they contain one of these...
_SECRET_PARTS = ("pass", "pwd", "secret", "token", "key", "credential", "signature")
#: ... or are one of these.
_SECRET_NAMES = ("auth", "authorization", "sig", "authmechanismproperties")


def mask(text: str) -> str:
    """``text`` with the secrets of every URL in it replaced by ``***``.

    A URL's userinfo password (``redis://user:***@host``) and the value of every
    query parameter whose name looks secret (contains ``pass``, ``pwd``,
    ``secret``, ``token``, ``key``, ``credential`` or ``signature``, or is ``auth``,
    ``authorization``, ``sig`` or ``authMechanismProperties``, in any case) are
    masked, and so is the password of a ``user:password@host`` without a scheme.
    The user name, host, port, path and other parameters are kept. A blank or a
    quote ends a URL. Text without such a URL comes back unchanged.
    """
    if "@" not in text and "://" not in text:
        return text
    parts: list[str] = []
    end = 0
    for match in _URL.finditer(text):
        parts += [_mask_bare(text[end : match.start()]), _mask_url(match)]
        end = match.end()
    parts.append(_mask_bare(text[end:]))
    return "".join(parts)


def _mask_bare(text: str) -> str:
    return _BARE.sub(rf"\g<user>:{MASK}@", text)


def _mask_url(match: re.Match[str]) -> str:
    rest = match["rest"]
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    # the userinfo ends at the last "@" before the query: an unescaped "/" (base64 passwords
    # have them) or "@" in a password must not leave part of it shown
    userinfo, at, after = rest[:query_at].rpartition("@")
    if at and ":" in userinfo:
        head = f"{userinfo.split(':', 1)[0]}:{MASK}@{after}"
        rest, query_at = head + rest[query_at:], len(head)
    if rest.startswith("?", query_at):
        fragment_at = rest.find("#", query_at)
        end = len(rest) if fragment_at < 0 else fragment_at
        rest = rest[:query_at] + _PARAM.sub(_mask_param, rest[query_at:end]) + rest[end:]
    return match["scheme"] + rest


def _mask_param(match: re.Match[str]) -> str:
    if not match["value"] or not _is_secret(match["name"]):
        return match[0]
    return f"{match['sep']}{match['name']}={MASK}"


def _is_secret(name: str) -> bool:
    key = name.lower().replace("_", "").replace("-", "")
    return key in _SECRET_NAMES or any(part in key for part in _SECRET_PARTS)
