"""The shared retry policy: bounded attempts, only the errors the caller names, bounded backoff."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from objathor_release.retry import RetriesExhausted, RetryPolicy


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def policy(**kw: object) -> tuple[RetryPolicy, list[float]]:
    waits: list[float] = []
    args = {"attempts": 4, "base": 0.5, "cap": 20.0, "jitter": 0.0, "sleep": waits.append, **kw}
    return RetryPolicy(**args), waits  # type: ignore[arg-type]


def failing(errors: list[BaseException], result: str = "ok") -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return calls, fn


def test_returns_after_transient_failures_and_waits_between() -> None:
    p, waits = policy()
    calls, fn = failing([Flaky("a"), Flaky("b")])
    seen: list[tuple[str, int, float]] = []
    assert p.call(fn, retry_if=(Flaky,), on_retry=lambda e, n, s: seen.append((str(e), n, s))) == "ok"
    assert len(calls) == 3
    assert waits == [0.5, 1.0]
    assert seen == [("a", 1, 0.5), ("b", 2, 1.0)]


def test_stops_after_the_given_number_of_attempts() -> None:
    p, waits = policy(attempts=3)
    calls, fn = failing([Flaky(str(i)) for i in range(10)])
    with pytest.raises(RetriesExhausted) as info:
        p.call(fn, retry_if=(Flaky,))
    assert len(calls) == 3 and len(waits) == 2  # no wait after the last attempt
    assert info.value.attempts == 3
    assert isinstance(info.value.error, Flaky) and str(info.value.error) == "2"
    assert info.value.__cause__ is info.value.error


def test_only_the_given_errors_are_retried() -> None:
    p, waits = policy()
    calls, fn = failing([Fatal("no")])
    with pytest.raises(Fatal, match="no"):
        p.call(fn, retry_if=(Flaky,))
    assert len(calls) == 1 and waits == []
    calls, fn = failing([Flaky("x"), Fatal("then this")])
    with pytest.raises(Fatal):
        p.call(fn, retry_if=lambda e: isinstance(e, Flaky))
    assert len(calls) == 2 and waits == [0.5]


def test_a_predicate_classifies() -> None:
    p, _ = policy()
    calls, fn = failing([Flaky("retry me"), Flaky("not me")])
    with pytest.raises(Flaky, match="not me"):
        p.call(fn, retry_if=lambda e: "retry" in str(e))
    assert len(calls) == 2


def test_stop_ends_the_retries_early() -> None:
    p, waits = policy(attempts=10)
    calls, fn = failing([Flaky("a"), Flaky("b"), Flaky("c")])
    stopped = iter([False, True])
    with pytest.raises(RetriesExhausted) as info:
        p.call(fn, retry_if=(Flaky,), stop=lambda: next(stopped))
    assert len(calls) == 2 and info.value.attempts == 2 and len(waits) == 1


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens() -> None:
    p, _ = policy(base=0.5, cap=4.0)
    assert [p.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    low, _ = policy(base=0.5, cap=4.0, jitter=0.5, random=lambda: 0.999999)
    high, _ = policy(base=0.5, cap=4.0, jitter=0.5, random=lambda: 0.0)
    for n in range(1, 12):
        assert p.delay(n) / 2 <= low.delay(n) <= high.delay(n) == p.delay(n) <= 4.0
    real = RetryPolicy(base=0.5, cap=20.0, jitter=0.5)
    assert all(0.0 <= real.delay(n) <= 20.0 for n in range(1, 60))


def test_exhausted_and_wait_for_callers_that_count_themselves() -> None:
    p, waits = policy(attempts=2)
    assert not p.exhausted(1) and p.exhausted(2)
    assert p.wait(2) == 1.0 and waits == [1.0]


@pytest.mark.parametrize("bad", [{"attempts": 0}, {"base": -1.0}, {"jitter": 1.5}, {"cap": -0.1}])
def test_nonsense_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)  # type: ignore[arg-type]
