"""Webhooks, the pure parts: Standard Webhooks signatures (checked by the independent
`standardwebhooks` package), the SSRF guard, the retry schedule, which messages a change sends."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
import time

import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.tenants import Subscription
from comfyfleet.coordinator.webhooks import guard
from comfyfleet.coordinator.webhooks.messages import event_of, messages_for, targets
from comfyfleet.coordinator.webhooks.retry import RetryPolicy, retry_at
from comfyfleet.coordinator.webhooks.signing import new_secret, secret_key, signed_headers
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobStatus

S = JobStatus


# --- signing --------------------------------------------------------------------------------


@given(
    data=st.dictionaries(st.text(max_size=20), st.text(max_size=200), max_size=10),
    msg_id=st.from_regex(r"msg_[a-z0-9]{1,30}", fullmatch=True),
)
def test_every_signature_verifies_with_the_reference_implementation(
    data: dict[str, str], msg_id: str
) -> None:
    body = json.dumps(data, ensure_ascii=False).encode()  # the reference decodes the body as JSON
    secret = new_secret()
    ts = int(time.time())
    headers = signed_headers([secret_key(secret)], msg_id, ts, body)
    standardwebhooks.Webhook(secret).verify(body, headers)  # raises when it does not verify


def test_a_signature_of_another_secret_or_body_is_refused() -> None:
    secret, other = new_secret(), new_secret()
    headers = signed_headers([secret_key(secret)], "msg_1", int(time.time()), b"{}")
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other).verify(b"{}", headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(b'{"x":1}', headers)


def test_two_keys_give_two_signatures_either_verifies() -> None:
    old, new = new_secret(), new_secret()
    headers = signed_headers([secret_key(old), secret_key(new)], "msg_1", int(time.time()), b"{}")
    assert len(headers["webhook-signature"].split(" ")) == 2
    standardwebhooks.Webhook(old).verify(b"{}", headers)
    standardwebhooks.Webhook(new).verify(b"{}", headers)


@pytest.mark.parametrize(
    "secret, says",
    [
        ("abc", "must start with 'whsec_'"),
        ("whsec_***", "must be base64"),
        ("whsec_" + "QUFB", "24 to 64 bytes"),
    ],
)
def test_bad_secrets_are_refused_naming_the_field(secret: str, says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        secret_key(secret, "webhook_secret")
    assert err.value.field == "webhook_secret" and says in err.value.message


# --- the SSRF guard -------------------------------------------------------------------------

ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@given(ip=ipv4 | ipv6)
def test_only_globally_routable_addresses_pass(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    public = plain.is_global and not (plain.is_multicast or plain.is_reserved)
    assert (guard.blocked_reason(ip) is None) == public
    if plain.is_loopback or plain.is_private or plain.is_link_local:
        assert guard.blocked_reason(ip) is not None


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.5", "169.254.169.254", "::1", "fe80::1",
     "fd00::1", "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1", "224.0.0.1"],
)  # fmt: skip
def test_known_internal_addresses_are_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert guard.blocked_reason(ip) is not None
    with pytest.raises(guard.BlockedAddress):
        guard.check_addresses("evil.example", ["93.184.215.14", address])
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(InvalidInput) as err:
        guard.check_url(f"http://{host}:8080/hook", allow_private=False)
    assert err.value.code == "forbidden_address" and err.value.field == "webhook_url"
    guard.check_url(f"http://{host}:8080/hook", allow_private=True)  # allowed by config


@pytest.mark.parametrize(
    "url, says",
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("/relative", "http:// or https://"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http://localhost:9/", "loopback"),
        ("x" * 3000, "1 to 2048"),
    ],
)
def test_bad_urls_are_refused(url: str, says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        guard.check_url(url, allow_private=False, field="webhooks.0.url")
    assert says in err.value.message and err.value.field == "webhooks.0.url"


def test_public_urls_pass() -> None:
    assert guard.check_url("https://hooks.example.com/a?b=c", allow_private=False).host == (
        "hooks.example.com"
    )
    guard.check_addresses(
        "hooks.example.com", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    )


# --- retries --------------------------------------------------------------------------------


@given(
    attempts=st.integers(1, 200),
    created=st.floats(0, 1e9),
    since=st.floats(0, 200_000),
    draw=st.floats(0, 1, exclude_max=True),
)
def test_retry_waits_grow_are_capped_jittered_and_stop_at_the_deadline(
    attempts: int, created: float, since: float, draw: float
) -> None:
    policy = RetryPolicy(first_s=1.0, cap_s=600.0, give_up_s=86_400.0)
    now = created + since
    at = retry_at(policy, attempts, created, now, draw)
    if since >= policy.give_up_s:
        assert at is None
        return
    assert at is not None
    assert now < at <= created + policy.give_up_s
    full = min(policy.cap_s, policy.first_s * 2.0 ** (attempts - 1))
    assert at - now <= full + 1e-6
    assert at - now >= min(full / 2, created + policy.give_up_s - now) - 1e-6


def test_retry_waits_double_until_the_cap() -> None:
    policy = RetryPolicy(first_s=1.0, cap_s=60.0, give_up_s=1e9)
    waits = [retry_at(policy, n, 0.0, 0.0, 0.999999) for n in range(1, 10)]
    assert waits == pytest.approx([1, 2, 4, 8, 16, 32, 60, 60, 60], rel=1e-5)


# --- which messages a change sends ----------------------------------------------------------


def record(status: JobStatus, **spec_kw: object) -> JobRecord:
    return JobRecord(
        id="j1",
        spec=JobSpec(workflow={"1": {"class_type": "X", "inputs": {}}}, **spec_kw),  # type: ignore[arg-type]
        workflow_hash="h",
        created_at=1.0,
        tenant="acme",
        status=status,
        attempt=1,
    )


def test_only_a_newly_entered_reported_status_is_an_event() -> None:
    running, done = record(S.RUNNING), record(S.COMPLETED)
    assert event_of(running, done) == "completed"
    assert event_of(done, done) is None
    assert event_of(record(S.QUEUED), record(S.ASSIGNED)) is None
    assert event_of(record(S.ASSIGNED), running) == "running"
    assert event_of(running, record(S.QUEUED)) is None  # a requeue is not told


def test_targets_each_url_once_job_first_by_event() -> None:
    job = record(S.FAILED, webhook_url="https://a.example/h")
    subs = [
        Subscription(url="https://b.example/h", events=["failed", "completed"]),
        Subscription(url="https://a.example/h"),
        Subscription(url="https://c.example/h", events=["running"]),
    ]
    assert targets(job, "failed", subs) == ["https://a.example/h", "https://b.example/h"]
    assert targets(job, "running", subs) == ["https://c.example/h"]
    quiet = record(S.RUNNING, webhook_url="https://a.example/h", webhook_events=["completed"])
    assert targets(quiet, "running", []) == []


def test_messages_carry_the_standard_payload() -> None:
    ids = (f"msg_{n}" for n in itertools.count())
    old = record(S.RUNNING, webhook_url="https://a.example/h")
    new = dataclasses.replace(old, status=S.COMPLETED, outputs=[{"name": "o.png", "size": 1}])
    [msg] = messages_for(old, new, [], 1700000000.5, lambda: next(ids))
    assert (msg.id, msg.url, msg.event, msg.next_at, msg.state) == (
        "msg_0",
        "https://a.example/h",
        "job.completed",
        1700000000.5,
        "pending",
    )
    body = json.loads(msg.payload)
    assert body["type"] == "job.completed"
    assert body["timestamp"] == "2023-11-14T22:13:20.500000Z"
    assert body["data"]["job_id"] == "j1" and body["data"]["status"] == "COMPLETED"
    assert body["data"]["outputs"][0]["url"] == "/v1/jobs/j1/outputs/o.png"
    assert messages_for(old, old, [], 1.0, lambda: next(ids)) == []
