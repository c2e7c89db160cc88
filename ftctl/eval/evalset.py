"""Eval sets: the held-out test split, the golden set, or any JSONL of examples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftctl.errors import UsageError
from ftctl.lib.digest import file_sha256
from ftctl.records import Example, read_jsonl


@dataclass
class EvalSet:
    name: str  # test | golden | the file's name
    path: Path
    sha256: str
    examples: list[Example]


def load_eval_set(ws, model: str, spec: str | None = None, limit: int | None = None) -> EvalSet:
    """``test``: the held-out split of the model's current snapshot. The split hashes each
    conversation, so a test conversation stays in test across snapshots (never trained on by any
    version) and two versions are scored on the very same examples. ``golden``: curate.golden."""
    cfg = ws.model(model)
    spec = spec or cfg.eval.eval_set
    if spec == "test":
        path, name = ws.snapshot_paths(model)["test"], "test"
    elif spec == "golden":
        if not cfg.curate.golden:
            raise UsageError(f"no golden set is declared for {model}", hint="set curate.golden: path/to/golden.jsonl")
        path, name = ws.root / cfg.curate.golden, "golden"
    else:
        path = Path(spec) if Path(spec).is_absolute() else ws.root / spec
        name = path.stem
    if not path.is_file():
        raise UsageError(f"eval set {spec!r} not found ({path})",
                         hint="run `ftctl collect` (test split) or pass --eval-set PATH to a JSONL file")
    try:
        examples = list(read_jsonl(path))
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"eval set {path.name} is not a JSONL of examples: {e}",
                         hint="one Example per line: {\"messages\": [{\"role\": ..., \"content\": ...}], ...}") from None
    examples = [ex for ex in examples if any(m.get("role") == "user" for m in ex.messages)]
    if limit:
        examples = examples[:limit]
    if not examples:
        raise UsageError(f"eval set {path.name} is empty (no example with a user turn)",
                         hint="collect more data or choose another --eval-set")
    return EvalSet(name, path, file_sha256(path), examples)
