"""Prometheus exposition of immutable metric families: text format 0.0.4 and OpenMetrics 1.0.

Hand-written rather than prometheus_client's registry: families are rebuilt from the live
registry for each snapshot (so a departed worker's series vanish without purge code), and a
snapshot is formatted once per format however many scrapers ask.

Why it is fast (benchmarks/scrape.py measures it against prometheus_client and a minimal
formatter; docs/performance.md has the figures): a family is stored as columns (label-value
tuples, numbers); the `{label="value",...} ` text of a label set is built once and reused
across families and snapshots; each family is joined by C-level `map`/`str.join` with no Python
code per sample; and the gzip body is made of per-family pieces, a family unchanged since the
last snapshot reusing its compressed piece. The whole plain body never exists when a scraper
asks for gzip (the usual case: Prometheus always does).
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import add

from .metrics import MetricDef

TEXT = "text"
OPENMETRICS = "openmetrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
CONTENT_TYPES = {TEXT: CONTENT_TYPE, OPENMETRICS: OPENMETRICS_CONTENT_TYPE}

Sample = tuple[tuple[str, ...], float]
_NUMBERS = {float, int}
log = logging.getLogger(__name__)
_SLICE = 8192


@dataclass(frozen=True)
class Family:
    """One metric's samples as two parallel columns."""

    metric: MetricDef
    keys: tuple[tuple[str, ...], ...]  # label values, in the order of metric.labels
    values: tuple[float, ...]

    @property
    def samples(self) -> tuple[Sample, ...]:
        return tuple(zip(self.keys, self.values, strict=True))


def columns(metric: MetricDef, keys: Sequence[tuple[str, ...]],
            values: Iterable[float], check: bool = True) -> Family:
    """A family from parallel columns. Floats and ints are kept as they are (an int prints
    as `96`, and converting would allocate a float per sample each tick); anything else,
    such as a bool that would print as `True`, becomes a float."""
    ks = tuple(keys)
    vs = tuple(values)
    if not set(map(type, vs)) <= _NUMBERS:
        vs = tuple(map(float, vs))
    if len(ks) != len(vs):
        raise ValueError(f"{metric.name}: {len(ks)} label sets for {len(vs)} values")
    n = len(metric.labels)
    # `check=False` is for builders whose key tuples are made by code, not from input (the
    # snapshot's GPU rows): their label count is fixed by construction and tested.
    if check and ks and set(map(len, ks)) != {n}:
        bad = next(k for k in ks if len(k) != n)
        raise ValueError(f"{metric.name}: {len(bad)} label values for {metric.labels}")
    return Family(metric, ks, vs)


def family(metric: MetricDef, samples: Iterable[Sample]) -> Family:
    out = tuple(samples)
    if not out:
        return Family(metric, (), ())
    keys, values = zip(*out, strict=True)
    return columns(metric, keys, values)


def escape_label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str, openmetrics: bool) -> str:
    v = v.replace("\\", "\\\\").replace("\n", "\\n")
    return v.replace('"', '\\"') if openmetrics else v


def format_value(v: float) -> str:
    """The canonical spelling both formats accept (OpenMetrics insists on NaN/+Inf/-Inf)."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class _LabelText(dict):
    """Label values -> `{a="x",b="y"} ` for one tuple of label names, built on first use.

    Shared by every family with the same label names (the seven GPU families share one) and
    kept across snapshots, so a steady fleet formats no label text at all after the first
    scrape. Keys of departed workers are pruned when they outnumber the live ones."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names

    def __missing__(self, key: tuple[str, ...]) -> str:
        if self.names:
            inner = ",".join(f'{n}="{escape_label_value(v)}"'
                             for n, v in zip(self.names, key, strict=True))
            text = f"{{{inner}}} "
        else:
            text = " "
        self[key] = text
        return text


# A gzip header with mtime 0 and OS "unknown" (the same bytes for the same snapshot), and the
# empty fixed-Huffman block with BFINAL set that ends a deflate stream of sync-flushed pieces.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_FINAL_BLOCK = b"\x03\x00"
_CRC_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (zlib's multmodp, reflected bit order)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    p = 1 << 30  # x^1
    table = [p]
    for _ in range(31):
        p = _multmodp(p, p)
        table.append(p)
    return table


_X2N = _x2n_table()


def _x2nmodp(n: int) -> int:
    """x^(8n) modulo the polynomial: the operator that shifts a CRC past n zero bytes."""
    p, k = 1 << 31, 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def _crc32_combine(crc1: int, crc2: int, shift: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and _x2nmodp(len(B)) (zlib's crc32_combine_op;
    Python's zlib does not expose it)."""
    return _multmodp(shift, crc1) ^ crc2


@dataclass(frozen=True)
class _Piece:
    """One family's text as raw deflate ending on a byte boundary (a sync flush, not final),
    so pieces compressed apart concatenate into one valid stream."""

    keys: tuple[tuple[str, ...], ...]
    values: tuple[float, ...]
    data: bytes
    crc: int
    size: int
    shift: int

    @classmethod
    def of(cls, parts: Iterable[bytes], level: int, keys: tuple[tuple[str, ...], ...],
           values: tuple[float, ...]) -> _Piece:
        z = zlib.compressobj(level, zlib.DEFLATED, -15)
        out, crc, size = [], 0, 0
        for p in parts:
            out.append(z.compress(p))
            crc, size = zlib.crc32(p, crc), size + len(p)
        out.append(z.flush(zlib.Z_SYNC_FLUSH))
        return cls(keys, values, b"".join(out), crc, size, _x2nmodp(size))


class Formatter:
    """Formats families, keeping the label text of the label sets it has seen."""

    def __init__(self) -> None:
        self._labels: dict[tuple[str, ...], _LabelText] = {}
        self._pieces: dict[str, dict[str, _Piece]] = {}  # format -> metric name -> piece

    def _label_text(self, names: tuple[str, ...]) -> _LabelText:
        lt = self._labels.get(names)
        if lt is None:
            lt = self._labels[names] = _LabelText(names)
        return lt

    def family_parts(self, f: Family, fmt: str = TEXT) -> Iterator[str]:
        """The family's text in slices of at most _SLICE samples: a 80,000-sample family
        never has all its temporary strings alive at once (peak memory, not speed)."""
        m = f.metric
        om = fmt == OPENMETRICS
        # OpenMetrics names a counter's family without the _total its samples carry.
        fam_name = m.name.removesuffix("_total") if om and m.type == "counter" else m.name
        yield f"# HELP {fam_name} {_escape_help(m.help, om)}\n# TYPE {fam_name} {m.type}\n"
        labels = self._label_text(m.labels)
        name = m.name
        sep = "\n" + name
        for i in range(0, len(f.keys), _SLICE):
            vals = f.values[i:i + _SLICE]
            total = sum(vals)
            # All finite (the usual case): repr is the shortest round-tripping spelling.
            # Else spell NaN and the infinities the way both formats require.
            texts = map(repr, vals) if total - total == 0 else map(format_value, vals)
            lines = sep.join(map(add, map(labels.__getitem__, f.keys[i:i + _SLICE]), texts))
            yield f"{name}{lines}\n"

    def family_text(self, f: Family, fmt: str = TEXT) -> str:
        return "".join(self.family_parts(f, fmt))

    def chunks(self, families: Sequence[Family], fmt: str = TEXT) -> Iterable[bytes]:
        for f in families:
            yield self.family_text(f, fmt).encode("utf-8")
        if fmt == OPENMETRICS:
            yield b"# EOF\n"
        self._prune(families)

    def body(self, families: Sequence[Family], fmt: str = TEXT) -> bytes:
        return b"".join(self.chunks(families, fmt))

    def gzip_body(self, families: Sequence[Family], fmt: str = TEXT, level: int = 1) -> bytes:
        """One gzip member whose deflate stream is a run of per-family pieces (as pigz
        builds them): a family whose label sets and values equal the last snapshot's reuses
        its compressed piece, so only what changed since the last tick is formatted and
        compressed. Info, capacity and allocation families rarely change; usage does."""
        out = [_GZIP_HEADER]
        crc, size = 0, 0
        fresh: dict[str, _Piece] = {}
        old = self._pieces.get(fmt, {})
        for f in families:
            piece = old.get(f.metric.name)
            # Equal, not identical: a new snapshot holds new tuples. Comparing costs a
            # fraction of formatting, and stops at the first difference.
            if piece is None or piece.keys != f.keys or piece.values != f.values:
                piece = _Piece.of((p.encode("utf-8") for p in self.family_parts(f, fmt)),
                                  level, f.keys, f.values)
            crc = _crc32_combine(crc, piece.crc, piece.shift)
            fresh[f.metric.name] = piece
            out.append(piece.data)
            size += piece.size
        if fmt == OPENMETRICS:
            eof = _Piece.of([b"# EOF\n"], level, (), ())
            out.append(eof.data)
            crc, size = _crc32_combine(crc, eof.crc, eof.shift), size + eof.size
        out.append(_FINAL_BLOCK)
        out.append(struct.pack("<II", crc, size & 0xFFFFFFFF))
        self._pieces[fmt] = fresh  # departed families drop out here
        self._prune(families)
        return b"".join(out)

    def _prune(self, families: Sequence[Family]) -> None:
        """Drop the label text of label sets no longer exported, once they are the majority:
        churn cannot grow the cache without bound, and a steady fleet never pays for this."""
        live: dict[tuple[str, ...], int] = {}
        for f in families:
            live[f.metric.labels] = max(live.get(f.metric.labels, 0), len(f.keys))
        for names, lt in list(self._labels.items()):
            if names not in live:
                del self._labels[names]
            elif len(lt) > 2 * live[names] + 64:
                keep: set[tuple[str, ...]] = set()
                for f in families:
                    if f.metric.labels == names:
                        keep.update(f.keys)
                fresh = _LabelText(names)
                fresh.update((k, lt[k]) for k in keep)
                self._labels[names] = fresh


def format_text(families: Sequence[Family], fmt: str = TEXT) -> bytes:
    """One-off formatting (tests, `collect --once`): a fresh formatter, no cache kept."""
    return Formatter().body(families, fmt)


def negotiate(accept: str | None) -> str:
    """OpenMetrics when the Accept header prefers it (Prometheus' own header lists it first),
    else the text format, also for no header or only types we do not serve."""
    best, best_q = TEXT, -1.0
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        q = 1.0
        version = None
        for p in params:
            k, _, v = p.partition("=")
            k = k.strip().lower()
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
            elif k == "version":
                version = v.strip()
        if q <= 0:
            continue
        if media == "application/openmetrics-text" and version in (None, "1.0.0", "0.0.1"):
            kind = OPENMETRICS
        elif media in ("text/plain", "text/*", "*/*") and version in (None, "0.0.4"):
            kind = TEXT
        else:
            continue
        # Highest q wins; on a tie the earlier entry (the client's own order).
        if q > best_q:
            best, best_q = kind, q
    return best


class SnapshotStore:
    """Holds the latest families; formats and compresses each (version, format, encoding) at
    most once. Scrapers of a new snapshot queue on one lock, so two concurrent scrapers cost
    one formatting, not two.

    Families arrive either eagerly (`publish`) or from a `source` called on the first read
    after `invalidate()`: then a snapshot is built only when someone reads it, and a build
    that raises keeps the last good families (logged), so /metrics keeps answering."""

    def __init__(self, source: Callable[[], Iterable[Family]] | None = None) -> None:
        self._lock = threading.Lock()
        self._families: tuple[Family, ...] = ()
        self._version = 0
        self._cache: dict[tuple[str, bool], bytes] = {}
        self._formatter = Formatter()
        self._source = source
        # Generations, not a flag: invalidate() takes no lock (the tick loop must not wait for
        # a scrape that is formatting), and one that lands mid-build is not lost.
        self._wanted = 1 if source is not None else 0
        self._built = 0
        self._failed: str | None = None

    def publish(self, families: Iterable[Family]) -> None:
        fams = tuple(families)
        with self._lock:
            self._set(fams)

    def invalidate(self) -> None:
        if self._source is not None:
            self._wanted += 1

    def _set(self, fams: tuple[Family, ...]) -> None:
        self._families = fams
        self._version += 1
        self._cache = {}

    def _refresh(self) -> None:  # with the lock held
        wanted = self._wanted
        if wanted == self._built or self._source is None:
            return
        try:
            fams = tuple(self._source())
        except Exception as e:  # a bug in a builder must not take /metrics down with it
            problem = f"{type(e).__name__}: {e}"
            if problem != self._failed:
                log.exception("building the metrics snapshot failed; serving the last one")
            self._failed = problem
            return
        self._failed = None
        self._built = wanted
        self._set(fams)

    @property
    def families(self) -> tuple[Family, ...]:
        with self._lock:
            self._refresh()
            return self._families

    @property
    def version(self) -> int:
        return self._version

    def body(self, compressed: bool, fmt: str = TEXT) -> bytes:
        key = (fmt, compressed)
        with self._lock:
            self._refresh()
            cached = self._cache.get(key)
            if cached is None:
                if compressed:
                    # Level 1: a 10x smaller body for a fraction of level 6's CPU.
                    cached = self._formatter.gzip_body(self._families, fmt, level=1)
                else:
                    cached = self._formatter.body(self._families, fmt)
                self._cache[key] = cached
            return cached
