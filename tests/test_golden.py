"""End to end, exact: fixture inputs (a fake psutil and cgroup behind HostCollector, a fake NVML
behind GpuCollector, an engine on a ManualClock with workers, reservations and a scaling
decision) → build_families → format_text, compared byte for byte with tests/golden/e2e-output.txt
(text format 0.0.4) and e2e-output.openmetrics.txt (OpenMetrics 1.0), the first linted by
`promtool check metrics`, the second parsed by prometheus_client's strict OpenMetrics parser
(node_exporter's e2e test, in Python).

A deliberate change to the exposition: UPDATE_GOLDEN=1 pytest tests/test_golden.py rewrites
the file; review its diff like code.
"""

from __future__ import annotations

import difflib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import GIB, spec
from fakenvml import FakeNvml, gpu
from test_collectors import FakePsutil

from drm_exporter import __version__
from drm_exporter.clock import ManualClock
from drm_exporter.collectors.cgroup import SOURCE_V2, CgroupReading
from drm_exporter.collectors.gpu import GpuCollector
from drm_exporter.collectors.host import HostCollector
from drm_exporter.collectors.runner import CollectorRunner
from drm_exporter.collectors.status import CollectorStatus
from drm_exporter.engine import Engine, EngineSettings
from drm_exporter.exposition import OPENMETRICS, TEXT, format_text
from drm_exporter.fleet import Usage, WorkerSpec
from drm_exporter.hooks import HookCounts
from drm_exporter.prices import DEFAULT_PRICES, PriceBook
from drm_exporter.scaling import PoolPolicy
from drm_exporter.service import HostWorker
from drm_exporter.snapshot import build_families

GOLDEN = Path(__file__).parent / "golden" / "e2e-output.txt"
GOLDEN_OM = Path(__file__).parent / "golden" / "e2e-output.openmetrics.txt"


class FakeCgroup:
    """A container limited to 4 CPUs and 12 GiB, its CPU time moved by hand."""

    def __init__(self) -> None:
        self.cpu_s = 100.0

    def __call__(self) -> CgroupReading:
        return CgroupReading(SOURCE_V2, cpu_limit_cores=4.0, memory_limit_bytes=12 * GIB,
                             memory_used_bytes=3 * GIB, cpu_usage_seconds=self.cpu_s)


def exposition(fmt: str = TEXT) -> str:
    clock = ManualClock()
    policy = PoolPolicy(cooldown_up_s=30, cooldown_down_s=60, evaluation_interval_s=10,
                        min_workers=1, max_workers=6, max_step=2, evaluation_window_s=0)
    engine = Engine({"cpu": policy, "gpu": policy}, EngineSettings(heartbeat_timeout_s=30),
                    PriceBook(DEFAULT_PRICES), {"aws": 100.0}, clock)
    engine.register(spec("cpu-1"), Usage(0.92, 20 * GIB))
    engine.register(spec("cpu-2", cores=4, mem_gib=16), Usage(0.88, 12 * GIB))

    # This machine, through the same HostWorker and runners as `serve`.
    cgroup = FakeCgroup()
    host = HostCollector(FakePsutil(), prime_s=0.0, monotonic=clock.monotonic, cgroup=cgroup)
    nvml = FakeNvml([gpu(mem=(16 * GIB, 4 * GIB)),
                     gpu(uuid="GPU-2", util=90, mem=(16 * GIB, 12 * GIB), temp=63,
                         power_mw=FakeNvml.NVMLError_NotSupported)])  # power left out
    me = WorkerSpec(worker="gpu-host", pool="gpu", provider="aws", region="us-east-1",
                    instance_type="g4dn.12xlarge", hostname="gpu-host.test", cpu_cores=1,
                    memory_total_bytes=1)
    hw = HostWorker(engine, me, host, GpuCollector(lambda: nvml))
    status = CollectorStatus()
    runners = [CollectorRunner("gpu", hw.collect_gpu, 5, status, clock=clock),
               CollectorRunner("host", hw.collect_host, 5, status, clock=clock)]
    clock.advance(5)
    cgroup.cpu_s += 10  # 10 CPU seconds in 5 s of a 4-CPU quota: 0.5
    for r in runners:
        assert r.run_once()

    engine.reserve("etl-1", 6, 8 * GIB, pool="cpu")
    engine.reserve("etl-2", 4, 8 * GIB, pool="cpu")  # 10 of 12 cores reserved
    engine.reserve("train-1", 2, 4 * GIB, gpus=1, pool="gpu")
    clock.advance(5)
    decisions = engine.tick()  # the cpu pool runs hot: a scale-up
    assert any(d.action == "scale_up" for d in decisions), decisions
    hooks = {"cpu": HookCounts({"ok": 1, "failed": 0, "dropped": 0}, 1)}
    text = format_text(build_families(engine.view(), status.snapshot(), hooks), fmt).decode()
    # The build's own versions are the one thing a fixture cannot pin.
    return text.replace(f'version="{__version__}"', 'version="VERSION"').replace(
        f'python_version="{platform.python_version()}"', 'python_version="PYTHON"')


@pytest.mark.parametrize(("fmt", "golden"), [(TEXT, GOLDEN), (OPENMETRICS, GOLDEN_OM)])
def test_exposition_matches_golden_file(fmt: str, golden: Path) -> None:
    got = exposition(fmt)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got, encoding="utf-8")
    want = golden.read_text(encoding="utf-8") if golden.exists() else ""
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            str(golden), "exposition now"))
        raise AssertionError(f"the exposition differs from {golden.name}; if the change is "
                             f"intended, rerun with UPDATE_GOLDEN=1 and review the diff\n{diff}")


def test_openmetrics_golden_parses_strictly_to_the_same_samples() -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
    from prometheus_client.parser import text_string_to_metric_families as text_parse

    def samples(fams) -> dict:  # noqa: ANN001
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams
                for s in f.samples}
    om = samples(om_parse(GOLDEN_OM.read_text(encoding="utf-8")))
    text = samples(text_parse(GOLDEN.read_text(encoding="utf-8")))
    assert om == text and len(om) > 100
    assert GOLDEN_OM.read_text(encoding="utf-8").endswith("\n# EOF\n")
    assert "# TYPE drm_cloud_cost_usd counter" in GOLDEN_OM.read_text(encoding="utf-8")


def test_golden_file_passes_promtool() -> None:
    # Fails rather than skips: `make test` installs promtool (deploy/local/bootstrap.sh --test).
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run `make test` or deploy/local/bootstrap.sh"
    r = subprocess.run([promtool, "check", "metrics"], input=GOLDEN.read_bytes(),
                       capture_output=True, timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
