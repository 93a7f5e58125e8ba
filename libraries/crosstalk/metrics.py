"""SLA metrics of a load run: HDR histograms, throughput, errors, fairness, thresholds.

Latencies are recorded in microseconds in HDR histograms (the ``hdrhistogram``
package: constant memory, 3 significant digits, mergeable across processes via
``encode()``), never in sorted lists, so a 1,000-user run costs the same few
kilobytes as a 10-user one.

Every metric has a name (``LoadMetrics.value_of``) and is judged with an assertion
operator, as ``Get Load Metric    ${run}    <metric>    <operator>    <expected>``
(``crosstalk.assertions``: durations compare with durations, sizes with sizes)::

    p95  <  5s                  time to first event (the default latency), 95th percentile
    completion.p99  <=  800ms   time to completion, 99th percentile
    connect.max  <  1s          WebSocket connect time
    gap.p99  <  100ms           gap between consecutive events of one run
    fairness  >  0.7            Jain's index over the users' mean completion times
    errors  ==  0               all errors; ``errors.timeout  ==  0`` for one kind
    throughput  >  2            completed messages per second
    success_rate  >=  99.5%     completed / sent
    platform_memory  <  4GB     peak resident memory of the platform's processes
    platform_cpu  <  80%        mean CPU of the platform over the load window (at least 2 s,
                                sampled every 0.25 s), in % of the whole machine
    platform_cpu_p90  <  90%    90th percentile of the 0.25 s CPU samples of that window
    generator_cpu  <  80%       mean CPU of the load generator's engine thread, in % of one core
"""

from __future__ import annotations

import base64
import ctypes
import json
import math
import re
import time
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from assertionengine import AssertionOperator
from hdrh.histogram import HdrHistogram

from . import assertions
from .assertions import Outcome

# 1 µs .. 1 hour at 3 significant digits: about 30 KiB per histogram.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3

HISTOGRAMS = {
    "connect": "WebSocket connect time",
    "first_event": "time to first event (agent startup)",
    "completion": "time to completion",
    "gap": "gap between events of a run",
    # closed model with several messages per user: the histograms above are corrected for
    # coordinated omission; these keep what was measured before the correction
    "first_event_uncorrected": "time to first event, before the coordinated-omission correction",
    "completion_uncorrected": "time to completion, before the coordinated-omission correction",
}
CORRECTED = ("first_event", "completion")
DEFAULT_HISTOGRAM = "first_event"
PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9)

_PERCENTILE_RE = re.compile(r"^p(\d{1,2}(?:\.\d+)?|999|9999)$")


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_seconds(histogram: HdrHistogram, seconds: float) -> None:
    """Record a latency given in seconds (clamped into the histogram's range).

    The same bucket arithmetic as ``HdrHistogram.record_value`` with ``int.bit_length`` in place of
    its ``bin()``-string leading-zero count: this runs for every frame of every user.
    """
    record_micros(histogram, int(seconds * 1_000_000))


def record_micros(histogram: HdrHistogram, value: int, count: int = 1) -> None:
    """Record ``count`` samples of ``value`` microseconds (clamped into the range); see record_seconds."""
    value = LOWEST_US if value < LOWEST_US else HIGHEST_US if value > HIGHEST_US else value
    h = histogram
    bucket = ((value | h.sub_bucket_mask).bit_length() - h.unit_magnitude
              - h.sub_bucket_half_count_magnitude - 1)
    index = (((bucket + 1) << h.sub_bucket_half_count_magnitude)
             + (value >> (bucket + h.unit_magnitude)) - h.sub_bucket_half_count)
    h.counts[index] += count
    h.total_count += count
    if value < h.min_value:
        h.min_value = value
    if value > h.max_value:
        h.max_value = value


_NONZERO_BYTE = re.compile(rb"[^\x00]")


def nonzero_counts(histogram: HdrHistogram) -> list[tuple[int, int]]:
    """``(index, count)`` of every bucket that holds samples, found at C speed.

    A histogram has ~23,500 buckets and a run fills a few hundred: the zero bytes are skipped
    with one regular-expression scan over the counts array instead of a Python loop over
    every bucket (hdrh's recorded-value iterator costs ~1 s per run).
    Example: after ``record_seconds(h, 0.1)``, ``nonzero_counts(h)`` holds one ``(index, 1)``.
    """
    counts = histogram.counts
    width = ctypes.sizeof(counts._type_)
    found, last = [], -1
    for match in _NONZERO_BYTE.finditer(memoryview(counts).cast("B")):
        index = match.start() // width
        if index != last:
            found.append((index, counts[index]))
            last = index
    return found


def highest_equivalent_at(histogram: HdrHistogram, index: int) -> int:
    """``get_highest_equivalent_value(get_value_from_index(index))`` in one step (hdrh's arithmetic).

    Example: ``highest_equivalent_at(h, 5)`` is 5 for a histogram of 1 µs resolution.
    """
    h = histogram
    bucket = (index >> h.sub_bucket_half_count_magnitude) - 1
    sub_bucket = (index & (h.sub_bucket_half_count - 1)) + h.sub_bucket_half_count
    if bucket < 0:
        sub_bucket -= h.sub_bucket_half_count
        bucket = 0
    shift = bucket + h.unit_magnitude
    return ((sub_bucket + 1) << shift) - 1


# Latencies below this are served alike as far as a user can tell: fairness compares waits from here
# up.  Without it, Jain's index over one message per user read a 0.4 s machine stall for 9 of 20
# users (60 ms vs 450 ms) as unfair treatment: 0.586 < 0.7.  With it that round scores 0.92, while
# half the users served 8 times slower by the platform still score about 0.6 (fault `unfair_scheduling`).
FAIRNESS_LATENCY_FLOOR_S = 0.25


def jain_index(values: Iterable[float], floor: float = 0.0) -> float:
    """Jain's fairness index (Σx)² / (n·Σx²): 1.0 when all are equal, 1/n when one takes all.

    Values below ``floor`` count as ``floor`` (for latencies: differences no one can perceive).

    Example: ``jain_index([1, 1, 1, 1]) == 1.0``; ``jain_index([1, 0, 0, 0]) == 0.25``;
    ``jain_index([0.06, 0.45], floor=0.25)`` compares 0.25 with 0.45.
    An empty list or all zeros counts as perfectly fair (nothing to share).
    """
    xs = [max(float(x), floor) for x in values]
    total_sq = sum(x * x for x in xs)
    if not xs or total_sq == 0:
        return 1.0
    return sum(xs) ** 2 / (len(xs) * total_sq)


def format_seconds(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def format_bytes(size: float | None) -> str:
    if size is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover


class RunIdLedger:
    """Run ids seen in a run, kept as 64-bit hashes: 8 bytes per run, in C arrays.

    ``add`` counts a collision when the id was seen before (a 64-bit hash clash
    between two different ids is about 1 in 10^13 at a million runs).  The hashes
    sit in `BUCKETS` unsorted ``array('q')`` by their low bits, so a lookup scans
    a few dozen machine words in C.  The earlier sorted list of Python ints cost
    44 MB and 22 s of re-sorting per million runs; this costs 11 MB and 5 s
    (``bench``: one million uuid4 ids, tracemalloc).  It is the one record of a
    load run that grows with messages, because a repeated id can come at any time.
    Example: ``ledger.add("r1"); ledger.add("r1")`` leaves ``len(ledger) == 1, ledger.collisions == 1``.
    """

    BUCKETS = 16384  # a power of two: the low bits pick the bucket

    def __init__(self) -> None:
        self._buckets: dict[int, array] = {}
        self._count = 0
        self.collisions = 0

    def add(self, run_id: str) -> None:
        key = hash(run_id)
        index = key & (self.BUCKETS - 1)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = array("q")
        elif key in bucket:
            self.collisions += 1
            return
        bucket.append(key)
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __contains__(self, run_id: object) -> bool:
        key = hash(run_id)
        bucket = self._buckets.get(key & (self.BUCKETS - 1))
        return bucket is not None and key in bucket


@dataclass
class UserStats:
    """What one simulated user did and saw in a load run."""

    label: str
    sent: int = 0
    completed: int = 0
    errors: int = 0
    completion_sum: float = 0.0
    completion_max: float = 0.0
    first_event_sum: float = 0.0
    connect_seconds: float | None = None
    dropped: bool = False

    @property
    def mean_completion(self) -> float:
        return self.completion_sum / self.completed if self.completed else 0.0

    @property
    def mean_first_event(self) -> float:
        return self.first_event_sum / self.completed if self.completed else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "sent": self.sent, "completed": self.completed, "errors": self.errors,
            "mean_completion_s": round(self.mean_completion, 6),
            "max_completion_s": round(self.completion_max, 6),
            "mean_first_event_s": round(self.mean_first_event, 6),
            "connect_s": None if self.connect_seconds is None else round(self.connect_seconds, 6),
            "dropped": self.dropped,
        }


@dataclass
class ResourceUsage:
    """CPU and memory of the platform's processes and of the generator: statistics of a sampled series.

    ``platform_cpu_mean_pct`` (judged as ``platform_cpu``) is the mean over the load
    window, at least 2 s long, sampled every 0.25 s; ``platform_memory_peak`` the peak
    summed RSS.  See ``crosstalk.resources_sampler``.
    """

    platform_pids: list[int] = field(default_factory=list)
    platform_source: str = ""  # where platform figures come from: local processes or Prometheus endpoints
    platform_cpu_seconds: float = 0.0
    platform_cpu_mean_pct: float | None = None  # % of the whole machine
    platform_cpu_peak_pct: float | None = None
    platform_memory_peak: int | None = None  # bytes, sum of RSS
    generator_cpu_seconds: float = 0.0  # whole generator process
    engine_cpu_seconds: float | None = None  # the engine thread alone
    generator_core_pct: float | None = None  # engine thread, % of one core
    generator_memory_peak: int | None = None
    cores: int = 1
    samples: int = 0
    # the series behind the figures (crosstalk.resources_sampler): interval, window, judged statistic
    platform_cpu_p90_pct: float | None = None  # p90 of the per-interval CPU %
    sample_interval_s: float | None = None
    window_s: float | None = None
    statistic: str = ""
    sample_failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {key: (round(value, 4) if isinstance(value, float) else value)
                for key, value in self.__dict__.items()}


@dataclass
class ThresholdResult:
    expression: str
    metric: str
    description: str
    measured: float | None
    shown: str
    passed: bool

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.expression}: {self.description} = {self.shown} ({verdict})"


class LoadMetrics:
    """Everything measured in one load run.  Fed from the engine thread, read after the run."""

    def __init__(self, name: str = "load", scenario: str | None = None) -> None:
        self.name = name
        # runs of one scenario (the same name in several pabot processes) merge; unlike ones never do
        self.scenario = scenario or name
        self.histograms: dict[str, HdrHistogram] = {key: new_histogram() for key in HISTOGRAMS}
        self.errors: Counter[str] = Counter()
        self.error_examples: dict[str, str] = {}
        self.users: dict[str, UserStats] = {}
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.ended_mono: float | None = None
        self.sent = 0
        self.in_flight = 0
        self.in_flight_peak = 0  # messages sent and not yet ended, at the most
        self.completed = 0
        self.events = 0
        self.misrouted = 0
        self.connected = 0
        self.completed_per_second: Counter[int] = Counter()
        self.sent_per_second: Counter[int] = Counter()
        self.resources = ResourceUsage()
        self.run_ids = RunIdLedger()
        self.violations: Counter[str] = Counter()
        self.violation_examples: list[str] = []
        self.info: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.verdicts: list[ThresholdResult] = []
        self.latency_basis = "from the send time"

    # ------------------------------------------------------------- recording
    def user(self, label: str) -> UserStats:
        stats = self.users.get(label)
        if stats is None:
            stats = self.users[label] = UserStats(label)
        return stats

    def record_connect(self, label: str, seconds: float) -> None:
        record_seconds(self.histograms["connect"], seconds)
        self.user(label).connect_seconds = seconds
        self.connected += 1

    def record_sent(self, stats: UserStats, at_mono: float) -> None:
        stats.sent += 1
        self.sent += 1
        self.in_flight += 1
        if self.in_flight > self.in_flight_peak:
            self.in_flight_peak = self.in_flight
        self.sent_per_second[int(at_mono - self.started_mono)] += 1

    def record_first_event(self, stats: UserStats, seconds: float) -> None:
        record_seconds(self.histograms["first_event"], seconds)
        stats.first_event_sum += seconds

    def record_gap(self, seconds: float) -> None:
        record_seconds(self.histograms["gap"], seconds)

    def record_finished(self) -> None:
        """A message ended (answered, failed or timed out): it is no longer in flight."""
        self.in_flight -= 1

    def record_run_id(self, run_id: str) -> None:
        self.run_ids.add(run_id)

    @property
    def run_id_collisions(self) -> int:
        return self.run_ids.collisions

    def record_event(self, stats: UserStats | None = None) -> None:
        self.events += 1

    def record_violation(self, kind: str, detail: str, stats: UserStats | None = None) -> None:
        """An isolation or contract violation seen on a frame: counted, kept as an example, an error."""
        self.violations[kind] += 1
        if kind == "misrouted":
            self.misrouted += 1
        if len(self.violation_examples) < 20:
            self.violation_examples.append(detail[:300])
        self.record_error(kind, detail, stats)

    def correct_for_coordinated_omission(self, expected_interval: float) -> None:
        """HdrHistogram's expected-interval correction of the closed model's latency histograms.

        A closed-loop user waits for each answer before sending the next
        message, so a stalled server is sampled once per user instead of once
        per message that should have left meanwhile.  For every recorded value
        longer than ``expected_interval`` (seconds) the missing samples are
        back-filled (``record_corrected_value``).  The uncorrected histograms
        stay available as ``first_event_uncorrected`` / ``completion_uncorrected``.
        """
        interval = max(int(expected_interval * 1_000_000), LOWEST_US)
        for key in CORRECTED:
            raw = self.histograms[key]
            corrected = new_histogram()
            for index, count in nonzero_counts(raw):
                value = min(highest_equivalent_at(raw, index), HIGHEST_US)
                # HdrHistogram's record_corrected_value, with the fast recorder
                while True:
                    record_micros(corrected, value, count)
                    if value <= interval:
                        break
                    value -= interval
            self.histograms[key + "_uncorrected"] = raw
            self.histograms[key] = corrected
        self.latency_basis = (
            f"closed model, corrected for coordinated omission (HdrHistogram record_corrected_value, "
            f"expected interval {format_seconds(expected_interval)} = think time + uncorrected median "
            "completion; a threshold reads the larger of the corrected and uncorrected percentile)"
        )

    def record_completion(self, stats: UserStats, seconds: float, at_mono: float) -> None:
        record_seconds(self.histograms["completion"], seconds)
        stats.completed += 1
        stats.completion_sum += seconds
        stats.completion_max = max(stats.completion_max, seconds)
        self.completed += 1
        self.completed_per_second[int(at_mono - self.started_mono)] += 1

    def record_error(self, kind: str, detail: str = "", stats: UserStats | None = None) -> None:
        self.errors[kind] += 1
        if stats is not None:
            stats.errors += 1
        if detail and kind not in self.error_examples:
            self.error_examples[kind] = detail[:300]

    def finish(self) -> None:
        if self.ended_mono is None:
            self.ended_mono = time.monotonic()

    # ------------------------------------------------------------- reading
    @property
    def duration(self) -> float:
        end = self.ended_mono if self.ended_mono is not None else time.monotonic()
        return max(end - self.started_mono, 1e-9)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        return self.completed / self.duration

    @property
    def fairness(self) -> float:
        """Jain's index over the users' mean completion times (users that completed anything).

        Times below `FAIRNESS_LATENCY_FLOOR_S` count as that floor.
        """
        return jain_index((u.mean_completion for u in self.users.values() if u.completed),
                          FAIRNESS_LATENCY_FLOOR_S)

    @property
    def fairness_messages(self) -> float:
        """Jain's index over the number of messages each user got completed."""
        return jain_index(u.completed for u in self.users.values())

    @property
    def success_rate(self) -> float:
        return 100.0 * self.completed / self.sent if self.sent else 100.0

    @property
    def routing_accuracy(self) -> float:
        total = self.events + self.misrouted
        return 100.0 * self.events / total if total else 100.0

    def percentile(self, histogram: str, percentile: float) -> float | None:
        """Seconds at ``percentile`` of ``histogram``, None if nothing was recorded."""
        h = self.histograms[histogram]
        if h.get_total_count() == 0:
            return None
        return h.get_value_at_percentile(percentile) / 1e6

    def stat(self, histogram: str, name: str) -> float | None:
        h = self.histograms[histogram]
        if h.get_total_count() == 0:
            return None
        if name == "max":
            return h.get_max_value() / 1e6
        if name == "min":
            return h.get_min_value() / 1e6
        if name == "mean":
            return h.get_mean_value() / 1e6
        if name == "count":
            return float(h.get_total_count())
        match = _PERCENTILE_RE.match(name)
        if not match:
            raise ValueError(name)
        digits = match.group(1)
        pct = {"999": 99.9, "9999": 99.99}.get(digits) or float(digits)
        value = self.percentile(histogram, pct)
        raw = histogram + "_uncorrected"
        if value is not None and raw in self.histograms:
            # back-filled samples are shorter than the one they correct: never report better than measured
            value = max(value, self.percentile(raw, pct) or 0.0)
        return value

    def throughput_series(self) -> list[tuple[int, int, int]]:
        """(second, sent, completed) for every second of the run."""
        last = max([*self.completed_per_second, *self.sent_per_second, int(self.duration)], default=0)
        return [(s, self.sent_per_second.get(s, 0), self.completed_per_second.get(s, 0))
                for s in range(last + 1)]

    # ------------------------------------------------------------- thresholds
    def value_of(self, metric: str) -> tuple[float | None, str, str]:
        """(measured value, kind, description) of a metric name; kind is duration/bytes/percent/number."""
        name = metric.lower()
        if name in ("fairness", "fairness_latency"):
            return self.fairness, "number", "Jain fairness index over users' mean completion time"
        if name == "fairness_messages":
            return self.fairness_messages, "number", "Jain fairness index over users' completed messages"
        if name == "errors":
            return float(self.error_count), "number", f"errors {dict(self.errors) or '{}'}"
        if name.startswith("errors."):
            kind = name.split(".", 1)[1]
            return float(self.errors.get(kind, 0)), "number", f"errors of kind '{kind}'"
        simple: dict[str, tuple[Any, str, str]] = {
            "throughput": (self.throughput, "number", "throughput (completed messages/s)"),
            "success_rate": (self.success_rate, "percent", "success rate (completed/sent)"),
            "routing_accuracy": (self.routing_accuracy, "percent",
                                 "routing accuracy (own events/all events)"),
            "sent": (float(self.sent), "number", "messages sent"),
            "completed": (float(self.completed), "number", "messages completed"),
            "connected": (float(self.connected), "number", "users connected"),
            "in_flight_peak": (float(self.in_flight_peak), "number",
                               "messages in flight at once (sent, not yet ended), at the most"),
            "dropped": (float(sum(u.dropped for u in self.users.values())), "number", "connections dropped"),
            "collisions": (float(self.run_id_collisions), "number", "run id collisions"),
            "misrouted": (float(self.misrouted), "number", "events delivered to the wrong user"),
            "violations": (float(sum(self.violations.values())), "number",
                           f"isolation and contract violations {dict(self.violations) or '{}'}"),
            "foreign_canaries": (float(self.violations.get("foreign_canary", 0)), "number",
                                 "frames carrying another user's canary"),
            "platform_memory": (self.resources.platform_memory_peak, "bytes",
                                f"platform peak memory (RSS) over {self._window()}"),
            "platform_cpu": (self.resources.platform_cpu_mean_pct, "percent",
                             f"platform mean CPU over {self._window()} (% of the machine)"),
            "platform_cpu_p90": (self.resources.platform_cpu_p90_pct, "percent",
                                 f"platform p90 CPU of {self._window()} (% of the machine)"),
            "platform_cpu_peak": (self.resources.platform_cpu_peak_pct, "percent",
                                  "platform peak CPU (% of the machine)"),
            "generator_cpu": (self.resources.generator_core_pct, "percent",
                              "generator engine thread CPU (% of one core)"),
            "generator_memory": (self.resources.generator_memory_peak, "bytes", "generator peak memory"),
            "duration": (self.duration, "duration", "run duration"),
        }
        if name in simple:
            value, kind, text = simple[name]
            return (None if value is None else float(value)), kind, text
        histogram, _, stat = name.rpartition(".")
        histogram = histogram or DEFAULT_HISTOGRAM
        if histogram not in self.histograms:
            if histogram in HISTOGRAMS:
                return None, "duration", f"{HISTOGRAMS[histogram]} (not measured in this run)"
            raise ValueError(self._unknown(metric))
        try:
            value = self.stat(histogram, stat)
        except ValueError:
            raise ValueError(self._unknown(metric)) from None
        basis = f" ({self.latency_basis})" if histogram in CORRECTED else ""
        return value, "duration", f"{HISTOGRAMS[histogram]} {stat}{basis}"

    def _window(self) -> str:
        """The sampled window behind the resource figures, e.g. ``a 2.00 s window, 9 samples at 0.25 s``."""
        res = self.resources
        if res.window_s is None or res.sample_interval_s is None:
            return "the load window"
        return f"a {res.window_s:.2f} s window, {res.samples} samples at {res.sample_interval_s:g} s"

    @staticmethod
    def _unknown(metric: str) -> str:
        return (
            f"Unknown metric '{metric}': use p50/p95/p99/p999/max/mean (optionally prefixed with "
            f"{', '.join(h + '.' for h in HISTOGRAMS)}), fairness, errors, errors.KIND, throughput, "
            "success_rate, routing_accuracy, dropped, collisions, violations, foreign_canaries, "
            "platform_memory, platform_cpu, platform_cpu_p90, platform_cpu_peak, generator_cpu."
        )

    def judge(self, metric: str, operator: AssertionOperator | None = None, expected: Any = None,
              message: str | None = None) -> Outcome:
        """Judge one metric with an assertion operator (``p95``, ``<``, ``250ms``); the verdict is kept.

        Without an operator the measured value is returned in the outcome and no verdict is kept.
        An unknown metric or an expected value of the wrong kind (``2`` for a duration) raises
        one line saying what to write.

        Example: ``metrics.judge("p95", AssertionOperator["<"], "250ms").passed``
        """
        measured, kind, description = self.value_of(metric)
        outcome = assertions.check(lambda: measured, operator, expected, kind=kind, subject=metric,
                                   what=f"load run '{self.name}' ({len(self.users)} users): {metric}",
                                   note=description, message=message)
        if operator is not None:
            self.verdicts.append(ThresholdResult(outcome.expression, metric, description, measured,
                                                 outcome.shown, outcome.passed))
        return outcome

    # ------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        latencies = {}
        for key in self.histograms:
            h = self.histograms[key]
            entry: dict[str, Any] = {"count": h.get_total_count()}
            if h.get_total_count():
                entry.update({
                    "min_ms": h.get_min_value() / 1e3, "mean_ms": round(h.get_mean_value() / 1e3, 3),
                    "max_ms": h.get_max_value() / 1e3,
                })
                entry.update({f"p{p:g}_ms": h.get_value_at_percentile(p) / 1e3 for p in PERCENTILES})
            latencies[key] = entry
        return {
            "name": self.name,
            "scenario": self.scenario,
            "latency_basis": self.latency_basis,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            "duration_s": round(self.duration, 3),
            "users": len(self.users),
            "connected": self.connected,
            "sent": self.sent,
            "in_flight_peak": self.in_flight_peak,
            "completed": self.completed,
            "events": self.events,
            "success_rate_pct": round(self.success_rate, 3),
            "routing_accuracy_pct": round(self.routing_accuracy, 3),
            "misrouted": self.misrouted,
            "unique_run_ids": len(self.run_ids),
            "run_id_collisions": self.run_id_collisions,
            "violations": dict(self.violations),
            "violation_examples": list(self.violation_examples),
            "thresholds": [
                {"expression": v.expression, "measured": v.shown, "passed": v.passed} for v in self.verdicts
            ],
            "verdict": ("not checked" if not self.verdicts
                        else "passed" if all(v.passed for v in self.verdicts) else "failed"),
            "throughput_per_s": round(self.throughput, 3),
            "fairness": round(self.fairness, 4),
            "fairness_messages": round(self.fairness_messages, 4),
            "errors": dict(self.errors),
            "error_examples": dict(self.error_examples),
            "latency": latencies,
            "throughput_series": [
                {"second": s, "sent": a, "completed": c} for s, a, c in self.throughput_series()
            ],
            "resources": self.resources.to_dict(),
            "info": self.info,
            "warnings": list(self.warnings),
            "per_user": [u.to_dict() for u in self.users.values()],
            # HdrHistogram's compressed base64 form: merge runs of several pabot processes losslessly.
            "histograms_encoded": {
                key: base64.b64encode(h.encode()).decode("ascii") if h.get_total_count() else None
                for key, h in self.histograms.items()
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.summary(), indent=2, default=str)


def merged_percentile(encoded: Iterable[str], percentile: float) -> float | None:
    """Seconds at ``percentile`` over histograms from several summaries (``histograms_encoded``)."""
    total = new_histogram()
    for item in encoded:
        if item:
            total.decode_and_add(base64.b64decode(item))
    if total.get_total_count() == 0:
        return None
    return total.get_value_at_percentile(percentile) / 1e6
