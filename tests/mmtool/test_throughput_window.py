"""The train log's throughput window: samples/s and the share of time spent waiting for the loader."""
import time

from mmtool.run_log import ThroughputWindow


def slow_batches(count: int, seconds: float):
    for index in range(count):
        time.sleep(seconds)
        yield index


def test_every_batch_comes_through_in_order_falsy_ones_too():
    window = ThroughputWindow()
    assert list(window.timed([0, None, "", 3])) == [0, None, "", 3]


def test_a_slow_loader_shows_as_waiting():
    window = ThroughputWindow()
    for _ in window.timed(slow_batches(4, 0.05)):
        pass
    assert window.rates()["data_wait"] > 0.8


def test_a_slow_step_does_not():
    window = ThroughputWindow()
    for _ in window.timed(range(4)):
        time.sleep(0.05)
    rates = window.rates()
    assert rates["data_wait"] < 0.2


def test_each_log_line_starts_a_new_window():
    window = ThroughputWindow()
    for _ in window.timed(slow_batches(2, 0.05)):
        pass
    window.rates()
    for _ in window.timed(range(3)):
        time.sleep(0.05)
    assert window.rates()["data_wait"] < 0.2
