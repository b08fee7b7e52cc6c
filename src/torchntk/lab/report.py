"""The self-contained HTML report: one file, figures embedded as base64 PNG, no external assets."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .studies import REGISTRY

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;
     padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.sub{color:#666} img{max-width:100%;border:1px solid #eee;margin:.6em 0}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top} th{background:#f6f6f6}
.pass{color:#137333;font-weight:600} .fail{color:#b3261e;font-weight:600}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px} details{margin:.5em 0}
"""


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value[:12]) + (", ..." if len(value) > 12 else "") + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return html.escape(str(value))


def _table(rows: list[tuple[str, str]], head: tuple[str, str] = ("metric", "value")) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<table><tr><th>{head[0]}</th><th>{head[1]}</th></tr>{body}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def write_report(root: str | Path, results: dict) -> Path:
    """Write ``root/report.html`` from the demo's ``results`` (see ``run_demo``); returns its path."""
    root = Path(root)
    checks = results["checks"]
    passed = sum(c["passed"] for c in checks)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>torchntk demo: finite vs infinite width</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>torchntk demo: finite networks vs the infinite-width theory</h1>",
        f"<p class='sub'>{'quick' if results['config'].get('quick') else 'full'} run, seed "
        f"{results['config'].get('seed')}, {results['total_seconds']:.1f} s "
        f"({', '.join(results['resumed']) + ' read from disk' if results['resumed'] else 'all studies computed'}); "
        f"torch {results['environment']['torch']}, {results['environment']['threads']} threads.</p>",
        "<p>Networks in NTK parameterization, trained by full-batch gradient descent on "
        "<code>C = (1/(2N)) &sum; ||f(x<sub>i</sub>) - y<sub>i</sub>||&sup2;</code> with step &eta;; "
        "time <code>t = &eta; k</code> after k steps. Kernels in float64.</p>",
        f"<h2>Physics checks: {passed} of {len(checks)} passed</h2>",
    ]
    rows = [(c["check"], f"<span class='{'pass' if c['passed'] else 'fail'}'>"
             f"{'PASS' if c['passed'] else 'FAIL'}</span> {_fmt(c['value'])} <span class='sub'>"
             f"({html.escape(c['expected'])})</span>") for c in checks]
    parts.append(_table(rows, ("claim", "result")))
    for name, metrics in results["metrics"].items():
        module = REGISTRY[name].module
        parts.append(f"<h2 id='{name}'>{html.escape(module.TITLE)}</h2>")
        parts.append(f"<p>{html.escape(module.EXPLANATION)}</p>")
        for fig in results["figures"].get(name, []):
            parts.append(_img(root / "figures" / fig, f"{name} figure"))
        parts.append(f"<p class='sub'>computed in {results['seconds'].get(name, 0):.1f} s</p>")
        parts.append("<details open><summary>metrics</summary>"
                     + _table([(k, _fmt(v)) for k, v in metrics.items()]) + "</details>")
    parts.append("<h2>Settings</h2><details><summary>configuration</summary><pre>"
                 + html.escape(json.dumps(results["config"], indent=1)) + "</pre></details>")
    parts.append("<p class='sub'>Machine-readable metrics: <code>metrics.json</code> beside this file.</p>")
    parts.append("</body></html>")
    path = root / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
