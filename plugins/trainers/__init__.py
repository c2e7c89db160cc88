"""Built-in trainers plugins, registered through the `ftctl` entry-point group."""

from ftctl.hookspecs import hookimpl


@hookimpl
def register_trainers(register):
    pass
