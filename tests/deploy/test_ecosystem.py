"""Rewriting one app's model path in ecosystem files: every other byte stays (node/json/yaml judge)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from ftctl_plugins.deployers import ecosystem

from ftctl_plugins.deployers import nginx
from ftctl.errors import FtctlError, UsageError
from tests.conftest import need

NEW = "/srv/exports/medical/v1.1/model-Q4_K_M.gguf"
FLAGS = ["-m", "--model"]

JS = """// pm2 file of the seed teams: hand-written, commented
const shared = { LLAMA_ARG_THREADS: "2" };
module.exports = {
  apps: [
    {
      name: 'llama-bimedix2-8081',   // medical
      script: '/usr/local/bin/llama-server',
      args: '-m /srv/models/bimedix2.gguf --port 8081 -c 4096',
      env: shared,
    },
    {
      name: "llama-triage-8082",
      script: "/usr/local/bin/llama-server",
      args: ["-m", "/srv/models/bimedix2.gguf", "--port", "8082"],   // same file, other app
    },
  ],
};
"""


@pytest.fixture
def js(tmp_path):
    need(shutil.which("node") is not None, "node (pm2 needs it)")
    p = tmp_path / "ecosystem.config.js"
    p.write_text(JS)
    return p


def changed_lines(a: str, b: str) -> list[tuple[str, str]]:
    assert len(a.splitlines()) == len(b.splitlines())
    return [(x, y) for x, y in zip(a.splitlines(), b.splitlines()) if x != y]


def test_js_rewrite_changes_one_field_of_one_app(js):
    new = ecosystem.rewrite(js, JS, "llama-triage-8082", FLAGS, NEW)
    ((old_line, new_line),) = changed_lines(JS, new)
    assert "8082" in old_line and new_line == old_line.replace("/srv/models/bimedix2.gguf", NEW)
    apps = ecosystem.load_apps(js, new)  # node loads the result
    assert ecosystem.get_arg(apps[1], FLAGS) == NEW
    assert ecosystem.get_arg(apps[0], FLAGS) == "/srv/models/bimedix2.gguf"  # the other app is untouched

    new = ecosystem.rewrite(js, JS, "llama-bimedix2-8081", FLAGS, NEW)
    ((old_line, new_line),) = changed_lines(JS, new)
    assert "8081" in old_line and "// medical" not in old_line and NEW in new_line


def test_json_inline_flag_and_yaml_comments(tmp_path):
    data = {"apps": [{"name": "a", "script": "s", "args": ["--model=/m/old.gguf", "--port", "1"]},
                     {"name": "b", "script": "s", "args": "--model /m/old.gguf"}]}
    p = tmp_path / "ecosystem.json"
    text = json.dumps(data, indent=4)
    p.write_text(text)
    new = ecosystem.rewrite(p, text, "a", ["--model"], NEW)
    assert json.loads(new)["apps"][0]["args"][0] == f"--model={NEW}"
    assert json.loads(new)["apps"][1] == data["apps"][1]

    y = tmp_path / "ecosystem.yaml"
    text = ("# serving\napps:\n  - name: a   # the one\n    script: s\n    args: --model /m/old.gguf --port 1\n"
            "  - name: b\n    args: [--model, /m/old.gguf]\n")
    y.write_text(text)
    new = ecosystem.rewrite(y, text, "b", ["--model"], NEW)
    assert new == text.replace("[--model, /m/old.gguf]", f"[--model, {NEW}]")


@pytest.mark.parametrize("name,text", [
    ("ecosystem.config.js", "module.exports = { apps: [ { name: 'a', args: '-m x' } ] ;"),
    ("ecosystem.json", '{"apps": [ {"name": "a",} ]}'),
    ("ecosystem.yaml", "apps:\n  - name: a\n   args: [\n"),
])
def test_a_file_that_does_not_parse(tmp_path, name, text):
    if name.endswith(".js"):
        need(shutil.which("node") is not None, "node")
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ecosystem.EcosystemError, match="does not parse") as e:
        ecosystem.rewrite(p, text, "a", FLAGS, NEW)
    assert e.value.hint and p.read_text() == text


def test_unknown_app_lists_the_apps_there(js):
    with pytest.raises(ecosystem.EcosystemError, match="no app named 'nope'") as e:
        ecosystem.rewrite(js, JS, "nope", FLAGS, NEW)
    assert "llama-bimedix2-8081" in e.value.hint


def test_model_path_twice_in_the_args(tmp_path):
    p = tmp_path / "ecosystem.json"
    for args, what in ((["-m", "/a.gguf", "--model", "/b.gguf"], "2 times"),
                       (["-m", "/a.gguf", "--lora-base", "/a.gguf"], "more than once")):
        text = json.dumps({"apps": [{"name": "a", "args": args}]})
        with pytest.raises(ecosystem.EcosystemError, match=what):
            ecosystem.rewrite(p, text, "a", FLAGS, NEW)


def test_a_computed_path_is_refused_not_guessed(js):
    text = JS.replace("args: ['-m', ", "args: ['-m', ").replace(
        "'-m /srv/models/bimedix2.gguf --port 8081 -c 4096'",
        "'-m ' + require('path').join('/srv/models', 'bimedix2.gguf') + ' --port 8081'")
    js.write_text(text)
    with pytest.raises(ecosystem.EcosystemError, match="not written there literally"):
        ecosystem.rewrite(js, text, "llama-bimedix2-8081", FLAGS, NEW)


def test_missing_flag_and_unsafe_values(tmp_path):
    p = tmp_path / "ecosystem.json"
    text = json.dumps({"apps": [{"name": "a", "args": ["--port", "1"]}]})
    with pytest.raises(ecosystem.EcosystemError, match="has no -m/--model"):
        ecosystem.rewrite(p, text, "a", FLAGS, NEW)
    for bad in ("/x/a b.gguf", "/x/$(rm -rf).gguf", "/x/'q'.gguf"):
        with pytest.raises(UsageError):
            ecosystem.rewrite(p, text, "a", FLAGS, bad)


def test_backup_then_atomic_write_keeps_the_mode(tmp_path):
    p = tmp_path / "ecosystem.json"
    p.write_text("old")
    p.chmod(0o640)
    backup = ecosystem.backup_and_write(p, "new", tmp_path / "backups", "t1")
    assert backup.read_text() == "old" and p.read_text() == "new" and p.stat().st_mode & 0o777 == 0o640


def test_nginx_include_is_valid_for_real_nginx(tmp_path):
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    need(shutil.which(nginx_bin) is not None, "nginx")
    assert "split_clients" in nginx.render("medical-qa", 8081)
    for percent in (0, 20, 100):
        inc = tmp_path / f"inc{percent}.conf"
        inc.write_text(nginx.render("medical-qa", 8081, 9081, percent))
        conf = tmp_path / f"nginx{percent}.conf"
        conf.write_text(f"pid {tmp_path}/pid; events {{}} http {{ include {inc}; server {{ listen 127.0.0.1:1; "
                        "location / { proxy_pass http://$ftctl_medical_qa; } } }")
        proc = subprocess.run([nginx_bin, "-t", "-q", "-p", str(tmp_path), "-c", str(conf), "-e",
                               str(tmp_path / "err.log")], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert "20% ftctl_medical_qa_canary" in nginx.render("medical-qa", 8081, 9081, 20)
    assert "_stable" not in nginx.render("medical-qa", 8081, 9081, 100).split("split_clients")[1]


def test_nginx_failed_test_restores_the_old_include(tmp_path):
    inc = tmp_path / "inc.conf"
    inc.write_text("old include\n")
    with pytest.raises(FtctlError):
        nginx.apply(inc, "new include\n", ["false"], ["true"])
    assert inc.read_text() == "old include\n"


def test_js_files_parse_from_many_threads_at_once(js, tmp_path):
    """`ftctl serve` answers /status from several threads: each parse has its own temp file."""
    from concurrent.futures import ThreadPoolExecutor

    path = js
    texts = [JS.replace("8082", str(9000 + i)) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        parsed = list(pool.map(lambda t: ecosystem._parse_many(path, [t])[0], texts))
    assert [c["apps"][1]["args"][3] for c in parsed] == [str(9000 + i) for i in range(8)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ecosystem.config.js"]  # no temp file left
