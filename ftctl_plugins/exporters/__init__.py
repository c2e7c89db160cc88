"""Built-in exporters plugins, registered through the `ftctl` entry-point group."""

from ftctl.api import hookimpl


@hookimpl
def register_exporters(register):
    from ftctl_plugins.exporters.gguf import GgufExporter

    register(GgufExporter)
