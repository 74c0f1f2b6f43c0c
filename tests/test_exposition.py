"""The text formatter: escaping, values, and prometheus_client's parser agreeing."""

from __future__ import annotations

import gzip

from prometheus_client.parser import text_string_to_metric_families

from drm_exporter.exposition import SnapshotStore, family, format_text, format_value
from drm_exporter.metrics import CLOUD_COST, WORKER_INFO, WORKER_UP


def test_label_values_are_escaped_and_parse_back() -> None:
    nasty = 'a"b\\c\nd'
    text = format_text([family(WORKER_INFO, [((nasty, "p", "aws", "r", "t", "h"), 1.0)])])
    assert b'worker="a\\"b\\\\c\\nd"' in text
    [fam] = text_string_to_metric_families(text.decode())
    assert fam.samples[0].labels["worker"] == nasty


def test_values_and_counter_names() -> None:
    assert [format_value(v) for v in (1.0, 0.25, float("nan"), float("inf"), 3)] == [
        "1", "0.25", "NaN", "+Inf", "3"]
    text = format_text([family(CLOUD_COST, [(("aws", "r", "t", "cpu"), 1.5)])]).decode()
    assert "# TYPE drm_cloud_cost_usd_total counter" in text
    [fam] = text_string_to_metric_families(text)
    assert (fam.type, fam.samples[0].name, fam.samples[0].value) == (
        "counter", "drm_cloud_cost_usd_total", 1.5)


def test_wrong_label_count_is_a_bug_caught_early() -> None:
    import pytest
    with pytest.raises(ValueError):
        family(WORKER_UP, [(("w", "extra"), 1.0)])


def test_store_formats_once_per_version_and_gzips() -> None:
    store = SnapshotStore()
    store.publish([family(WORKER_UP, [(("w1",), 1.0)])])
    a = store.body(False)
    assert store.body(False) is a  # cached, not reformatted
    assert gzip.decompress(store.body(True)) == a
    store.publish([family(WORKER_UP, [(("w2",), 0.0)])])
    assert b'worker="w2"} 0' in store.body(False) and b"w1" not in store.body(False)
