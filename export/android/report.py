"""The self-contained HTML page of ``mcpm android verify`` (no scripts, no external files: inline CSS and SVG).

Sections: the verdict, the device (model, SoC, Android, CPU cores with their max frequency, features, GPU), the
bundle, one table row per run (kernel set and device: PASS/FAIL, the self-test's numbers, the speeds, memory,
thermal status) and a bar chart of decode and prefill tok/s per run.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

DECODE_COLOR = "#1f6fd1"  # the chart's colors (tests/test_android_verify.py finds them in a screenshot)
PREFILL_COLOR = "#e8761a"
VERDICT_COLOR = {"PASS": "#1a7f37", "FAIL": "#cf222e", "NOT RUN": "#6e7781"}

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 24px; color: #1f2328; max-width: 1100px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 22px 0 8px; }
table { border-collapse: collapse; } td, th { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-weight: 700; } .reason { color: #cf222e; font-size: 13px; }
.big { font-size: 28px; font-weight: 800; }
"""


def _num(value: Any, fmt: str, scale: float = 1.0) -> str:
    if not isinstance(value, int | float):
        return "-"
    return format(value / scale if scale != 1.0 else value, fmt)


def _label(run: dict[str, Any]) -> str:
    return f"{run['kernel_variant']} / {run['device']}"


def bar_chart(runs: list[dict[str, Any]]) -> str:
    """Horizontal bars, one pair per run: decode and prefill tok/s, each scaled to its own maximum."""
    row, label_w, bar_w = 26, 170, 380
    metrics = (("decode tok/s", "decode_tok_s", DECODE_COLOR), ("prefill tok/s", "prefill_tok_s", PREFILL_COLOR))
    parts, y = [], 0
    for title, key, color in metrics:
        values = [float(r[key]) if isinstance(r.get(key), int | float) else 0.0 for r in runs]
        top = max(values + [1e-9])
        parts.append(f'<text x="0" y="{y + 16}" font-weight="700" font-size="14">{escape(title)}</text>')
        y += row
        for run, value in zip(runs, values, strict=True):
            width = max(1, round(bar_w * value / top)) if value > 0 else 0
            parts.append(f'<text x="0" y="{y + 16}" font-size="13">{escape(_label(run))}</text>')
            parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{width}" height="{row - 8}" fill="{color}"/>')
            parts.append(f'<text x="{label_w + width + 6}" y="{y + 16}" font-size="13">{value:.2f}</text>')
            y += row
        y += 8
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 80}" height="{y}" role="img" '
            f'aria-label="tokens per second per kernel set">{"".join(parts)}</svg>')


def render_html(report: dict[str, Any]) -> str:
    d, b, runs = report["device"], report["bundle"], report["runs"]
    verdict = "PASS" if report["pass"] else "FAIL"
    title = f"{d.get('manufacturer', '')} {d.get('model', '')}".strip() or d.get("serial", "phone")
    facts = [("SoC", d.get("soc_model") or d.get("board") or d.get("hardware")),
             ("SoC maker", d.get("soc_manufacturer")),
             ("OS", d.get("os") or f"Android {d.get('android', '?')} (SDK {d.get('sdk', '?')})"), ("ABI", d.get("abi")),
             ("GPU", d.get("gpu")), ("CPU features", " ".join(d.get("cpu_features", []))), ("Build", d.get("build"))]
    kinds: dict[str, int] = {}  # "Cortex-X3 2.91 GHz" -> how many cores, in core order
    for c in d.get("cores", []):
        kind = c["name"] + (f" {c['max_khz'] / 1e6:.2f} GHz" if c.get("max_khz") else "")
        kinds[kind] = kinds.get(kind, 0) + 1
    cores = ", ".join(f"{n} x {kind}" for kind, n in kinds.items())
    facts.insert(1, ("CPU cores", cores))
    fact_rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in facts if v)
    bundle_rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(b.get(key)))}</td></tr>" for k, key in
                          (("model", "model"), ("family", "family"), ("quantization", "quantization"),
                           ("context", "context_length"), ("golden results", "golden_reference")))
    head = ("<tr><th>kernels</th><th>device</th><th>self-test</th><th>steps</th><th>near-ties</th>"
            "<th>max logit diff</th><th>prefill tok/s</th><th>decode tok/s</th><th>TTFT ms</th><th>load ms</th>"
            "<th>peak RSS MiB</th><th>KV MiB</th><th>image ms</th><th>thermal before/after</th></tr>")
    rows = []
    for r in runs:
        st = r.get("self_test") or {}
        color = VERDICT_COLOR.get(r["verdict"], "#000")
        reason = f'<div class="reason">{escape(r["reason"])}</div>' if r["reason"] else ""
        image = st.get("image")
        if isinstance(image, dict):  # MiniCPM-V: the turn with the golden image is part of the verdict
            reason += (f'<div class="reason">image turn ({image.get("slices")} slices, encode '
                       f'{_num(image.get("encode_ms"), ".0f")} ms): {"pass" if image.get("pass") else "fail"}</div>')
        cells = [_num(st.get("steps"), "d"), _num(st.get("near_ties"), "d"), _num(st.get("max_logit_diff"), ".1e"),
                 _num(r.get("prefill_tok_s"), ".2f"), _num(r.get("decode_tok_s"), ".2f"), _num(r.get("ttft_ms"), ".0f"),
                 _num(r.get("load_ms"), ".0f"), _num(r.get("peak_rss_kb"), ".0f", 1024),
                 _num(r.get("kv_bytes"), ".1f", 2**20), _num(r.get("image_encode_ms"), ".0f")]
        before = r.get("thermal_status_before", r.get("thermal_state_before", "?"))
        thermal = f"{before} / {r.get('thermal_status_after', r.get('thermal_state_after', '?'))}"
        rows.append(f"<tr><td>{escape(r['kernel_variant'])}</td><td>{escape(r['device'])}</td>"
                    f'<td class="verdict" style="color:{color}">{escape(r["verdict"])}{reason}</td>'
                    + "".join(f'<td class="num">{c}</td>' for c in cells) + f"<td>{escape(thermal)}</td></tr>")
    s = report["settings"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>mcpm on {escape(title)}</title>'
            f"<style>{CSS}</style></head><body>"
            f"<h1>mcpm on {escape(title)}</h1>"
            f'<div class="big" style="color:{VERDICT_COLOR[verdict]}">{verdict}</div>'
            f"<p>mcpm {escape(report['mcpm_version'])}, {escape(report['created'])}: {s['prompt_tokens']} prompt "
            f"tokens, {s['gen_tokens']} generated, threads {s['threads'] or 'automatic (big cores)'}.</p>"
            f"<h2>Runs</h2><table>{head}{''.join(rows)}</table>"
            f"<h2>Speed</h2>{bar_chart(runs)}"
            f"<h2>Device</h2><table>{fact_rows}</table>"
            f"<h2>Bundle</h2><table>{bundle_rows}</table>"
            "</body></html>\n")


def write_html(report: dict[str, Any], path: Path) -> None:
    path.write_text(render_html(report), encoding="utf-8")
