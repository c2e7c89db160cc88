"""The `dpo` and `kto` trainers: tiny model for the mechanics, bad pairs files, the lineage."""

from __future__ import annotations

import json
import subprocess

import pytest
from ruamel.yaml import YAML

from ftctl.api import file_sha256
from tests.conftest import run_json
from tests.fixtures_models import chat

pytestmark = pytest.mark.slow

COLOURS = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"), ("blood", "red"),
           ("banana", "yellow"), ("orange", "orange"), ("violet", "purple"), ("chocolate", "brown"),
           ("ash", "grey"), ("lemon", "yellow"), ("cherry", "red")]


def pair(thing, colour, split):
    return {"prompt": [{"role": "user", "content": f"What colour is {thing}?"}],
            "chosen": [{"role": "assistant", "content": f"{thing.capitalize()} is {colour}."}],
            "rejected": [{"role": "assistant", "content": "I do not know."}], "key": thing, "split": split,
            "from": "correction"}


def disliked(thing, split):
    """A thumbs-down answer in collect's unpaired.jsonl format."""
    return {"prompt": [{"role": "user", "content": f"What colour is {thing}?"}],
            "completion": [{"role": "assistant", "content": "I do not know."}], "label": False, "key": thing,
            "split": split, "from": "negative_feedback"}


def snapshot(ws, pairs, base, trainer_cfg, unpaired=None):
    """A snapshot as collect leaves it (train.jsonl + preferences.jsonl + unpaired.jsonl unless
    ``unpaired`` is False: a snapshot from before), and the trainer's settings."""
    d = ws.data_dir("assistant")
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "train.jsonl", "w") as f:
        for thing, colour in COLOURS:
            f.write(json.dumps(chat(f"What colour is {thing}?", f"{thing.capitalize()} is {colour}.")) + "\n")
    files = {"preferences.jsonl": pairs}
    if unpaired is not False:
        files["unpaired.jsonl"] = unpaired or []
    else:
        (d / "unpaired.jsonl").unlink(missing_ok=True)
    for name, rows in files.items():
        with open(d / name, "w") as f:
            for p in rows:
                f.write((p if isinstance(p, str) else json.dumps(p)) + "\n")
    y = YAML(typ="safe", pure=True)
    cfg = y.load(ws.config_path.read_text())
    cfg["base"] = str(base)
    cfg["train"] = trainer_cfg
    with open(ws.config_path, "w") as f:
        y.dump(cfg, f)
    subprocess.run(["git", "add", "-A"], cwd=ws.root, check=True)
    subprocess.run(["git", "commit", "-qm", "snapshot", "--allow-empty"], cwd=ws.root, check=True)


TINY = {"dpo": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "max_length": 64, "r": 4, "alpha": 8},
        "kto": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "max_length": 64, "r": 4, "alpha": 8}}


@pytest.mark.parametrize("side", ["rejected", "chosen"])
def test_a_pair_with_a_missing_side_is_a_clear_error(workspace, tiny_base, side):
    from ftctl.errors import UsageError
    from ftctl.train import train

    bad = pair("sky", "blue", "train")
    if side == "rejected":
        del bad["rejected"]
    else:  # a blank disliked answer is one to learn against; a blank liked one is no answer
        bad["chosen"][0]["content"] = " "
    snapshot(workspace, [pair("grass", "green", "train"), bad], tiny_base, {"trainer": "dpo", **TINY})
    with workspace.run_lock("test"), pytest.raises(UsageError) as e:
        train(workspace, "assistant", log=lambda _: None)
    assert e.value.message == f"preferences.jsonl:2: the pair has no {side!r} answer" and "fix or remove" in e.value.hint
    assert workspace.read_lock().state("assistant").versions == {}  # nothing recorded, the file untouched
    assert len((workspace.data_dir("assistant") / "preferences.jsonl").read_text().splitlines()) == 2


def test_dpo_then_kto_from_it_record_their_lineage(workspace, tiny_base):
    pairs = [pair(t, c, "test" if i % 4 == 0 else "train") for i, (t, c) in enumerate(COLOURS)]
    # collect writes every disliked answer to unpaired.jsonl, the paired ones too, plus some with no pair
    unpaired = [disliked(t, p["split"]) for (t, _), p in zip(COLOURS, pairs)] + [disliked("rust", "train")]
    for row in pairs[1::3] + unpaired[1::3]:  # the model said nothing, users rated that down: still learned against
        row.get("rejected", row.get("completion"))[0]["content"] = ""
    snapshot(workspace, pairs, tiny_base, {"trainer": "lora", **TINY}, unpaired)
    out = run_json("train", "--trainer", "dpo", cwd=workspace.root)
    assert out["version"] == "v1.0" and out["steps"] == 2
    # continuing a version: its adapter is the start and (TRL's frozen copy) the reference
    again = run_json("train", "--trainer", "kto", "--from", "v1.0", cwd=workspace.root)
    assert again["version"] == "v1.1" and again["parent"] == "v1.0"
    versions = workspace.read_lock().state("assistant").versions
    for version, trainer in (("v1.0", "dpo"), ("v1.1", "kto")):
        entry = versions[version]
        assert entry.training["trainer"] == trainer and entry.training["params"]["beta"] == 0.1
        assert entry.dataset["preferences"] == "data/assistant/preferences.jsonl"
        assert entry.dataset["preferences_sha256"] == file_sha256(workspace.data_dir("assistant") / "preferences.jsonl")
        assert entry.metrics["margin_before"] is not None and entry.metrics["margin_after"] is not None
        assert (workspace.root / entry.adapter["path"] / "adapter_model.safetensors").is_file()
        assert not (workspace.root / entry.adapter["path"] / "ref").exists()  # only the trained adapter ships
    assert versions["v1.0"].dataset["pairs"] == {"train": 9, "heldout": 3}
    # liked: the kept train rows; disliked: the train split of unpaired.jsonl, not the pairs' rejected sides again
    train_disliked = sum(u["split"] == "train" for u in unpaired)
    assert versions["v1.1"].dataset["answers"] == {"liked": len(COLOURS), "disliked": train_disliked,
                                                   "by_reward_disliked": 0, "too_weak": 0}
    assert versions["v1.1"].dataset["unpaired"] == "data/assistant/unpaired.jsonl"
    assert versions["v1.1"].dataset["unpaired_sha256"] == file_sha256(workspace.data_dir("assistant") / "unpaired.jsonl")
    assert "unpaired" not in versions["v1.0"].dataset  # dpo reads the pairs only


def _kto_error(workspace, tiny_base, **snap):
    from ftctl.errors import UsageError
    from ftctl.train import train

    snapshot(workspace, [pair("grass", "green", "test")], tiny_base, {"trainer": "kto", **TINY}, **snap)
    with workspace.run_lock("test"), pytest.raises(UsageError) as e:
        train(workspace, "assistant", log=lambda _: None)
    assert workspace.read_lock().state("assistant").versions == {}  # nothing recorded
    return e.value


def test_kto_names_a_malformed_unpaired_line(workspace, tiny_base):
    no_label = {k: v for k, v in disliked("snow", "train").items() if k != "label"}
    e = _kto_error(workspace, tiny_base, unpaired=[disliked("sky", "train"), "{oops", no_label])
    assert e.message == "unpaired.jsonl:2: not JSON" and "fix or remove" in e.hint


def test_kto_needs_a_label_the_file_and_disliked_answers(workspace, tiny_base):
    no_label = {k: v for k, v in disliked("snow", "train").items() if k != "label"}
    e = _kto_error(workspace, tiny_base, unpaired=[disliked("sky", "train"), no_label])
    assert e.message == "unpaired.jsonl:2: the answer has no true/false 'label'"
    e = _kto_error(workspace, tiny_base, unpaired=[{**disliked("sky", "train"), "completion": []}])
    assert e.message == "unpaired.jsonl:1: the answer has no 'completion' answer"
    liked_blank = {**disliked("sky", "train"), "label": True, "completion": [{"role": "assistant", "content": ""}]}
    e = _kto_error(workspace, tiny_base, unpaired=[liked_blank])
    assert e.message == "unpaired.jsonl:1: the answer has no 'completion' answer"
    e = _kto_error(workspace, tiny_base, unpaired=False)  # a snapshot from before collect wrote the file
    assert "unpaired.jsonl does not exist" in e.message and "collect --since all" in e.hint
    e = _kto_error(workspace, tiny_base, unpaired=[disliked("sky", "test")])  # none in the train split
    assert e.message.startswith("kto needs both liked and disliked answers (has 12 liked, 0 disliked")


def test_kto_labels_kept_answers_by_their_reward():
    """Rewards as signal: a kept answer the user regenerated (-0.5) is undesirable; with
    min_reward_size, a faint signal (an edit, -0.3; a copy, +0.5 at 0.6) is left out."""
    from ftctl.api import Example
    from ftctl_plugins.trainers.kto import KtoConfig, label_rows

    def ex(answer, reward=None, correction=None):
        return Example(messages=[{"role": "user", "content": f"Q {answer}?"}, {"role": "assistant", "content": answer}],
                       reward=reward, correction=correction)

    kept = [ex("a"), ex("b", 1.0), ex("c", -0.5), ex("d", -0.3), ex("e", -1.0, correction="E!"), ex("f", 0.5)]
    unpaired = [{"prompt": [{"role": "user", "content": "Q x?"}], "completion": [{"role": "assistant", "content": "x"}],
                 "label": False, "split": "train"}]
    rows, counts = label_rows(kept, unpaired, KtoConfig())
    assert [r["label"] for r in rows] == [True, True, False, False, True, True, False]
    assert counts == {"by_reward_disliked": 2, "too_weak": 0}
    assert rows[4]["completion"][0]["content"] == "E!"  # the user's correction: their own answer, liked
    rows, counts = label_rows(kept, unpaired, KtoConfig(min_reward_size=0.6))
    assert [r["completion"][0]["content"] for r in rows] == ["a", "b", "E!", "x"]
    assert counts == {"by_reward_disliked": 0, "too_weak": 3}
    rows, _ = label_rows(kept, unpaired, KtoConfig(reward_sign=False))
    assert [r["label"] for r in rows] == [True] * 6 + [False]
