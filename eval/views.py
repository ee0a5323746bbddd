"""The denoising trajectory of prompted generation (eval/generate.py) as people see it: the canvas redrawn in the
terminal after every step (--show), an animated GIF (Pillow) or a self-contained HTML page with a slider
(--record). A canvas is shown as runs of text, masks (MASK_GLYPH) and EOS (EOS_GLYPH); files are written
atomically (common.io.atomic_path).
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

MASK_GLYPH, EOS_GLYPH = "░", "∎"


def canvas_segments(tokenizer, ids: list[int], mask_id: int, eos_id: int) -> list[tuple[str, str]]:
    """The canvas as (kind, text) runs: ("text", decoded run of tokens), ("mask", one glyph per mask),
    ("eos", one glyph per EOS). Runs of ordinary tokens are decoded together, so multi-byte characters split
    over byte-level tokens come out whole."""
    segments: list[tuple[str, str]] = []
    run: list[int] = []

    def flush():
        if run:
            segments.append(("text", tokenizer.decode(run, skip_special_tokens=True) if tokenizer else str(run)))
            run.clear()

    for token in ids:
        if token == mask_id or token == eos_id:
            flush()
            kind, glyph = ("mask", MASK_GLYPH) if token == mask_id else ("eos", EOS_GLYPH)
            if segments and segments[-1][0] == kind:
                segments[-1] = (kind, segments[-1][1] + glyph)
            else:
                segments.append((kind, glyph))
        else:
            run.append(int(token))
    flush()
    return segments


def terminal_text(segments, color: bool = True) -> str:
    """ANSI text: masks dim, EOS dim cyan."""
    if not color:
        return "".join(text for _, text in segments)
    style = {"text": "", "mask": "\x1b[2m", "eos": "\x1b[2;36m"}
    return "".join(f"{style[kind]}{text}\x1b[0m" if style[kind] else text for kind, text in segments)


class TerminalShow:
    """on_step callback redrawing every row of the batch: clear the screen, home, the header, each canvas."""

    def __init__(self, tokenizer, mask_id, eos_id, stream=None, labels: list[str] | None = None):
        self.tokenizer, self.mask_id, self.eos_id = tokenizer, mask_id, eos_id
        self.stream = stream or sys.stdout
        self.labels = labels

    def __call__(self, info: dict) -> None:
        lines = [f"\x1b[2J\x1b[Hstep {info['step']}/{info['steps']}  block {info['block'] + 1}"]
        for row, index in enumerate(info["indices"]):
            label = self.labels[index] if self.labels else f"#{index}"
            segments = canvas_segments(self.tokenizer, info["canvas"][row].tolist(), self.mask_id, self.eos_id)
            lines += ["", f"\x1b[1m{label}\x1b[0m", terminal_text(segments)]
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()


def _trajectory_frames(tokenizer, trajectories: list[list[list[int]]], mask_id, eos_id):
    """[frame][prompt] -> segments."""
    n = len(trajectories[0])
    return [[canvas_segments(tokenizer, t[f], mask_id, eos_id) for t in trajectories] for f in range(n)]


def _font(size: int):
    from PIL import ImageFont

    for name in (
        "DejaVuSansMono.ttf",
        "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
        "LiberationMono-Regular.ttf",
        "Menlo.ttc",
        "Consolas.ttf",
    ):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def _cells(segments, columns: int) -> list[list[tuple[str, str]]]:
    """Wrap (kind, text) segments into lines of at most ``columns`` (kind, char) cells; newlines break."""
    lines: list[list[tuple[str, str]]] = [[]]
    for kind, text in segments:
        for ch in text:
            if ch == "\n":
                lines.append([])
                continue
            if len(lines[-1]) >= columns:
                lines.append([])
            lines[-1].append((kind, "\t" if ch == "\t" else ch))
    return lines


def write_gif(path, tokenizer, trajectories, labels, mask_id, eos_id, columns: int = 80, frame_ms: int = 150):
    """An animated GIF, one frame per trajectory entry (steps + 1), prompts stacked; masks as grey boxes."""
    from PIL import Image, ImageDraw

    from common.io import atomic_path

    font = _font(14)
    left, top, right, bottom = font.getbbox("M")
    cw, ch = max(right - left, 8), max(bottom - top, 14) + 6
    frames = _trajectory_frames(tokenizer, trajectories, mask_id, eos_id)
    laid = [[_cells(segs, columns) for segs in frame] for frame in frames]
    heights = [max(len(frame[p]) for frame in laid) for p in range(len(trajectories))]  # fixed per prompt
    width = columns * cw + 20
    height = 10 + ch + sum((h + 2) * ch for h in heights) + 10
    colors = {"text": (20, 20, 20), "eos": (0, 130, 150)}
    images = []
    for f, frame in enumerate(laid):
        img = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        draw.text((10, 10), f"step {f}/{len(laid) - 1}", fill=(90, 90, 90), font=font)
        y = 10 + ch
        for p, lines in enumerate(frame):
            y += ch // 2
            draw.text((10, y), labels[p][:columns], fill=(120, 40, 40), font=font)
            y += ch
            for line in lines:
                for c, (kind, char) in enumerate(line):
                    x0 = 10 + c * cw
                    if kind == "mask":
                        draw.rectangle([x0 + 1, y + 2, x0 + cw - 1, y + ch - 4], fill=(200, 200, 200))
                    elif not char.isspace():
                        draw.text((x0, y), char, fill=colors[kind], font=font)
                y += ch
            y += (heights[p] - len(lines)) * ch + ch // 2
        images.append(img.convert("P", palette=Image.ADAPTIVE, colors=16))
    durations = [frame_ms] * (len(images) - 1) + [max(frame_ms, 1500)]
    with atomic_path(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=durations,
            loop=0,
            disposal=1,
            optimize=False,
        )


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; }}
pre {{ white-space: pre-wrap; font: 15px/1.5 monospace; border: 1px solid #ddd; padding: .7em; }}
.mask {{ color: #bbb; }} .eos {{ color: #08a; }} .label {{ color: #833; font-weight: bold; margin-top: 1em; }}
#controls {{ position: sticky; top: 0; background: white; padding: .5em 0; }}
input[type=range] {{ width: 60%; vertical-align: middle; }}
</style></head><body>
<h2>{title}</h2>
<p>{subtitle}</p>
<div id="controls"><button id="play">play</button>
<input id="slider" type="range" min="0" max="{last}" value="{last}"> <span id="label"></span></div>
<div id="panels"></div>
<script id="data" type="application/json">{data}</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const panels = document.getElementById("panels"), slider = document.getElementById("slider");
const pres = data.labels.map(function (label) {{
  const head = document.createElement("div"); head.className = "label"; head.textContent = label;
  const pre = document.createElement("pre"); panels.appendChild(head); panels.appendChild(pre); return pre;
}});
function show(f) {{
  document.getElementById("label").textContent = "step " + f + " / " + (data.frames.length - 1);
  data.frames[f].forEach(function (segments, p) {{
    pres[p].textContent = "";
    segments.forEach(function (s) {{
      const span = document.createElement("span"); span.className = s[0]; span.textContent = s[1];
      pres[p].appendChild(span);
    }});
  }});
}}
slider.addEventListener("input", function () {{ show(+slider.value); }});
let timer = null;
document.getElementById("play").addEventListener("click", function () {{
  if (timer) {{ clearInterval(timer); timer = null; this.textContent = "play"; return; }}
  if (+slider.value >= data.frames.length - 1) slider.value = 0;
  this.textContent = "pause"; const button = this;
  timer = setInterval(function () {{
    if (+slider.value >= data.frames.length - 1) {{
      clearInterval(timer); timer = null; button.textContent = "play"; return;
    }}
    slider.value = +slider.value + 1; show(+slider.value);
  }}, {frame_ms});
}});
show(+slider.value);
</script></body></html>
"""


def write_html(path, tokenizer, trajectories, labels, mask_id, eos_id, subtitle: str = "", frame_ms: int = 150):
    """A self-contained HTML page: every frame's segments as JSON, a slider and a play button."""
    from common.io import atomic_path

    frames = _trajectory_frames(tokenizer, trajectories, mask_id, eos_id)
    data = json.dumps({"labels": labels, "frames": frames}, ensure_ascii=False).replace("</", "<\\/")
    page = HTML_PAGE.format(
        title="Denoising trajectory", subtitle=html.escape(subtitle), last=len(frames) - 1, data=data, frame_ms=frame_ms
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


def write_record(path, trained, results: list[dict], labels: list[str], frame_ms: int = 150) -> None:
    """--record: the trajectories of ``results`` as .gif or .html (by the suffix)."""
    trajectories = [r["trajectory"] for r in results]
    mask_id, eos_id = trained.meta["mask_id"], trained.meta["eos_id"]
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        write_gif(path, trained.tokenizer, trajectories, labels, mask_id, eos_id, frame_ms=frame_ms)
    elif suffix in (".html", ".htm"):
        r = results[0]
        subtitle = (
            f"{trained.model_dir}: {r['remasking']}, {r['steps']} steps, gen_length {r['gen_length']}, "
            f"block_length {r['block_length']}, temperature {r['temperature']}, eos_guard {r['eos_guard']}"
        )
        write_html(path, trained.tokenizer, trajectories, labels, mask_id, eos_id, subtitle, frame_ms)
    else:
        raise ValueError(f"--record {path}: write .gif or .html")
