"""Hugging Face datasets on disk: a ``save_to_disk`` folder, or parquet files (the Hub's format).

Rows are read in the dataset's order, one record batch at a time (nothing loads a whole table):
a ``save_to_disk`` folder through ``datasets.load_from_disk`` (memory-mapped Arrow), parquet
through pyarrow's batch reader. Each row is converted like a JSONL line (``format``: openai,
sharegpt, alpaca or auto; ftctl_plugins.sources.formats) and named ``<file>:row <n>`` (1-based)
in rejects. A dataset none of whose columns holds text ftctl can read is an error naming the
file, its first row and the columns it has, before anything is collected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from ftctl.api import ConfigError, Example, PluginConfig, Reject, Source
from ftctl_plugins.sources.common import RowError, example_from
from ftctl_plugins.sources.files import Watermarked, display, expand
from ftctl_plugins.sources.formats import Format, to_event

# a row needs one of these to hold a conversation (by format)
TEXT_COLUMNS = {"messages": "openai", "conversations": "sharegpt", "instruction": "alpaca", "prompt": "feedback"}
_BATCH = 512


class HfDatasetSource(Watermarked, Source):
    name = "hf_dataset"

    class Config(PluginConfig):
        path: str = Field(description="a `Dataset.save_to_disk` folder, or a parquet file, folder or glob "
                                      "(relative to the workspace)")
        split: str | None = Field(None, description="the split of a DatasetDict folder (e.g. train); "
                                                    "none: every split, in order")
        format: Format = Field("auto", description="openai, sharegpt, alpaca, feedback, or auto: each row by "
                                                   "its columns")

    def read(self, since: str | None) -> Iterator[Example | Reject]:
        base = Path(self.config.path)
        path = base if base.is_absolute() else self.ctx.root / base
        if path.is_dir() and _is_saved_dataset(path):
            yield from self._saved(path)
            return
        files = expand(self.ctx.root, self.config.path, (".parquet",))
        if not files:
            raise ConfigError(f"{self.config.path}: neither a save_to_disk folder nor parquet files",
                              hint="save with `dataset.save_to_disk(DIR)` or `dataset.to_parquet(FILE)`")
        for f in files:
            yield from self._parquet(f)

    def _rows(self, where: str, columns: list[str], batches) -> Iterator[Example | Reject]:
        self._check_columns(where, columns)
        n = 0
        for batch in batches:
            for row in batch:
                n += 1
                loc = f"{where}:row {n}"
                try:
                    yield self.seen(example_from(to_event(_plain(row), self.config.format),
                                                 source=self.source, source_id=loc))
                except RowError as e:
                    yield Reject(self.source, loc, e.reason, e.detail)

    def _check_columns(self, where: str, columns: list[str]) -> None:
        if self.config.format not in ("auto", "feedback"):
            wanted = [c for c, f in TEXT_COLUMNS.items() if f == self.config.format]
        else:
            wanted = list(TEXT_COLUMNS)
        if not set(wanted) & set(columns):
            raise ConfigError(
                f"{where}: no text column ftctl can read (row 1 has columns: {', '.join(columns) or 'none'})",
                hint=f"a conversation needs a column named {' or '.join(wanted)} "
                     "(openai: messages, sharegpt: conversations, alpaca: instruction + output, "
                     "feedback: prompt + response); rename it with `dataset.rename_column`")

    def _parquet(self, path: Path) -> Iterator[Example | Reject]:
        import pyarrow.parquet as pq

        where = display(self.ctx.root, path)
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a file that is not parquet
            raise ConfigError(f"{where}: not a readable parquet file ({type(e).__name__}: {str(e)[:120]})",
                              hint="write it with `dataset.to_parquet(FILE)` or pandas/pyarrow") from None
        batches = (b.to_pylist() for b in pf.iter_batches(batch_size=_BATCH))
        yield from self._rows(where, pf.schema_arrow.names, batches)

    def _saved(self, path: Path) -> Iterator[Example | Reject]:
        import datasets

        where = display(self.ctx.root, path)
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if self.config.split and self.config.split not in loaded:
                raise ConfigError(f"{where} has no split {self.config.split!r}",
                                  hint=f"splits: {', '.join(loaded)}")
            parts = [(f"{where}[{s}]", loaded[s]) for s in ([self.config.split] if self.config.split else loaded)]
        else:
            parts = [(where, loaded)]
        for name, ds in parts:
            batches = (_batch_rows(b) for b in ds.iter(batch_size=_BATCH))
            yield from self._rows(name, list(ds.column_names), batches)


def _is_saved_dataset(path: Path) -> bool:
    """A ``save_to_disk`` folder: a Dataset (state.json) or a DatasetDict (dataset_dict.json)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _batch_rows(batch: dict[str, list]) -> list[dict[str, Any]]:
    keys = list(batch)
    return [dict(zip(keys, values, strict=True)) for values in zip(*batch.values(), strict=True)]


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Arrow fills absent struct fields with None (a user turn gets ``tool_calls: None``): drop them."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return {k: clean(v) for k, v in row.items()}
