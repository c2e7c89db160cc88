"""The progress-line callable every verb takes (``print`` by default; a rich console in the CLI)."""

from collections.abc import Callable

Log = Callable[[str], None]
