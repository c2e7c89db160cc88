"""Small guards of issue 21: secrets out of log lines (still JSON), the cron line quoted, the nginx
split key validated."""

from __future__ import annotations

import json
import shlex

import pytest

from ftctl.lib.redact import redact


@pytest.mark.parametrize("text, secret", [
    ("postgresql://app:s3cret@db:5432/x", "s3cret"),
    ("host=db user=app password=s3cret dbname=x", "s3cret"),
    ("host=db password='s3 cret' dbname=x", "s3 cret"),
    ("https://api.example/v1?token=tok123&x=1", "tok123"),
    ("https://api.example/v1?api_key=key123", "key123"),
    ("HF_TOKEN=hf_abc api-key=zzz9", "hf_abc"),
    ("PASSWORD = hunter2", "hunter2"),
])
def test_redact_removes_the_secret(text, secret):
    out = redact(text)
    assert secret not in out and "****" in out


def test_redact_keeps_a_json_log_line_valid_and_the_rest_intact():
    line = json.dumps({"msg": 'connect failed: host=db password=p"w\\x user=app', "dsn": "postgresql://u:pw@h/db",
                       "url": "http://h/x?token=abc&page=2", "note": "tokenizer=llama keeps"})
    out = json.loads(redact(line))
    assert "pw@" not in out["dsn"] and "abc" not in out["url"] and "page=2" in out["url"]
    assert 'p"w' not in out["msg"] and "user=app" in out["msg"] and out["note"] == "tokenizer=llama keeps"


def test_the_cron_line_quotes_every_path(tmp_path):
    from ftctl.cycle import cron_line
    from ftctl.registry.init import init
    from ftctl.registry.workspace import Workspace

    root = tmp_path / "my ws; rm -rf ~ %d"
    init(root, model="assistant")
    _, command = cron_line(Workspace(root))
    words = shlex.split(command.replace("\\%", "%"))
    assert words[2] == str(root) and words[-3] == ">>" and words[-2] == str(root / ".ftctl" / "cycle.log")
    assert "\\%" in command and " %" not in command.replace("\\%", "")


@pytest.mark.parametrize("key", ['$request_id"; include /etc/passwd; "', "$remote_addr x", "constant", "$a\\b"])
def test_a_split_key_that_could_inject_nginx_config_is_refused(key):
    from ftctl_plugins.deployers import nginx
    from ftctl_plugins.deployers.pm2 import Pm2Config

    with pytest.raises(ValueError, match="split key"):
        nginx.split_key(key)
    with pytest.raises(ValueError):
        Pm2Config(ecosystem="e.js", app="a", split_key=key)
    assert nginx.split_key("${remote_addr}x") and Pm2Config(ecosystem="e.js", app="a", split_key="$http_x_user_id")
