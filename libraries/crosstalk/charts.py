"""Stakeholder charts of a load run, as self-contained SVG for log.html.

Charts are drawn by pygal.  pygal's default SVG pulls its tooltip script from a
CDN; ``js=[]`` drops it so log.html works offline and loads nothing foreign.
Each SVG is embedded as a ``data:`` URI image, which also keeps pygal's CSS out
of log.html's own styles.
"""

from __future__ import annotations

import base64
import html

import pygal
from pygal.style import Style

from .htmllog import table
from .metrics import HISTOGRAMS, PERCENTILES, LoadMetrics, format_bytes, format_seconds

_STYLE = Style(
    background="white", plot_background="white", foreground="#333", foreground_strong="#111",
    foreground_subtle="#999", colors=("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"),
    title_font_size=14, label_font_size=10, major_label_font_size=10, legend_font_size=10,
)
_CONFIG = {
    "js": [], "style": _STYLE, "width": 640, "height": 300, "disable_xml_declaration": False,
    "explicit_size": True, "show_minor_x_labels": False, "truncate_label": 12,
}
MAX_USER_BARS = 200


def _img(chart: pygal.graph.graph.Graph, alt: str) -> str:
    svg = chart.render()
    data = base64.b64encode(svg if isinstance(svg, bytes) else svg.encode("utf-8")).decode("ascii")
    return (f'<img alt="{html.escape(alt)}" style="margin:4px;border:1px solid #ddd" '
            f'src="data:image/svg+xml;base64,{data}">')


def latency_percentiles(metrics: LoadMetrics) -> str | None:
    chart = pygal.Line(title="Latency by percentile (ms)", x_title="percentile", **_CONFIG)
    chart.x_labels = [f"p{p:g}" for p in PERCENTILES] + ["max"]
    drawn = False
    for key in ("connect", "first_event", "completion"):
        h = metrics.histograms.get(key)
        if h is None or h.get_total_count() == 0:
            continue
        values = [h.get_value_at_percentile(p) / 1e3 for p in PERCENTILES] + [h.get_max_value() / 1e3]
        chart.add(HISTOGRAMS[key], values)
        drawn = True
    return _img(chart, "latency percentiles") if drawn else None


def latency_histogram(metrics: LoadMetrics, key: str = "completion", buckets: int = 20) -> str | None:
    h = metrics.histograms.get(key)
    if h is None or h.get_total_count() == 0:
        return None
    low, high = h.get_min_value(), h.get_max_value()
    width = max((high - low) // buckets + 1, 1)
    counts = [0] * buckets
    for item in h.get_recorded_iterator():
        index = min(int((item.value_iterated_to - low) // width), buckets - 1)
        counts[index] += item.count_at_value_iterated_to
    chart = pygal.Bar(title=f"Distribution of {HISTOGRAMS[key]} (ms)", x_title="ms",
                      y_title="messages", **_CONFIG)
    chart.x_labels = [f"{(low + i * width) / 1e3:.0f}" for i in range(buckets)]
    chart.add(HISTOGRAMS[key], counts)
    return _img(chart, f"histogram of {key}")


def throughput(metrics: LoadMetrics) -> str | None:
    series = metrics.throughput_series()
    if not series or metrics.sent == 0:
        return None
    chart = pygal.Line(title="Throughput over time (messages per second)", x_title="second of the run",
                       **_CONFIG)
    chart.x_labels = [str(s) for s, _, _ in series]
    chart.x_labels_major_every = max(len(series) // 10, 1)
    chart.add("sent", [a for _, a, _ in series])
    chart.add("completed", [c for _, _, c in series])
    return _img(chart, "throughput over time")


def per_user(metrics: LoadMetrics) -> str | None:
    users = sorted((u for u in metrics.users.values() if u.completed), key=lambda u: u.mean_completion)
    if not users:
        return None
    if len(users) > MAX_USER_BARS:  # keep the shape: every k-th user of the sorted list
        step = len(users) / MAX_USER_BARS
        users = [users[int(i * step)] for i in range(MAX_USER_BARS)]
    chart = pygal.Bar(
        title=f"Mean completion time per user, sorted (ms) - Jain fairness {metrics.fairness:.3f}",
        x_title="user", show_x_labels=len(users) <= 40, **_CONFIG,
    )
    chart.x_labels = [u.label for u in users]
    chart.add("mean completion", [round(u.mean_completion * 1e3, 2) for u in users])
    chart.add("max completion", [round(u.completion_max * 1e3, 2) for u in users])
    return _img(chart, "completion time per user")


def metrics_table(metrics: LoadMetrics) -> str:
    rows: list[list[str]] = []
    for key, title in HISTOGRAMS.items():
        h = metrics.histograms.get(key)
        if h is None or h.get_total_count() == 0:
            continue
        rows.append([title, str(h.get_total_count())] + [
            format_seconds(metrics.stat(key, name)) for name in ("p50", "p95", "p99", "max")
        ])
    latency = table(["latency", "count", "p50", "p95", "p99", "max"], rows,
                    caption=f"Load run '{metrics.name}'")
    res = metrics.resources
    cpu = res.platform_cpu_mean_pct
    facts = [
        ["users connected", f"{metrics.connected} / {len(metrics.users)}"],
        ["messages completed / sent", f"{metrics.completed} / {metrics.sent} ({metrics.success_rate:.1f}%)"],
        ["messages in flight at once (peak)", str(metrics.in_flight_peak)],
        ["throughput", f"{metrics.throughput:.1f} messages/s over {metrics.duration:.2f} s"],
        ["errors", ", ".join(f"{k}: {v}" for k, v in sorted(metrics.errors.items())) or "none"],
        ["unique run ids / collisions", f"{len(metrics.run_ids)} / {metrics.run_id_collisions}"],
        ["routing accuracy", f"{metrics.routing_accuracy:.2f}% ({metrics.misrouted} misrouted)"],
        ["isolation / contract violations (checked on arrival)",
         ", ".join(f"{k}: {v}" for k, v in sorted(metrics.violations.items())) or "none"],
        ["latency measured", metrics.latency_basis],
        ["garbage collections during the run (longest pause)",
         f"{metrics.info.get('gc_collections', 'n/a')} ({metrics.info.get('gc_max_pause_ms', 'n/a')} ms)"],
        ["fairness (Jain, latency / messages)", f"{metrics.fairness:.3f} / {metrics.fairness_messages:.3f}"],
        ["platform CPU mean / p90 / peak (% of machine)",
         "not measured" if cpu is None else
         f"{cpu:.1f}% / {res.platform_cpu_p90_pct or 0:.1f}% / {res.platform_cpu_peak_pct or 0:.1f}%"],
        ["platform peak memory", format_bytes(res.platform_memory_peak)],
        ["resource sampling", (
            f"{res.samples} samples over {res.window_s or 0:.2f} s; judged: {res.statistic}"
            + (f"; {res.sample_failures} failed samples" if res.sample_failures else "")
        ) if res.statistic else "not measured"],
        ["generator CPU", f"{res.generator_cpu_seconds:.2f} s "
         f"({metrics.info.get('generator_cpu_ms_per_message', 'n/a')} ms/message; engine thread "
         f"{res.generator_core_pct or 0:.0f}% of a core)"],
    ]
    return latency + table(["measure", "value"], facts)


def report(metrics: LoadMetrics) -> str:
    """The metrics table and every chart that has data, as one HTML fragment."""
    charts = [c for c in (latency_percentiles(metrics), latency_histogram(metrics),
                          throughput(metrics), per_user(metrics)) if c]
    return metrics_table(metrics) + '<div style="display:flex;flex-wrap:wrap">' + "".join(charts) + "</div>"
