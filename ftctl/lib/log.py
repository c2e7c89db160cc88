"""Progress lines and who did what: the ``Log`` callable every verb takes, and the user name
that history and log entries carry (one definition of each)."""

from collections.abc import Callable

Log = Callable[[str], None]  # ``print`` by default; a rich console in the CLI


def current_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (containers): still record who, as "?"
        return "?"
