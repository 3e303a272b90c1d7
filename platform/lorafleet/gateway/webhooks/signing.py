"""Standard Webhooks signing (https://www.standardwebhooks.com), as ``client.webhooks.unwrap`` verifies it:
``webhook-signature: v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>``, one
signature per valid secret, space-separated (during a rotation's overlap: the new and the old)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str) -> str:
    """What the API shows of a secret after creation: its prefix and last four characters."""
    return f"{SECRET_PREFIX}…{secret[-4:]}"


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secrets_: list[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(sign(secret, webhook_id, timestamp, body) for secret in secrets_),
            "content-type": "application/json", "user-agent": "LoraFleet-Webhooks/1"}
