"""Version ids (v1.0, v1.1, v2.0), refs (latest, stable, canary, base, baseline) and git tag names.

``baseline`` is what an app served before ftctl's first deploy onto it (models.lock records it
then); ``base`` is the untuned base model.

Tags follow GTO's grammar (gto/constants.py, ``tag_re``): ``<model>@v1.1.0``. GTO wants a full
semantic version, so ``v1.1`` is tagged ``v1.1.0`` (ftctl never makes patch versions); tags of
older workspaces (``<model>@v1.1``, which GTO ignores) are still read. On the command line a bare
``v1.1`` means the default model's; ``medicalqa@v1.1`` (or GTO's ``medicalqa@v1.1.0``) names
another model's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftctl.errors import NotFound, UsageError
from ftctl.registry.lockfile import Lock

VERSION_RE = re.compile(r"^v(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})$")
REFS = ("latest", "stable", "canary", "base", "baseline")
BASE, BASELINE = "base", "baseline"


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> Version:
        m = VERSION_RE.match(text or "")
        if not m:
            raise UsageError(f"invalid version {text!r}", hint="versions look like v1.0, v1.1, v2.0")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}"


_SEMVER_ZERO_PATCH = re.compile(r"^(v\d+\.\d+)\.0$")


def tag_name(model: str, version: str) -> str:
    """The tag a version gets: ``assistant@v1.1.0`` (GTO reads only full semantic versions)."""
    return f"{model}@{version}.0"


def tag_names(model: str, version: str) -> tuple[str, str]:
    """The tags a version may have, newest grammar first (``assistant@v1.1`` before GTO tags)."""
    return tag_name(model, version), f"{model}@{version}"


def from_semver(ref: str) -> str:
    """GTO's ``v1.1.0`` is ftctl's ``v1.1``; anything else is left as written."""
    m = _SEMVER_ZERO_PATCH.match(ref)
    return m.group(1) if m else ref


def sorted_versions(names) -> list[str]:
    return [str(v) for v in sorted(Version.parse(n) for n in names)]


def next_version(lock: Lock, model: str, major: bool = False) -> str:
    existing = sorted(Version.parse(v) for v in lock.state(model).versions)
    if not existing:
        return "v1.0"
    last = existing[-1]
    return str(Version(last.major + 1, 0) if major else Version(last.major, last.minor + 1))


def split_ref(ref: str, default_model: str) -> tuple[str, str]:
    """``medicalqa@v1.1`` -> (medicalqa, v1.1); ``v1.1`` -> (default_model, v1.1)."""
    from ftctl.config import check_name

    if "@" in ref:
        model, _, rest = ref.partition("@")
        try:
            check_name(model, "model name")
        except ValueError as e:
            raise UsageError(str(e)) from None
        return model, from_semver(rest)
    return default_model, from_semver(ref)


def resolve(lock: Lock, model: str, ref: str) -> str:
    """A ref to a concrete version id (or ``base``). Unknown refs are usage errors."""
    state = lock.models.get(model)
    versions = state.versions if state else {}
    if ref == "base":
        return "base"
    if ref == BASELINE:
        if not (state and state.baseline):
            raise UsageError(f"model {model!r} has no baseline yet",
                             hint="ftctl records what an app served before its first deploy onto it as "
                                  f"{model}@baseline")
        return BASELINE
    if ref == "latest":
        if not versions:
            raise UsageError(f"model {model!r} has no versions yet", hint="run `ftctl train` first")
        return sorted_versions(versions)[-1]
    if ref in ("stable", "canary"):
        dep = state.deployment if state else None
        value = (dep.stable if ref == "stable" else (dep.canary or {}).get("version")) if dep else None
        if not value:
            raise UsageError(f"model {model!r} has no {ref} deployment", hint="see `ftctl status`")
        return value
    Version.parse(ref)  # rejects path characters and anything else that is not vX.Y
    if ref not in versions:
        known = ", ".join(sorted_versions(versions)) or "none"
        raise NotFound(f"unknown version {ref!r} of model {model!r}", hint=f"known versions: {known}")
    return ref
