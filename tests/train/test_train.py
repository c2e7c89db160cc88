"""`ftctl train` on the tiny base: versions, lineage, the JSON contract, bad input and faults."""

from __future__ import annotations

import json
import re

import pytest

from ftctl.errors import FtctlError, UsageError
from tests.train.conftest import configure, examples, write_jsonl
from tests.fixtures_models import chat


def train(ws, **kw):
    from ftctl.train import train as do_train

    with ws.run_lock("train"):
        return do_train(ws, log=lambda _m: None, **kw)


def versions(ws):
    return ws.read_lock().state("assistant").versions


def tags(ws):
    from ftctl.lib.process import git

    return git(ws.root, "tag").stdout.split()


def adapter_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_train_creates_a_tracked_loadable_version_with_lineage(train_ws, tiny_base):
    r = train(train_ws)
    assert r["version"] == "v1.0" and r["parent"] is None and r["steps"] == 4
    assert r["train_loss"] > 0 and r["val_loss"] > 0 and r["tokens_per_s"] > 0
    entry = versions(train_ws)["v1.0"]
    assert entry.base["sha256"] and entry.base["ref"] == str(tiny_base)
    assert entry.training["params"]["r"] == 4 and entry.training["seed"] == 42
    assert entry.training["libraries"]["peft"] and entry.training["steps"] == 4
    assert entry.dataset["examples"]["used"] == 30 and entry.dataset["train_sha256"]
    assert entry.metrics["train_loss"] == r["train_loss"]
    adapter = train_ws.root / r["adapter"]
    assert (adapter.parent / "v1.0.dvc").is_file() and entry.adapter["md5"].endswith(".dir")
    assert "assistant@v1.0.0" in tags(train_ws)  # GTO's grammar
    assert not list(adapter.glob("*.bin")) and (adapter / "adapter_model.safetensors").is_file()
    # loadable by PEFT on the base, as eval and export do it
    from peft import PeftModel

    from ftctl.lib.basemodel import load_model, resolve_base

    model = PeftModel.from_pretrained(load_model(resolve_base(str(tiny_base))), adapter)
    assert any("lora_A" in n for n, _ in model.named_parameters())
    # TensorBoard events are written under the run directory
    assert list((train_ws.state_dir / "runs" / "assistant").rglob("events.out.tfevents*"))


def test_next_versions_major_and_from(train_ws):
    import torch

    v10 = train(train_ws, max_steps=2)
    r = train(train_ws, from_="v1.0", max_steps=2)
    assert r["version"] == "v1.1" and r["parent"] == "v1.0" and r["steps"] == 2
    assert versions(train_ws)["v1.1"].training["from"] == "v1.0"
    # continued from v1.0's adapter: it moved on from there (not from a fresh init)
    a, b = adapter_weights(train_ws.root / v10["adapter"]), adapter_weights(train_ws.root / r["adapter"])
    assert not all(torch.equal(a[k], b[k]) for k in a)
    assert train(train_ws, major=True, max_steps=1)["version"] == "v2.0"
    assert tags(train_ws) == ["assistant@v1.0.0", "assistant@v1.1.0", "assistant@v2.0.0"]


def run_plugin(ws, out, **cfg):
    """The trainer plugin alone (no recording): what reproducibility is about."""
    from ftctl import plugins
    from ftctl.lib.basemodel import resolve_base
    from ftctl.train import TrainRequest

    mc = ws.model()
    raw = {**mc.train.plugin_config("lora"), **cfg}
    trainer = plugins.build("trainer", "lora", raw, ws.context(log=lambda _m: None), key="train.lora")
    data = ws.data_dir("assistant")
    req = TrainRequest(resolve_base(mc.base), data / "train.jsonl", None, out)
    return trainer.train(req)


def test_same_seed_same_data_gives_identical_adapters(train_ws, tmp_path):
    import torch

    a = adapter_weights(run_plugin(train_ws, tmp_path / "a", max_steps=3).adapter_dir)
    b = adapter_weights(run_plugin(train_ws, tmp_path / "b", max_steps=3).adapter_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = adapter_weights(run_plugin(train_ws, tmp_path / "c", max_steps=3, seed=7).adapter_dir)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_dry_run_and_preview_change_nothing(train_ws):
    before = train_ws.lock_path.read_text()
    plan = train(train_ws, dry_run=True)
    assert plan["version"] == "v1.0" and plan["rows"] == {"train": 30, "val": 6}
    p = train(train_ws, preview=True)
    assert p["example"].count("[[") >= 1 and p["example"].rstrip().endswith("]]")
    assert sum(b["count"] for b in p["histogram"]) == 30 and p["gguf_convertible"] is True
    assert plan["plan"]["optimizer_steps"] == p["plan"]["optimizer_steps"] == 4  # max_steps 4
    assert train_ws.lock_path.read_text() == before and not (train_ws.state_dir / "runs").exists()


def test_cli_json_contract(train_ws, ftctl):
    proc = ftctl("--json", "train", "--max-steps", "2", cwd=train_ws.root)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"model", "version", "parent", "train_loss", "val_loss", "steps", "tokens_per_s", "adapter",
                         "optimizer_steps", "peak_rss_mb", "tracking"}  # the contract's keys, issue 10's two, 25's one
    assert data["tracking"] == {"tensorboard": {"ok": True, "logs": "adapters/assistant/v1.0/tensorboard"}}
    assert data["optimizer_steps"] == data["steps"] == 2 and data["peak_rss_mb"] > 100
    # without a terminal, progress is plain lines; with --json they go to stderr (stdout: one document)
    assert re.search(r"^step 2/2  loss [\d.]+  [\d,]+ tok/s  RSS [\d,]+ MB  eta 0:00$", proc.stderr, re.M), proc.stderr
    assert "plan: 2 optimizer steps" in proc.stderr
    assert data["steps"] == 2 and data["version"] == "v1.0" and data["adapter"] == "adapters/assistant/v1.0"
    proc = ftctl("--json", "train", "--model", "nope", cwd=train_ws.root)
    assert proc.returncode == 2 and "no model named" in json.loads(proc.stdout)["error"]


# --- bad input: each a clear error, and no version ---------------------------------------


def no_version(ws):
    assert not versions(ws) and not tags(ws)


def test_empty_dataset(train_ws):
    (train_ws.data_dir("assistant") / "train.jsonl").write_text("")
    with pytest.raises(UsageError) as e:
        train(train_ws)
    assert "empty" in e.value.message and "collect" in e.value.hint
    no_version(train_ws)


def test_missing_dataset(train_ws):
    (train_ws.data_dir("assistant") / "train.jsonl").unlink()
    with pytest.raises(UsageError) as e:
        train(train_ws)
    assert "no training data" in e.value.message
    no_version(train_ws)


def test_all_examples_longer_than_max_length(train_ws):
    configure(train_ws, train_ws.config.base, max_length=16)
    with pytest.raises(UsageError) as e:
        train(train_ws)
    assert "longer than max length" in e.value.message and "max_length" in e.value.hint
    no_version(train_ws)


def test_conversations_without_assistant_turn(train_ws):
    write_jsonl(train_ws.data_dir("assistant") / "train.jsonl", [chat("a question", None)] * 3)
    with pytest.raises(UsageError) as e:
        train(train_ws)
    assert "3 no assistant turn" in e.value.message and "assistant turn" in e.value.hint
    no_version(train_ws)
    # mixed with good ones: trained, and the skipped one is accounted for in the lineage
    write_jsonl(train_ws.data_dir("assistant") / "train.jsonl", examples(6) + [chat("a question", None)])
    run = run_plugin(train_ws, train_ws.root / "run", max_steps=1)
    assert run.data["examples"] == {"used": 6, "skipped": {"no_assistant_turn": 1}}


@pytest.mark.parametrize("kind", ["missing", "not_a_model"])
def test_bad_base(train_ws, tmp_path, kind):
    base = tmp_path / "base"
    if kind == "not_a_model":
        base.mkdir()
        (base / "README.md").write_text("not a model")
    configure(train_ws, base)
    with pytest.raises(FtctlError) as e:
        train(train_ws)
    assert ("not found" if kind == "missing" else "not a model directory") in e.value.message and e.value.hint
    no_version(train_ws)


def test_base_without_chat_template(train_ws, tiny_base, tmp_path):
    import shutil

    base = tmp_path / "notemplate"
    shutil.copytree(tiny_base, base)
    (base / "chat_template.jinja").unlink()
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    configure(train_ws, base)
    with pytest.raises(FtctlError) as e:
        train(train_ws)
    assert "no chat template" in e.value.message and "train.lora.chat_template" in e.value.hint
    no_version(train_ws)
    template = (tiny_base / "chat_template.jinja").read_text()
    configure(train_ws, base, chat_template=template, max_steps=1)
    assert train(train_ws)["version"] == "v1.0"


def test_nan_loss_stops_without_a_version(train_ws):
    configure(train_ws, train_ws.config.base, learning_rate=1e30, max_steps=6, checkpoint_every=100)
    with pytest.raises(FtctlError) as e:
        train(train_ws)
    assert "loss became" in e.value.message and "learning_rate" in e.value.hint
    no_version(train_ws)
    run = next((train_ws.state_dir / "runs" / "assistant").glob("*/run.json"))
    assert json.loads(run.read_text())["status"] == "failed"


def nothing_may_load(monkeypatch):
    import ftctl.lib.basemodel

    def boom(*a, **k):
        raise AssertionError("nothing may load")

    monkeypatch.setattr(ftctl.lib.basemodel, "resolve_base", boom)


def test_qlora_without_bitsandbytes_names_the_extra(train_ws, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *a, **k):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *a, **k)

    nothing_may_load(monkeypatch)
    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(UsageError) as e:
        train(train_ws, qlora=True)
    assert "bitsandbytes" in e.value.message and "ftctl[qlora]" in e.value.hint
    no_version(train_ws)


@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_a_device_that_does_not_exist_fails_before_loading(train_ws, monkeypatch, device):
    import torch

    if torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    configure(train_ws, "unused", device=device)
    nothing_may_load(monkeypatch)
    with pytest.raises(UsageError) as e:
        train(train_ws)
    assert device in e.value.message and ("has none" in e.value.message or "does not exist" in e.value.message)
    no_version(train_ws)


def test_from_unknown_version(train_ws):
    with pytest.raises(UsageError) as e:
        train(train_ws, from_="v9.9")
    assert "unknown version" in e.value.message


def test_resume_without_a_run(train_ws):
    with pytest.raises(UsageError) as e:
        train(train_ws, resume=True)
    assert "nothing" in e.value.message or "no unfinished" in e.value.message
