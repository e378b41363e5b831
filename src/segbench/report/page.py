"""index.html: the report as one page that opens offline in any browser.

Inline CSS and JavaScript only (no network, no CDN); the figures are PNG files beside it
(report/*.png, gallery/ and runs/: each configuration's learning curves). Every table sorts by
any column on a click on its header.
Opened as index.html#selftest the page checks itself (images loaded, a header click re-sorts)
and writes the outcome as JSON into <pre id="selftest">, which a headless browser's --dump-dom
reads (tests/test_page.py); script and image errors are recorded into #page-errors always.
"""

from __future__ import annotations

import html
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from segbench.atomic import write_atomic
from segbench.inspection import augmentations
from segbench.report import figures
from segbench.report.gallery import Section
from segbench.report.runs import Configuration
from segbench.report.study import Study
from segbench.report.tables import Table

PAGE = "index.html"

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;\
color:#1b1b1b;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:0 24px 48px}
nav{position:sticky;top:0;background:#12355b;padding:8px 24px;z-index:2}
nav a{color:#fff;margin-right:18px;text-decoration:none;font-size:14px}
h1{font-size:24px;margin:22px 0 6px}\
h2{margin-top:34px;border-bottom:2px solid #d5dde6;padding-bottom:4px}
h3{margin:22px 0 6px}
table{border-collapse:collapse;margin:8px 0;background:#fff;font-size:13px}
th,td{border:1px solid #d5dde6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef2f6;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}
tr:target{background:#fff3c4}
.note{color:#444;font-size:13px;max-width:1000px}
figure{margin:12px 0 20px}figcaption{font-size:13px;color:#333;max-width:1000px}
img{max-width:100%;height:auto;border:1px solid #e1e6eb;background:#fff}
details{margin:6px 0 14px}summary{cursor:pointer;color:#12355b}
code{background:#eef2f6;padding:0 3px;border-radius:3px;font-size:12px}
#page-errors{color:#a00}#page-errors:empty{display:none}
"""

# Recording errors first, before anything else on the page can fail. Resource errors (an image
# that does not load) do not bubble: the listener captures them.
RECORDER = """
window.pageErrors=[];
var consoleError=console.error;
console.error=function(){window.pageErrors.push(Array.prototype.join.call(arguments,' '));\
consoleError.apply(console,arguments);};
window.addEventListener('error',function(e){
  var t=e.target,msg=(t&&t!==window&&t.src)?('failed to load '+t.src):(e.message||'error');
  window.pageErrors.push(msg);
  var ul=document.getElementById('page-errors');
  if(ul){var li=document.createElement('li');li.textContent=msg;ul.appendChild(li);}
},true);
"""

SCRIPT = """
function cellValue(td){
  var t=td.getAttribute('data-sort')||td.textContent.trim();
  var m=t.match(/^[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?/i);
  return m?parseFloat(m[0]):null;
}
function sortTable(th){
  var table=th.closest('table'),tbody=table.tBodies[0],\
col=Array.prototype.indexOf.call(th.parentNode.children,th);
  var dir=th.getAttribute('aria-sort')==='ascending'?'descending':'ascending';
  Array.prototype.forEach.call(th.parentNode.children,function(h){h.removeAttribute('aria-sort');});
  th.setAttribute('aria-sort',dir);
  var rows=Array.prototype.slice.call(tbody.rows),sign=dir==='ascending'?1:-1;
  rows.sort(function(a,b){
    var x=a.cells[col],y=b.cells[col];if(!x||!y)return 0;
    var p=cellValue(x),q=cellValue(y);
    if(p!==null&&q!==null)return sign*(p-q);
    if(p===null&&q!==null)return 1;if(q===null&&p!==null)return -1;
    return sign*x.textContent.localeCompare(y.textContent);
  });
  rows.forEach(function(r){tbody.appendChild(r);});
}
document.querySelectorAll('table.sortable th').forEach(function(th){
  th.title='click to sort';th.addEventListener('click',function(){sortTable(th);});
});
function openTarget(){  // a link to a case row opens the table it sits in
  var el=location.hash.length>1?document.getElementById(location.hash.slice(1)):null;
  var d=el&&el.closest('details');if(d){d.open=true;el.scrollIntoView();}
}
window.addEventListener('hashchange',openTarget);openTarget();
function selftest(){
  var out={errors:window.pageErrors.slice(),images:0,broken:[],sort:null,\
loadMs:Math.round(performance.now())};
  document.querySelectorAll('img').forEach(function(img){
    out.images++;if(!img.complete||img.naturalWidth===0)out.broken.push(img.getAttribute('src'));
  });
  var table=document.querySelector('#results table');
  if(table){
    var ths=table.tHead.rows[0].cells,col=ths.length-1;
    for(var i=0;i<ths.length;i++){if(ths[i].textContent.trim()==='dice'){col=i;break;}}
    var values=function(){return Array.prototype.map.call(table.tBodies[0].rows,\
function(r){return cellValue(r.cells[col]);});};
    var before=values();ths[col].click();var asc=values();ths[col].click();var desc=values();
    var sorted=function(v,s){for(var k=1;k<v.length;k++){\
if(v[k]!==null&&v[k-1]!==null&&s*(v[k]-v[k-1])<0)return false;}return true;};
    out.sort={column:ths[col].textContent.trim(),before:before,ascending:asc,descending:desc,
              ok:sorted(asc,1)&&sorted(desc,-1)&&ths[col].getAttribute('aria-sort')==='descending'};
  }
  document.getElementById('selftest').textContent=JSON.stringify(out);
}
if(location.hash==='#selftest'){
  if(document.readyState==='complete')selftest();else window.addEventListener('load',selftest);
}
"""

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def inline(text: str) -> str:
    """The little Markdown the report's sentences use (`code`, **bold**), as HTML."""
    out = html.escape(str(text), quote=False)
    out = _CODE.sub(r"<code>\1</code>", out)
    return _BOLD.sub(r"<b>\1</b>", out)


def _numeric(cell: str) -> bool:
    return bool(re.match(r"^[-+]?(\d+\.?\d*|\.\d+)", str(cell).strip()))


def table_html(t: Table, *, caption: bool = True) -> str:
    head = "".join(f"<th>{inline(h)}</th>" for h in t.header)
    body = []
    for i, row in enumerate(t.rows):
        cells = []
        for j, c in enumerate(row):
            text = inline(c)
            text = f"<b>{text}</b>" if (i, j) in t.bold else text
            cells.append(f'<td class="num">{text}</td>' if _numeric(c) else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f'<p class="note">{inline(t.note)}</p>' if t.note and caption else ""
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>'
            f'{"".join(body)}</tbody></table></div>{note}')


def _img(src: str, alt: str, caption: str, links: str = "") -> str:
    """A figure; `links`: HTML added to its caption."""
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}" loading="eager">'
            f"<figcaption>{inline(caption)}{links}</figcaption></figure>")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def curves_of(configs, out_dir: Path) -> list[tuple[str, str, str]]:
    """Each configuration's learning curves (mean over its runs, band min to max) from the runs'
    history.csv, under runs/: (label, file, which runs)."""
    shown = []
    for k, c in enumerate(configs):
        name = f"runs/curves_{k}.png"
        (out_dir / "runs").mkdir(parents=True, exist_ok=True)
        if figures.plot_curves([c], out_dir / name, title=c.label):
            n = len(c.runs)
            shown.append((c.label, name, f"{n} run{'s' if n > 1 else ''}"))
    return shown


def case_table(k: int, s: Section) -> str:
    hd95 = any(r["hd95"] is not None for r in s.rows)
    head = ("<th>case</th><th>dice</th><th>iou</th>" + ("<th>hd95</th>" if hd95 else "")
            + "<th>pictured</th>")
    rows = []
    for r in s.rows:
        anchor = f"case-{k}-{_slug(r['case'])}"
        role = (f'<a href="#gallery-{k}">{html.escape(r["role"])}</a>' if r["role"] else "")
        hd = "" if not hd95 else f'<td class="num">{r["hd95"]:.2f}</td>'
        rows.append(f'<tr id="{anchor}"><td><a href="#{anchor}">{html.escape(r["case"])}</a></td>'
                    f'<td class="num">{r["dice"]:.4f}</td><td class="num">{r["iou"]:.4f}</td>{hd}'
                    f"<td>{role}</td></tr>")
    return (f"<details><summary>every test case of {html.escape(s.label)} ({len(s.rows)}, run "
            f"<code>{html.escape(s.run)}</code>)</summary>"
            f"<table class=\"sortable\"><thead><tr>{head}"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></details>")


def gallery_html(sections: list[Section], grid: str | None) -> str:
    parts = []
    if grid:
        parts.append(_img(grid, "cases the configurations disagree on",
                          "The test cases the configurations disagree on most (largest standard "
                          "deviation of Dice across configurations, among the cases whose image a "
                          "run kept): image with its ground-truth contour, then each "
                          "configuration's true positives, false positives and false negatives."))
    for k, s in enumerate(sections):
        links = ", ".join(f'<a href="#case-{k}-{_slug(cid)}">{html.escape(cid)}</a> '
                          f"({html.escape(role)})" for cid, role in s.pictured.items())
        parts.append(f'<h3 id="gallery-{k}">{html.escape(s.label)}</h3>')
        if s.gallery:
            parts.append(_img(s.gallery, f"cases of {s.label}",
                              f"Worst, median and best test cases by Dice and by HD95 (run "
                              f"`{s.run}`), at the size each was scored at: image | ground-truth "
                              "and predicted contours | TP/FP/FN. Cases: ", links + "."))
        if s.strip:
            parts.append(_img(s.strip, f"worst volume of {s.label}", s.strip_caption))
        if s.tta:
            parts.append(_img(s.tta, f"TTA in {s.label}", "The test cases whose Dice test-time "
                              "augmentation (eval.tta: mean over identity, horizontal and vertical "
                              "flips) changed most: without it, and with it."))
        parts.append(case_table(k, s))
    return "\n".join(parts)


@dataclass
class Content:
    """What index.html shows, section by section."""
    title: str
    summary: str                            # the sentence under the title
    configs: list[Configuration]            # each one's learning curves
    tables: dict[str, Table]                # by name: configurations, results, cv, folds
    shared: list[tuple[str, str]]           # (group, its settings every configuration shares)
    comparisons: list[tuple[str, Table]]    # (metric, its comparison with the baseline)
    baseline_line: str
    figures: dict[str, str]                 # file name -> caption
    sections: list[Section]                 # the case galleries
    grid: str | None                        # the disagreement grid's file name
    notes: list[str]
    incomplete: Table | None                # runs that did not finish
    extra: list[tuple[str, str, str]] = field(default_factory=list)  # (id, heading, HTML)


def write_page(out_dir: Path, content: Content) -> Path:
    """Write out_dir/index.html; `content.extra` sections come before the notes."""
    c = content
    nav = [("what-ran", "What ran"), ("results", "Results"), ("comparisons", "Comparisons"),
           ("figures", "Figures"), ("curves", "Learning curves"), ("gallery", "Cases"),
           *((sid, heading) for sid, heading, _ in c.extra), ("notes", "Notes")]
    body = [f"<h1>{inline(c.title)}</h1>", f"<p>{inline(c.summary)}</p>",
            '<ul id="page-errors"></ul>',
            *_what_ran(c.tables["configurations"], c.shared),
            *_results(c.tables),
            *_comparisons(c.baseline_line, c.comparisons),
            '<section id="figures"><h2>Figures</h2>'
            + "".join(_img(name, caption, f"{name}: {caption}.")
                      for name, caption in c.figures.items())
            + "</section>",
            _curves(c.configs, out_dir),
            _cases(c.sections, c.grid),
            *(f'<section id="{sid}"><h2>{inline(heading)}</h2>{html_}</section>'
              for sid, heading, html_ in c.extra),
            *_notes(c.notes, c.incomplete),
            '<pre id="selftest" hidden></pre>']
    page = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{html.escape(c.title)}</title><style>{STYLE}</style>"
            f"<script>{RECORDER}</script></head>"
            "<body><nav>" + "".join(f'<a href="#{i}">{n}</a>' for i, n in nav) + "</nav><main>"
            + "\n".join(body) + f"</main><script>{SCRIPT}</script></body></html>\n")
    path = out_dir / PAGE
    write_atomic(path, page)
    return path


def _what_ran(configurations: Table, shared: list[tuple[str, str]]) -> list[str]:
    out = ['<section id="what-ran"><h2>What ran</h2>'
           "<p class=note>Read from each run's resolved <code>config.yaml</code>.</p>",
           table_html(configurations)]
    if shared:
        out.append(f"<details><summary>{len(shared)} settings every configuration shares"
                   "</summary><table class=\"sortable\"><thead><tr><th>group</th>"
                   "<th>settings</th></tr></thead><tbody>"
                   + "".join(f"<tr><td>{inline(g)}</td><td>{inline(v)}</td></tr>"
                             for g, v in shared)
                   + "</tbody></table></details>")
    return [*out, "</section>"]


def _results(tables: dict[str, Table]) -> list[str]:
    out = ['<section id="results"><h2>Results</h2>' + table_html(tables["results"])]
    for name in ("cv", "folds"):
        if name in tables:
            out.append(f"<h3>{inline(tables[name].title)}</h3>" + table_html(tables[name]))
    return [*out, "</section>"]


def _comparisons(baseline_line: str, comparisons: list[tuple[str, Table]]) -> list[str]:
    out = ['<section id="comparisons"><h2>Comparison with the baseline</h2>'
           f"<p>{inline(baseline_line)}</p>"]
    for metric, t in comparisons:
        out.append(f"<h3>{inline(metric)}</h3>")
        if t.rows:
            out.append(f'<p class="note"><b>Method.</b> {inline(t.note)}</p>'
                       + table_html(t, caption=False))
        else:
            out.append("<p>Only the baseline has finished runs.</p>")
    return [*out, "</section>"]


def _curves(configs: list[Configuration], out_dir: Path) -> str:
    curves = curves_of(configs, out_dir)
    return ('<section id="curves"><h2>Learning curves per configuration</h2>'
            + "".join(_img(src, f"learning curves of {label}",
                           f"{label}: mean over its {runs} (band: min to max)")
                      for label, src, runs in curves)
            + ("" if curves else "<p>No run holds history.csv.</p>") + "</section>")


def _cases(sections: list[Section], grid: str | None) -> str:
    return ('<section id="gallery"><h2>Cases</h2>'
            + (gallery_html(sections, grid) if sections else
               "<p>No run holds cases.npz (runs evaluated before segbench kept every case's "
               "prediction): no case gallery. <code>segbench eval run_dir=...</code> writes "
               "it.</p>")
            + "</section>")


def _notes(notes: list[str], incomplete: Table | None) -> list[str]:
    out = ['<section id="notes"><h2>Notes</h2>']
    if incomplete is not None:
        out.append("<h3>Incomplete and failed runs</h3>" + table_html(incomplete))
    out.append("<ul>" + "".join(f"<li>{inline(n)}</li>" for n in notes) + "</ul>" if notes else
               "<p>None.</p>")
    out.append('<p class="note">The same report as Markdown: <a href="report.md">report.md</a>; '
               'every table as CSV and LaTeX in <code>tables/</code>.</p></section>')
    return out


def study_page(out_dir: Path, study: Study, sections: list[Section], grid: str | None,
               extra: tuple[tuple[str, str, str], ...] = ()) -> Path:
    """index.html of a report from what build_report computed (the same facts as report.md),
    with the augmentation presets drawn when the configurations differ in them."""
    g, by_name = study.grouping, study.by_name
    by_group: defaultdict[str, list[str]] = defaultdict(list)
    for k, v in g.shared.items():
        group, _, rest = k.partition(".")
        by_group[group if rest else "(top level)"].append(f"`{rest or k}={v}`")
    incomplete = study.incomplete()
    sections_extra = list(extra)
    previews, preview_notes = augmentations.study_previews(g.configs, out_dir / "augmentation")
    if previews:
        sections_extra.append(("augmentation", "Augmentation presets", "".join(
            _img(f"augmentation/{file}", f"augmentation {name}",
                 f"augmentation={name}: training images and masks under each transform (p forced "
                 "to 1) and under the whole preset as trained, seeded (`segbench preview "
                 f"augmentation={name}` draws it alone).") for name, file in previews)))
    return write_page(out_dir, Content(
        title=f"segbench report: {study.root.resolve().name}",
        summary=f"{len(study.runs)} runs in {len(g.configs)} configurations under "
                f"`{study.root}`: {study.states()}.",
        configs=g.configs, tables=by_name,
        shared=[(grp, ", ".join(items)) for grp, items in by_group.items()],
        comparisons=[(m, by_name[f"comparison_{m}"]) for m in study.comparisons],
        baseline_line=study.baseline_line(), figures=study.figures, sections=sections,
        grid=grid, notes=list(dict.fromkeys([*study.notes, *preview_notes])),
        incomplete=incomplete, extra=sections_extra))
