"""Reboot-safe (issue 21): after every change ftctl runs `pm2 save`, so the `pm2 resurrect` a
reboot runs (pm2 startup) brings back what models.lock records, not the arguments saved before.

A reboot is `pm2 kill` (every process and the daemon gone) then `pm2 resurrect`, with real pm2.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import run_json
from tests.deploy.conftest import PM2, get_json, pm2_list, served_ids

pytestmark = pytest.mark.integration


def pm2(home: str, *args: str) -> None:
    subprocess.run([PM2, *args], env={**os.environ, "PM2_HOME": home}, check=True, capture_output=True, timeout=120)


def reboot(home: str) -> None:
    pm2(home, "kill")
    pm2(home, "resurrect")


def model_arg(home: str, name: str) -> str:
    args = pm2_list(home)[name]["pm2_env"]["args"]
    return args[args.index("--model") + 1]


def answers(url: str, timeout: float = 30) -> str | None:
    from ftctl.lib.process import wait_for

    seen = []

    def up() -> bool:
        try:
            seen.append(get_json(url)["data"][0]["id"])
            return True
        except OSError:
            return False

    return seen[-1] if wait_for(up, timeout, 0.2) else None


def test_a_reboot_brings_back_the_deployed_version_not_the_saved_one(stack):
    s = stack()
    # the team's server, set up the way pm2's docs say: start, save (pm2 startup resurrects it)
    pm2(s.pm2_home, "start", str(s.eco), "--only", s.app)
    pm2(s.pm2_home, "start", str(s.eco), "--only", s.extra["other"])
    pm2(s.pm2_home, "save")
    assert answers(s.stable_url()) == "unset"

    run_json("deploy", "v1.1", cwd=s.root)
    reboot(s.pm2_home)
    assert answers(s.stable_url()) == "assistant@v1.1"
    assert model_arg(s.pm2_home, s.app) == str(s.files["v1.1"])
    assert s.extra["other"] in pm2_list(s.pm2_home)  # the team's other app came back too

    run_json("rollback", "--to", "v1.0", cwd=s.root)
    reboot(s.pm2_home)
    assert answers(s.stable_url()) == "assistant@v1.0"
    assert run_json("status", cwd=s.root)["apps"][0]["healthy"] is True


def test_a_reboot_during_a_canary_and_after_it(stack):
    s = stack(with_nginx=True)
    run_json("deploy", "v1.0", cwd=s.root)
    run_json("deploy", "v1.1", "--canary", "30", cwd=s.root)
    reboot(s.pm2_home)  # the canary is recorded: it comes back, on its own port
    assert answers(s.stable_url()) == "assistant@v1.0"
    assert answers(f"http://127.0.0.1:{s.canary_port}/v1/models") == "assistant@v1.1"
    assert run_json("status", cwd=s.root)["canary"]["percent"] == 30
    assert set(served_ids(s.nginx.url(), 60)) == {"assistant@v1.0", "assistant@v1.1"}

    run_json("promote", cwd=s.root)
    reboot(s.pm2_home)  # promoted: stable serves v1.1, no canary app comes back
    assert answers(s.stable_url()) == "assistant@v1.1"
    assert f"{s.app}-canary" not in pm2_list(s.pm2_home)
    assert served_ids(s.nginx.url(), 20) == {"assistant@v1.1": 20}
