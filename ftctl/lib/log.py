"""Progress lines and who did what: the ``Log`` callable every verb takes (the contract's type,
:data:`ftctl.kinds.Log`, named here beside the rest) and the user name that history and log
entries carry."""

from ftctl.kinds import Log  # noqa: F401  (re-exported: the verbs' ``log`` parameter)


def current_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry (containers): still record who, as "?"
        return "?"
