"""The review report: ``index.html`` (self-contained: PNGs embedded as base64, inline CSS and a few
lines of inline JS to sort the table; readable offline) and ``report.md`` (same table and findings,
PNGs linked), from a :class:`ReportInputs`.

Nothing here computes a result: every number comes from the results table, every finding from
:mod:`segbench.bench.report.findings`, every description from the architecture registry.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from segbench.bench.report.columns import SPEED_COLUMNS, Column, column
from segbench.bench.report.results import format_value
from segbench.run_files import writable

__all__ = ["ReportInputs", "table_columns", "write_html", "write_markdown", "JS_MARKER", "JS_ERRORS"]

JS_MARKER = "data-js-ready"  # set on <body> by the page's script once sorting is wired up
JS_ERRORS = "data-js-errors"  # set on <html> by the error catcher if any script fails


@dataclass
class ReportInputs:
    title: str
    command: str
    profile: dict  # name, description, settings (key -> value), per-arch options
    machine: dict
    data: dict  # name, classes, split sizes, notices
    table: list[dict]  # per architecture (aggregate over seeds)
    accuracy_key: str
    class_keys: list[str]
    class_names: list[str]
    figures: dict[str, Path]  # title -> PNG path (in display order)
    architectures: dict[str, dict]  # arch -> paper, year, summary, blocks, strengths, weaknesses
    findings: dict[str, list[str]]
    overall: list[str]
    notes: list[str] = field(default_factory=list)  # how things were measured
    verdict: list[str] = field(default_factory=list)  # generated from the evidence (segbench.bench.report.verdict)
    speed: dict = field(default_factory=dict)  # intro, rows (keyed as SPEED_COLUMNS), notes; empty: not measured
    warnings: list[str] = field(default_factory=list)  # shown before anything else (segbench.bench.report.devices)
    show_devices: bool = False  # name each row's device model next to its backbone (the rows' differ)
    # intro, columns, rows (strings), notes: fold ensembles on the test split (report.fold_ensembles); empty: none
    fold_ensembles: dict = field(default_factory=dict)


def table_columns(table: list[dict], keys: list[str]) -> list[Column]:
    """The columns of ``keys`` that at least one architecture has a number for, each with the unit its
    rows name where the data decides it (``Column.unit_key``)."""
    present = []
    for key in keys:
        if any((isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool))
               or (isinstance(r.get(key), str) and r.get(key)) for r in table):
            col = column(key)
            units = {r[col.unit_key] for r in table if col.unit_key and r.get(col.unit_key)}
            present.append(dataclasses.replace(col, unit=units.pop()) if len(units) == 1 else col)
    return present


def _best_arch(table: list[dict], col: Column) -> str | None:
    if col.better not in ("higher", "lower"):
        return None
    values = [(r[col.key], r["arch"]) for r in table if isinstance(r.get(col.key), (int, float))]
    if not values:
        return None
    return (max if col.better == "higher" else min)(values)[1]


def _std(row: dict, col: Column) -> str | None:
    """The seeds' standard deviation as text, or None with one seed or none at all (parameters, FLOPs)."""
    std = row.get(f"{col.key}_std")
    if row.get("runs", 1) > 1 and isinstance(std, (int, float)) and std > 0:
        return format_value(std, col.digits)
    return None


def _spread(row: dict, col: Column) -> str | None:
    """A figure's range as ``[low–high]``: a median's over runs that differ, else a timed figure's interquartile
    range (``noisy`` added when it stayed noisy), a ratio's 95% interval."""
    low, high = row.get(f"{col.key}_min"), row.get(f"{col.key}_max")
    if col.over_runs == "median" and isinstance(low, (int, float)) and isinstance(high, (int, float)) and low < high:
        text = f"[{format_value(low, col.digits)}–{format_value(high, col.digits)}] over {row.get('runs')} runs"
        return text + (" noisy" if col.noisy and row.get(col.noisy) else "")
    if not col.spread or not all(isinstance(row.get(k), (int, float)) for k in col.spread):
        return None
    low, high = sorted(row[k] for k in col.spread)
    text = f"[{format_value(low, col.digits)}–{format_value(high, col.digits)}]"
    return text + (" noisy" if col.noisy and row.get(col.noisy) else "")


def _value(row: dict, col: Column) -> str:
    value = row.get(col.key)
    if col.floor is not None and isinstance(value, (int, float)) and value < col.floor:
        return f"<{col.floor:g}"
    return format_value(value, col.digits)


def _cell(row: dict, col: Column) -> str:
    text = _value(row, col)
    extras = [f"± {std}" for std in [_std(row, col)] if std] + [s for s in [_spread(row, col)] if s]
    return " ".join([text, *extras])


def _cell_html(row: dict, col: Column) -> str:
    text = _e(_value(row, col))
    extras = [f"± {std}" for std in [_std(row, col)] if std] + [s for s in [_spread(row, col)] if s]
    return text + "".join(f"<br><small>{_e(extra)}</small>" for extra in extras)


def _tooltip(col: Column) -> str:
    direction = f" ({col.better} is better)" if col.better in ("higher", "lower") else ""
    return col.help + direction


def _header(col: Column) -> str:
    return col.label + (f" ({col.unit})" if col.unit else "")


# --- HTML ----------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0}
#results td{white-space:nowrap}#results small{color:#666}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none}th.nosort{cursor:default}
td:first-child,th:first-child,td.text,th.text{text-align:left}
.scroll{overflow-x:auto;max-width:100%}#results td.text{white-space:normal;min-width:12em}
td.best{background:#e3f4e3;font-weight:600}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
.kv td{text-align:left}.kv td:first-child{font-family:monospace;color:#555}
img{max-width:100%;border:1px solid #eee}
.arch{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
.arch .cols{display:flex;gap:2em;flex-wrap:wrap}.arch .cols>div{flex:1 1 420px}
.error{color:#a00;font-family:monospace;white-space:pre-wrap}
.warning{border:2px solid #c60;background:#fff4e5;padding:.5em 1em;border-radius:6px}
small,.muted{color:#666}
"""

# Runs before any other script: a failing script leaves its message on <html> for tests and readers.
_ERROR_CATCHER = """
window.addEventListener('error',function(e){
  var el=document.documentElement,old=el.getAttribute('%s');
  el.setAttribute('%s',(old?old+' | ':'')+e.message);
});
""" % (JS_ERRORS, JS_ERRORS)

# Sort on header click; numbers come from data-v so "1,234" and "0.81 ± 0.02" sort by value.
_JS = """
(function(){
  var table=document.getElementById('results');
  if(!table){document.body.setAttribute('%s','no-table');return;}
  var heads=table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads,function(th,i){
    if(th.classList.contains('nosort'))return;
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');
      Array.prototype.forEach.call(heads,function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc?'asc':'desc');
      var rows=Array.prototype.slice.call(table.tBodies[0].rows);
      rows.sort(function(a,b){
        var x=a.cells[i].getAttribute('data-v'),y=b.cells[i].getAttribute('data-v');
        var nx=parseFloat(x),ny=parseFloat(y);
        if(isNaN(nx)&&isNaN(ny))return asc?String(x).localeCompare(y):String(y).localeCompare(x);
        if(isNaN(nx))return 1;if(isNaN(ny))return -1;
        return asc?nx-ny:ny-nx;
      });
      rows.forEach(function(r){table.tBodies[0].appendChild(r);});
    });
  });
  document.body.setAttribute('%s','ok');
})();
""" % (JS_MARKER, JS_MARKER)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _kv_table(pairs: dict) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_plain(v))}</td></tr>" for k, v in pairs.items())
    return f'<table class="kv">{rows}</table>'


def _plain(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return "–" if value is None else str(value)


def _backbone(inputs: ReportInputs, row: dict) -> str:
    """The backbone cell's text: the backbone, and the device model where the rows' differ."""
    device = f" (on {row['device_name']})" if inputs.show_devices and row.get("device_name") else ""
    return f"{row.get('backbone', '')}{device}"


def _results_table_html(inputs: ReportInputs, columns: list[Column]) -> str:
    best = {c.key: _best_arch(inputs.table, c) for c in columns}
    head = ['<th>Architecture</th>', '<th class="text">Backbone</th>', '<th title="successful runs: seeds x folds">Runs</th>']
    head += [f'<th title="{_e(_tooltip(c))}">{_e(_header(c))}</th>' for c in columns]
    body = []
    for r in inputs.table:
        cells = [
            f'<td data-v="{_e(r["arch"])}"><a href="#arch-{_e(r["arch"])}">{_e(r["arch"])}</a></td>',
            f'<td class="text" data-v="{_e(r.get("backbone", ""))}">{_e(_backbone(inputs, r))}</td>',
            f'<td data-v="{r.get("runs", 0)}">{r.get("runs", 0)}</td>',
        ]
        if not r.get("runs"):
            cells.append(f'<td class="error text" colspan="{len(columns)}">failed: {_e(r.get("error", ""))}</td>')
        else:
            for c in columns:
                value = r.get(c.key)
                mark = ' class="best"' if best[c.key] == r["arch"] else ""
                sort_value = _e(value) if isinstance(value, (int, float, str)) else ""
                cells.append(f'<td{mark} data-v="{sort_value}">{_cell_html(r, c)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table id="results"><thead><tr>{"".join(head)}</tr></thead>'
        f'<tbody>{"".join(body)}</tbody></table></div>'
        '<p class="muted">Click a header to sort. Green: best in the column. Values are the mean over runs'
        " (± sample standard deviation when there are several); costs are the median over runs [their range"
        " when they differ]; an empty cost was not measured.</p>"
    )


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _arch_section(inputs: ReportInputs, row: dict, columns: list[Column]) -> str:
    arch = row["arch"]
    info = inputs.architectures.get(arch, {})
    text = "".join(
        f"<p><b>{label}.</b> {_e(info.get(key, '') or '–')}</p>"
        for label, key in (("Main innovation", "summary"), ("Building blocks", "blocks"),
                           ("Strengths", "strengths"), ("Weaknesses", "weaknesses"))
    )
    measured = {_header(c): _cell(row, c) for c in columns if row.get(c.key) is not None}
    found = "".join(f"<li>{_e(f)}</li>" for f in inputs.findings.get(arch, []))
    options = row.get("model_options", "")
    return (
        f'<div class="arch" id="arch-{_e(arch)}"><h3>{_e(arch)} <small>{_e(info.get("paper", ""))}</small></h3>'
        f'<div class="cols"><div><h4>Design</h4>{text}</div>'
        f"<div><h4>Measured in this run</h4><p class=\"muted\">backbone {_e(row.get('backbone', ''))}, "
        f"options {_e(options)}, input {_e(row.get('input_size', ''))}</p>"
        f"{_kv_table(measured) if measured else ''}<ul>{found}</ul></div></div></div>"
    )


TEXT_CELL = ' class="text"'  # words (a peer's name) left-aligned, numbers right-aligned


def _speed_html(speed: dict) -> str:
    if not speed:
        return ""
    head = '<th class="nosort">Architecture</th>' + "".join(
        f'<th class="nosort{" text" if c.key == "peer" else ""}" title="{_e(_tooltip(c))}">{_e(_header(c))}</th>'
        for c in SPEED_COLUMNS)
    body = []
    for row in speed["rows"]:
        cells = [f"<td>{_e(row['arch'])}</td>"]
        if row.get("error"):
            cells.append(f'<td class="error text" colspan="{len(SPEED_COLUMNS)}">failed: {_e(row["error"])}</td>')
        else:
            cells += [f"<td{TEXT_CELL if c.key == 'peer' else ''}>{_cell_html(row, c)}</td>" for c in SPEED_COLUMNS]
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f"<li>{_e(n)}</li>" for n in speed["notes"])
    return (f'<h2 id="speed">Speed</h2><p>{_e(speed["intro"])}</p><div class="scroll"><table id="speed-table">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div><ul class=\"muted\">{notes}</ul>")


def _fold_ensembles_html(section: dict) -> str:
    if not section:
        return ""
    head = "".join(f'<th class="nosort{" text" if i == 0 else ""}">{_e(c)}</th>' for i, c in enumerate(section["columns"]))
    body = "".join("<tr>" + "".join(f"<td{TEXT_CELL if i in (0, 3) else ''}>{_e(v)}</td>" for i, v in enumerate(row))
                   + "</tr>" for row in section["rows"])
    notes = "".join(f"<li>{_e(n)}</li>" for n in section["notes"])
    return (f'<h2 id="fold-ensembles">Fold ensembles on the test split</h2><p>{_e(section["intro"])}</p>'
            f'<div class="scroll"><table id="fold-ensembles-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            f'</table></div><ul class="muted">{notes}</ul>')


def _verdict_html(sentences: list[str]) -> str:
    if not sentences:
        return ""
    return '<h2 id="verdict">Verdict</h2><ul class="verdict">' + "".join(f"<li>{_e(s)}</li>" for s in sentences) + "</ul>"


def write_html(inputs: ReportInputs, path: str | Path, columns: list[Column]) -> Path:
    """Write the self-contained HTML report."""
    path = Path(path)
    profile = inputs.profile
    figures = "".join(f"<h3>{_e(title)}</h3>{_img(p, title)}" for title, p in inputs.figures.items())
    overall = "".join(f"<li>{_e(f)}</li>" for f in inputs.overall)
    notes = "".join(f"<li>{_e(n)}</li>" for n in inputs.notes)
    archs = "".join(_arch_section(inputs, r, columns) for r in inputs.table)
    options = "".join(
        f"<tr><td>{_e(a)}</td><td>{_e(_plain(o))}</td></tr>" for a, o in profile.get("arch_options", {}).items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(inputs.title)}</title><style>{_CSS}</style><script>{_ERROR_CATCHER}</script></head>
<body>
<h1>{_e(inputs.title)}</h1>
<p class="muted">{_e(inputs.machine.get("date", ""))} · <code>{_e(inputs.command)}</code></p>
{"".join(f'<p class="warning"><b>Warning.</b> {_e(w)}</p>' for w in inputs.warnings)}
{_verdict_html(inputs.verdict)}
<h2>Findings</h2><ul>{overall}</ul>
<h2>Comparison</h2>{_results_table_html(inputs, columns)}
{_fold_ensembles_html(inputs.fold_ensembles)}
{_speed_html(inputs.speed)}
<h2>Figures</h2>{figures}
<h2>Architectures</h2>{archs}
<h2>Settings</h2>
<h3>Profile <code>{_e(profile.get("name", ""))}</code></h3><p>{_e(profile.get("description", ""))}</p>
{_kv_table(profile.get("settings", {}))}
<h3>Per-architecture options</h3><table class="kv">{options}</table>
<h3>Data</h3>{_kv_table(inputs.data)}
<h3>Machine</h3>{_kv_table(inputs.machine)}
<h3>How it was measured</h3><ul>{notes}</ul>
<script>{_JS}</script>
</body></html>
"""
    writable(path).write_text(page, encoding="utf-8")
    return path


# --- Markdown ------------------------------------------------------------------------------------


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_markdown(inputs: ReportInputs, path: str | Path, columns: list[Column]) -> Path:
    """Write ``report.md``: findings, the table (best per column in bold), figures linked, settings."""
    path = Path(path)
    best = {c.key: _best_arch(inputs.table, c) for c in columns}
    lines = [f"# {inputs.title}", "", f"{inputs.machine.get('date', '')} · `{inputs.command}`", ""]
    lines += [line for w in inputs.warnings for line in (f"> **Warning.** {_md(w)}", "")]
    if inputs.verdict:
        lines += ["## Verdict", ""] + [f"- {_md(s)}" for s in inputs.verdict] + [""]
    lines += ["## Findings", ""]
    lines += [f"- {_md(f)}" for f in inputs.overall] + [""]
    lines += ["## Comparison", ""]
    lines.append("| Architecture | Backbone | Runs | " + " | ".join(_md(_header(c)) for c in columns) + " |")
    lines.append("|---|---|---:|" + "---:|" * len(columns))
    for r in inputs.table:
        if not r.get("runs"):
            cells = [f"failed: {_md(r.get('error', ''))[:200]}"] + [""] * (len(columns) - 1)
        else:
            cells = [
                f"**{_md(_cell(r, c))}**" if best[c.key] == r["arch"] else _md(_cell(r, c)) for c in columns
            ]
        lines.append(f"| {r['arch']} | {_md(_backbone(inputs, r))} | {r.get('runs', 0)} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: best in the column. Mean over runs (± sample std when several); costs: median over runs "
              "[their range when they differ]; an empty cost was not measured.", ""]
    if inputs.fold_ensembles:
        section = inputs.fold_ensembles
        lines += ["## Fold ensembles on the test split", "", _md(section["intro"]), ""]
        lines += ["| " + " | ".join(_md(c) for c in section["columns"]) + " |",
                  "|---|---:|---:|---|---:|---:|---:|"]
        lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in section["rows"]]
        lines += [""] + [f"- {_md(n)}" for n in section["notes"]] + [""]
    if inputs.speed:
        lines += ["## Speed", "", _md(inputs.speed["intro"]), ""]
        lines.append("| Architecture | " + " | ".join(_header(c) for c in SPEED_COLUMNS) + " |")
        lines.append("|---|---|" + "---:|" * (len(SPEED_COLUMNS) - 1))
        for row in inputs.speed["rows"]:
            cells = [f"failed: {row['error']}"] + [""] * (len(SPEED_COLUMNS) - 1) if row.get("error") else \
                [_cell(row, c) for c in SPEED_COLUMNS]
            lines.append("| " + " | ".join(_md(c) for c in [row["arch"], *cells]) + " |")
        lines += [""] + [f"- {_md(n)}" for n in inputs.speed["notes"]] + [""]
    lines += ["## Figures", ""]
    lines += [f"![{title}]({Path(p).name})" for title, p in inputs.figures.items()] + [""]
    lines += ["## Architectures", ""]
    for r in inputs.table:
        info = inputs.architectures.get(r["arch"], {})
        lines += [f"### {r['arch']}", "", f"*{_md(info.get('paper', ''))}*", ""]
        for label, key in (("Main innovation", "summary"), ("Building blocks", "blocks"),
                           ("Strengths", "strengths"), ("Weaknesses", "weaknesses")):
            lines.append(f"- **{label}.** {_md(info.get(key, '') or '–')}")
        lines += ["", f"Measured (backbone {r.get('backbone', '')}, options {r.get('model_options', '')}):", ""]
        lines += [f"- {_md(f)}" for f in inputs.findings.get(r["arch"], [])] + [""]
    lines += ["## Settings", "", f"Profile `{inputs.profile.get('name', '')}`: {inputs.profile.get('description', '')}", ""]
    lines += [f"- `{k}`: {_md(_plain(v))}" for k, v in inputs.profile.get("settings", {}).items()] + [""]
    lines += ["Per-architecture options:", ""]
    lines += [f"- `{a}`: {_md(_plain(o))}" for a, o in inputs.profile.get("arch_options", {}).items()] + [""]
    lines += ["Data:", ""] + [f"- {k}: {_md(_plain(v))}" for k, v in inputs.data.items()] + [""]
    lines += ["Machine:", ""] + [f"- {k}: {_md(_plain(v))}" for k, v in inputs.machine.items()] + [""]
    lines += ["How it was measured:", ""] + [f"- {_md(n)}" for n in inputs.notes] + [""]
    writable(path).write_text("\n".join(lines), encoding="utf-8")
    return path
