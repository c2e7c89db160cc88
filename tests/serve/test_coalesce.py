"""Requests at once share one computation, never one begun before they arrived (GET /status)."""

from __future__ import annotations

import threading
import time

import pytest

from ftctl.serve.coalesce import Coalesce


def test_requests_at_once_share_a_computation_begun_after_each_arrived():
    c, started, arrived, answers = Coalesce(), [], {}, {}

    def compute():
        started.append(time.monotonic())
        time.sleep(0.1)
        return started[-1]

    def request(i):
        arrived[i] = time.monotonic()
        answers[i] = c("status", compute)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
        time.sleep(0.002)
    for t in threads:
        t.join()
    assert len(started) < 20  # shared: not one computation a request
    assert all(answers[i] >= arrived[i] for i in arrived)  # each answer begun after its request came
    assert c("status", lambda: "alone") == "alone"  # nothing under way: computed at once


def test_an_error_goes_to_the_requests_that_shared_it_and_the_next_computes_anew():
    c, gate = Coalesce(), threading.Event()

    def failing():
        gate.wait(5)
        raise ValueError("broken config")

    errors = []

    def request():
        try:
            c("status", failing)
        except ValueError as e:
            errors.append(str(e))

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.05)
    gate.set()
    t.join()
    assert errors == ["broken config"]
    with pytest.raises(ValueError):
        c("status", failing)
    assert c("status", lambda: 1) == 1 and c("other", lambda: 2) == 2
