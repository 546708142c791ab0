"""Streaming CSV/Parquet reading with pyarrow: chunks of rows with their file and row positions.

Only the columns the spec needs are read. Parquet row groups outside a rank's row range are skipped without
being decoded. Every failure (missing, vanished or unreadable file, missing or repeated column, empty file,
corrupt Parquet, malformed CSV, wrong text encoding) becomes a one-line :class:`DataError` naming the file
(and, for a malformed CSV line, its 1-based data row: the header is not counted, a quoted value spanning lines
is one row, blank lines are skipped).

CSV is read as RFC 4180: quoted values may hold the delimiter and newlines (``newlines_in_values``, so a
quoted newline never desynchronises the block reader); a UTF-8 byte order mark and CRLF line ends are accepted.
Parquet dictionary (pandas categorical) and view columns are read as plain values.
"""

import glob
import io
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from recsys.data.spec import FileSpec
from recsys.errors import DataError

DATA_EXTENSIONS = (".csv", ".tsv", ".txt", ".parquet", ".pq")


@dataclass
class RawChunk:
    """Rows of one file: ``table`` holds rows ``file_row .. file_row + len - 1`` of ``file`` (0-based), which are
    rows ``global_row ..`` of the whole source."""

    table: pa.Table
    file: str
    file_row: int
    global_row: int


def list_files(spec: FileSpec, root: str) -> List[str]:
    """The files of a table spec: one file, every data file in a folder, or a glob; sorted."""
    path = spec.path if os.path.isabs(spec.path) else os.path.join(root, spec.path)
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
    elif os.path.isdir(path):
        files = sorted(
            os.path.join(path, f)
            for f in os.listdir(path)
            if f.endswith(DATA_EXTENSIONS) and not f.startswith((".", "_"))
        )
        for f in files:
            if os.path.isdir(f):  # e.g. a Spark output folder named like a file: its parts would be skipped
                raise DataError(
                    "is a folder, not a data file (give a glob such as 'data/*/*.parquet' to read the files inside it)",
                    file=f,
                )
    elif os.path.isfile(path):
        files = [path]
    else:
        raise DataError("no such file or folder", file=path)
    if not files:
        raise DataError("no data files found", file=path)
    return files


def open_error(path: str, e: OSError) -> DataError:
    """One line for a file that cannot be opened: gone since it was listed, a folder, or unreadable."""
    if not os.path.lexists(path):
        return DataError("no such file (it was listed, then vanished before it was read)", file=path)
    if os.path.isdir(path):
        return DataError("is a folder, not a data file", file=path)
    if isinstance(e, PermissionError):
        return DataError("cannot read (permission denied)", file=path)
    return DataError(f"cannot read ({str(e).splitlines()[0] if str(e) else type(e).__name__})", file=path)


def concat_chunks(chunks: Sequence["RawChunk"]) -> pa.Table:
    """The tables of ``chunks`` as one; files that disagree on the columns or their types (an int64 key in one
    Parquet file, text in the next) name the second file and the column."""
    if not chunks:
        return pa.table({})
    first = chunks[0]
    types = dict(zip(first.table.schema.names, first.table.schema.types))
    for c in chunks[1:]:  # the same columns (no silent null-filling of a column a file lacks)
        for name in sorted(set(types) ^ set(c.table.schema.names)):
            where = "here" if name in c.table.schema.names else f"in {first.file}"
            raise DataError(
                f"column only {where} (the files of one table must have the same columns)", file=c.file, column=name
            )
    try:  # int32 in one file and int64 in the next are fine
        return pa.concat_tables(
            [c.table.select(first.table.schema.names) for c in chunks], promote_options="permissive"
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    for c in chunks[1:]:
        for name, t in zip(c.table.schema.names, c.table.schema.types):
            if t != types[name]:
                raise DataError(
                    f"type {t} here but {types[name]} in {first.file} (the files of one table must "
                    "agree on column types)",
                    file=c.file,
                    column=name,
                )
    raise DataError("cannot concatenate the files of this table", file=first.file)


def _plain_columns(table: pa.Table) -> pa.Table:
    """Dictionary-encoded (pandas categorical) and view columns as plain arrays, so every kernel takes them."""
    for i, t in enumerate(table.schema.types):
        if pa.types.is_dictionary(t):
            table = table.set_column(i, table.field(i).name, pc.cast(table.column(i), t.value_type))
        elif pa.types.is_string_view(t) or pa.types.is_binary_view(t):
            target = pa.string() if pa.types.is_string_view(t) else pa.binary()
            table = table.set_column(i, table.field(i).name, pc.cast(table.column(i), target))
    return table


FIELD_BREAK = "\x1f"  # ASCII unit separator: what a longer delimiter becomes for pyarrow's one-character parser


class DelimiterStream(io.RawIOBase):
    """The bytes of a (possibly compressed) text file with every occurrence of a multi-character ``delimiter``
    replaced by :data:`FIELD_BREAK`, read block by block (a delimiter split across blocks is found too).

    Example::

        io.BufferedReader(DelimiterStream("ratings.dat", b"::")).read()   # b"1\x1f1193\x1f5\x1f978300760\n..."
    """

    def __init__(self, path: str, delimiter: bytes, block: int = 1 << 20) -> None:
        super().__init__()
        self._source = pa.input_stream(path)  # decompresses by the file's extension
        self._delimiter = delimiter
        self._block = block
        self._held = b""  # the end of the last block that may begin a delimiter
        self._ready = b""
        self._at = 0  # bytes of ``_ready`` already handed out

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._at == len(self._ready):
            data = self._source.read(self._block)
            if not data:
                self._ready, self._held, self._at = self._held, b"", 0
                if not self._ready:
                    return 0
                break
            text = (self._held + data).replace(self._delimiter, FIELD_BREAK.encode())
            hold = next(
                (
                    k
                    for k in range(min(len(self._delimiter) - 1, len(text)), 0, -1)
                    if self._delimiter.startswith(text[-k:])
                ),
                0,
            )
            self._ready, self._held, self._at = text[: len(text) - hold], text[len(text) - hold :], 0
        n = min(len(buffer), len(self._ready) - self._at)
        buffer[:n] = self._ready[self._at : self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        self._source.close()
        super().close()


COMPRESSED = (".gz", ".bz2", ".zst", ".lz4", ".br", ".zip", ".xz")


def count_lines(path: str, block: int = 1 << 24) -> Optional[int]:
    """Lines of a text file (a last line without a line break counts), at disk speed; None when the file is
    compressed or cannot be read."""
    if path.lower().endswith(COMPRESSED):
        return None
    lines, last = 0, b"\n"
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(block)
                if not data:
                    break
                lines += data.count(b"\n")
                last = data[-1:]
    except OSError:
        return None
    return lines + (last != b"\n")


def file_format(spec: FileSpec, path: str) -> str:
    if spec.format != "auto":
        return spec.format
    return "parquet" if path.endswith((".parquet", ".pq")) else "csv"


class SourceReader:
    """Reads one :class:`FileSpec` as a stream of :class:`RawChunk`.

    Args:
        spec: the table's spec.
        root: folder relative paths resolve against.
        columns: columns to read (``None``: all); each file must have them.
        chunk_rows: rows per chunk.
        string_columns: CSV columns to read as text (the encoders parse them and report bad rows).
    """

    def __init__(
        self,
        spec: FileSpec,
        root: str,
        columns: Optional[Set[str]] = None,
        chunk_rows: int = 262144,
        string_columns: Sequence[str] = (),
    ) -> None:
        self.spec = spec
        self.files = list_files(spec, root)
        self.columns = columns
        self.chunk_rows = chunk_rows
        self.string_columns = set(string_columns)
        self.root = root
        self._counts: Dict[str, int] = {}
        self._label_re = re.compile(spec.file_label.pattern) if spec.file_label else None

    # --- helpers -----------------------------------------------------------------------------------------
    def _label_value(self, path: str) -> str:
        assert self._label_re is not None and self.spec.file_label is not None
        if self.spec.file_label.match == "path":
            text = os.path.relpath(path, self.root).replace(os.sep, "/")
        else:
            text = os.path.basename(path)
        m = self._label_re.search(text)
        if not m:
            raise DataError(
                f"file name does not match file_label pattern {self._label_re.pattern!r}",
                file=path,
                column=self.spec.file_label.column,
            )
        return m.group(1) if m.groups() else m.group(0)

    def _file_columns(self) -> Optional[Set[str]]:
        if self.columns is None:
            return None
        cols = set(self.columns)
        if self.spec.file_label:
            cols.discard(self.spec.file_label.column)
        return cols

    def _check_columns(self, path: str, names: Sequence[str]) -> None:
        wanted = self._file_columns()
        seen: Set[str] = set()
        for name in names:
            if name in seen and (wanted is None or name in wanted):
                raise DataError(
                    "column name repeats in the file's header (which one is meant?)", file=path, column=name
                )
            seen.add(name)
        if wanted is None:
            return
        missing = sorted(wanted - set(names))
        if missing:
            hint = ""
            if len(names) == 1:
                for d in (";", "\t", "|", ","):
                    if d in names[0] and d != self.spec.delimiter:
                        hint = f"; the header is one column {names[0]!r}: is the delimiter {d!r}?"
                        break
            padded = [n for n in names if n != n.strip() and n.strip() == missing[0]]
            if padded:
                hint = f"; the file has {padded[0]!r}, with surrounding spaces"
            shown = ", ".join(list(names)[:20])
            raise DataError(f"missing column (file has: {shown}){hint}", file=path, column=missing[0])
        if self.spec.extra_columns == "error":
            extra = [c for c in names if c not in wanted]
            if extra:
                raise DataError(
                    "column not used by the spec (extra_columns: error; set it to allow to ignore)",
                    file=path,
                    column=extra[0],
                )

    def _csv_options(self, path: str, use_threads: bool = True):
        """Read and parse options of a CSV file; ``bad_row`` receives the first malformed row the parser
        reports."""
        spec = self.spec
        bad_row: Dict[str, object] = {}

        def on_invalid(row) -> str:
            bad_row.setdefault("row", row)
            return "error"

        block_size = max(1 << 20, min(self.chunk_rows * 64, 1 << 26))
        if spec.columns:
            read_opts = pa_csv.ReadOptions(
                column_names=spec.columns,
                skip_rows=1 if spec.header else 0,
                encoding=spec.encoding,
                block_size=block_size,
                use_threads=use_threads,
            )
        elif spec.header:
            read_opts = pa_csv.ReadOptions(encoding=spec.encoding, block_size=block_size, use_threads=use_threads)
        else:
            raise DataError("'header: false' needs the column names in 'columns' in the spec", file=path)
        parse_opts = pa_csv.ParseOptions(
            delimiter=spec.delimiter if len(spec.delimiter) == 1 else FIELD_BREAK,
            quote_char='"' if spec.quoting else False,
            invalid_row_handler=on_invalid,
            newlines_in_values=spec.quoting,
        )
        return read_opts, parse_opts, bad_row

    def _input(self, path: str):
        """What pyarrow's CSV reader reads: the file, or with a longer delimiter its bytes with every
        delimiter made one :data:`FIELD_BREAK` (:class:`DelimiterStream`)."""
        if len(self.spec.delimiter) == 1:
            return path
        try:
            return io.BufferedReader(DelimiterStream(path, self.spec.delimiter.encode(self.spec.encoding)))
        except OSError as e:
            raise open_error(path, e) from None

    def _csv_names(self, path: str, read_opts, parse_opts, bad_row: Dict[str, object]) -> List[str]:
        try:
            return pa_csv.open_csv(self._input(path), read_options=read_opts, parse_options=parse_opts).schema.names
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            raise self._csv_error(path, e, bad_row) from None
        except OSError as e:
            raise open_error(path, e) from None
        except StopIteration:
            return []

    def _csv(self, path: str):
        read_opts, parse_opts, bad_row = self._csv_options(path)
        # header check before the convert options pin column types to names that might not exist
        names = self._csv_names(path, read_opts, parse_opts, bad_row)
        self._check_columns(path, names)
        wanted = self._file_columns()
        include = [c for c in names if wanted is None or c in wanted]
        convert = pa_csv.ConvertOptions(
            include_columns=include,
            column_types={c: pa.string() for c in include if c in self.string_columns},
            strings_can_be_null=True,
        )
        try:
            reader = pa_csv.open_csv(
                self._input(path), read_options=read_opts, parse_options=parse_opts, convert_options=convert
            )
        except (pa.ArrowInvalid, UnicodeDecodeError) as e:
            raise self._csv_error(path, e, bad_row) from None
        except OSError as e:
            raise open_error(path, e) from None
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, UnicodeDecodeError) as e:
                raise self._csv_error(path, e, bad_row) from None
            except OSError as e:
                raise open_error(path, e) from None
            yield pa.Table.from_batches([batch])

    def _first_malformed_row(self, path: str):
        """The first malformed row of a CSV file in file order, found by a single-threaded parse (the threaded
        reader may report a later row first, and without its number); None when none is found."""
        read_opts, parse_opts, bad_row = self._csv_options(path, use_threads=False)
        try:
            names = pa_csv.open_csv(self._input(path), read_options=read_opts, parse_options=parse_opts).schema.names
            text = pa_csv.ConvertOptions(column_types={n: pa.string() for n in names})  # no type-inference stops
            for _ in pa_csv.open_csv(
                self._input(path), read_options=read_opts, parse_options=parse_opts, convert_options=text
            ):
                pass
        except (pa.ArrowInvalid, UnicodeDecodeError, OSError, StopIteration):
            pass
        return bad_row.get("row")

    def _csv_error(self, path: str, e: Exception, bad_row: Dict[str, object]) -> DataError:
        row = bad_row.get("row")
        msg = str(e).splitlines()[0]
        if row is not None:
            row = self._first_malformed_row(path) or row
            # pyarrow numbers rows (records) from 1 with the header line as row 1; data rows exclude it
            number = getattr(row, "number", None)
            data_row = None if number is None or number < 0 else number - (1 if self.spec.header else 0)
            text = getattr(row, "text", "")
            return DataError(
                f"malformed CSV line: expected {getattr(row, 'expected_columns', '?')} fields with delimiter "
                f"{self.spec.delimiter!r}, got {getattr(row, 'actual_columns', '?')}: {text[:80]!r}",
                file=path,
                row=data_row,
            )
        if isinstance(e, UnicodeDecodeError) or "UTF8" in msg or "utf8" in msg.lower():
            return DataError(f"text is not valid {self.spec.encoding} (set 'encoding' in the spec)", file=path)
        if "Empty CSV file" in msg:
            return DataError("empty file (no header, no rows)", file=path)
        return DataError(f"cannot read CSV: {msg}", file=path)

    def _parquet_file(self, path: str) -> pq.ParquetFile:
        if not os.path.isfile(path):
            raise open_error(path, FileNotFoundError(path))
        try:
            return pq.ParquetFile(path)
        except PermissionError as e:
            raise open_error(path, e) from None
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"not a readable Parquet file ({str(e).splitlines()[0]})", file=path) from None

    # --- public ------------------------------------------------------------------------------------------
    def _names_in_file(self, path: str) -> List[str]:
        if file_format(self.spec, path) == "parquet":
            return list(self._parquet_file(path).schema_arrow.names)
        return self._csv_names(path, *self._csv_options(path))

    def column_names(self, path: str) -> List[str]:
        """The columns of one file (Parquet: its schema; CSV: its header or the spec's ``columns``), read
        without decoding rows; a file label column counts as one of them."""
        return self._names_in_file(path) + ([self.spec.file_label.column] if self.spec.file_label else [])

    def check_columns(self, path: str) -> None:
        """Refuse a file that lacks a column to read (or repeats one), without decoding its rows."""
        self._check_columns(path, self._names_in_file(path))

    def count_rows(self, path: str) -> int:
        """Rows in one file (Parquet: from metadata; CSV: one streaming pass over the needed columns)."""
        if path not in self._counts:
            if file_format(self.spec, path) == "parquet":
                self._counts[path] = self._parquet_file(path).metadata.num_rows
            else:
                self._counts[path] = sum(t.num_rows for t in self._csv(path))
        return self._counts[path]

    def total_rows(self) -> int:
        return sum(self.count_rows(f) for f in self.files)

    def quick_rows(self, stop: Optional[int] = None) -> Tuple[Optional[int], bool]:
        """Rows a first pass will see, known cheaply (for its progress bar), and whether that is an estimate:
        Parquet files from their metadata, CSV files by counting lines (a quoted field may hold a line break);
        None for compressed CSV, or when a file cannot be read (the pass itself then says what is wrong)."""
        total, estimated = 0, False
        for path in self.files:
            if file_format(self.spec, path) == "parquet":
                try:
                    total += self.count_rows(path)
                except DataError:
                    return None, False
                continue
            lines = count_lines(path)
            if lines is None:
                return None, False
            total += max(lines - (1 if self.spec.header else 0), 0)
            estimated = True
        return (total if stop is None else min(total, stop)), estimated

    def chunks(self, start: int = 0, stop: Optional[int] = None) -> Iterator[RawChunk]:
        """Chunks covering global rows ``[start, stop)``; files or row groups outside are skipped."""
        offset = 0
        for path in self.files:
            if stop is not None and offset >= stop:
                return
            fmt = file_format(self.spec, path)
            n = self.count_rows(path) if fmt == "parquet" else self._counts.get(path)
            if n == 0:
                raise DataError("empty file (no rows)", file=path)
            if n is not None and offset + n <= start:
                offset += n
                continue
            seen = 0
            for table, file_row in self._file_tables(path, fmt, max(start - offset, 0)):
                seen = file_row + table.num_rows
                first = offset + file_row
                lo = max(start - first, 0)
                hi = table.num_rows if stop is None else min(stop - first, table.num_rows)
                if hi <= 0:
                    return  # past ``stop``: later files are too
                if lo < hi:
                    yield RawChunk(self._labelled(table.slice(lo, hi - lo), path), path, file_row + lo, first + lo)
            if n is None:  # a CSV file read to its end: now its size is known
                n = self._counts[path] = seen
                if n == 0:
                    raise DataError("empty file (no rows)", file=path)
            offset += n

    def _labelled(self, table: pa.Table, path: str) -> pa.Table:
        if self.spec.file_label is None:
            return table
        value = self._label_value(path)
        return table.append_column(self.spec.file_label.column, pa.array([value] * table.num_rows, pa.string()))

    def _file_tables(self, path: str, fmt: str, skip: int) -> Iterator:
        """(table, first file row) pairs of one file; Parquet row groups before ``skip`` are not decoded."""
        if fmt == "parquet":
            pf = self._parquet_file(path)
            self._check_columns(path, pf.schema_arrow.names)
            wanted = self._file_columns()
            cols = None if wanted is None else [c for c in pf.schema_arrow.names if c in wanted]
            first, groups = 0, []
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if first + n > skip:
                    groups.append((g, first))
                first += n
            if not groups:
                return
            row = groups[0][1]
            try:
                for batch in pf.iter_batches(
                    batch_size=self.chunk_rows, row_groups=[g for g, _ in groups], columns=cols
                ):
                    yield _plain_columns(pa.Table.from_batches([batch])), row
                    row += batch.num_rows
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"corrupt or truncated Parquet ({str(e).splitlines()[0]})", file=path) from None
        else:
            row = 0
            for table in self._csv(path):
                yield table, row
                row += table.num_rows

    def read_all(self) -> pa.Table:
        """The whole table in memory (side tables for joins)."""
        return concat_chunks(list(self.chunks()))
