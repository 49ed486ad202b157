"""The shared task driver: bounded window, failure budget, cancellation on stop."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from pipeline.task_driver import TaskDriver


class _Squares:
    """Items 0..n-1 squared in a thread pool; the items in ``bad`` fail."""

    def __init__(self, driver: TaskDriver, n: int, window: int, bad: set[int]):
        self.driver, self.window, self.bad = driver, window, bad
        self.queue = list(reversed(range(n)))
        self.futures: dict[Future, int] = {}
        self.pool = ThreadPoolExecutor(2)
        self.results: dict[int, int] = {}
        self.most_in_flight = 0
        self.cancelled: list[int] = []

    def has_work(self):
        return bool(self.queue or self.futures)

    def refill(self):
        while self.queue and len(self.futures) < self.window:
            i = self.queue.pop()
            self.futures[self.pool.submit(self._task, i)] = i
        self.most_in_flight = max(self.most_in_flight, len(self.futures))

    def _task(self, i):
        if i in self.bad:
            raise ValueError(f"item {i} is bad")
        return i * i

    def in_flight(self):
        return list(self.futures)

    def wait_any(self, handles):
        return wait(handles, return_when=FIRST_COMPLETED).done

    def finish(self, fut):
        i = self.futures.pop(fut)
        if fut.exception() is None:
            self.results[i] = fut.result()
            self.driver.succeeded()
        else:
            self.driver.failed(str(i), str(fut.exception()))

    def cancel(self, handles):
        self.cancelled += [self.futures[h] for h in handles]


def test_every_item_once_within_the_window():
    driver = TaskDriver("test", 50, max_failures=10, progress=False)
    source = _Squares(driver, 50, window=4, bad={7, 21})
    driver.run(source)
    assert source.results == {i: i * i for i in range(50) if i not in (7, 21)}
    assert driver.done == 48 and driver.failures == {"7": "item 7 is bad", "21": "item 21 is bad"}
    assert not driver.stopped_early and source.most_in_flight == 4 and source.cancelled == []


def test_failures_past_the_budget_stop_submitting_and_cancel_the_rest():
    driver = TaskDriver("test", 100, max_failures=1, progress=False)
    source = _Squares(driver, 100, window=3, bad={0, 1, 2, 3})
    driver.run(source)
    assert driver.stopped_early and len(driver.failures) >= 2
    handled = len(source.results) + len(driver.failures)
    assert handled + len(source.cancelled) + len(source.queue) == 100  # nothing handled twice, nothing lost
    assert len(source.queue) >= 100 - 3 - handled  # nothing submitted after the stop beyond the window
