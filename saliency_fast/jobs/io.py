"""Files of a job: reading input rows (Parquet, JSON Lines), durable atomic writes, reading results.

Inputs are read a shard at a time, never whole: a Parquet shard reads only the row groups it
overlaps; a JSON Lines shard seeks to the byte offset recorded when the job was planned. An input
line that is not a JSON object becomes a row whose ``error`` says so, not a failed job.

Every output file is written to a hidden temporary name beside its final path, flushed and
fsynced, then renamed over the final path (and the directory fsynced): a reader, or a job killed
at any instant, sees either the whole file or none of it.
"""

from __future__ import annotations

import json
import os
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq

from saliency_fast._files import atomic_path

INPUT_SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
ID_TYPES = {"int64": pa.int64(), "string": pa.string()}
ERROR_COLUMN = "error"
SHARD_GLOB = "part-*.parquet"


def input_files(path: str | os.PathLike) -> list[pathlib.Path]:
    """The input files of ``path``: the file itself, or every Parquet / JSON Lines file under the
    directory (hidden files skipped), in sorted order so that row numbers are deterministic."""
    root = pathlib.Path(path)
    if root.is_file():
        if root.suffix.lower() not in INPUT_SUFFIXES:
            raise ValueError(f"input {str(root)!r} must be a {' or '.join(INPUT_SUFFIXES)} file")
        return [root.resolve()]
    if not root.is_dir():
        raise ValueError(f"input {str(root)!r} does not exist; expected a Parquet or JSON Lines file or a directory")
    files = sorted(
        f.resolve()
        for f in root.rglob("*")
        if f.is_file() and f.suffix.lower() in INPUT_SUFFIXES and not any(p.startswith(".") for p in f.relative_to(root).parts)
    )
    if not files:
        raise ValueError(f"input directory {str(root)!r} holds no {', '.join(INPUT_SUFFIXES)} files")
    return files


def input_format(path: pathlib.Path) -> str:
    return INPUT_SUFFIXES[path.suffix.lower()]


# --- scanning (at plan time) -------------------------------------------------------------------


def parquet_columns(path: pathlib.Path) -> dict[str, pa.DataType]:
    return {field.name: field.type for field in pq.ParquetFile(path).schema_arrow}


def parquet_rows(path: pathlib.Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def scan_jsonl(path: pathlib.Path, every: int) -> tuple[int, list[int], dict | None]:
    """Count the rows of a JSON Lines file (blank lines are not rows) and return, with the count,
    the byte offset of rows 0, ``every``, ``2 * every``, ... and the first row parsed (for the
    column names), or None if the file is empty or its first row is not a JSON object."""
    rows, offsets, first, position = 0, [], None, 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                if rows % every == 0:
                    offsets.append(position)
                if rows == 0:
                    first = _parse_line(line, f"{path.name} row 1")
                rows += 1
            position += len(line)
    return rows, offsets, first if isinstance(first, dict) else None


def _parse_line(line: bytes, where: str):
    """The JSON object on an input line, or the error message saying why it is not one."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        return f"{where} is not valid JSON: {exc}"
    if not isinstance(value, dict):
        return f"{where} is not a JSON object (got {type(value).__name__})"
    return value


# --- reading one shard ---------------------------------------------------------------------------


def read_parquet_rows(path: pathlib.Path, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows ``start:stop`` of ``columns``, reading only the row groups that hold them."""
    pf = pq.ParquetFile(path)
    groups, first_row, row = [], None, 0
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if row < stop and row + n > start:
            groups.append(i)
            first_row = row if first_row is None else first_row
        row += n
    if not groups:
        return pf.schema_arrow.empty_table().select(columns)
    table = pf.read_row_groups(groups, columns=columns)
    return table.slice(start - first_row, stop - start)


def read_jsonl_rows(path: pathlib.Path, offset: int, start: int, count: int, columns: list[str]) -> tuple[dict, list]:
    """``count`` rows from byte ``offset`` (where row ``start`` begins): the values of each column
    (None where a row lacks it) and, per row, None or the message saying why it could not be read."""
    values = {name: [] for name in columns}
    errors = []
    with open(path, "rb") as f:
        f.seek(offset)
        number = start
        while len(errors) < count:
            line = f.readline()
            if not line:
                raise ValueError(f"{path} ended after {len(errors)} of {count} rows; was it changed after the job started?")
            if not line.strip():
                continue
            number += 1
            row = _parse_line(line, f"{path.name} row {number}")
            errors.append(row if isinstance(row, str) else None)
            for name in columns:
                values[name].append(row.get(name) if isinstance(row, dict) else None)
    return values, errors


def id_array(values: list, id_type: str, errors: list) -> pa.Array:
    """Ids as ``id_type``; an id that cannot be one becomes null and the row's error says why."""
    if id_type == "string":
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    ids = []
    for i, value in enumerate(values):
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            ids.append(value)
        else:
            ids.append(None)
            errors[i] = errors[i] or f"id {value!r} is not an integer like the other ids of the input"
    return pa.array(ids, pa.int64())


# --- writing -----------------------------------------------------------------------------------------


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pq.write_table(table, f)
        _flush(f)
    _fsync_dir(pathlib.Path(path).parent)


def write_json_atomic(data, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, allow_nan=False)
        f.write("\n")
        _flush(f)
    _fsync_dir(pathlib.Path(path).parent)


def remove_temporaries(directory: pathlib.Path) -> None:
    """Remove what a killed writer left behind (call only while holding the job's lock)."""
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _flush(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _fsync_dir(directory: pathlib.Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading results ---------------------------------------------------------------------------------


def shard_files(output: str | os.PathLike) -> list[pathlib.Path]:
    return sorted((pathlib.Path(output) / "shards").glob(SHARD_GLOB))


def read_results(output: str | os.PathLike) -> pa.Table:
    """Every finished shard of the job in ``output``, concatenated in input order."""
    files = shard_files(output)
    if not files:
        raise FileNotFoundError(f"{output} holds no finished shards (expected shards/{SHARD_GLOB})")
    return pa.concat_tables(pq.read_table(f) for f in files)
