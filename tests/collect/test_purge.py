"""Forget means gone (issue 20): keyed tombstones (old unsalted ones still match), versions
trained on forgotten data flagged and refused by deploy and rollback, and `forget --purge`
removing exactly the objects that held the value from the real DVC cache and a local remote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftctl.data.collect import collect
from ftctl.data.tombstones import legacy_digest
from ftctl.errors import UsageError
from ftctl.forget import forget
from ftctl.registry import secret
from ftctl.registry.lockfile import forgotten_marks
from tests.collect.conftest import configure as configure_sources
from tests.collect.conftest import event, write_jsonl

MEMBER = "XYZ-998877"


def quiet(*_):
    pass


def holding(directory: Path, needle: str) -> list[Path]:
    """Every file under ``directory`` whose bytes contain ``needle``."""
    raw = needle.encode()
    return [p for p in directory.rglob("*") if p.is_file() and raw in p.read_bytes()]


def remote_dir(ws) -> Path:
    from ftctl.lib.process import dvc

    return Path(dvc(ws.root, "config", f"remote.{ws.default_remote()}.url").stdout.strip())


def feedback(ws, n=12):
    rows = [event(f"What is the capital of country {i}?", f"It is city {i}.", i=i, rating=5) for i in range(n)]
    rows.append(event(f"Hi, my member number is {MEMBER}, is my claim covered?", "Yes, it is covered.", i=90, rating=5))
    write_jsonl(ws.root / "feedback" / "events.jsonl", rows)
    configure_sources(ws, [{"name": "events", "kind": "jsonl", "path": "feedback/*.jsonl"}])


def test_tombstones_are_keyed_with_the_workspace_secret_and_old_ones_still_match(workspace):
    ws = workspace
    feedback(ws)
    r = forget(ws, conversation="conv3", log=quiet)
    assert r["conversations"] == 1
    entry = ws.read_lock().model_extra["tombstones"][0]
    key = secret.load(ws.root, create=False)
    assert entry["secret"] == secret.fingerprint(key)
    assert entry["sha256"] != legacy_digest("conversation", "conv3")  # a guess cannot be checked without the key
    assert legacy_digest("conversation", "conv3") not in ws.lock_path.read_text()

    # a workspace from before the secret: unsalted tombstones keep working beside the keyed ones
    def old(lock):
        lock.tombstones = [*lock.tombstones, {"kind": "conversation", "sha256": legacy_digest("conversation", "conv5")},
                           {"kind": "value", "sha256": legacy_digest("value", "xyz 998877"), "tokens": 2}]

    with ws.run_lock("test"):
        ws.record("test: tombstones from an older ftctl", old)
        out = collect(ws, "assistant", log=quiet)
    assert out["filtered"]["forgotten"] == 3  # conv3 (keyed), conv5 and the member's row (unsalted)
    texts = "".join(p.read_text() for p in ws.data_dir("assistant").glob("*.jsonl"))
    assert MEMBER not in texts and "city 5." not in texts and "city 3." not in texts and "city 4." in texts

    # doctor: present, 0600, ignored by git, the one that made the tombstones; the old ones counted
    from ftctl.doctor import workspace_secret

    check = workspace_secret(ws)
    assert check.ok and "2 tombstone(s) from before the secret" in check.detail, check

    # the next forget reads every source row raw: the old tombstones whose rows it sees are re-keyed
    r = forget(ws, conversation="conv7", log=quiet)
    assert r["rekeyed"] == 2
    entries = ws.read_lock().model_extra["tombstones"]
    assert all(e.get("secret") == secret.fingerprint(key) for e in entries) and len(entries) == 4
    assert legacy_digest("value", "xyz 998877") not in ws.lock_path.read_text()
    with ws.run_lock("test"):
        out = collect(ws, "assistant", since="all", log=quiet)
    assert out["filtered"]["forgotten"] == 4  # conv3, conv5, the member's row, conv7: nothing came back
    assert workspace_secret(ws).ok and "before the secret" not in workspace_secret(ws).detail
    secret.path(ws.root).chmod(0o644)
    check = workspace_secret(ws)
    assert not check.ok and "chmod 600" in check.fix
    secret.path(ws.root).chmod(0o600)

    # the secret gone (a clone): collect refuses rather than let the keyed tombstones stop matching
    moved = secret.path(ws.root).rename(ws.root.parent / "kept-secret")
    with ws.run_lock("test"), pytest.raises(secret.SecretMissing):
        collect(ws, "assistant", since="all", log=quiet)
    check = workspace_secret(ws)
    assert not check.ok and check.required and "collect refuses" in check.detail
    moved.rename(secret.path(ws.root))


@pytest.mark.integration
def test_forget_purge_removes_exactly_the_objects_that_held_it(workspace, tiny_base, ftctl):
    from ftctl.deploy import rollout
    from ftctl.train import train
    from tests.train.conftest import configure as configure_training

    ws = workspace
    feedback(ws)
    configure_training(ws, tiny_base, max_steps=2)
    with ws.run_lock("test"):
        collect(ws, "assistant", log=quiet)
        v1 = train(ws, "assistant", log=quiet)["version"]
    cache, remote = ws.root / ".dvc" / "cache", remote_dir(ws)
    assert holding(cache, MEMBER) and holding(remote, MEMBER), "pushed: the value is in both"
    lock = ws.read_lock()
    adapter_md5 = lock.state("assistant").versions[v1].adapter.md5
    old_dir = lock.state("assistant").versions[v1].dataset["md5"]

    # the remote unreachable: the purge fails with the reason, and loses nothing (the remote goes
    # first, so the cache still has every object and a rerun finds the same old snapshots)
    from ftctl.lib.process import dvc

    name = ws.default_remote()
    dvc(ws.root, "remote", "modify", "--local", name, "url", "http://127.0.0.1:9/remote")
    failed = ftctl("--json", "forget", "--value", MEMBER, "--purge", cwd=ws.root)
    assert failed.returncode != 0 and "removing" in json.loads(failed.stdout)["error"], failed.stdout
    assert holding(cache, MEMBER) and holding(remote, MEMBER)
    dvc(ws.root, "remote", "modify", "--local", name, "url", str(remote))

    out = json.loads(ftctl("--json", "forget", "--value", MEMBER, "--purge", cwd=ws.root, check=True).stdout)
    p = out["purged"]["assistant"]
    assert p["objects"] >= 2 and p["cache"] == p["objects"] and p["remote"] == p["objects"], p
    assert p["remote_name"] == ws.default_remote() and p["unchecked"] == []
    assert holding(cache, MEMBER) == [] and holding(remote, MEMBER) == []
    assert MEMBER not in "".join(q.read_text() for q in ws.data_dir("assistant").glob("*.jsonl"))

    lock = ws.read_lock()
    st = lock.state("assistant")
    new_dir = st.dataset["md5"]
    from ftctl.registry.lineage import cache_file
    from ftctl.registry.purge import objects_of

    # exactly those: the rebuilt snapshot, the files the old one shared with it and the adapter stay
    assert new_dir != old_dir and not cache_file(ws, old_dir).exists()
    assert all(cache_file(ws, o).exists() for o in objects_of(ws, new_dir))
    assert cache_file(ws, adapter_md5).exists()
    assert out["retrained"]["assistant"]["forgotten"] == 1 and out["retrained"]["assistant"]["version"] is None
    assert any(h["action"] == "purge" for h in st.history)

    # the version trained on it is flagged; deploy and rollback refuse it unless told
    marks = forgotten_marks(st.versions[v1])
    assert marks and marks[0]["rows"] >= 1 and MEMBER not in ws.lock_path.read_text()
    with ws.run_lock("test"):
        with pytest.raises(UsageError, match=f"refusing to deploy assistant@{v1} was trained on forgotten data"):
            rollout.deploy(ws, v1, log=quiet)
        with pytest.raises(UsageError, match="refusing to roll back to"):
            rollout.rollback(ws, to=v1, log=quiet)
        with pytest.raises(Exception) as allowed:  # past the refusal: it fails later, on the missing export
            rollout.deploy(ws, v1, allow_forgotten=True, log=quiet)
        assert "forgotten" not in str(allowed.value)
    cli = ftctl("--json", "deploy", v1, cwd=ws.root)
    assert cli.returncode == 2 and "--allow-forgotten" in json.loads(cli.stdout)["hint"]
    rows = json.loads(ftctl("--json", "versions", cwd=ws.root, check=True).stdout)
    assert [r["forgotten"] for r in rows] == [True]
    assert "(forgotten)" in ftctl("versions", cwd=ws.root, check=True).stdout
