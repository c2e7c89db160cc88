"""LoRA hot-swap: one llama-server, one base GGUF, every version's LoRA GGUF loaded at scale 0.

Deploy, promote and rollback change adapter scales through llama-server's POST /lora-adapters;
the process (and the base model in memory) stays. The server is ``python -m
ftctl_plugins.deployers.lora_server`` (llama-server from the xllamacpp wheel) in its own session;
its pid, port, adapter order, which adapter each slot uses and the canary's share are kept in
.ftctl/lora-swap/<model>.json. It is restarted only when it is not running or a version's LoRA
GGUF is not among the loaded ones (exported after the server started).

A canary takes a share of traffic with no second model in memory: the configured port is a
router (lora_router) in the same process, which gives each completion request its adapter
(``"lora"``, per request) by a hash of the client's ``user``, and names the version in the
answer's ``model``. ``route`` only records the share in the state file; the router re-reads it.
The router logs each routed request (<model>.access.log beside the state file): ``traffic``.
llama-server's control API (/lora-adapters) is reachable on its internal port only (``upstream_port``
in the state file): the router does not pass it on.

A pid in the state file is signalled only while it is still this model's server (its command
line names the state file): after a reboot the number may belong to anything.
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

from ftctl.api import (Artifact, ConfigError, Deployer, DeployPlan, ExportQuery, Health, PluginConfig, RolledBack, Slot,
                       SlotInfo, Traffic, ports, write_text)
from ftctl_plugins.deployers import access_log


class LoraSwapConfig(PluginConfig):
    base: str = Field(description="the base GGUF every version's LoRA applies to (absolute, or relative to the "
                                  "workspace); the same base the versions were trained on")
    port: int = Field(8090, ge=1, le=65535, description="port clients call (the router in front of the llama-server)")
    host: str = Field("127.0.0.1", description="address the server listens on")
    threads: int = Field(1, ge=1, description="CPU threads of the server")
    ctx_size: int = Field(2048, ge=64, description="context size (tokens) of the server")
    parallel: int = Field(1, ge=1, description="requests the server decodes at once (slots)")
    scale: float = Field(1.0, gt=0, description="scale of the serving version's adapter")
    health_timeout: float = Field(60, gt=0, description="seconds a new server may take to answer /health")
    max_body: int = Field(8 * 1024 * 1024, ge=1024, description="largest request body (bytes) the router takes")


class LoraSwapDeployer(Deployer):
    name = "lora_swap"
    Config = LoraSwapConfig
    config: LoraSwapConfig

    def serves(self) -> ExportQuery:
        return ExportQuery(kind="lora-gguf")  # `ftctl export V --lora-gguf`

    # --- state ---------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.ctx.root / ".ftctl" / "lora-swap" / f"{self.ctx.model}.json"

    @property
    def log_file(self) -> Path:
        return self.state_file.with_suffix(".log")

    @property
    def access_log_file(self) -> Path:
        return self.state_file.with_suffix(".access.log")

    def _state(self) -> dict:
        with contextlib.suppress(FileNotFoundError):
            return json.loads(self.state_file.read_text())
        return {}

    def _save(self, state: dict) -> None:
        write_text(self.state_file, json.dumps(state, indent=2, sort_keys=True))

    def _base(self) -> Path:
        path = Path(self.config.base)
        path = path if path.is_absolute() else self.ctx.root / path
        if not path.is_file():
            raise ConfigError(f"deploy.lora_swap.base: {self.config.base} does not exist",
                              hint="point it at the base model's GGUF (the one the adapters were trained on)")
        return path.resolve()

    def _exported_loras(self) -> list[str]:
        """Every version's LoRA GGUF (the core's ``exported``; loaded at start, so any can be swapped in)."""
        return [str(a.path) for a in self.exported]

    # --- the primitives ------------------------------------------------------------------------

    def preflight(self) -> None:
        import importlib.util

        missing = [m for m in ("xllamacpp", "starlette", "uvicorn", "httpx") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"the lora_swap deployer needs {', '.join(missing)}", hint="pip install 'ftctl[deploy]'")
        self._base()

    def slots(self) -> list[SlotInfo]:
        state = self._state()
        return [SlotInfo(slot=s, name=f"{self.ctx.model}-lora-{s}", model_path=state[s]["path"],
                         resolved=Path(state[s]["path"]), port=state.get("port"))
                for s in ("stable", "canary") if s in state]

    def health(self, slot: SlotInfo) -> Health:
        """Healthy: the server answers and, for stable, exactly its adapter is on."""
        state = self._state()
        try:
            with urllib.request.urlopen(f"http://{self.config.host}:{slot.port}/health", timeout=5) as r:
                ok = json.loads(r.read()).get("status") == "ok"
            if not ok or slot.slot == "canary":
                return Health(ok, state.get(slot.slot, {}).get("label") if ok else None)
            on = [a["path"] for a in self._adapters(state) if a.get("scale")]
        except (OSError, ValueError):
            return Health(False)
        entry = state.get("stable")
        return Health(bool(entry) and on == [entry["path"]], entry["label"] if entry else None)

    def serve(self, slot: Slot, artifact: Artifact) -> None:
        state = self._state()
        before = json.loads(json.dumps(state))
        path = str(artifact.path)
        try:
            self._ensure(state, path)
            state[slot] = {"path": path, "label": artifact.label}
            if slot == "stable":
                self._apply(state)
            self._save(state)
            return
        except (OSError, ValueError, RuntimeError) as e:
            error = e
        # put back what served before: the same server if it still runs, else one with only the
        # adapters it had (not the one that failed)
        state = before
        if before.get("stable"):
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                self._ensure(state, before["stable"]["path"], loras=before.get("adapters"))
                self._apply(state)
        else:
            self._kill(self._state().get("pid"))
            state = {}
        self._save(state)
        raise RolledBack(f"{slot} serving {artifact.label} failed: {error}; the previous state is back",
                         hint=f"see {self.log_file}")

    def route(self, canary_percent: int) -> None:
        """Recorded in the state file; the router reads it before the next request."""
        state = self._state()
        state["canary_percent"] = canary_percent
        self._save(state)

    def traffic(self, since: float) -> dict[Slot, Traffic] | None:
        return access_log.read(self.access_log_file, self.ctx.model, since)

    def stop(self, slot: Slot) -> None:
        state = self._state()
        if slot == "canary":
            if "canary" in state or "canary_percent" in state:  # all traffic back on stable
                state.pop("canary", None)
                state.pop("canary_percent", None)
                self._save(state)
            return
        self._kill(state.get("pid"))
        self._save({})

    def snapshot(self) -> str:
        state = self._state()
        return json.dumps({s: state[s] for s in ("stable", "canary") if s in state}, sort_keys=True)

    def restore(self, snapshot: str) -> None:
        want = json.loads(snapshot)
        state = self._state()
        for s in ("stable", "canary"):
            if s in want:
                state[s] = want[s]
            else:
                state.pop(s, None)
        if "stable" in want:
            self._ensure(state, want["stable"]["path"])
            self._apply(state)
        self._save(state)

    def preview(self, slot: Slot, artifact: Artifact) -> DeployPlan:
        state = self._state()
        loras = self._wanted(state, str(artifact.path))
        notes = [f"{slot} would use adapter {artifact.rel} (POST /lora-adapters; no restart)" if slot == "stable" else
                 f"canary would use adapter {artifact.rel}: the router sends it its share of completion requests "
                 f"(by a hash of `user`, per request without one), no second model in memory"]
        cmds = []
        if not self._alive(state) or loras != state.get("adapters"):
            cmds.append(self._command(loras))
            notes.append("the server (re)starts to load the adapters")
        return DeployPlan(commands=cmds, notes=notes)

    # --- the server ----------------------------------------------------------------------------

    def _wanted(self, state: dict, path: str) -> list[str]:
        """Adapters the server should have loaded: those it has, in the same order (stable ids), then new ones."""
        have = list(state.get("adapters") or [])
        return have + [p for p in dict.fromkeys([*self._exported_loras(), path]) if p not in have]

    def _ours(self, pid: int | None) -> bool:
        """``pid`` is this model's server: alive, and its command line names our state file."""
        import psutil

        if not pid:
            return False
        try:
            cmd = psutil.Process(pid).cmdline()
        except (psutil.Error, OSError):
            return False
        return "ftctl_plugins.deployers.lora_server" in cmd and str(self.state_file) in cmd

    def _alive(self, state: dict) -> bool:
        if not self._ours(state.get("pid")):
            return False
        with contextlib.suppress(OSError, ValueError, KeyError):
            return [a["path"] for a in self._adapters(state)] == state.get("adapters")
        return False

    def check(self, slot: Slot, artifact: Artifact) -> None:
        """Before anything changes: the base exists, and the port is ours or free."""
        self._base()
        state = self._state()
        own = {state["pid"]} if self._ours(state.get("pid")) else set()
        holder = ports.holder(self.config.port, self.config.host, own=own)
        if holder:
            raise ConfigError(f"port {self.config.port} is held by another process ({holder}); "
                              f"the lora_swap server of {self.ctx.model} cannot listen there",
                              hint="stop that process, or set deploy.lora_swap.port to a free port")

    def _ensure(self, state: dict, path: str, loras: list[str] | None = None) -> None:
        """A running server with ``path`` loaded; start (or restart) it only when it must."""
        if self._alive(state) and path in state.get("adapters", []):
            return
        loras = loras or self._wanted(state, path)
        self._kill(state.get("pid"))
        state["upstream_port"] = ports.free_port()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            # its own session: the server outlives this command; stopped by its process group
            proc = subprocess.Popen(self._command(loras, state["upstream_port"]), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        state.update(pid=proc.pid, port=self.config.port, adapters=loras, base=str(self._base()))
        self._save(state)
        deadline = time.monotonic() + self.config.health_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {proc.returncode}")
            with contextlib.suppress(OSError, ValueError):
                # llama-server loaded every adapter, and the router in front of it answers
                if len(self._adapters(state)) == len(loras) and self._router_up():
                    return
            time.sleep(0.2)
        self._kill(proc.pid)
        raise RuntimeError(f"the server did not answer within {self.config.health_timeout:g}s")

    def _command(self, loras: list[str], upstream: int | None = None) -> list[str]:
        c = self.config
        cmd = [sys.executable, "-m", "ftctl_plugins.deployers.lora_server", "--model", str(self._base()),
               "--host", c.host, "--port", str(c.port), "--threads", str(c.threads), "--ctx-size", str(c.ctx_size),
               "--parallel", str(c.parallel), "--state", str(self.state_file),
               "--access-log", str(self.access_log_file), "--max-body", str(c.max_body)]
        if upstream:
            cmd += ["--upstream-port", str(upstream)]
        for p in loras:
            cmd += ["--lora", p]
        return cmd

    def _router_up(self) -> bool:
        with urllib.request.urlopen(f"http://{self.config.host}:{self.config.port}/health", timeout=5) as r:
            return r.status == 200

    def _adapters(self, state: dict) -> list[dict]:
        """llama-server's adapters, from its internal port (the public one does not pass this on)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{state['upstream_port']}/lora-adapters", timeout=5) as r:
            return json.loads(r.read())

    def _apply(self, state: dict) -> None:
        """Stable's adapter at ``scale``, every other at 0 (one request: the server swaps them together)."""
        want = state["stable"]["path"]
        state["scale"] = self.config.scale  # the router's per-request scale too
        body = [{"id": i, "scale": self.config.scale if p == want else 0.0} for i, p in enumerate(state["adapters"])]
        req = urllib.request.Request(f"http://127.0.0.1:{state['upstream_port']}/lora-adapters",
                                     json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
        on = [a["path"] for a in self._adapters(state) if a.get("scale")]
        if on != [want]:
            raise RuntimeError(f"the server reports adapters {on} on, not {want}")

    def _kill(self, pid: int | None) -> None:
        if not self._ours(pid):  # gone, or the number now belongs to another process
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                os.killpg(pid, 0)  # raises ProcessLookupError once it is gone
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)

