"""One retry policy (shared/retry.py): what retries, how long it waits, when it gives up; and
how the agent's coordinator client sorts answers into retry / refusal."""

from __future__ import annotations

import asyncio
import email.utils

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.agent.comfyui.client import ComfyUIUnavailable, OutputMissing
from comfyfleet.agent.coordinator_client import CoordinatorUnavailable, Refused, answer
from comfyfleet.shared import codec
from comfyfleet.shared import protocol as p
from comfyfleet.shared.retry import RetryPolicy, retry_after_s, retryable_status

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff waits asked for (no real waiting)."""
    asked: list[float] = []
    real = asyncio.sleep

    async def sleep(delay: float, *args: object) -> None:
        asked.append(delay)
        await real(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return asked


def failing(errors: list[Exception], result: str = "ok") -> tuple[list[int], object]:
    calls: list[int] = []

    async def fn() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return calls, fn


@given(st.integers(100, 599))
def test_which_statuses_retry(status: int) -> None:
    assert retryable_status(status) == (status in (408, 429) or status >= 500)


def test_no_answer_retries() -> None:
    assert retryable_status(None)


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_s("5", 0.0) == 5.0
    assert retry_after_s(" 12 ", 0.0) == 12.0
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_s(date, now) == pytest.approx(30.0)
    assert retry_after_s(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    for junk in (None, "", "soon", "-3", "1.5e9x"):
        assert retry_after_s(junk, now) is None


async def test_retry_after_is_honoured_then_the_call_succeeds(waits: list[float]) -> None:
    policy = RetryPolicy(wait_jitter_s=0.5)
    calls, fn = failing([CoordinatorUnavailable("503", 503, 7.0)] * 2)
    assert await policy.call(fn) == "ok"  # type: ignore[arg-type]
    assert len(calls) == 3
    assert len(waits) == 2 and all(7.0 <= w <= 7.5 for w in waits), waits


async def test_a_huge_retry_after_is_capped(waits: list[float]) -> None:
    policy = RetryPolicy(max_retry_after_s=60.0, wait_jitter_s=0.0)
    _, fn = failing([CoordinatorUnavailable("503", 503, 86_400.0)])
    await policy.call(fn)  # type: ignore[arg-type]
    assert waits == [60.0]


async def test_backoff_is_exponential_and_capped_without_retry_after(waits: list[float]) -> None:
    policy = RetryPolicy(wait_initial_s=0.5, wait_max_s=3.0, wait_jitter_s=0.0)
    _, fn = failing([ComfyUIUnavailable("refused")] * 5)  # no answer at all
    await policy.call(fn)  # type: ignore[arg-type]
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    "error",
    [
        Refused(409, {"code": "stale_attempt"}),
        Refused(400, {"message": "bad"}),
        OutputMissing("404"),
        ComfyUIUnavailable("not JSON", 200),
        CoordinatorUnavailable("HTTP 302", 302),
        ValueError("a bug"),
    ],
)
async def test_final_answers_are_not_retried(waits: list[float], error: Exception) -> None:
    calls, fn = failing([error])
    with pytest.raises(type(error)):
        await RetryPolicy().call(fn)  # type: ignore[arg-type]
    assert len(calls) == 1 and waits == []


async def test_a_limited_call_site_gives_up_with_the_last_failure(waits: list[float]) -> None:
    errors = [CoordinatorUnavailable(f"HTTP 503 #{i}", 503) for i in range(5)]
    calls, fn = failing(errors)
    with pytest.raises(CoordinatorUnavailable, match="#2"):
        await RetryPolicy(attempts=3).call(fn)  # type: ignore[arg-type]
    assert len(calls) == 3


def _body(status: int) -> bytes:
    return msgspec.json.encode({"error": {"code": "x", "message": f"status {status}"}})


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_coordinator_answers_that_retry(status: int) -> None:
    with pytest.raises(CoordinatorUnavailable) as err:
        answer(status, codec.JSON, _body(status), p.Ack, "3")
    assert err.value.status == status and err.value.retry_after_s == 3.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_coordinator_answers_that_are_refusals(status: int) -> None:
    with pytest.raises(Refused) as err:
        answer(status, codec.JSON, _body(status), p.Ack, None)
    assert err.value.status == status and err.value.error["code"] == "x"


def test_a_garbage_error_body_still_sorts_by_status() -> None:
    with pytest.raises(CoordinatorUnavailable):
        answer(503, "text/html", b"<html>busy</html>", p.Ack, None)
    with pytest.raises(Refused) as err:
        answer(404, "text/html", b"<html>nope</html>", p.Ack, None)
    assert "nope" in err.value.error["message"]


async def test_a_call_site_may_retry_final_answers_too(waits: list[float]) -> None:
    calls, fn = failing([Refused(401, {"message": "unknown token"})] * 2)
    assert await RetryPolicy(retry_also=(Refused,)).call(fn) == "ok"  # type: ignore[arg-type]
    assert len(calls) == 3 and len(waits) == 2
