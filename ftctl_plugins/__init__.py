"""ftctl's built-in plugins (installed as the package ``ftctl_plugins``)."""
