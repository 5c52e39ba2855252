"""GPU utilisation and memory per NVIDIA device, read through NVML at scrape time.

Optional: NVML comes from ``nvidia-ml-py`` (``pip install modelyard[gpu]``) plus the driver's
``libnvidia-ml``. :func:`probe_gpus` tries both once per process and never raises; the answer
says whether GPU series will be exported and, when not, why, so an operator who expected GPU
panels sees the reason on ``/metrics`` (``modelyard_gpu_metrics_enabled{reason=...} 0``) and
in the log instead of silently empty panels. A machine without a GPU therefore scrapes exactly
as before, plus that one gauge.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("modelyard.metrics")

REASONS = {
    "enabled": "NVML found {count} device(s)",
    "disabled": "GPU metrics turned off by the caller",
    "nvml_not_installed": "the nvidia-ml-py package is not installed (pip install 'modelyard[gpu]')",
    "nvml_unavailable": "NVML did not initialise (no NVIDIA driver on this machine?): {error}",
    "no_devices": "NVML initialised but sees no device",
}
"""Why GPU metrics are on or off: the label value of the status gauge, and the log line."""


class GpuCollector(Collector):
    """Utilisation and memory of every NVIDIA device NVML saw at start."""

    def __init__(self, nvml: Any, count: int) -> None:
        self.nvml = nvml
        self.count = count

    def collect(self) -> Iterable[Metric]:
        util = GaugeMetricFamily(
            "modelyard_gpu_utilization_ratio",
            "GPU busy fraction over the last sample period.",
            labels=["gpu"],
        )
        used = GaugeMetricFamily("modelyard_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"])
        total = GaugeMetricFamily("modelyard_gpu_memory_total_bytes", "GPU memory installed.", labels=["gpu"])
        for index in range(self.count):
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                sample = (float(rates.gpu) / 100.0, float(memory.used), float(memory.total))
            except Exception as exc:  # a device can vanish or error; the rest still reports
                log.debug("NVML read of GPU %d failed: %s", index, exc)
                continue
            util.add_metric([str(index)], sample[0])
            used.add_metric([str(index)], sample[1])
            total.add_metric([str(index)], sample[2])
        return [util, used, total]


@dataclass(frozen=True)
class GpuProbe:
    """The outcome of :func:`probe_gpus`: a collector to register, or None and the reason."""

    collector: GpuCollector | None
    reason: str
    """A key of :data:`REASONS`."""
    detail: str
    """The human sentence (logged once)."""


class GpuStatusCollector(Collector):
    """``modelyard_gpu_metrics_enabled{reason}``: 1 when GPU series are exported, else 0 and why."""

    def __init__(self, probe: GpuProbe) -> None:
        self.probe = probe

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "modelyard_gpu_metrics_enabled",
            "1 when per-GPU series (modelyard_gpu_*) are exported; 0 with the reason they are not.",
            labels=["reason"],
        )
        gauge.add_metric([self.probe.reason], 1.0 if self.probe.collector is not None else 0.0)
        return [gauge]


def probe_gpus(enabled: bool = True) -> GpuProbe:
    """Initialise NVML if it is there; never raises (no GPU is the normal case on CPU hosts)."""
    if not enabled:
        return _probe(None, "disabled")
    try:
        with warnings.catch_warnings():  # the old "pynvml" wrapper package warns on import
            warnings.simplefilter("ignore")
            import pynvml
    except Exception:
        return _probe(None, "nvml_not_installed")
    try:
        pynvml.nvmlInit()
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception as exc:
        return _probe(None, "nvml_unavailable", error=f"{type(exc).__name__}: {exc}")
    if count <= 0:
        return _probe(None, "no_devices")
    return _probe(GpuCollector(pynvml, count), "enabled", count=count)


def _probe(collector: GpuCollector | None, reason: str, **values: Any) -> GpuProbe:
    detail = REASONS[reason].format(**values)
    if reason == "enabled":
        log.info("GPU metrics on: %s", detail)
    elif reason != "disabled":
        log.debug("GPU metrics off: %s", detail)
    return GpuProbe(collector, reason, detail)
