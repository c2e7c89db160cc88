"""`ftctl export` end to end with the real llama.cpp converters, quantizer and runtime.

One full export of a tiny model (every kind of file, through the real CLI), then each bad input
and fault, each ending in a clear error with nothing under exports/ and nothing recorded.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest

from ftctl.errors import ExternalToolError, FtctlError, UsageError
from tests.conftest import run_ftctl, run_json

pytestmark = pytest.mark.integration


def exports_of(ws, version, model="assistant"):
    return ws.read_lock().state(model).versions[version].exports


def assert_nothing_kept(ws, version):
    assert exports_of(ws, version) == []
    assert not ws.export_dir("assistant", version).exists()
    assert not any((ws.state_dir / "tmp").glob("export-*")), "staging dir left behind"
    status = subprocess.run(["git", "status", "--porcelain", "--", "models.lock", "exports"], cwd=ws.root,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", f"the workspace changed: {status}"


def fake_converter(tmp_path: Path, body: str) -> Path:
    """A llama.cpp directory whose convert_hf_to_gguf.py runs ``body`` (argv as llama.cpp's)."""
    d = tmp_path / "llama.cpp"
    d.mkdir()
    (d / "gguf-py").mkdir()
    (d / "convert_hf_to_gguf.py").write_text(textwrap.dedent(body))
    return d


def test_version_without_adapter(export_ws):
    ws, _, version = export_ws
    proc = run_ftctl("--json", "export", version, cwd=ws.root)
    assert proc.returncode == UsageError.exit_code
    err = json.loads(proc.stdout)
    assert "has no adapter" in err["error"] and err["hint"]
    assert_nothing_kept(ws, version)


def test_base_cannot_be_exported(export_ws):
    from ftctl.export import export

    with pytest.raises(UsageError, match="no adapter"):
        export(export_ws[0], "base")


def test_unknown_quant_type(tiny_version):
    ws, version = tiny_version
    proc = run_ftctl("export", version, "--quant", "Q8_0,Q9_K", cwd=ws.root)
    assert proc.returncode == UsageError.exit_code
    assert "unknown quantization type 'Q9_K'" in proc.stderr and "Q4_K_M" in proc.stderr  # the hint lists them
    assert_nothing_kept(ws, version)


def test_unknown_quant_in_config_names_the_key(tiny_version):
    from ftctl.errors import ConfigError
    from ftctl.export import export
    from ftctl.registry.workspace import Workspace

    ws, version = tiny_version
    ws = Workspace(ws.root, overrides=("export.gguf.quants=[Q3]",))
    with pytest.raises(ConfigError, match=r"export\.gguf\.quants"):
        export(ws, version)


def test_missing_converter_says_how_to_get_it(tiny_version, tmp_path, monkeypatch):
    from ftctl.export import export

    ws, version = tiny_version
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # no fetched converters
    with pytest.raises(ExternalToolError) as e:
        with ws.run_lock("export"):
            export(ws, version, quants=["Q8_0"])
    assert "convert_hf_to_gguf.py was not found" in e.value.message
    assert "scripts/fetch_llama_cpp_tools.py" in e.value.hint and "LLAMA_CPP_DIR" in e.value.hint
    assert_nothing_kept(ws, version)

    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))  # named explicitly but wrong: an error, not a fallback
    with pytest.raises(ExternalToolError, match="LLAMA_CPP_DIR=.* has no convert_hf_to_gguf.py"):
        export(ws, version, quants=["Q8_0"])


def test_converter_crash_leaves_no_partial_file(tiny_version, tmp_path, monkeypatch):
    from ftctl.export import export

    ws, version = tiny_version
    monkeypatch.setenv("LLAMA_CPP_DIR", str(fake_converter(tmp_path, """
        import sys
        out = sys.argv[sys.argv.index("--outfile") + 1]
        open(out, "wb").write(b"GGUF" + b"\\0" * 1000)  # half a file, then a crash
        raise SystemExit("RuntimeError: converter exploded on blk.0.attn_q.weight")
    """)))
    with pytest.raises(ExternalToolError, match="converter exploded") as e:
        with ws.run_lock("export"):
            export(ws, version, quants=["Q8_0"])
    assert "nothing was recorded" in e.value.hint
    assert_nothing_kept(ws, version)
    assert ws.read_lock().state("assistant").versions[version].exports == []
    # the merged model's answers, computed in a thread beside the conversion, ended with it
    assert not [t for t in threading.enumerate() if t.name.startswith("ftctl-reference")]


def test_disk_full_while_converting(tiny_version, tmp_path, monkeypatch):
    from ftctl.export import export

    ws, version = tiny_version
    monkeypatch.setenv("LLAMA_CPP_DIR", str(fake_converter(tmp_path, """
        import errno, os, sys
        out = sys.argv[sys.argv.index("--outfile") + 1]
        with open(out, "wb") as f:
            f.write(b"GGUF")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), out)
    """)))
    with pytest.raises(FtctlError, match="disk filled up") as e:
        with ws.run_lock("export"):
            export(ws, version, quants=["F16"])
    assert "free some space" in e.value.hint
    assert_nothing_kept(ws, version)


def test_disk_full_while_saving_the_merged_model(tiny_version, monkeypatch):
    import errno

    from ftctl.export import export

    ws, version = tiny_version

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    import transformers

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full)
    with pytest.raises(FtctlError, match="disk is full"):
        with ws.run_lock("export"):
            export(ws, version, merged=True, gguf=False)
    assert_nothing_kept(ws, version)


def test_gguf_that_loses_the_chat_template_fails_verification(tiny_version, tmp_path, monkeypatch, real_tools):
    """A converter that drops the chat template (a classic): the export fails, nothing is kept.

    It drops it from the merged model only: the base's own conversion (a first export of the base
    on this machine) goes through the same converter, and stripping the shared test base's files
    broke every later export of this module (seen once as a failure of the CLI test below)."""
    from ftctl.export import export
    from ftctl.lib.llamacpp import find_tools

    ws, version = tiny_version
    real = find_tools().root
    d = fake_converter(tmp_path, f"""
        import json, runpy, sys
        from pathlib import Path
        src = Path(sys.argv[1])
        if src.name == "merged":
            (src / "chat_template.jinja").unlink(missing_ok=True)
            cfg = json.loads((src / "tokenizer_config.json").read_text())
            cfg.pop("chat_template", None)
            (src / "tokenizer_config.json").write_text(json.dumps(cfg))
        sys.path.insert(0, {str(real)!r})
        sys.argv[0] = {str(real / "convert_hf_to_gguf.py")!r}
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    (d / "gguf-py").rmdir()
    (d / "gguf-py").symlink_to(real / "gguf-py")
    (d / "conversion").symlink_to(real / "conversion")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(d))
    with pytest.raises(FtctlError, match="failed verification: the chat template is missing"):
        with ws.run_lock("export"):
            export(ws, version, quants=["F16"])
    assert_nothing_kept(ws, version)


# last: it records an export in the module's shared workspace
def test_export_all_kinds_through_the_cli(tiny_version, real_tools):
    from ftctl.export import gguf_path

    ws, version = tiny_version
    first = run_json("export", version, "--quant", "F16", "--merged", "--lora-gguf", cwd=ws.root)
    assert {(f["kind"], f["quant"]) for f in first["files"]} == {("merged", None), ("gguf", "F16"),
                                                                 ("modelfile", "F16"), ("lora-gguf", "F16")}
    # adding a quant later keeps what was exported before (a server may be running from it)
    out = run_json("export", version, "--gguf", "--quant", "q8_0", cwd=ws.root)

    assert out["version"] == version
    by_kind = {(f["kind"], f["quant"]): f for f in out["files"]}
    assert set(by_kind) == {("merged", None), ("gguf", "F16"), ("gguf", "Q8_0"), ("modelfile", "F16"),
                            ("modelfile", "Q8_0"), ("lora-gguf", "F16")}
    assert {f["sha256"] for f in first["files"]} <= {f["sha256"] for f in out["files"]}
    assert {f["path"]: f["sha256"] for f in exports_of(ws, version)} == {f["path"]: f["sha256"] for f in out["files"]}
    for f in out["files"]:
        parity = {"parity"} if f["kind"] in ("gguf", "lora-gguf") else set()
        assert set(f) == {"path", "kind", "quant", "sha256", "token_agreement"} | parity
        assert f["path"].startswith(f"exports/assistant/{version}/") and (ws.root / f["path"]).exists()
        assert len(f["sha256"]) == 64
    for key in (("gguf", "F16"), ("gguf", "Q8_0"), ("lora-gguf", "F16")):
        p = by_kind[key]["parity"]  # teacher-forced figures, and the base's for the same type
        assert by_kind[key]["token_agreement"] == p["top1"] >= p["limits"]["min_top1"]
        assert p["kl_mean"] <= p["limits"]["max_kl"] and {"top1", "kl_mean"} <= set(p["base"])
    merged = ws.root / by_kind[("merged", None)]["path"]
    assert list(merged.glob("*.safetensors")) and not list(merged.glob("*.bin"))
    assert (merged / "chat_template.jinja").exists() or "chat_template" in (merged / "tokenizer_config.json").read_text()

    # recorded with the same content the files have, and tracked by DVC
    recorded = exports_of(ws, version)
    from ftctl.lib.digest import file_sha256

    q8 = gguf_path(ws, "assistant", version, "Q8_0")
    assert q8.read_bytes()[:4] == b"GGUF"
    q8_entry = next(f for f in recorded if f["quant"] == "Q8_0" and f["kind"] == "gguf")
    assert q8_entry["sha256"] == file_sha256(q8) and q8_entry["parity"] == by_kind[("gguf", "Q8_0")]["parity"]
    # shown by `ftctl versions` and `ftctl show`
    rows = run_json("versions", cwd=ws.root)
    assert next(r for r in rows if r["version"] == version)["exports"][0].keys() >= {"kind", "quant", "parity"}
    shown = run_ftctl("versions", cwd=ws.root).stdout
    assert "Q8_0" in shown and "top-1 agreement" in shown
    assert "parity gguf Q8_0: top-1 agreement" in run_ftctl("show", version, cwd=ws.root).stdout
    assert (ws.root / f"exports/assistant/{version}.dvc").exists()
    # the model card is regenerated with the files and their parity, tracked with the adapter
    card = (ws.root / f"adapters/assistant/{version}/README.md").read_text()
    q8_name = q8.name
    assert f"| `{q8_name}` | gguf | Q8_0 | {by_kind[('gguf', 'Q8_0')]['parity']['top1']:.1%} |" in card
    assert "library_name: peft" in card and (ws.root / f"adapters/assistant/{version}.dvc").exists()
    from ftctl.registry.workspace import dvc_md5

    assert ws.read_lock().state("assistant").versions[version].adapter.md5 == \
        dvc_md5(ws.root / f"adapters/assistant/{version}")
    modelfile = (ws.root / by_kind[("modelfile", "Q8_0")]["path"]).read_text()
    assert f"FROM ./{q8.name}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "TEMPLATE" in modelfile and "<|im_start|>assistant" in modelfile

    # the same export again changes nothing
    head = ws.head()
    again = run_json("export", version, "--quant", "Q8_0,F16", "--merged", "--lora-gguf", cwd=ws.root)
    assert ws.head() == head and {f["sha256"] for f in again["files"]} <= {f["sha256"] for f in out["files"]}

    # --force with a converter that crashes: the recorded files stay as they were
    before = (ws.root / "models.lock").read_text()
    crash = fake_converter(ws.root.parent, "raise SystemExit('converter crashed')\n")
    proc = run_ftctl("export", version, "--quant", "Q8_0", "--force", cwd=ws.root, env={"LLAMA_CPP_DIR": str(crash)})
    assert proc.returncode == ExternalToolError.exit_code and "converter crashed" in proc.stderr
    assert (ws.root / "models.lock").read_text() == before and file_sha256(q8) == by_kind[("gguf", "Q8_0")]["sha256"]


def test_export_threads_sleep_unless_the_user_chose(monkeypatch):
    """`ftctl export` asks OpenMP (torch, llama.cpp) for sleeping threads; a user's own setting wins."""
    import os

    from ftctl.lib.process import polite_threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    polite_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    polite_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_every_command_starts_with_sleeping_threads(tmp_path):
    """The CLI asks for it before any command loads torch or llama.cpp (train and eval too)."""
    import os
    import subprocess
    import sys

    code = "import os, sys; from ftctl.cli.main import main; main(['--version']); print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE"
