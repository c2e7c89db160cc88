"""What users bring from Axolotl, LLaMA-Factory and Unsloth: their key names, "did you mean" for
the rest, the init template's defaults, and --json for usage errors (issue 25)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from ftctl.config import load
from ftctl.errors import ConfigError
from ftctl_plugins.trainers.dpo import DpoConfig
from ftctl_plugins.trainers.kto import KtoConfig
from ftctl_plugins.trainers.lora import LoraConfig
from tests.conftest import run_ftctl, run_json

AXOLOTL = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "micro_batch_size": 2,
           "gradient_accumulation_steps": 4, "num_epochs": 2, "sequence_len": 512, "sample_packing": False,
           "lr_scheduler": "linear", "warmup_ratio": 0.1, "lora_target_modules": ["q_proj", "v_proj"]}
LLAMA_FACTORY = {"lora_rank": 8, "lora_alpha": 16, "lora_target": "all", "per_device_train_batch_size": 2,
                 "num_train_epochs": 2.0, "cutoff_len": 512, "lr_scheduler_type": "linear", "save_steps": 20,
                 "logging_steps": 5}


def _set(workspace, section: str) -> None:
    cfg = workspace.config_path
    text = cfg.read_text()
    assert "  trainer: lora\n" in text
    cfg.write_text(text.replace("  trainer: lora\n", f"  trainer: lora\n{section}", 1))


@pytest.mark.parametrize("written", [AXOLOTL, LLAMA_FACTORY], ids=["axolotl", "llama-factory"])
def test_other_tools_key_names_are_aliases(written):
    c = LoraConfig.model_validate(written)
    assert (c.r, c.alpha, c.batch_size, c.epochs, c.max_length) == (8, 16, 2, 2.0, 512)
    assert c.scheduler == "linear"
    if "lora_target" in written:
        assert c.target_modules == "all-linear" and c.checkpoint_every == 20 and c.log_every == 5
    else:
        assert c.target_modules == ["q_proj", "v_proj"] and c.warmup == 0.1 and c.gradient_accumulation == 4
        assert c.packing is False and c.dropout == 0.1
    # stored under ftctl's own names (what models.lock records)
    assert "lora_alpha" not in c.model_dump() and c.model_dump()["alpha"] == 16
    assert LoraConfig.model_validate({"lora_target": "q_proj, v_proj"}).target_modules == ["q_proj", "v_proj"]
    for cls in (DpoConfig, KtoConfig):  # the preference trainers take them too
        p = cls.model_validate({"lora_alpha": 8, "num_epochs": 2, "micro_batch_size": 1})
        assert (p.alpha, p.epochs, p.batch_size) == (8, 2.0, 1)


def test_alias_and_own_name_together_is_an_error(workspace):
    _set(workspace, "  lora: {alpha: 32, lora_alpha: 16}\n")
    proc = run_ftctl("config", "validate", cwd=workspace.root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "models.assistant.train.lora" in proc.stderr
    assert "lora_alpha and alpha are the same setting" in proc.stderr


@pytest.mark.parametrize("written, expect", [
    ("  lora: {lora_alpah: 16}\n", "models.assistant.train.lora.lora_alpah: unknown key (did you mean 'alpha'?)"),
    ("  lora: {learnig_rate: 1.0e-4}\n", "train.lora.learnig_rate: unknown key (did you mean 'learning_rate'?)"),
    ("  lora: {lora_target_linear: true}\n", "train.lora.lora_target_linear: unknown key (did you mean "
                                               "'target_modules'?)"),
    ("  num_epochs: 2\n", "num_epochs: unknown key; a trainer's settings go under its name, e.g. lora: "
                          "{num_epochs: ...}"),
])
def test_unknown_keys_say_did_you_mean(workspace, written, expect):
    _set(workspace, written)
    proc = run_ftctl("config", "validate", cwd=workspace.root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert expect in proc.stderr, proc.stderr


def test_core_sections_say_did_you_mean(workspace):
    cfg = workspace.config_path
    cfg.write_text(cfg.read_text().replace("min_rating: 4", "min_ratting: 4", 1))
    with pytest.raises(ConfigError, match=r"curate.min_ratting: unknown key \(did you mean 'min_rating'\?\)"):
        load(cfg)


def test_cli_option_wins_over_an_alias_in_the_file(workspace, tiny_base):
    """`--epochs` replaces the file's `num_epochs` (not "both given"); the run records ftctl's names."""
    from tests.fixtures_models import chat

    _set(workspace, "  lora: {num_epochs: 2, micro_batch_size: 1}\n")
    cfg = workspace.config_path
    cfg.write_text(cfg.read_text().replace("base: smollm2-135m-instruct", f"base: {tiny_base}"))
    train = workspace.data_dir("assistant") / "train.jsonl"
    train.parent.mkdir(parents=True)
    train.write_text("".join(json.dumps(chat(f"q{i}", f"a{i}")) + "\n" for i in range(4)))
    params = run_json("train", "--dry-run", "--epochs", "1", cwd=workspace.root)["params"]
    assert params["epochs"] == 1 and params["batch_size"] == 1 and "num_epochs" not in params


def test_init_template_shows_the_measured_defaults(tmp_path):
    template = Path(__file__).parents[2] / "ftctl" / "templates" / "ftctl.yaml"
    line = next(ln for ln in template.read_text().splitlines() if re.match(r"\s*#\s*lora:", ln))
    shown = YAML(typ="safe").load(line.split("#", 1)[1].split("#")[0].strip().removeprefix("lora:"))
    defaults = LoraConfig().model_dump()
    assert shown and all(defaults[k] == v for k, v in shown.items()), (shown, defaults)


@pytest.mark.parametrize("argv", [["--json", "train", "--bogus"], ["train", "--bogus", "--json"],
                                  ["--json", "versions", "--limit", "x"], ["--json", "nosuchcommand"]])
def test_json_covers_usage_errors(tmp_path, argv):
    proc = run_ftctl(*argv, cwd=tmp_path)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 2 and doc["error"] and doc["hint"]
    assert "error:" in proc.stderr  # people still see it
