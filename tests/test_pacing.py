"""The adaptive (AIMD) rate limiter, on an injected clock: no real sleeping; the
server's advice on when to retry (RetryInfo, Retry-After), read from the SDK's errors.

And, against the emulator through the real SDK, that 429s slow the limiter
down without opening the circuit breaker.
"""

from __future__ import annotations

import threading
import time

import httpx2
import pytest
from emulator import Fault, GeminiEmulator
from google.genai import errors as genai_errors

from objlib_daemon.config import StoreConfig
from objlib_daemon.connect import remote_settings
from objlib_daemon.stores import pacing
from objlib_daemon.stores.gemini import GeminiStore
from objlib_daemon.stores.pacing import AdaptiveLimiter, CircuitBreaker, Pacer

KEY = "AIzaTEST-objlibd-pacing-key-0123456789"


class Clock:
    """A clock whose sleep moves it: waits are recorded, never spent."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def limiter(clock: Clock, ceiling: float = 0.0) -> AdaptiveLimiter:
    return AdaptiveLimiter(ceiling_per_minute=ceiling, clock=clock, sleep=clock.sleep)


def send(lim: AdaptiveLimiter, n: int) -> None:
    """n requests in a row, each accepted."""
    for _ in range(n):
        lim.succeeded(lim.acquire())


def test_it_starts_at_the_old_fixed_rate_and_spaces_requests_evenly():
    clock = Clock()
    lim = limiter(clock)
    assert lim.rate == 2.0
    for _ in range(3):
        lim.acquire()
    assert clock.waits == [0.5, 0.5]  # no burst


def test_slow_start_doubles_quickly_while_requests_succeed():
    clock = Clock()
    lim = limiter(clock)
    send(lim, 4)  # the first went out at once: the rate did not hold it back
    assert lim.rate == 2.0 + 3 * pacing.SLOW_START_STEP
    send(lim, 40)
    assert lim.rate == 2.0 + 43 * pacing.SLOW_START_STEP
    assert clock.now - 1000.0 < 6.0  # 2/s to 23.5/s within seconds


def test_a_429_cuts_the_rate_once_per_burst_and_then_it_grows_additively():
    clock = Clock()
    lim = limiter(clock)
    send(lim, 16)
    before = lim.rate
    admitted = [lim.acquire() for _ in range(4)]  # in flight together
    for ticket in admitted:
        lim.throttled(ticket, None)
    cut = before * pacing.DECREASE
    assert lim.rate == pytest.approx(cut)  # one cut, not four
    lim.succeeded(lim.acquire())
    assert lim.rate == pytest.approx(cut + pacing.ADDITIVE_GAIN * cut / cut)
    # A request admitted after the cut that is refused cuts again.
    lim.throttled(lim.acquire(), None)
    assert lim.rate < cut


def test_retry_info_holds_every_request_until_it_has_passed():
    clock = Clock()
    lim = limiter(clock)
    ticket = lim.acquire()
    lim.throttled(ticket, 7.0)
    held_from = clock.now
    lim.acquire()
    lim.acquire()
    assert clock.now >= held_from + 7.0
    assert clock.waits[-2] == pytest.approx(7.0)


def _rate_limited(retry_delay: object = None, retry_after: str | None = None) -> Exception:
    """A 429 as the SDK raises it: RetryInfo in the body, Retry-After as a header."""
    details = (
        []
        if retry_delay is None
        else [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
    )
    headers = {} if retry_after is None else {"retry-after": retry_after}
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": details}}
    return genai_errors.ClientError(429, body, httpx2.Response(429, headers=headers))


@pytest.mark.parametrize(
    ("retry_delay", "retry_after", "advice"),
    [
        ("1.5s", "30", 1.5),  # RetryInfo first, in its JSON form
        ("soon", "30", 30.0),  # a malformed RetryInfo is no advice
        (None, "7", 7.0),
        (None, "Wed, 21 Oct 2026 07:28:00 GMT", None),  # the date form is not read
        (None, None, None),
    ],
)
def test_the_server_s_advice_on_when_to_retry(retry_delay, retry_after, advice):
    assert pacing.retry_delay(_rate_limited(retry_delay, retry_after)) == advice


def test_never_above_the_ceiling_and_it_starts_there():
    clock = Clock()
    lim = limiter(clock, ceiling=60.0)
    assert lim.rate == 1.0
    send(lim, 50)
    assert lim.rate == 1.0
    assert set(clock.waits) == {1.0}


def test_never_below_the_floor():
    clock = Clock()
    lim = limiter(clock)
    for _ in range(30):
        lim.throttled(lim.acquire(), None)
    assert lim.rate == pytest.approx(pacing.FLOOR_PER_MINUTE / 60.0)


def test_no_increase_while_the_rate_is_not_what_holds_requests_back():
    clock = Clock()
    lim = limiter(clock)
    for _ in range(10):
        clock.now += 5.0  # idle between requests: they never wait
        lim.succeeded(lim.acquire())
    assert lim.rate == 2.0


def test_threads_waiting_together_are_sent_one_interval_apart():
    lim = AdaptiveLimiter(ceiling_per_minute=1200)  # 20/s, the real clock
    sent: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        lim.acquire()
        with lock:
            sent.append(time.monotonic())

    threads = [threading.Thread(target=take) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent.sort()
    assert len(sent) == 10
    assert min(b - a for a, b in zip(sent, sent[1:], strict=False)) >= 0.05 - 0.005  # timer slack


def test_a_rate_raised_while_requests_wait_applies_to_them():
    lim = AdaptiveLimiter()  # from the starting 2/s: four waiters would take 2 s
    ticket = lim.acquire()
    done: list[float] = []
    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda: (lim.acquire(), done.append(time.monotonic())))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    # Successes while requests wait: slow start raises the rate (once a thread
    # waits, which nothing announces: hence the short naps).
    while lim.rate < 10 and time.monotonic() - started < 0.4:
        lim.succeeded(ticket)
        time.sleep(0.001)
    assert lim.rate >= 10
    for t in threads:
        t.join()
    # The first waiter keeps the slot it saw (0.5 s); the rest follow at 1/10 s.
    assert max(done) - started < 0.5 + 3 * 0.1 + 0.5  # booked ahead at 2/s: 2.0 s


def test_429s_slow_the_store_down_without_opening_the_breaker():
    with GeminiEmulator(api_key=KEY) as emu:
        clock = Clock()
        lim = limiter(clock)
        breaker = CircuitBreaker(2, 60.0)
        pacer = Pacer(limiter=lim, breaker=breaker, attempts=6, sleep=clock.sleep)
        store = GeminiStore(
            KEY, emu.create_store("s"), remote_settings(StoreConfig(base_url=emu.url)), pacer=pacer
        )
        emu.add_fault(Fault(method="GET", kind="retry_info", retry_delay=3.0, times=4))
        assert store.get("nothing-here") is None  # after four 429s, answered
        assert breaker.state == "closed" and breaker.consecutive_failures == 0
        assert lim.throttled_count == 4 and lim.rate < 2.0
        assert all(w >= 3.0 for w in clock.waits[:4])  # each retry after the advised delay
