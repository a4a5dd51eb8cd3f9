"""Per-tenant settings: webhook subscriptions, the tenant's own webhook secret, retention.

Kept in the store as one JSON document per tenant and cached here; `PUT /v1/tenants/{tenant}`
(api/tenant_routes.py) replaces a tenant's document. A tenant without a document uses the
coordinator's defaults (`webhook_secret`, `retention_s`).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from comfyfleet.coordinator.store import Store
from comfyfleet.coordinator.webhooks.guard import check_url
from comfyfleet.coordinator.webhooks.signing import secret_key
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.jobspec import DEFAULT_WEBHOOK_EVENTS, MAX_WEBHOOK_URL, WebhookEvent

MAX_SUBSCRIPTIONS = 20
MAX_RETENTION_S = 10 * 365 * 86_400


class Subscription(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_WEBHOOK_URL)]
    events: Annotated[list[WebhookEvent], msgspec.Meta(min_length=1, max_length=4)] = msgspec.field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS)
    )


class TenantSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    webhooks: Annotated[list[Subscription], msgspec.Meta(max_length=MAX_SUBSCRIPTIONS)] = []
    webhook_secret: str | None = None  # whsec_...; None: the coordinator's webhook_secret
    retention_s: Annotated[float, msgspec.Meta(gt=0, le=MAX_RETENTION_S)] | None = None


NONE = TenantSettings()
_decoder = msgspec.json.Decoder(TenantSettings)


def check_settings(settings: TenantSettings, allow_private: bool) -> None:
    """Raise InvalidInput naming the field for a webhook URL or secret that cannot be used."""
    for i, sub in enumerate(settings.webhooks):
        check_url(sub.url, allow_private, field=f"webhooks.{i}.url")
    if settings.webhook_secret is not None:
        secret_key(settings.webhook_secret, "webhook_secret")


class Tenants:
    """The settings of every tenant, read from the store once and kept in step by `save`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.by_name: dict[str, TenantSettings] = {
            tenant: _decoder.decode(doc) for tenant, doc in store.load_tenants().items()
        }

    def get(self, tenant: str) -> TenantSettings:
        return self.by_name.get(tenant, NONE)

    def save(self, tenant: str, settings: TenantSettings) -> None:
        self.store.save_tenant(tenant, msgspec.json.encode(settings).decode())
        self.by_name[tenant] = settings

    def reload(self) -> None:
        """Pick up what other coordinators sharing the store saved."""
        self.by_name = {t: _decoder.decode(d) for t, d in self.store.load_tenants().items()}

    def secret(self, tenant: str, default: str | None) -> str | None:
        own = self.get(tenant).webhook_secret
        return own if own is not None else default

    def retention_s(self, tenant: str, default: float) -> float:
        own = self.get(tenant).retention_s
        return own if own is not None else default

    def overrides(self) -> dict[str, float]:
        """Tenants whose retention is their own: tenant -> seconds."""
        return {t: s.retention_s for t, s in self.by_name.items() if s.retention_s is not None}


def require_secret(tenants: Tenants, tenant: str, default: str | None, field: str) -> None:
    """A webhook can only be signed with a secret: refuse one no secret would sign."""
    if tenants.secret(tenant, default) is None:
        raise InvalidInput(
            field,
            "no webhook secret to sign with: set the coordinator's webhook_secret or the "
            "tenant's (PUT /v1/tenants/{tenant} with webhook_secret)",
            "no_webhook_secret",
        )
