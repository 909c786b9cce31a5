"""The plan of a job: its input files and how their rows split into shards.

A shard is a range of rows of one input file; it becomes one output file and is the unit of
resume. The plan is a pure function of the input files and the config, so rerunning the same
command rebuilds the same plan, and its fingerprint (with the files' sizes and modification
times) tells a resumed job whether the finished shards on disk still belong to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import pyarrow as pa

from saliency_fast.jobs import io
from saliency_fast.jobs.config import JobConfig


@dataclasses.dataclass(frozen=True)
class InputFile:
    path: str
    format: str
    rows: int
    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    file: int  # index into Plan.inputs
    start: int  # first row, within the file
    stop: int
    first_row: int  # row number of ``start`` in the whole input (the id when the input has none)
    offset: int | None = None  # JSON Lines: byte offset of row ``start``

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class Plan:
    inputs: tuple[InputFile, ...]
    shards: tuple[Shard, ...]
    text_column: str
    id_column: str | None  # None: ids are row numbers
    id_type: str  # a key of io.ID_TYPES
    generated_column: str | None = None  # generation: each row's response to force

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.inputs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(
            inputs=tuple(InputFile(**f) for f in data["inputs"]),
            shards=tuple(Shard(**s) for s in data["shards"]),
            **{k: data[k] for k in ("text_column", "id_column", "id_type")},
            generated_column=data.get("generated_column"),
        )

    def fingerprint(self, config: JobConfig) -> str:
        data = {"config": config.fingerprint(), "plan": self.to_dict()}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def id_name(config: JobConfig) -> str:
    """Name of the id column in the batches a runner hands to the Attributor."""
    return config.id_column or "id"


def make_plan(path: str | os.PathLike, config: JobConfig) -> Plan:
    """Scan the input files (Parquet footers; JSON Lines line by line) and cut them into shards of
    ``config.shard_size`` rows. Column names and types are checked here, before any model runs."""
    for name in (config.text_column, config.id_column, config.generated_column):
        if name == io.ERROR_COLUMN:
            raise ValueError(f"the input column {name!r} collides with the output's error column; rename it")
    inputs, shards = [], []
    id_column, id_type = config.id_column, None
    for k, path_k in enumerate(io.input_files(path)):
        fmt = io.input_format(path_k)
        if fmt == "parquet":
            rows, offsets = io.parquet_rows(path_k), None
            fields = io.parquet_columns(path_k)
            for option, name in _text_columns(config):
                _check_parquet_text(path_k, fields, option, name)
        else:
            rows, offsets, first = io.scan_jsonl(path_k, config.shard_size)
            fields = {name: _json_type(value) for name, value in (first or {}).items()}
            for option, name in _text_columns(config):
                if first is not None and name not in fields:
                    raise ValueError(_missing_column(path_k, option, name, fields))
        if k == 0 and id_column is None and "id" in fields:
            id_column = "id"
        if id_column is not None and fields:
            if id_column not in fields:
                raise ValueError(_missing_column(path_k, "id_column", id_column, fields))
            file_id_type = _id_type(path_k, id_column, fields[id_column])
            if id_type is None:
                id_type = file_id_type
            elif file_id_type != id_type and fmt == "parquet":
                raise ValueError(f"{path_k}: id column {id_column!r} holds {file_id_type} but earlier inputs hold {id_type}")
        stat = path_k.stat()
        inputs.append(InputFile(str(path_k), fmt, rows, stat.st_size, stat.st_mtime_ns))
        first_row = sum(f.rows for f in inputs[:-1])
        for j, start in enumerate(range(0, rows, config.shard_size)):
            stop = min(start + config.shard_size, rows)
            offset = offsets[j] if offsets is not None else None
            shards.append(Shard(len(shards), k, start, stop, first_row + start, offset))
    if not shards:
        raise ValueError(f"input {str(path)!r} holds no rows")
    return Plan(tuple(inputs), tuple(shards), config.text_column, id_column, id_type or "int64", config.generated_column)


def _text_columns(config: JobConfig) -> list[tuple[str, str]]:
    """(option, column) of every input column that holds text."""
    found = [("text_column", config.text_column)]
    if config.generated_column is not None:
        found.append(("generated_column", config.generated_column))
    return found


def read_shard(plan: Plan, shard: Shard, config: JobConfig) -> pa.Table:
    """The rows of ``shard`` as the Attributor takes them: the id column, the text column (and the
    generated column), and ``error`` (set where an input line could not be read)."""
    source = plan.inputs[shard.file]
    path = pathlib.Path(source.path)
    text_columns = [plan.text_column] + ([plan.generated_column] if plan.generated_column else [])
    columns = text_columns + ([plan.id_column] if plan.id_column else [])
    if source.format == "parquet":
        table = io.read_parquet_rows(path, shard.start, shard.stop, columns)
        texts = {name: table.column(name) for name in text_columns}
        ids = table.column(plan.id_column).cast(io.ID_TYPES[plan.id_type]) if plan.id_column else None
        errors = [None] * table.num_rows
    else:
        values, errors = io.read_jsonl_rows(path, shard.offset, shard.start, shard.rows, columns)
        texts = {
            name: pa.array([_text_or_error(what, v, errors, i) for i, v in enumerate(values[name])], pa.string())
            for what, name in zip(("text", "response"), text_columns)
        }
        ids = io.id_array(values[plan.id_column], plan.id_type, errors) if plan.id_column else None
    n_rows = len(texts[plan.text_column])
    if n_rows != shard.rows:
        raise ValueError(f"{path} has {n_rows} rows in {shard.start}:{shard.stop}; was it changed after the job started?")
    if ids is None:
        ids = pa.array(range(shard.first_row, shard.first_row + shard.rows), pa.int64())
    return pa.table({id_name(config): ids, **texts, io.ERROR_COLUMN: pa.array(errors, pa.string())})


def _text_or_error(what: str, value, errors: list, i: int):
    if value is None or isinstance(value, str):
        return value
    errors[i] = errors[i] or f"{what} must be a string, got {type(value).__name__}"
    return None


def _check_parquet_text(path, fields: dict, option: str, name: str) -> None:
    if name not in fields:
        raise ValueError(_missing_column(path, option, name, fields))
    kind = fields[name]
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise ValueError(f"{path}: column {name!r} ({option}) must hold strings, got {kind}")


def _missing_column(path, option: str, name: str, fields: dict) -> str:
    return f"{path} has no column {name!r} (columns: {sorted(fields)}); set {option} to one of them"


def _json_type(value) -> pa.DataType:
    if isinstance(value, int) and not isinstance(value, bool):
        return pa.int64()
    return pa.string() if isinstance(value, str) else pa.null()


def _id_type(path, name: str, kind: pa.DataType) -> str:
    if pa.types.is_integer(kind):
        return "int64"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "string"
    if pa.types.is_null(kind):  # a JSON id that is neither an integer nor a string: keep its text
        return "string"
    raise ValueError(f"{path}: id column {name!r} must hold integers or strings, got {kind}")
