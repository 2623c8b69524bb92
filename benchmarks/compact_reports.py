"""Shrink the committed reports (issue 35): python benchmarks/compact_reports.py [REPORTS_DIR]

* every ``report.json`` still holding its per-utterance predictions inline is rewritten through
  :func:`moma.evaluation.report_files.save_report_json` (predictions into ``predictions.npz`` beside it). Each is
  read back and must serialise to the very same JSON as before, and its ``report.md`` must render the same
  from the rewritten report as from the old one, or the script stops before touching the next;
* every PNG figure not yet palette-coded is re-saved with a 256-colour palette (matplotlib's figures use a
  colour map of 256 entries plus anti-aliased text; the quantised figure looks the same and is ~3x smaller).

Rerunning it changes nothing.
"""

import json
import sys
from pathlib import Path

from PIL import Image

from moma.evaluation.fusion import render_fusion_markdown
from moma.evaluation.metrics import render_markdown
from moma.evaluation.report_files import load_report_json, save_report_json
from moma.research.classical import render_classical_markdown


def render(report: dict) -> str:
    if "runs" in report:
        return render_classical_markdown(report)
    return render_fusion_markdown(report) if "fused" in report else render_markdown(report)


def compact_report(path: Path) -> bool:
    """Rewrite one report.json with its predictions beside it; True when it changed."""
    old_text = path.read_text(encoding="utf-8")
    old = json.loads(old_text)
    if "predictions_file" in old:
        return False
    before = render(old)
    save_report_json(old, path.parent)
    back = load_report_json(path)
    if json.dumps(back, indent=1) != json.dumps(old, indent=1) or render(back) != before:
        path.write_text(old_text, encoding="utf-8")
        (path.parent / "predictions.npz").unlink(missing_ok=True)
        raise SystemExit(f"{path}: does not read back as it was; restored")
    return True


def compact_png(path: Path) -> bool:
    with Image.open(path) as im:
        if im.mode == "P":
            return False
        quantised = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    quantised.save(path, "PNG", optimize=True)
    return True


def main(root: Path) -> None:
    reports = sorted(root.rglob("report.json"))
    changed = sum(compact_report(p) for p in reports)
    same_md = sum((p.parent / "report.md").is_file() and (p.parent / "report.md").read_text(encoding="utf-8")
                  == render(load_report_json(p)) for p in reports)
    pngs = sorted(root.rglob("*.png"))
    quantised = sum(compact_png(p) for p in pngs)
    print(f"{changed} of {len(reports)} report.json rewritten (each read back identically); "
          f"{same_md} committed report.md render byte-identically from them; {quantised} of {len(pngs)} PNGs "
          "palette-coded")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "reports"))
