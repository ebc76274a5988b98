"""Is this response an error page? Judged by its Content-Type and by its first bytes.

The cut: pure checks on what a server sent, raising TransferError. A proxy,
captive portal or misconfigured bucket answers with HTML, XML, JSON or plain
text whatever was asked for; these say so instead of feeding it on as data.
"""

from __future__ import annotations

from objathor_release.errors import TransferError

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_MARKUP_TYPES = (*_HTML_TYPES, "application/xml", "text/xml")
_PAGE_TYPES = (*_MARKUP_TYPES, "application/json", "application/problem+json", "application/javascript")


def is_html_type(ctype: str) -> bool:
    """An HTML page (the answer objathor's downloader takes to mean "not here, look elsewhere")."""
    return ctype.split(";", 1)[0].strip().lower() in _HTML_TYPES


def is_page_type(ctype: str, kind: str) -> bool:
    """Whether a Content-Type is an error page rather than ``kind`` data (JSON may come as text/plain)."""
    if kind == "json":
        return ctype in _MARKUP_TYPES or ctype.endswith("+xml")
    return ctype in _PAGE_TYPES or ctype.startswith("text/") or ctype.endswith(("+json", "+xml"))


def sniff_page(url: str, data: bytes, kind: str = "a tar") -> None:
    """Refuse a body that is an error page (HTML, XML, JSON or plain text), whatever its type says.

    For JSON (manifest.json) only markup is a page. Binary data (a tar's first
    header, gzip) always holds a NUL or the gzip magic in its first 512 bytes;
    text without either is a page.
    """
    block = bytes(data[:512])
    head = block.lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body", b"<error")):
        what = "an HTML/XML page"
    elif kind == "JSON" or block.startswith(b"\x1f\x8b") or b"\0" in block or not block:
        return
    elif head.startswith((b"{", b"[")):
        what = "a JSON page"
    elif head.startswith(b"<"):
        what = "an HTML/XML page"
    else:
        what = "a text page"
    text = "".join(c if c.isprintable() else " " for c in block[:80].decode("utf-8", "replace")).strip()
    raise TransferError(f"{url} returned {what} instead of {kind} (it begins {text[:60]!r}): check "
                        "--base-url and --version (a proxy, captive portal or error page may be answering)")
