"""The `pm2` deployer: llama.cpp servers run by pm2 from an ecosystem file, nginx for canaries.

It rewrites one app's model argument in the team's ecosystem file (ftctl_plugins.deployers.ecosystem), runs
`pm2 startOrReload <file> --only <app>`, and waits for the health URL. A canary is the stable
app's definition with the new model and its own port, written to a generated ecosystem file
under .ftctl/deploy (the team's file keeps only what they run for good); nginx splits traffic
through a generated include (ftctl_plugins.deployers.nginx).

With nginx and a canary port configured, every change of the stable app is a hand-off without
downtime: the new model starts on the canary port, takes all traffic, the stable app restarts
on it, takes the traffic back, and the temporary canary stops.

The core decides, orchestrates (canary, promote, rollback, the hand-off) and records
(ftctl.deploy.rollout); this class implements the Deployer primitives only, and raises RolledBack
after putting things back when a new process is not healthy in time. pm2 specifics (the
ecosystem file, the app and its arguments, nginx) live here and nowhere in the core.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import Field, field_validator

from ftctl.api import (Artifact, ConfigError, DeployPlan, Deployer, ExportQuery, ExternalToolError, Health,
                       PluginConfig, RolledBack, Slot, SlotInfo, Traffic, ports, run_tool, wait_for)
from ftctl_plugins.deployers import access_log, ecosystem, nginx

APP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
PM2_HINT = "install it with scripts/install_system.sh (npm install --prefix .ftctl/node pm2), or set deploy.pm2.pm2"


class Pm2Config(PluginConfig):
    ecosystem: str = Field(description="the team's ecosystem file; relative paths are from the workspace root")
    app: str = Field(description="the one app this model is served by")
    arg: list[str] = Field(["-m", "--model"], description='how the model path appears in its args ("--lora" for adapters)')
    alias_arg: str | None = Field(None, description='how the served model id appears in its args: "--model_alias" (llama_cpp.server), "--alias" (llama-server)')
    port_arg: str = Field("--port", description="how the port appears in the app's args")
    health_url: str = Field("http://127.0.0.1:{port}/v1/models", description="polled for health, {port} filled in (llama-server: http://127.0.0.1:{port}/health)")
    health_timeout: float = Field(120, gt=0, description="how long a new process may take to become healthy")
    probe_timeout: float = Field(10, gt=0, description="one health request (a busy 1-thread server answers late)")
    canary_app: str | None = Field(None, description='the canary\'s pm2 app name (default: "<app>-canary")')
    canary_port: int | None = Field(None, ge=1, le=65535, description="a free port for the canary app (needed for canaries and hand-offs)")
    nginx_include: str | None = Field(None, description="the nginx include ftctl generates for the traffic split (none: no canary traffic)")
    nginx_test: list[str] = Field(["nginx", "-t"], description="command that checks the nginx configuration")
    nginx_reload: list[str] = Field(["nginx", "-s", "reload"], description="command that reloads nginx")
    nginx_access_log: str | None = Field(None, description="absolute path the include logs this model's requests to "
                                         "(upstream, status, time): the canary's error rate; none: not logged")
    split_key: str = Field("$request_id", description='nginx split_clients key; "$remote_addr" keeps each client on one side')
    drain_seconds: float = Field(2.0, ge=0, description="let requests in flight finish before a restart")
    pm2: str | None = Field(None, description="the pm2 executable; default: PATH, then .ftctl/node")
    pm2_timeout: float = Field(90, gt=0, description="seconds a pm2 command may take")
    save: bool = Field(True, description="run `pm2 save` after every change, so a reboot's `pm2 resurrect` brings "
                       "back what models.lock records (false: the team saves pm2's process list itself)")
    quant: str | None = Field(None, description="which exported GGUF to serve; default: the first")

    @field_validator("arg", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("nginx_access_log")
    @classmethod
    def _log_path(cls, v):
        return v if v is None else nginx.log_path(v)

    @field_validator("split_key")
    @classmethod
    def _split_key(cls, v):
        return nginx.split_key(v)

    @field_validator("app", "canary_app")
    @classmethod
    def _app_name(cls, v):
        if v is not None and not APP_RE.match(v):
            raise ValueError(f"invalid pm2 app name {v!r}")
        return v


@dataclass(frozen=True)
class Seen:
    """What answered on a port: health, the model ids it reports, the model file it names."""

    healthy: bool
    ids: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    @property
    def served_id(self) -> str | None:
        return (self.ids or self.paths or (None,))[0]


def _same_file(reported: str, path: Path) -> bool:
    """A server names its model by the path it was given (absolute, relative to its cwd) or alias."""
    if reported == str(path):
        return True
    p = Path(reported)
    return p.is_absolute() and p.resolve() == path


class Pm2Deployer(Deployer):
    name = "pm2"
    Config = Pm2Config
    config: Pm2Config

    # --- where things are -------------------------------------------------------------------

    @property
    def file(self) -> Path:
        return (self.ctx.root / self.config.ecosystem).resolve()

    @property
    def state_dir(self) -> Path:
        d = self.ctx.root / ".ftctl" / "deploy"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def canary_name(self) -> str:
        return self.config.canary_app or f"{self.config.app}-canary"

    @property
    def canary_file(self) -> Path:
        return self.state_dir / f"{self.canary_name}.json"

    @property
    def include(self) -> Path | None:
        c = self.config.nginx_include
        return (self.ctx.root / c).resolve() if c else None

    def pm2_exe(self) -> str:
        if self.config.pm2:
            return self.config.pm2
        local = [self.ctx.root / ".ftctl/node/node_modules/.bin/pm2",
                 Path(__file__).resolve().parents[2] / ".ftctl/node/node_modules/.bin/pm2"]
        return shutil.which("pm2") or next((str(p) for p in local if p.exists()), "pm2")

    def preflight(self) -> None:
        """Missing tools fail here, before anything changes."""
        if not shutil.which(self.pm2_exe()):
            raise ExternalToolError(f"pm2 is not installed (looked for {self.pm2_exe()})", hint=PM2_HINT)
        if self.include and not shutil.which(self.config.nginx_reload[0]):
            raise ExternalToolError(f"nginx is not installed ({self.config.nginx_reload[0]} not found)",
                                    hint=nginx.HINT)

    def pm2(self, *args: str, check: bool = True):
        return run_tool([self.pm2_exe(), *args], cwd=self.file.parent, check=check,
                   timeout=self.config.pm2_timeout, hint=PM2_HINT)

    # --- reading ------------------------------------------------------------------------------

    def snapshot(self) -> str:
        """The ecosystem file's text, once it loads and holds the app (a broken file is refused
        here, before any note keeps it to be put back)."""
        text = ecosystem.read_text(self.file)
        self.stable_app(text)
        return text

    def stable_app(self, text: str | None = None) -> dict:
        return ecosystem.find_app(ecosystem.load_apps(self.file, text), self.config.app, self.file)

    def port_of(self, app: dict) -> int:
        port = ecosystem.get_arg(app, [self.config.port_arg])
        if not (port or "").isdigit():
            raise ConfigError(f"app {app.get('name')!r} has no numeric {self.config.port_arg} argument",
                              hint="ftctl needs the port for health checks and the nginx split")
        return int(port)

    def canary_app(self) -> dict | None:
        if not self.canary_file.exists():
            return None
        return json.loads(self.canary_file.read_text())["apps"][0]

    # --- the Deployer primitives --------------------------------------------------------------

    def serves(self) -> ExportQuery:
        # an app whose model argument is --lora serves the adapter as a GGUF LoRA
        return ExportQuery("lora-gguf" if "--lora" in self.config.arg else "gguf", self.config.quant)

    def slots(self) -> list[SlotInfo]:
        out = []
        for slot, app in (("stable", self.stable_app()), ("canary", self.canary_app())):
            if app:
                path = ecosystem.get_arg(app, self.config.arg)
                out.append(SlotInfo(slot=slot, name=app["name"], model_path=path, port=self.port_of(app),
                                    resolved=(self.file.parent / path).resolve() if path else None,
                                    args=tuple(ecosystem.arg_tokens(app))))
        return out

    def health(self, slot: SlotInfo) -> Health:
        """Healthy: it answers, and it is the model the slot is configured with (not any 200)."""
        app = self.stable_app() if slot.slot == "stable" else self.canary_app()
        seen = self.identify(slot.port)
        ok = bool(app) and seen.healthy and self.is_serving(app, seen, name=slot.name)
        return Health(ok, seen.served_id)

    def check(self, slot: Slot, artifact: Artifact) -> None:
        """Everything serve() needs, before anything changes: the file loads and holds the app,
        the rewrite is safe, and the ports it starts a server on are free or its own."""
        text = self.snapshot()
        app = self.stable_app(text)
        ports_used = []
        if slot == "stable":
            self.new_text(str(artifact.path), artifact.label, text)
            ports_used.append((self.port_of(app), self.config.app))
            if self.splits_traffic():  # the hand-off starts the new model on the canary port first
                ports_used.append((self.config.canary_port, self.canary_name))
        else:
            if not self.config.canary_port:
                raise ConfigError("a canary needs deploy.pm2.canary_port", hint="a free port for the canary app")
            ecosystem.check_value(str(artifact.path))
            if self.config.alias_arg:
                ecosystem.check_value(artifact.label)
            ports_used.append((self.config.canary_port, self.canary_name))
        own = self.pm2_pids()
        for port, name in ports_used:
            holder = ports.holder(port, own=set(own.values()))
            if holder:
                raise ConfigError(f"port {port} is held by another process ({holder}), not by pm2 app {name}; "
                                  "nothing was changed",
                                  hint=f"stop that process (a stale server?), or give {name} another port")

    def persist(self) -> None:
        if self.config.save:
            # pm2's documented way (pm2 save): what runs now is what `pm2 resurrect` starts after a
            # reboot; --force saves an empty list too rather than keep an outdated one
            self.pm2("save", "--force")

    def serve(self, slot: Slot, artifact: Artifact) -> None:
        if slot == "canary":
            self.start_canary(str(artifact.path), artifact.label)
        else:
            self.restart_stable(self.new_text(str(artifact.path), artifact.label), artifact.label)

    def stop(self, slot: Slot) -> None:
        if slot == "canary":
            self.stop_canary()
        else:
            self.pm2("stop", self.config.app, check=False)

    def restore(self, snapshot: str) -> None:
        app = self.stable_app(snapshot)  # a snapshot that does not load is never written back
        if ecosystem.read_text(self.file) != snapshot:
            ecosystem.replace(self.file, snapshot)
            self.pm2("startOrReload", str(self.file), "--only", self.config.app)
            self.wait_healthy(app, self.config.app)

    def splits_traffic(self) -> bool:
        return bool(self.include and self.config.canary_port)

    def route(self, canary_percent: int) -> None:
        self.set_split(canary_percent)

    def traffic(self, since: float) -> dict[Slot, Traffic] | None:
        if not (self.include and self.config.nginx_access_log):
            return None
        return access_log.read(Path(self.config.nginx_access_log), self.ctx.model, since)

    def preview(self, slot: Slot, artifact: Artifact) -> DeployPlan:
        pm2 = self.pm2_exe()
        if slot == "canary":
            return DeployPlan(commands=[[pm2, "startOrReload", str(self.canary_file), "--only", self.canary_name],
                                        *([self.config.nginx_reload] if self.include else [])])
        old = self.snapshot()
        new = self.new_text(str(artifact.path), artifact.label, old)
        return DeployPlan(diff=ecosystem.unified_diff(self.file, old, new),
                          commands=[[pm2, "startOrReload", str(self.file), "--only", self.config.app]])

    # --- identity: the served model is the one deployed, not any 200 on the port -------------

    def _get(self, url: str) -> tuple[int, object]:
        """(status, parsed JSON or None); (0, None) when nothing answers."""
        try:
            with urllib.request.urlopen(url, timeout=self.config.probe_timeout) as r:
                status, body = r.status, r.read(65536)
        except urllib.error.HTTPError as e:
            return e.code, None
        except (OSError, ValueError):
            return 0, None
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None

    def identify(self, port: int) -> Seen:
        """What answers on ``port``: health, and the ids it reports (``/v1/models`` ids, llama-server's
        ``/props`` ``model_path``)."""
        health_url = self.config.health_url.format(port=port)
        status, body = self._get(health_url)
        if status != 200:
            return Seen(False)
        models_url = f"http://127.0.0.1:{port}/v1/models"
        if health_url != models_url:
            _, body = self._get(models_url)
        ids = [m["id"] for m in (body.get("data") or []) if isinstance(m, dict) and isinstance(m.get("id"), str)] \
            if isinstance(body, dict) else []
        _, props = self._get(f"http://127.0.0.1:{port}/props")
        paths = [props["model_path"]] if isinstance(props, dict) and isinstance(props.get("model_path"), str) else []
        return Seen(True, tuple(ids), tuple(paths))

    def expected(self, app: dict) -> tuple[str | None, Path | None]:
        """(alias, absolute model path) the app is configured to serve."""
        alias = ecosystem.get_arg(app, [self.config.alias_arg]) if self.config.alias_arg else None
        path = ecosystem.get_arg(app, self.config.arg)
        return alias, (self.file.parent / path).resolve() if path else None

    def is_serving(self, app: dict, seen: Seen, *, name: str) -> bool:
        """``seen`` is ``app``'s model, served by pm2's ``name``."""
        return self.reports(app, seen) and self.owns_port(app, name)

    def reports(self, app: dict, seen: Seen) -> bool:
        """The server reports ``app``'s model: its id is the alias (or names the file), and llama-server's
        /props model_path is the file. A server that reports nothing is judged by its process alone."""
        alias, path = self.expected(app)
        if alias and seen.ids:
            if alias not in seen.ids:
                return False
        elif path and (seen.ids or seen.paths):
            if not any(_same_file(x, path) for x in (*seen.ids, *seen.paths)):
                return False
        return not (path and seen.paths and not any(_same_file(x, path) for x in seen.paths))

    def owns_port(self, app: dict, name: str) -> bool:
        """The process listening on ``app``'s port is pm2's ``name`` (or a child of it)."""
        listening = ports.listeners(self.port_of(app))
        if not listening:
            return True  # the socket table does not show it (another user's process): the ids decide
        pid = self.pm2_pids().get(name)
        return bool(pid) and bool(set(listening) & ports.family(pid))

    def pm2_pids(self) -> dict[str, int]:
        """pm2's online processes of this model (stable and canary app): name -> pid."""
        proc = self.pm2("jlist", check=False)
        try:
            listed = json.loads((proc.stdout or "").strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {}
        return {p["name"]: p["pid"] for p in listed if isinstance(p, dict)
                and p.get("name") in (self.config.app, self.canary_name) and p.get("pid")
                and (p.get("pm2_env") or {}).get("status") == "online"}

    def wait_healthy(self, app: dict, name: str) -> bool:
        """Until ``name`` serves ``app``'s model on its port (health_timeout)."""
        port = self.port_of(app)

        def serving() -> bool:
            seen = self.identify(port)
            # the ids first (cheap), then pm2's pid list (a node start) once they match
            return seen.healthy and self.reports(app, seen) and self.owns_port(app, name)

        return wait_for(serving, self.config.health_timeout, 0.25)

    def unhealthy(self, app: dict, label: str, what: str) -> str:
        """Why ``app`` is not counted healthy: nothing answers, or who answers instead."""
        port = self.port_of(app)
        seen = self.identify(port)
        if not seen.healthy:
            return f"{what} serving {label} did not answer on port {port} within {self.config.health_timeout:g}s"
        holder = ports.holder(port, own=set(self.pm2_pids().values()))
        who = seen.served_id or "an unnamed model"
        return (f"port {port} answers as {who}, not {label}" + (f" (held by {holder})" if holder else "")
                + f": {what} is not serving it")

    # --- helpers ---------------------------------------------------------------------------

    def new_text(self, model_path: str, label: str, text: str | None = None) -> str:
        text = self.snapshot() if text is None else text
        text = ecosystem.rewrite(self.file, text, self.config.app, self.config.arg, model_path)
        if self.config.alias_arg:
            text = ecosystem.rewrite(self.file, text, self.config.app, [self.config.alias_arg], label)
        return text

    # --- acting ---------------------------------------------------------------------------------

    def set_split(self, percent: int) -> None:
        if not self.include:
            return
        stable = self.port_of(self.stable_app())
        text = nginx.render(self.ctx.model, stable, self.config.canary_port, percent, key=self.config.split_key,
                            access_log=self.config.nginx_access_log)
        if nginx.apply(self.include, text, self.config.nginx_test, self.config.nginx_reload):
            time.sleep(self.config.drain_seconds)  # old nginx workers finish what they hold

    def start_canary(self, model_path: str, label: str) -> None:
        if not self.config.canary_port:
            raise ConfigError("a canary needs deploy.pm2.canary_port", hint="a free port for the canary app")
        ecosystem.check_value(model_path)
        app = dict(self.stable_app())
        tokens = ecosystem.with_arg(ecosystem.arg_tokens(app), self.config.arg, model_path)
        tokens = ecosystem.with_arg(tokens, [self.config.port_arg], str(self.config.canary_port))
        if self.config.alias_arg:
            tokens = ecosystem.with_arg(tokens, [self.config.alias_arg], label)
        app.update(name=self.canary_name, args=tokens, cwd=app.get("cwd") or str(self.file.parent))
        ecosystem.replace(self.canary_file, json.dumps({"apps": [app]}, indent=2) + "\n")
        self.pm2("startOrReload", str(self.canary_file), "--only", self.canary_name)
        if not self.wait_healthy(app, self.canary_name):
            why = self.unhealthy(app, label, f"canary {self.canary_name}")
            self.stop_canary()
            raise RolledBack(f"{why}; the canary was removed and traffic is unchanged",
                             hint=f"check the GGUF and `pm2 logs {self.canary_name}`")

    def stop_canary(self) -> None:
        self.pm2("delete", self.canary_name, check=False)  # absent is fine: the goal is "not running"
        self.canary_file.unlink(missing_ok=True)

    def restart_stable(self, text: str, label: str) -> None:
        """Write the ecosystem file and reload the app; put the old file back if it does not serve
        the new model in time."""
        old = self.snapshot()
        if text != old:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            ecosystem.backup_and_write(self.file, text, self.state_dir / "backups", stamp)
        self.pm2("startOrReload", str(self.file), "--only", self.config.app)
        app = self.stable_app(text)
        if self.wait_healthy(app, self.config.app):
            return
        why = self.unhealthy(app, label, self.config.app)
        ecosystem.replace(self.file, old)
        self.pm2("startOrReload", str(self.file), "--only", self.config.app)
        back = self.wait_healthy(self.stable_app(old), self.config.app)
        raise RolledBack(f"{why}; rolled back to the previous model" + ("" if back else " (which is not healthy either)"),
                         hint=f"check the GGUF and `pm2 logs {self.config.app}`")
