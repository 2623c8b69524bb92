"""One Markdown table over several `moma cv` runs: python benchmarks/summarise_reports.py DIR [DIR ...]."""

import json
import sys
from pathlib import Path


def row(path: Path) -> str:
    r = json.loads((path / "report.json").read_text(encoding="utf-8"))
    s = r["summary"]
    n_folds = len(r.get("fold_names", [])) or s["folds"]
    folds = f"{s['folds']}/{n_folds}"
    norm = r["normalisation"].split(";")[0].split(" (")[0]
    single = s.get("single_model_uar")
    single_txt = f"{single['mean']:.3f} ± {single['std']:.3f}" if single else ""
    return (f"| [{path.name}]({path.name}/report.md) | {r['model']} | {norm} | {folds} | "
            f"**{s['uar']['mean']:.3f} ± {s['uar']['std']:.3f}** | {s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f} | "
            f"{s['macro_f1']['mean']:.3f} | {s['pooled']['uar']:.3f} | {single_txt} | "
            f"{r.get('device', '?')}, {r.get('wall_time_s', 0) / 60:.0f} min |")


def main(dirs: list[str]) -> None:
    print("| run | model and training | normalisation | folds | UAR (mean ± std over folds) | accuracy | macro-F1 | "
          "pooled UAR | single-member UAR (mean ± std over seeds) | device, wall time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in dirs:
        if (Path(d) / "report.json").is_file():
            print(row(Path(d)))


if __name__ == "__main__":
    main(sys.argv[1:])
