"""Built-in sources plugins, registered through the `ftctl` entry-point group."""

from ftctl.hookspecs import hookimpl


@hookimpl
def register_sources(register):
    pass
