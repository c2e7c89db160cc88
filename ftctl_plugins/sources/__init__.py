"""Built-in sources plugins, registered through the `ftctl` entry-point group.

Each module stays import-light (``ftctl plugins`` imports them): database drivers load
inside ``read``.
"""

from ftctl.api import hookimpl
from ftctl_plugins.sources.rewards import reward  # noqa: F401  the built-in reward table, a hook of this module


@hookimpl
def register_sources(register):
    from ftctl_plugins.sources.csv import CsvSource
    from ftctl_plugins.sources.documents import DocumentsSource
    from ftctl_plugins.sources.hf_dataset import HfDatasetSource
    from ftctl_plugins.sources.jsonl import JsonlSource
    from ftctl_plugins.sources.postgres import PostgresSource
    from ftctl_plugins.sources.sqlite import SqliteSource

    for cls in (PostgresSource, SqliteSource, JsonlSource, CsvSource, DocumentsSource, HfDatasetSource):
        register(cls)
