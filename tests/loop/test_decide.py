"""The canary decision rule on its own (no services)."""

from __future__ import annotations

from ftctl.config import CanaryConfig
from ftctl.deploy.canary import decide, next_step

OPS = {"stable": {"ok": True, "ms_per_token": 20.0}, "canary": {"ok": True, "ms_per_token": 21.0}, "ratio": 1.05}


def test_steps_climb_then_promote():
    assert [next_step([5, 20, 50, 100], p) for p in (5, 20, 50)] == [20, 50, None]
    assert next_step([10, 30], 30) is None


def test_slow_canary_is_rolled_back_even_when_rated_well():
    cfg = CanaryConfig(min_rated=5)
    r = decide(cfg, {"stable": [4] * 10, "canary": [5] * 10}, {**OPS, "ratio": 2.0}, 20)
    assert r["decision"] == "rollback" and "slower" in r["reason"]


def test_inconclusive_holds_with_an_estimate():
    cfg = CanaryConfig(min_rated=5, max_drop=0.1)
    stable = [1, 5] * 10
    canary = [1, 5, 3] * 7
    r = decide(cfg, {"stable": stable, "canary": canary}, OPS, 20)
    assert r["decision"] == "hold" and r["needs"] > 0 and "not sure yet" in r["reason"]


def test_equal_rewards_within_the_margin_step_up():
    cfg = CanaryConfig(min_rated=30, max_drop=0.3)
    r = decide(cfg, {"stable": [1, -1, 1, 1] * 100, "canary": [1, -1, 1, 1] * 100}, OPS, 5)
    assert r["decision"] == "step" and r["percent"] == 20


def test_a_canary_failing_its_health_check_is_rolled_back_whatever_its_ratings():
    cfg = CanaryConfig(min_rated=5)
    down = {**OPS, "canary": {"ok": False, "error": "connection refused", "healthy": False}, "ratio": None}
    r = decide(cfg, {"stable": [4] * 10, "canary": [5] * 10}, down, 20)
    assert r["decision"] == "rollback" and "health check" in r["reason"]
    # unknown health (a deployer that cannot tell) is not a failure: the evidence decides
    r = decide(cfg, {"stable": [4] * 10, "canary": [4] * 10}, {**OPS, "canary": {**OPS["canary"], "healthy": None}}, 20)
    assert r["decision"] != "rollback"


def test_a_canary_failing_more_requests_is_rolled_back_though_rated_well():
    cfg = CanaryConfig(min_rated=5, min_requests=100, max_error_increase=0.01)
    traffic = {"ok": True, "stable": {"requests": 900, "errors": 1}, "canary": {"requests": 300, "errors": 15}}
    r = decide(cfg, {"stable": [4] * 10, "canary": [5] * 10}, {**OPS, "traffic": traffic}, 20)
    assert r["decision"] == "rollback" and "fails more requests" in r["reason"] and r["errors"]["verdict"] == "worse"
    # too few canary requests to count yet, or a difference within the limit: the ratings decide
    few = {**traffic, "canary": {"requests": 50, "errors": 3}}
    assert decide(cfg, {"stable": [4] * 10, "canary": [5] * 10}, {**OPS, "traffic": few}, 20)["decision"] == "step"
    same = {**traffic, "canary": {"requests": 300, "errors": 1}}
    assert decide(cfg, {"stable": [4] * 10, "canary": [5] * 10}, {**OPS, "traffic": same}, 20)["decision"] == "step"
    # a record that cannot be read holds (never a silent pass)
    r = decide(cfg, {"stable": [4] * 10, "canary": [5] * 10}, {**OPS, "traffic": {"ok": False, "error": "denied"}}, 20)
    assert r["decision"] == "hold" and "cannot judge server errors: denied" in r["reason"]
