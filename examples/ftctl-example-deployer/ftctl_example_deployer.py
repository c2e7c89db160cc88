"""An example third-party deployer: each slot is a plain ``python -m llama_cpp.server`` process.

No pm2, no nginx: the stable slot listens on ``stable_port``, a canary on ``canary_port``, and
which file each serves (with its pid) is kept in .ftctl/llama-server/<model>.json. It implements
the Deployer primitives only; canary, promote, rollback, the record in models.lock and the
recovery of an interrupted command are the core's, the same as for the pm2 deployer. With no
router, ``route`` keeps the default no-op: a canary runs beside stable for tests and checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pydantic import Field

from ftctl.api import (Artifact, ConfigError, Deployer, DeployPlan, Health, PluginConfig, RolledBack, Slot, SlotInfo,
                       hookimpl, write_text)


class LlamaServerConfig(PluginConfig):
    stable_port: int = Field(ge=1, le=65535, description="port of the stable server")
    canary_port: int | None = Field(None, ge=1, le=65535, description="port of a canary server (none: no canaries)")
    host: str = Field("127.0.0.1", description="address the servers listen on")
    n_ctx: int = Field(2048, ge=64, description="context size of each server")
    n_threads: int = Field(1, ge=1, description="threads per server")
    health_timeout: float = Field(60, gt=0, description="seconds a new server may take to answer /v1/models")


class LlamaServerDeployer(Deployer):
    name = "llama_server"
    Config = LlamaServerConfig
    config: LlamaServerConfig

    # --- state: which file each slot serves, and its process ----------------------------------

    @property
    def state_file(self) -> Path:
        return self.ctx.root / ".ftctl" / "llama-server" / f"{self.ctx.model}.json"

    def _state(self) -> dict:
        with contextlib.suppress(FileNotFoundError):
            return json.loads(self.state_file.read_text())
        return {}

    def _save(self, state: dict) -> None:
        write_text(self.state_file, json.dumps(state, indent=2, sort_keys=True))

    def _port(self, slot: Slot) -> int:
        port = self.config.stable_port if slot == "stable" else self.config.canary_port
        if port is None:
            raise ConfigError("a canary needs deploy.llama_server.canary_port", hint="set a free port for it")
        return port

    # --- the primitives --------------------------------------------------------------------------

    def slots(self) -> list[SlotInfo]:
        state = self._state()
        return [SlotInfo(slot=s, name=f"{self.ctx.model}-{s}", model_path=state[s]["model"],
                         resolved=Path(state[s]["model"]).resolve(), port=state[s]["port"])
                for s in ("stable", "canary") if s in state]

    def health(self, slot: SlotInfo) -> Health:
        try:
            with urllib.request.urlopen(f"http://{self.config.host}:{slot.port}/v1/models", timeout=5) as r:
                data = json.loads(r.read())
            return Health(True, (data.get("data") or [{}])[0].get("id"))
        except (OSError, ValueError):
            return Health(False)

    def serve(self, slot: Slot, artifact: Artifact) -> None:
        state = self._state()
        old = state.get(slot)
        self._kill(old)  # one port per slot: the old server goes first (no router, no hand-off)
        state[slot] = self._start(slot, str(artifact.path), artifact.label)
        self._save(state)
        if self._healthy(state[slot]["port"]):
            return
        self._kill(state[slot])
        if old:
            state[slot] = self._start(slot, old["model"], old["label"])
            self._healthy(state[slot]["port"])
        else:
            del state[slot]
        self._save(state)
        raise RolledBack(f"{slot} serving {artifact.label} was not healthy within {self.config.health_timeout:g}s; "
                         "the previous server is back", hint=f"see {self._log(slot)}")

    def stop(self, slot: Slot) -> None:
        state = self._state()
        self._kill(state.pop(slot, None))
        self._save(state)

    def snapshot(self) -> str:
        state = self._state()
        return json.dumps({s: {"model": e["model"], "label": e["label"]} for s, e in state.items()}, sort_keys=True)

    def restore(self, snapshot: str) -> None:
        want = json.loads(snapshot).get("stable")
        have = self._state().get("stable")
        if want and (not have or have["model"] != want["model"]):
            state = self._state()
            self._kill(have)
            state["stable"] = self._start("stable", want["model"], want["label"])
            self._save(state)
            self._healthy(state["stable"]["port"])

    def preview(self, slot: Slot, artifact: Artifact) -> DeployPlan:
        return DeployPlan(commands=[self._command(slot, str(artifact.path), artifact.label)])

    # --- processes -------------------------------------------------------------------------------

    def _command(self, slot: Slot, model: str, label: str) -> list[str]:
        c = self.config
        return [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", c.host,
                "--port", str(self._port(slot)), "--model_alias", label, "--n_ctx", str(c.n_ctx),
                "--n_threads", str(c.n_threads)]

    def _log(self, slot: Slot) -> Path:
        return self.state_file.with_name(f"{self.ctx.model}-{slot}.log")

    def _start(self, slot: Slot, model: str, label: str) -> dict:
        self._log(slot).parent.mkdir(parents=True, exist_ok=True)
        with open(self._log(slot), "ab") as log:
            # its own session: the server outlives this command and is stopped by its group
            proc = subprocess.Popen(self._command(slot, model, label), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return {"model": model, "label": label, "pid": proc.pid, "port": self._port(slot)}

    def _kill(self, entry: dict | None) -> None:
        if not entry:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(entry["pid"], signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.killpg(entry["pid"], 0)  # raises ProcessLookupError once it is gone
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(entry["pid"], os.WNOHANG)
                time.sleep(0.1)
            os.killpg(entry["pid"], signal.SIGKILL)

    def _healthy(self, port: int) -> bool:
        deadline = time.monotonic() + self.config.health_timeout
        probe = SlotInfo(slot="stable", name="", model_path=None, resolved=None, port=port)
        while time.monotonic() < deadline:
            if self.health(probe).healthy:
                return True
            time.sleep(0.2)
        return False


@hookimpl
def register_deployers(register):
    register(LlamaServerDeployer)
