"""The routers' access log (nginx's include and the lora_swap router write it; canary check reads it)."""

from __future__ import annotations

import pytest

from ftctl.errors import ExternalToolError
from ftctl_plugins.deployers import access_log


def test_counts_per_side_since_a_time_and_skips_what_is_not_its_own(tmp_path):
    log = tmp_path / "access.log"
    t0 = 1_700_000_000.0
    lines = []
    for i in range(5000):  # long enough that the reader bisects instead of reading it all
        side = "canary" if i % 4 == 0 else "stable"
        status = 500 if side == "canary" and i % 8 == 0 else 200
        lines.append(access_log.line("chat-bot", side, status, 0.1 + (i % 3) / 10, at=t0 + i))
    lines.insert(10, access_log.line("chat", "canary", 500, 0.1, at=t0 + 4000))  # another model
    lines.insert(20, "127.0.0.1 - - [04/Dec/2026] GET / 200\n")  # a shared log's other format
    lines.append(f"{t0 + 6000:.3f} ftctl_chat_bot_canary 5")  # a torn last line
    log.write_text("".join(lines))

    seen = access_log.read(log, "chat-bot", t0 + 4000)
    assert seen["canary"].requests == 250 and seen["canary"].errors == 125
    assert seen["stable"].requests == 750 and seen["stable"].errors == 0
    assert seen["stable"].p50_ms == 200.0
    everything = access_log.read(log, "chat-bot", 0)
    assert everything["canary"].requests + everything["stable"].requests == 5000


def test_a_missing_log_is_no_traffic_an_unreadable_one_a_clear_error(tmp_path):
    assert access_log.read(tmp_path / "not-yet.log", "chat", 0) == {}
    with pytest.raises(ExternalToolError, match=f"cannot read the access log {tmp_path}"):
        access_log.read(tmp_path, "chat", 0)  # a directory
