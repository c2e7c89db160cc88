"""`ftctl doctor`: check the environment; every missing piece comes with the command that fixes it.

The checks are public: `ftctl serve`'s GET /health (ftctl.serve.health) runs the dependency ones
(DVC remote, source databases, pm2) too.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ftctl.errors import FtctlError

INSTALL = "make install  (or: pip install -e '.[all]')"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
    required: bool = True  # a missing optional piece (CUDA) is information, not a failure


def _package(mod: str, what: str, fix: str = INSTALL, required: bool = True) -> Check:
    found = importlib.util.find_spec(mod) is not None
    return Check(f"python: {mod}", found, what if found else f"{what}: not installed", "" if found else fix, required)


def _cuda() -> list[Check]:
    try:
        import torch
    except ImportError:
        return [Check("cuda", False, "torch is not installed", INSTALL, required=False)]
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    qlora = Check("bitsandbytes", bnb, "QLoRA 4-bit (CUDA, or its CPU backend)" if bnb else "needed for QLoRA",
                  "" if bnb else "pip install 'ftctl[qlora]'", required=False)
    if not torch.cuda.is_available():
        return [Check("cuda", False, "no CUDA device: LoRA and QLoRA train on the CPU (fp32 weights)",
                      "install an NVIDIA driver and a CUDA build of torch", required=False), qlora]
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return [Check("cuda", True, names), qlora]


def _llama_cpp_tools(ws) -> Check:
    try:
        from ftctl.lib.llamacpp import FETCH_HINT, find_tools

        tools = find_tools(workspace_cache=ws.cache_dir if ws else None)
        return Check("llama.cpp converters", True, str(tools.root))
    except ImportError:
        return Check("llama.cpp converters", False, "the export module is not installed", INSTALL)
    except FtctlError as e:
        return Check("llama.cpp converters", False, e.message, e.hint or FETCH_HINT)


def binary(name: str, fix: str, extra: list[Path] = ()) -> Check:
    path = shutil.which(name) or next((str(p) for p in extra if p.exists()), None)
    return Check(name, bool(path), path or "not found", "" if path else fix)


def pm2(root: Path) -> Check:
    """pm2 on PATH, or the one the install step put in the workspace (.ftctl/node)."""
    return binary("pm2", "bash scripts/install_system.sh", [root / ".ftctl/node/node_modules/.bin/pm2"])


def dvc_remote(ws) -> Check:
    from ftctl.lib.process import dvc

    remote = ws.default_remote()
    if not remote:
        return Check("dvc remote", False, "no default remote", "ftctl init  (or: dvc remote add -d NAME URL)")
    # `dvc config` prints the bare URL; `dvc remote list` wraps its table at 80 columns
    url = dvc(ws.root, "config", f"remote.{remote}.url", check=False).stdout.strip()
    if "://" not in url:  # a local directory remote: reachable means present and writable
        p = Path(url)
        if not p.is_absolute():
            p = ws.root / ".dvc" / p
        ok = p.is_dir() and shutil.disk_usage(p) is not None and _writable(p)
        return Check("dvc remote", ok, f"{remote} -> {url}", "" if ok else f"mkdir -p {p}  (or fix its permissions)")
    proc = dvc(ws.root, "status", "--cloud", "--quiet", check=False)
    ok = proc.returncode in (0, 1) and "ERROR" not in proc.stderr
    return Check("dvc remote", ok, f"{remote} -> {url}", "" if ok else "check the remote's URL and credentials")


def _writable(p: Path) -> bool:
    import os

    return os.access(p, os.W_OK)


def workspace_secret(ws) -> Check:
    """The secret that keys tombstones and report ids (ftctl/registry/secret.py): present,
    private (0600) and out of git; and, while tombstones are recorded, the one that made them."""
    import os
    import stat
    import subprocess

    from ftctl.data.tombstones import entries_of
    from ftctl.registry import secret

    p = secret.path(ws.root)
    entries = entries_of(ws.read_lock())
    made = {e.get("secret") for e in entries} - {None}
    legacy = sum(1 for e in entries if not e.get("secret"))
    note = f"; {legacy} tombstone(s) from before the secret still match by their public salt" if legacy else ""
    if not p.is_file():
        if made:
            return Check("workspace secret", False, f"{secret.SECRET_FILE} is missing but models.lock has "
                         f"{len(entries) - legacy} tombstone(s) keyed with one: collect refuses to run",
                         f"copy {secret.SECRET_FILE} from the machine that ran `ftctl forget`")
        return Check("workspace secret", False, f"{secret.SECRET_FILE} does not exist yet" + note,
                     "ftctl init  (or it is created by the first forget or eval)", required=False)
    mode = stat.S_IMODE(os.stat(p).st_mode)
    ignored = subprocess.run(["git", "check-ignore", "-q", str(p)], cwd=ws.root, capture_output=True).returncode == 0
    try:
        wrong = made - {secret.fingerprint(secret.load(ws.root, create=False))}
    except FtctlError as e:
        return Check("workspace secret", False, e.message, e.hint or "")
    problems = ([f"mode {mode:o} (others can read it)"] if mode & 0o077 else []) + \
        ([] if ignored else ["git does not ignore it"]) + \
        ([f"it did not make {sum(1 for e in entries if e.get('secret') in wrong)} recorded tombstone(s)"]
         if wrong else [])
    fix = "; ".join(([f"chmod 600 {secret.SECRET_FILE}"] if mode & 0o077 else [])
                    + ([f"add {secret.GITIGNORE_LINE} to .gitignore"] if not ignored else [])
                    + ([f"restore the {secret.SECRET_FILE} that made them"] if wrong else []))
    return Check("workspace secret", not problems, (", ".join(problems) or f"{secret.SECRET_FILE}: 0600, git-ignored")
                 + note, fix)


def databases(ws) -> list[Check]:
    checks = []
    for name in ws.config.model_names():
        for src in ws.model(name).sources:
            dsn = src.plugin_config().get("dsn")
            if src.kind != "postgres" or not dsn:
                continue
            try:
                import psycopg

                with psycopg.connect(dsn, connect_timeout=5):
                    pass
                checks.append(Check(f"database: {src.name}", True, "connected"))
            except Exception as e:  # noqa: BLE001 - any failure is what the user needs to see
                from ftctl.lib.redact import redact

                checks.append(Check(f"database: {src.name}", False, redact(str(e).splitlines()[0]),
                                    "check the DSN (its ${ENV} variable) and that the server accepts connections"))
    return checks


def service(url: str, timeout: float = 5.0) -> Check:
    """A configured `ftctl serve`: its GET /health (ftctl.serve.health) answers 200."""
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=timeout)
        body = r.json()
        ok = r.status_code == 200
        bad = [c["name"] for c in body.get("checks", []) if not c["ok"]]
        detail = f"{url}: {body.get('status')}" + (f" ({', '.join(bad)} failing)" if bad else "")
    except (httpx.HTTPError, ValueError) as e:
        ok, detail = False, f"{url}: {type(e).__name__}"
    return Check("ftctl serve", ok, detail,
                 "" if ok else "start it (`ftctl serve`, or its pm2 entry in docs/serve.md) or fix serve.url")


def run_checks(ws=None) -> list[dict]:
    root = ws.root if ws else Path.cwd()
    checks = [
        _package("dvc", "DVC"),
        _package("psycopg", "PostgreSQL driver"),
        _package("torch", "training and generation"),
        _package("transformers", "models"),
        _package("peft", "LoRA adapters"),
        _package("sacrebleu", "BLEU"),
        _package("rouge_score", "ROUGE"),
        _package("llama_cpp", "GGUF quantize/verify/serve", fix="pip install llama-cpp-python  (compiles; ~10 min)"),
        *_cuda(),
        _llama_cpp_tools(ws),
        binary("git", "apt-get install git"),
        binary("node", "apt-get install nodejs npm"),
        pm2(root),
        binary("nginx", "bash scripts/install_system.sh  (or: apt-get install nginx)", [Path("/usr/sbin/nginx")]),
    ]
    if ws:
        checks.append(dvc_remote(ws))
        checks.append(workspace_secret(ws))
        checks += databases(ws)
        if ws.config.serve.url:  # `ftctl serve` is configured: is it up and healthy?
            checks.append(service(ws.config.serve.url))
    return [asdict(c) for c in checks]
