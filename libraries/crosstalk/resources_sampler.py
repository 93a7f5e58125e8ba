"""Resource figures as a sampled series over the whole load window, judged on a defined statistic.

A *source* is any callable returning ``(cpu_seconds, rss_bytes)`` for a set of
processes: cumulative CPU seconds (user + system, never decreasing) and the
resident memory now.  `psutil_source` reads local processes (and their
children); a Prometheus endpoint can feed the same series by summing
``process_cpu_seconds_total`` and ``process_resident_memory_bytes`` over the
platform's services.

`BackgroundSampler` calls each source every ``interval`` seconds on a fixed
schedule in a daemon thread, from the start of the load window to its end, and
keeps sampling until the window is at least ``min_window`` long (the caller
waits `BackgroundSampler.remaining` seconds before `BackgroundSampler.stop`).  The judged
figures (see `SeriesStats`):

* **CPU** (``platform_cpu``): mean over the window = CPU seconds used between the
  first and the last sample / window length / cores, in % of the whole machine.
  A burst shorter than ``min_window`` counts as its share of that window: a CPU
  percentage over a 60 ms window is tick noise (Linux counts CPU in 10 ms
  ticks), not a property of the platform.
* **Memory** (``platform_memory``): peak of the summed RSS over the samples.

Informational: ``platform_cpu_p90`` (90th percentile of the per-interval CPU %)
and ``platform_cpu_peak`` (the busiest interval).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

Source = Callable[[], tuple[float, int]]
"""Returns ``(cpu_seconds, rss_bytes)`` of one set of processes; cumulative CPU, current RSS."""

DEFAULT_INTERVAL = 0.25
DEFAULT_MIN_WINDOW = 2.0
STATISTIC = "mean CPU over the load window (first connect to last answer, at least {min_window:g} s), " \
            "peak RSS; samples every {interval:g} s"


def psutil_source(pids: Sequence[int], children: bool = True) -> Source:
    """A source over local processes ``pids`` and (with ``children``) their descendants.

    The CPU total never goes down: a process that exits keeps its last CPU seconds
    in the total, and one that appears mid-window (a new PostgreSQL backend)
    adds its CPU since its start.

    Example:
    | source = psutil_source([auth_pid, backend_pid]); cpu_seconds, rss = source()
    """
    procs: dict[int, psutil.Process] = {}
    last_cpu: dict[int, float] = {}
    gone_cpu = [0.0]

    def sample() -> tuple[float, int]:
        found: dict[int, psutil.Process] = {}
        for pid in pids:
            try:
                proc = procs.get(pid) or psutil.Process(pid)
                found[pid] = proc
                if children:
                    for child in proc.children(recursive=True):
                        found[child.pid] = procs.get(child.pid, child)
            except psutil.Error:
                continue
        rss = 0
        alive: dict[int, float] = {}
        for pid, proc in found.items():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
            alive[pid] = times.user + times.system
        for pid, cpu in last_cpu.items():
            if pid not in alive:
                gone_cpu[0] += cpu
        last_cpu.clear()
        last_cpu.update(alive)
        procs.clear()
        procs.update({pid: found[pid] for pid in alive})
        return gone_cpu[0] + sum(alive.values()), rss

    return sample


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    cpu_seconds: float
    rss_bytes: int


@dataclass
class SeriesStats:
    """The statistics of one series; percentages are of the whole machine (``cores``)."""

    samples: int
    window_s: float
    cpu_seconds: float
    cpu_mean_pct: float | None
    cpu_p90_pct: float | None
    cpu_peak_pct: float | None
    rss_peak: int | None
    rss_mean: float | None


@dataclass
class Series:
    """Samples of one source, oldest first."""

    samples: list[Sample] = field(default_factory=list)
    failures: int = 0
    last_error: str = ""

    def interval_pcts(self, cores: int) -> list[float]:
        """CPU % of the machine in each interval between consecutive samples."""
        out = []
        for before, after in itertools.pairwise(self.samples):
            span = after.at - before.at
            if span > 0:
                out.append(100.0 * max(after.cpu_seconds - before.cpu_seconds, 0.0) / span / cores)
        return out

    def stats(self, cores: int) -> SeriesStats:
        cores = max(cores, 1)
        if not self.samples:
            return SeriesStats(0, 0.0, 0.0, None, None, None, None, None)
        first, last = self.samples[0], self.samples[-1]
        window = last.at - first.at
        used = max(last.cpu_seconds - first.cpu_seconds, 0.0)
        pcts = self.interval_pcts(cores)
        rss = [s.rss_bytes for s in self.samples]
        return SeriesStats(
            samples=len(self.samples), window_s=window, cpu_seconds=used,
            cpu_mean_pct=100.0 * used / window / cores if window > 0 else None,
            cpu_p90_pct=percentile(pcts, 90.0) if pcts else None,
            cpu_peak_pct=max(pcts) if pcts else None,
            rss_peak=max(rss), rss_mean=sum(rss) / len(rss),
        )


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (the value below which ``pct`` % of the samples lie)."""
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100.0 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]


class BackgroundSampler:
    """Samples every source every ``interval`` seconds in a daemon thread, from `start` to `stop`.

    Wait `remaining` seconds (the window is then ``min_window`` long) and call
    `stop`, which takes a last sample and joins the thread.  A source that raises is counted in its
    series' ``failures``; the sampler carries on.

    Example:
    | sampler = BackgroundSampler({"platform": psutil_source(pids)}).start()
    | ...; time.sleep(sampler.remaining()); sampler.stop()
    | sampler.series["platform"].stats(cores=psutil.cpu_count())
    """

    def __init__(self, sources: Mapping[str, Source], interval: float = DEFAULT_INTERVAL,
                 min_window: float = DEFAULT_MIN_WINDOW, clock: Callable[[], float] = time.monotonic):
        if interval <= 0:
            raise ValueError(f"sampling interval must be positive (got {interval!r} s)")
        self.sources = dict(sources)
        self.interval = interval
        self.min_window = max(min_window, 0.0)
        self.series = {name: Series() for name in self.sources}
        self._clock = clock
        self._started: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="crosstalk-resource-sampler", daemon=True)

    @property
    def statistic(self) -> str:
        return STATISTIC.format(min_window=self.min_window, interval=self.interval)

    def start(self) -> BackgroundSampler:
        self.sample()
        self._started = self._clock()  # after the first sample: the window is never shorter
        self._thread.start()
        return self

    def remaining(self) -> float:
        """Seconds until the window is ``min_window`` long (0 when it is); wait them before `stop`."""
        if self._started is None:
            return 0.0
        return max(self._started + self.min_window - self._clock(), 0.0)

    def stop(self) -> None:
        """Takes the last sample and ends the thread (it does not wait for ``min_window``)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.sample()

    def sample(self) -> None:
        """Takes one sample of every source now (the thread does this on its schedule)."""
        with self._lock:
            for name, source in self.sources.items():
                series = self.series[name]
                try:
                    cpu, rss = source()
                except Exception as exc:  # a scrape that failed is a gap in the series, not a crash
                    series.failures += 1
                    series.last_error = f"{type(exc).__name__}: {exc}"[:200]
                    continue
                series.samples.append(Sample(self._clock(), float(cpu), int(rss)))

    def _main(self) -> None:
        assert self._started is not None
        tick = 1
        while True:
            # a fixed schedule: a slow sample does not shift the later ones
            delay = self._started + tick * self.interval - self._clock()
            if self._stop.wait(max(delay, 0.0)):
                return
            self.sample()
            tick = max(tick + 1, math.floor((self._clock() - self._started) / self.interval) + 1)


def generator_source() -> Source:
    """This process alone (the load generator): its CPU seconds and RSS.

    Example:
    | BackgroundSampler({"generator": generator_source()})
    """
    me = psutil.Process()

    def sample() -> tuple[float, int]:
        with contextlib.suppress(psutil.Error), me.oneshot():
            times = me.cpu_times()
            return times.user + times.system, me.memory_info().rss
        raise RuntimeError("cannot read this process's CPU and memory")

    return sample


def record_series(resources: Any, sampler: BackgroundSampler) -> None:
    """Writes the judged statistics of the ``platform`` and ``generator`` series into ``ResourceUsage``.

    Example:
    | record_series(metrics.resources, sampler)
    """
    cores = resources.cores
    platform = sampler.series["platform"].stats(cores)
    resources.platform_cpu_seconds = platform.cpu_seconds
    resources.platform_cpu_mean_pct = platform.cpu_mean_pct
    resources.platform_cpu_p90_pct = platform.cpu_p90_pct
    resources.platform_cpu_peak_pct = platform.cpu_peak_pct
    resources.platform_memory_peak = platform.rss_peak or None
    resources.samples = platform.samples
    resources.sample_interval_s = sampler.interval
    resources.window_s = platform.window_s
    resources.statistic = sampler.statistic
    resources.sample_failures = sampler.series["platform"].failures
    if "generator" in sampler.series:
        resources.generator_memory_peak = sampler.series["generator"].stats(cores).rss_peak or None
