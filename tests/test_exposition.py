"""The formatter: escaping, values, both formats against prometheus_client's parsers, content
negotiation, and the caches that make a scrape cheap (label text, per-family gzip pieces)
never changing a byte of what is served."""

from __future__ import annotations

import gzip
import random
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse

from drm_exporter import exposition
from drm_exporter.exposition import (
    OPENMETRICS,
    TEXT,
    Family,
    Formatter,
    SnapshotStore,
    columns,
    family,
    format_text,
    format_value,
    negotiate,
)
from drm_exporter.metrics import (
    BUILD_INFO,
    CLOUD_COST,
    GPU_TEMPERATURE,
    GPU_UTILIZATION,
    WORKER_INFO,
    WORKER_UP,
)

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def samples(text: str, fmt: str) -> dict:
    parse = om_parse if fmt == OPENMETRICS else text_parse
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in parse(text) for s in f.samples}


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS])
def test_label_values_are_escaped_and_parse_back(fmt: str) -> None:
    nasty = 'a"b\\c\nd'
    text = format_text([family(WORKER_INFO, [((nasty, "p", "aws", "r", "t", "h"), 1.0)])], fmt)
    assert b'worker="a\\"b\\\\c\\nd"' in text
    [(_, labels)] = samples(text.decode(), fmt)
    assert dict(labels)["worker"] == nasty


def test_values_and_counter_names() -> None:
    assert [format_value(v) for v in (1.0, 0.25, float("nan"), float("inf"), float("-inf"), 3)
            ] == ["1.0", "0.25", "NaN", "+Inf", "-Inf", "3.0"]
    text = format_text([family(CLOUD_COST, [(("aws", "r", "t", "cpu"), 1.5)])]).decode()
    assert "# TYPE drm_cloud_cost_usd_total counter" in text
    [fam] = text_parse(text)
    assert (fam.type, fam.samples[0].name, fam.samples[0].value) == (
        "counter", "drm_cloud_cost_usd_total", 1.5)


def test_openmetrics_names_the_counter_family_without_total_and_ends_with_eof() -> None:
    text = format_text([family(CLOUD_COST, [(("aws", "r", "t", "cpu"), 1.5)]),
                        family(WORKER_UP, [(("w1",), 1.0)])], OPENMETRICS).decode()
    assert "# TYPE drm_cloud_cost_usd counter\n" in text
    assert "\ndrm_cloud_cost_usd_total{" in text
    assert text.endswith("drm_worker_up{worker=\"w1\"} 1.0\n# EOF\n")
    fams = {f.name: f for f in om_parse(text)}  # the strict parser: fails on any slip
    assert fams["drm_cloud_cost_usd"].type == "counter"
    assert fams["drm_cloud_cost_usd"].samples[0].value == 1.5


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS])
def test_non_finite_values_are_spelled_for_both_parsers(fmt: str) -> None:
    vals = [float("nan"), float("inf"), float("-inf"), 0.5, 2e300, 2e300]  # the sum overflows
    keys = [(f"w{i}", "0") for i in range(len(vals))]
    text = format_text([columns(GPU_TEMPERATURE, keys, vals)], fmt).decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("drm_gpu_temperature")]
    assert [ln.rsplit(" ", 1)[1] for ln in lines] == [
        "NaN", "+Inf", "-Inf", "0.5", "2e+300", "2e+300"]
    got = samples(text, fmt)
    assert [got[("drm_gpu_temperature_celsius", (("gpu", "0"), ("worker", f"w{i}")))]
            for i in range(1, 6)] == vals[1:]


def test_ints_stay_ints_bools_become_floats_and_label_counts_are_checked() -> None:
    f = columns(WORKER_UP, [("a",), ("b",)], [1, 96])
    assert f.values == (1, 96) and b'drm_worker_up{worker="b"} 96\n' in format_text([f])
    f = columns(WORKER_UP, [("a",), ("b",)], [True, 96])
    assert f.values == (1.0, 96.0) and all(type(v) is float for v in f.values)
    assert b'drm_worker_up{worker="a"} 1.0\n' in format_text([f])
    with pytest.raises(ValueError):
        family(WORKER_UP, [(("w", "extra"), 1.0)])
    with pytest.raises(ValueError):
        columns(WORKER_UP, [("a",)], [1.0, 2.0])


def test_a_family_without_labels() -> None:
    metric = replace(BUILD_INFO, labels=())
    text = format_text([columns(metric, [()], [1.0])]).decode()
    assert text.endswith("\ndrm_exporter_build_info 1.0\n")


@pytest.mark.parametrize(("accept", "want"), [
    (PROMETHEUS_ACCEPT, OPENMETRICS),
    (None, TEXT),
    ("", TEXT),
    ("text/plain", TEXT),
    ("*/*", TEXT),
    ("application/openmetrics-text", OPENMETRICS),
    ("application/openmetrics-text; version=0.0.1", OPENMETRICS),
    ("application/openmetrics-text;version=2.0.0", TEXT),  # a version we do not write
    ("application/openmetrics-text;q=0.3,text/plain;q=0.5", TEXT),
    ("text/plain;version=0.0.4;q=0.5,application/openmetrics-text;q=0.6", OPENMETRICS),
    ("application/openmetrics-text;q=0,text/plain", TEXT),
    ("application/json", TEXT),  # nothing we serve: the text format rather than a 406
    ("application/openmetrics-text;q=oops", TEXT),
])
def test_negotiation(accept: str | None, want: str) -> None:
    assert negotiate(accept) == want


def _random_fleet(rng: random.Random, workers: list[str], changed: float,
                  prev: dict[tuple[str, str], float]) -> list[Family]:
    keys = [(w, str(g)) for w in workers for g in range(2)]
    util = [prev[k] if k in prev and rng.random() > changed else round(rng.random(), 2)
            for k in keys]
    prev.clear()
    prev.update(zip(keys, util, strict=True))
    return [family(WORKER_INFO, [((w, "p", "aws", "r", "t", f'h"{w}'), 1.0) for w in workers]),
            columns(GPU_UTILIZATION, keys, util),
            columns(GPU_TEMPERATURE, keys, [40.0] * len(keys)),
            family(CLOUD_COST, [(("aws", "r", "t", "p"), rng.random() * 100)])]


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS])
def test_gzip_pieces_decompress_to_exactly_the_plain_body_across_snapshots(fmt: str) -> None:
    """gzip.decompress checks the CRC-32 and the length in the trailer, so a wrong combine or
    a stale piece fails here, not just a wrong byte."""
    rng = random.Random(7)
    formatter = Formatter()
    workers = [f"w{i}" for i in range(40)]
    prev: dict[tuple[str, str], float] = {}
    for step in range(25):
        if step % 5 == 4:  # churn: some workers leave, new ones join
            workers = workers[3:] + [f"n{step}-{i}" for i in range(4)]
        fams = _random_fleet(rng, workers, changed=0.0 if step % 3 == 0 else 0.3, prev=prev)
        if step == 10:
            fams = fams[1:]  # a family disappears, then comes back
        body = formatter.gzip_body(fams, fmt)
        assert gzip.decompress(body) == Formatter().body(fams, fmt), step
        # also a streaming inflater that stops at the final block, as Go's reader does
        d = zlib.decompressobj(31)
        assert d.decompress(body) == Formatter().body(fams, fmt) and d.eof and not d.unused_data


def test_unchanged_families_are_not_formatted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    formatted: list[str] = []
    real = Formatter.family_parts

    def counting(self: Formatter, f: Family, fmt: str = TEXT) -> Iterator[str]:
        formatted.append(f.metric.name)
        return real(self, f, fmt)
    monkeypatch.setattr(Formatter, "family_parts", counting)
    formatter = Formatter()
    keys = [("w1", "0"), ("w2", "0")]
    first = [columns(GPU_UTILIZATION, keys, [0.1, 0.2]),
             columns(GPU_TEMPERATURE, keys, [40.0, 41.0])]
    formatter.gzip_body(first, OPENMETRICS)
    assert formatted == [GPU_UTILIZATION.name, GPU_TEMPERATURE.name]
    formatted.clear()
    # new tuples, equal content: temperature is reused, utilization changed
    second = [columns(GPU_UTILIZATION, [("w1", "0"), ("w2", "0")], [0.1, 0.3]),
              columns(GPU_TEMPERATURE, [("w1", "0"), ("w2", "0")], [40.0, 41.0])]
    body = formatter.gzip_body(second, OPENMETRICS)
    assert formatted == [GPU_UTILIZATION.name]
    assert gzip.decompress(body) == format_text(second, OPENMETRICS)
    formatted.clear()
    formatter.gzip_body(second, TEXT)  # the other format has pieces of its own
    assert formatted == [GPU_UTILIZATION.name, GPU_TEMPERATURE.name]


def test_label_text_of_departed_workers_is_pruned() -> None:
    formatter = Formatter()
    for gen in range(30):  # 30 generations of 100 workers, none of them seen twice
        keys = [(f"g{gen}-w{i}",) for i in range(100)]
        formatter.gzip_body([columns(WORKER_UP, keys, [1.0] * 100)])
        cached = formatter._labels[WORKER_UP.labels]  # noqa: SLF001 (the bound is the point)
        assert len(cached) <= 2 * 100 + 64
    assert all(k[0].startswith("g29-") for k in list(cached)[-100:])


def test_store_formats_once_per_version_and_gzips() -> None:
    store = SnapshotStore()
    store.publish([family(WORKER_UP, [(("w1",), 1.0)])])
    a = store.body(False)
    assert store.body(False) is a  # cached, not reformatted
    assert gzip.decompress(store.body(True)) == a
    assert store.body(False, OPENMETRICS).endswith(b"# EOF\n")
    store.publish([family(WORKER_UP, [(("w2",), 0.0)])])
    assert b'worker="w2"} 0.0' in store.body(False) and b"w1" not in store.body(False)


def test_two_scrapers_of_a_new_snapshot_share_one_formatting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = exposition.Formatter.gzip_body

    def slow(self: Formatter, *args: object, **kwargs: object) -> bytes:
        calls.append(1)
        time.sleep(0.3)  # the first scraper is still formatting when the second arrives
        return real(self, *args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(exposition.Formatter, "gzip_body", slow)
    store = SnapshotStore()
    store.publish([family(WORKER_UP, [(("w1",), 1.0)])])
    bodies: list[bytes] = []
    threads = [threading.Thread(target=lambda: bodies.append(store.body(True, OPENMETRICS)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and bodies[0] is bodies[1]
