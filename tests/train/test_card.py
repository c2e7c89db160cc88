"""Each version's model card (issue 25): README.md in Hugging Face's format beside the adapter,
with metadata the Hub reads, instead of peft's template naming a local path."""

from __future__ import annotations

import shutil
import subprocess

from ftctl.lib.basemodel import DEFAULT_BASE, locate
from ftctl.registry.card import base_facts
from tests.conftest import run_ftctl, run_json
from tests.train.conftest import configure, examples, write_jsonl


def test_card_of_a_trained_and_evaluated_version(workspace, tiny_base, tmp_path):
    base = tmp_path / "tiny-chat"
    shutil.copytree(tiny_base, base)
    (base / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# a tiny base\n")
    configure(workspace, base, max_steps=2)
    data = workspace.data_dir("assistant")
    write_jsonl(data / "train.jsonl", examples(12))
    write_jsonl(data / "test.jsonl", examples(4, long_every=5))
    run_json("train", cwd=workspace.root)

    from huggingface_hub import ModelCard

    path = workspace.adapter_dir("assistant", "v1.0") / "README.md"
    text = path.read_text()
    card = ModelCard.load(path)
    assert card.data.library_name == "peft" and card.data.license == "mit"  # the base's license
    assert card.data.base_model == "tiny-chat"  # the base's name, never this machine's path
    assert str(tmp_path) not in text and "/root" not in text and "peft_model_id" not in text  # not peft's template
    assert "## Training" in text and "| r | 4 |" in text and "Not evaluated yet" in text
    # tracked with the adapter: inside its DVC-tracked folder, nothing of it left for git
    status = subprocess.run(["git", "status", "--porcelain"], cwd=workspace.root, capture_output=True,
                            text=True).stdout
    assert "adapters" not in status and (workspace.root / "adapters/assistant/v1.0.dvc").is_file()

    run_json("--set", "eval.max_new_tokens=8", "--set", "eval.bootstrap=200", "eval", "--compare", "base", "v1.0",
             "--metric", "exact_match", "--metric", "rougeL", cwd=workspace.root)
    shown = run_json("card", "v1.0", cwd=workspace.root)
    assert shown["path"] == "adapters/assistant/v1.0/README.md"
    printed = run_ftctl("card", "assistant@v1.0", cwd=workspace.root, check=True).stdout
    assert printed == shown["card"]
    fresh = ModelCard(shown["card"])
    results = {r.metric_type: r for r in fresh.data.eval_results}
    assert set(results) == {"exact_match", "rougeL"} and results["rougeL"].dataset_split == "test"
    assert "model-index:" in shown["card"] and "### against base (hf, test set, n=4)" in shown["card"]
    assert "| rougeL | " in shown["card"] and "verdict" in shown["card"]


def test_base_facts_of_the_catalogue_gguf():
    facts = base_facts(None, {"ref": DEFAULT_BASE, "path": str(locate(DEFAULT_BASE)), "sha256": "x"})
    assert facts["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and facts["license"] == "apache-2.0"
