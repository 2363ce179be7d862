"""Page sizes and opaque page tokens for every list RPC, validated in one place."""

from __future__ import annotations

import base64
import binascii

from citypost.errors import InvalidArgumentError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise InvalidArgumentError(
            f"page_size must be between 1 and {MAX_PAGE_SIZE} (0 for the default "
            f"{DEFAULT_PAGE_SIZE}), got {requested}"
        )
    return requested or DEFAULT_PAGE_SIZE


def encode_token(last_key: str) -> str:
    """The token that resumes a listing after `last_key`."""
    return base64.urlsafe_b64encode(last_key.encode()).decode()


def decode_token(token: str) -> str:
    """The key to resume after; '' for the first page."""
    if not token:
        return ""
    try:
        key = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
        if not key:
            raise ValueError("empty key")
        return key
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgumentError(
            "page_token is not one this service issued: pass next_page_token back unchanged"
        ) from exc
