"""Standard Webhooks signatures (https://www.standardwebhooks.com): pure, no I/O.

A secret reads `whsec_<base64 of 24 to 64 random bytes>`. Each delivery carries `webhook-id`
(the message id, the same on every retry so receivers can drop duplicates), `webhook-timestamp`
(Unix seconds when this try was sent) and `webhook-signature`: `v1,<base64 HMAC-SHA256 over
"{id}.{timestamp}.{body}">`, several separated by spaces while a secret is being rotated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from comfyfleet.shared.errors import InvalidInput

PREFIX = "whsec_"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64


def secret_key(secret: str, field: str = "webhook_secret") -> bytes:
    """The HMAC key of a `whsec_` secret; InvalidInput naming `field` when it is not one."""
    if not isinstance(secret, str) or not secret.startswith(PREFIX):
        raise InvalidInput(field, f"must start with {PREFIX!r} (a Standard Webhooks secret)")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(field, f"the part after {PREFIX!r} must be base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise InvalidInput(
            field, f"must hold {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, got {len(key)}"
        )
    return key


def new_secret() -> str:
    """A fresh random secret: 32 bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers (one signature per key) and the content type."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(k, msg_id, timestamp, body) for k in keys),
        "Content-Type": "application/json",
    }
