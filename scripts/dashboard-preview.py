#!/usr/bin/env python3
"""A preview of deploy/monitoring/dashboard.json without Grafana.

Runs each panel's own PromQL against a Prometheus HTTP API (query_range over
the last N minutes for graphs and stats, an instant query at the end for
tables) and writes one self-contained HTML page: the panels at their
gridPos, time series as inline SVG line charts with legends, stats as big
numbers, tables as tables, on a dark theme like Grafana's. It draws only what
this dashboard uses (timeseries, stat, table and row panels; the merge and
organize transformations), and says on the page that it is a preview.

  scripts/dashboard-preview.py --prometheus http://127.0.0.1:9090 --minutes 15 --out preview.html
  scripts/dashboard-preview.py --list-queries     # each query, variables filled in, as JSON

Prints a JSON summary (page size, panels without data, query errors) and
exits 1 if Prometheus refused a query. Python's standard library only.
"""

import argparse
import html
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

# Grafana's grid: 24 columns, rows of 30 px, 8 px between cells.
ROW_PX, GAP = 30, 8
HEADER_PX = 64
# Grafana's classic palette, in its order.
PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9",
           "#705DA0", "#37872D", "#FADE2A", "#447EBC", "#C4162A", "#1F60C4", "#8F3BB8",
           "#FF9830", "#96D98D"]
NAMED = {"green": "#37872D", "orange": "#FF780A", "red": "#C4162A", "yellow": "#E0B400",
         "blue": "#1F60C4"}


# --- variables ----------------------------------------------------------------

def substitute(expr, values, seconds):
    """Fills in template variables ($node, ${pool}) and Grafana's interval
    variables, as Grafana would for the given values (default: All)."""
    def one(match):
        name = match.group(1) or match.group(2)
        if name in seconds:
            return f"{seconds[name]}s"
        if name in values:
            return values[name]
        raise SystemExit(f"unknown variable ${name} in: {expr}")
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def variable_values(dashboard, given):
    """Each template variable's value in a regex matcher: given, else All."""
    values = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            values[var["name"]] = var.get("allValue") or ".*"
    for pair in given:
        name, _, value = pair.partition("=")
        if name not in values:
            raise SystemExit(f"--var {name}: no such variable in the dashboard")
        values[name] = value
    return values


def intervals(range_s, scrape_s):
    """Step, $__interval, $__rate_interval and $__range as Grafana reckons
    them: about 300 points, never finer than the scrape interval."""
    step = max(scrape_s, math.ceil(range_s / 300))
    return step, {"__interval": step, "__rate_interval": max(step + scrape_s, 4 * scrape_s),
                  "__range": int(range_s)}


def panels_of(dashboard):
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", []) if panel.get("type") == "row" else []


def queries(dashboard, values, seconds):
    """(panel title, refId, PromQL) of every target and variable query."""
    found = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query)
        if not match:
            raise SystemExit(f"variable {var['name']}: not label_values(selector, label): {query}")
        found.append((f"variable {var['name']}", "", substitute(match.group(1), values, seconds)))
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            found.append((panel["title"], target["refId"], substitute(target["expr"], values, seconds)))
    return found


# --- Prometheus ---------------------------------------------------------------

class Prometheus:
    def __init__(self, url):
        self.url = url.rstrip("/")
        self.errors = []

    def get(self, path, **params):
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as err:
            body = json.load(err) if err.headers.get_content_type() == "application/json" else {
                "status": "error", "error": str(err)}
        except urllib.error.URLError as err:
            raise SystemExit(f"dashboard-preview: cannot reach Prometheus at {self.url}: {err.reason}")
        if body.get("status") != "success":
            self.errors.append(f"{params.get('query')}: {body.get('error')}")
            return None
        return body["data"]["result"]


# --- formatting ---------------------------------------------------------------

def fmt(value, unit, decimals=None):
    """A value in the panel's unit, the way Grafana shows it (roughly)."""
    if value is None or math.isnan(value):
        return "–"
    if decimals is not None and unit in (None, "short", "none"):
        return f"{value:.{decimals}f}"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "bytes":
        for prefix in ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]:
            if abs(value) < 1024 or prefix == "PiB":
                return f"{value:.3g} {prefix}" if prefix != "B" else f"{value:.0f} B"
            value /= 1024
    if unit == "s":
        if value == 0:
            return "0 s"
        if abs(value) < 1e-3:
            return f"{value * 1e6:.3g} µs"
        if abs(value) < 1:
            return f"{value * 1e3:.3g} ms"
        return f"{value:.3g} s"
    suffix = {"reqps": " req/s", "ops": " ops/s"}.get(unit, "")
    for limit, prefix in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")]:
        if abs(value) >= limit:
            return f"{value / limit:.3g}{prefix}{suffix}"
    if value == int(value):
        return f"{int(value)}{suffix}"
    return f"{value:.3g}{suffix}"


def legend(fmt_string, labels, expr):
    if fmt_string in (None, "", "__auto"):
        shown = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{labels.get('__name__', '')}{{{shown}}}" if labels else expr
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt_string).strip()


def nice_max(value, unit):
    """The axis' top: 1, 2, 2.5 or 5 times a power of ten (of 1024 for bytes)."""
    if value <= 0:
        return 1.0
    if unit == "bytes" and value >= 1024:
        scale = 1024 ** math.floor(math.log(value, 1024))
        return scale * nice_max(value / scale, None)
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def threshold_color(steps, value):
    color = steps[0]["color"] if steps else "green"
    for step in steps[1:]:
        if value is not None and not math.isnan(value) and value >= step["value"]:
            color = step["color"]
    return NAMED.get(color, color)


# --- panels -------------------------------------------------------------------

def series_of(prom, panel, values, seconds, start, end, step):
    """Every series of the panel's targets: (name, [(t, v or None)])."""
    found = []
    for target in panel.get("targets", []):
        expr = substitute(target["expr"], values, seconds)
        result = prom.get("query_range", query=expr, start=start, end=end, step=step)
        for item in result or []:
            points = [(float(t), float(v)) for t, v in item["values"]]
            points = [(t, None if math.isnan(v) or math.isinf(v) else v) for t, v in points]
            if any(v is not None for _, v in points):
                found.append((legend(target.get("legendFormat"), item["metric"], expr), points))
    return found


def calc(points, how):
    real = [v for _, v in points if v is not None]
    if not real:
        return None
    return {"lastNotNull": real[-1], "last": real[-1], "max": max(real), "min": min(real),
            "mean": sum(real) / len(real), "sum": sum(real)}.get(how, real[-1])


def svg_chart(series, width, height, start, end, unit, defaults, stacked):
    """An SVG line chart: y axis from 0 (or the panel's min) to a nice max."""
    left, right, top, bottom = 64, 28, 8, 22
    plot_w, plot_h = max(width - left - right, 10), max(height - top - bottom, 10)
    if stacked:
        totals, stacked_series = {}, []
        for name, points in series:
            acc = []
            for t, v in points:
                if v is not None:
                    totals[t] = totals.get(t, 0.0) + v
                    acc.append((t, totals[t]))
                else:
                    acc.append((t, None))
            stacked_series.append((name, acc))
        series = stacked_series
    values = [v for _, points in series for _, v in points if v is not None]
    lo = defaults.get("min", min(values + [0]))
    hi = defaults.get("max") or nice_max(max(values + [lo]), unit)
    steps = (defaults.get("thresholds") or {}).get("steps", [])
    if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") == "line":
        hi = max([hi] + [s["value"] * 1.05 for s in steps[1:] if s["value"] is not None and "max" not in defaults])

    def x(t):
        return left + (t - start) / max(end - start, 1) * plot_w

    def y(v):
        return top + plot_h - (v - lo) / max(hi - lo, 1e-12) * plot_h

    out = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" class="tick" text-anchor="end">{html.escape(fmt(v, unit))}</text>')
    span = end - start
    for i in range(6):
        t = start + span * i / 5
        label = datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M:%S" if span <= 1800 else "%H:%M")
        out.append(f'<text x="{x(t):.1f}" y="{height - 6}" class="tick" text-anchor="middle">{label}</text>')
    for step in steps[1:]:
        if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") == "line" and step["value"] is not None:
            color = NAMED.get(step["color"], step["color"])
            out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(step["value"]):.1f}" y2="{y(step["value"]):.1f}" '
                       f'stroke="{color}" stroke-dasharray="6 4" stroke-width="1"/>')
    fill = defaults.get("custom", {}).get("fillOpacity", 0) / 100
    for index, (_, points) in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        runs, run = [], []
        for t, v in points:
            if v is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append((x(t), y(min(max(v, lo), hi))))
        if run:
            runs.append(run)
        for run in runs:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
            if fill and len(run) > 1:
                base = y(lo)
                out.append(f'<polygon points="{run[0][0]:.1f},{base:.1f} {path} {run[-1][0]:.1f},{base:.1f}" '
                           f'fill="{color}" fill-opacity="{fill}" stroke="none"/>')
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    out.append("</svg>")
    return "".join(out)


def timeseries(prom, panel, ctx, width, height):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "short")
    series = series_of(prom, panel, ctx["values"], ctx["seconds"], ctx["start"], ctx["end"], ctx["step"])
    if not series:
        return '<div class="nodata">No data</div>', False
    calcs = panel.get("options", {}).get("legend", {}).get("calcs", [])
    shown = min(len(series), 6)
    chart_h = max(height - 8 - 16 * (shown + 1 + (len(series) > shown)), 70)
    stacked = defaults.get("custom", {}).get("stacking", {}).get("mode") == "normal"
    chart = svg_chart(series, width - 16, chart_h, ctx["start"], ctx["end"], unit, defaults, stacked)
    heads = "".join(f"<th>{html.escape({'lastNotNull': 'Last *'}.get(c, c.capitalize()))}</th>" for c in calcs)
    rows = []
    for index, (name, points) in enumerate(series[:shown]):
        cells = "".join(f"<td>{html.escape(fmt(calc(points, c), unit))}</td>" for c in calcs)
        rows.append(f'<tr><td class="name"><span class="swatch" style="background:{PALETTE[index % len(PALETTE)]}">'
                    f"</span>{html.escape(name)}</td>{cells}</tr>")
    more = f'<tr><td class="more">+{len(series) - shown} more series</td></tr>' if len(series) > shown else ""
    return (f'{chart}<table class="legend"><tr><th></th>{heads}</tr>{"".join(rows)}{more}</table>', True)


def stat(prom, panel, ctx, width, height):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    series = series_of(prom, panel, ctx["values"], ctx["seconds"], ctx["start"], ctx["end"], ctx["step"])
    if not series:
        return '<div class="nodata">No data</div>', False
    how = (panel.get("options", {}).get("reduceOptions", {}).get("calcs") or ["lastNotNull"])[0]
    value = calc(series[0][1], how)
    color = threshold_color(defaults.get("thresholds", {}).get("steps", []), value)
    spark = ""
    real = [(t, v) for t, v in series[0][1] if v is not None]
    if len(real) > 1:
        hi = max(v for _, v in real) or 1
        pts = " ".join(f"{(t - ctx['start']) / max(ctx['end'] - ctx['start'], 1) * width:.1f},"
                       f"{height - 30 - v / hi * (height - 60):.1f}" for t, v in real)
        spark = (f'<svg class="spark" width="{width}" height="{height - 30}"><polyline points="{pts}" '
                 f'fill="none" stroke="rgba(255,255,255,0.35)" stroke-width="1.5"/></svg>')
    text = fmt(value, defaults.get("unit", "short"), defaults.get("decimals"))
    size = min(int(height * 0.38), int(width / max(len(text), 3) * 1.5))
    return (f'<div class="stat" style="background:{color}">{spark}<span style="font-size:{size}px">'
            f'{html.escape(text)}</span></div>', True)


def table(prom, panel, ctx, width, height):
    targets = panel.get("targets", [])
    rows = {}
    for target in targets:
        expr = substitute(target["expr"], ctx["values"], ctx["seconds"])
        column = "Value" if len(targets) == 1 else f"Value #{target['refId']}"
        for item in prom.get("query", query=expr, time=ctx["end"]) or []:
            labels = {k: v for k, v in item["metric"].items() if k != "__name__"}
            key = tuple(sorted(labels.items()))
            rows.setdefault(key, dict(labels))[column] = float(item["value"][1])
    if not rows:
        return '<div class="nodata">No data</div>', False
    exclude, rename = {}, {}
    for step in panel.get("transformations", []):
        if step["id"] == "organize":
            exclude = step["options"].get("excludeByName", {})
            rename = step["options"].get("renameByName", {})
    labels = sorted({k for row in rows.values() for k in row if not k.startswith("Value")})
    value_columns = ["Value"] if len(targets) == 1 else [f"Value #{t['refId']}" for t in targets]
    columns = [c for c in labels + value_columns if not exclude.get(c)]
    units = {}
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        for prop in override.get("properties", []):
            if prop["id"] == "unit":
                units[override["matcher"]["options"]] = prop["value"]
    table_rows = sorted(rows.values(), key=lambda r: [str(r.get(c, "")) for c in labels])
    for sort in panel.get("options", {}).get("sortBy", []):
        source = next((c for c in columns if rename.get(c, c) == sort["displayName"]), None)
        if source:
            table_rows.sort(key=lambda r: r.get(source, float("-inf")), reverse=bool(sort.get("desc")))
    head = "".join(f"<th>{html.escape(rename.get(c, c))}</th>" for c in columns)
    body = []
    fits = max(int((height - 40) / 21), 1)
    if len(table_rows) > fits:
        fits -= 1
        body_more = f'<tr><td class="more" colspan="{len(columns)}">+{len(table_rows) - fits} more rows</td></tr>'
    else:
        body_more = ""
    for row in table_rows[:fits]:
        cells = []
        for c in columns:
            value = row.get(c)
            if isinstance(value, float):
                cells.append(f'<td class="num">{html.escape(fmt(value, units.get(rename.get(c, c), "short")))}</td>')
            else:
                cells.append(f"<td>{html.escape(value or '')}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="grid"><tr>{head}</tr>{"".join(body)}{body_more}</table>', True


def page(dashboard, prom, ctx, width, source, url):
    col = (width - GAP * 25) / 24
    parts, empty = [], []
    bottom = 0
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        left = GAP + grid["x"] * (col + GAP)
        top = HEADER_PX + grid["y"] * (ROW_PX + GAP)
        w = grid["w"] * col + (grid["w"] - 1) * GAP
        h = grid["h"] * ROW_PX + (grid["h"] - 1) * GAP
        bottom = max(bottom, top + h)
        style = f"left:{left:.0f}px;top:{top:.0f}px;width:{w:.0f}px;height:{h:.0f}px"
        if panel["type"] == "row":
            parts.append(f'<div class="row" style="{style}">{html.escape(panel["title"])}</div>')
            continue
        draw = {"timeseries": timeseries, "stat": stat, "table": table}.get(panel["type"])
        if draw is None:
            body, has_data = f'<div class="nodata">({html.escape(panel["type"])} panels are not drawn by the preview)</div>', False
        else:
            body, has_data = draw(prom, panel, ctx, int(w), int(h) - 30)
        if not has_data:
            empty.append(panel["title"])
        parts.append(f'<div class="panel" style="{style}"><div class="title">{html.escape(panel["title"])}</div>'
                     f'<div class="body">{body}</div></div>')
    height = int(bottom + GAP * 2)
    when = lambda t: datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    chosen = ", ".join(f"{k}={'All' if v == '.*' else v}" for k, v in ctx["values"].items())
    header = (f'<div class="header"><b>Preview</b> of the Grafana dashboard “{html.escape(dashboard["title"])}” '
              f"({html.escape(source)}), drawn by scripts/dashboard-preview.py from the dashboard's own queries "
              f"against Prometheus at {html.escape(url)}; not rendered by Grafana.<br>"
              f"{when(ctx['start'])} – {when(ctx['end'])} UTC · step {ctx['step']}s · "
              f"$__rate_interval {ctx['seconds']['__rate_interval']}s · {html.escape(chosen)}</div>")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Preview: {html.escape(dashboard["title"])}</title>
<style>
body {{ margin:0; background:#111217; color:#ccccdc; font:12px/1.35 "DejaVu Sans", Inter, Helvetica, Arial, sans-serif; }}
.page {{ position:relative; width:{width}px; height:{height}px; }}
.header {{ position:absolute; left:{GAP}px; top:8px; right:{GAP}px; color:#9fa0ad; font-size:13px; }}
.header b {{ color:#ccccdc; }}
.row {{ position:absolute; font-size:15px; font-weight:600; color:#d8d9e3; padding-top:6px; }}
.panel {{ position:absolute; box-sizing:border-box; background:#181b1f; border:1px solid #2c3235; border-radius:2px; overflow:hidden; }}
.title {{ height:28px; line-height:28px; padding:0 8px; font-weight:600; font-size:13px; color:#d8d9e3; white-space:nowrap; overflow:hidden; }}
.body {{ position:absolute; top:30px; left:0; right:0; bottom:0; padding:0 8px; overflow:hidden; }}
.nodata {{ color:#8e8e9a; text-align:center; margin-top:12%; font-size:14px; }}
.grid line, line.grid {{ stroke:rgba(204,204,220,0.10); }}
.tick {{ fill:#9fa0ad; font-size:10px; }}
svg {{ display:block; }}
table.legend {{ width:100%; border-collapse:collapse; font-size:11px; }}
table.legend th, table.legend td {{ height:16px; line-height:16px; padding:0 6px; white-space:nowrap; text-align:right; }}
table.legend th {{ color:#6e9fff; font-weight:500; }}
table.legend td.name {{ text-align:left; width:99%; max-width:0; overflow:hidden; text-overflow:ellipsis; }}
td.more {{ text-align:left !important; color:#8e8e9a; }}
.swatch {{ display:inline-block; width:14px; height:4px; margin:0 6px 3px 0; border-radius:2px; }}
.stat {{ position:absolute; inset:0 0 0 0; display:flex; align-items:center; justify-content:center; color:#fff; font-weight:500; }}
.stat span {{ position:relative; }}
.spark {{ position:absolute; left:0; bottom:0; }}
table.grid {{ width:100%; border-collapse:collapse; font-size:12px; }}
table.grid th {{ text-align:left; color:#6e9fff; font-weight:500; border-bottom:1px solid #2c3235; padding:3px 6px; }}
table.grid td {{ border-bottom:1px solid #22252b; padding:0 6px; height:20px; white-space:nowrap; }}
table.grid td.num {{ text-align:right; }}
</style></head>
<body><div class="page">{header}{"".join(parts)}</div></body></html>
""", height, empty


def seconds_of(text):
    match = re.fullmatch(r"(\d+)(s|m|h)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dashboard", default="deploy/monitoring/dashboard.json")
    parser.add_argument("--prometheus", help="base URL of the Prometheus HTTP API, e.g. http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15, help="range shown, ending now (default 15)")
    parser.add_argument("--end", type=float, help="end of the range, Unix seconds (default: now)")
    parser.add_argument("--scrape-interval", type=seconds_of, default=seconds_of("15s"),
                        help="the scrape interval, for $__rate_interval (default 15s)")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=REGEX",
                        help="a template variable's value (default: All)")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--out", default="dashboard-preview.html")
    parser.add_argument("--list-queries", action="store_true",
                        help="print every query with its variables filled in, as JSON, and exit")
    args = parser.parse_args()

    dashboard = json.load(open(args.dashboard))
    values = variable_values(dashboard, args.var)
    end = args.end or time.time()
    start = end - args.minutes * 60
    step, seconds = intervals(end - start, args.scrape_interval)
    if args.list_queries:
        print(json.dumps([{"panel": p, "refId": r, "expr": e} for p, r, e in queries(dashboard, values, seconds)],
                         indent=1))
        return
    if not args.prometheus:
        parser.error("--prometheus is needed (or --list-queries)")
    prom = Prometheus(args.prometheus)
    ctx = {"values": values, "seconds": seconds, "start": start, "end": end, "step": step}
    text, height, empty = page(dashboard, prom, ctx, args.width, args.dashboard, args.prometheus)
    with open(args.out, "w") as out:
        out.write(text)
    print(json.dumps({"out": args.out, "width": args.width, "height": height,
                      "panels": sum(1 for p in dashboard["panels"] if p["type"] != "row"),
                      "no_data": empty, "errors": prom.errors}))
    if prom.errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
