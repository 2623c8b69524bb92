"""Write a trained checkpoint into the package as a bundled model, with the card fields GET /v1/model shows.

    python benchmarks/bundle_model.py runs/bundled-v2/all/best.safetensors emodb-nemo-8class \
        --description "..." --intended-use "..." --limitations "..."

Every tensor and all other metadata (config, labels, normalisers, calibration, provenance) are kept as they are;
only ``description``, ``intended_use`` and ``limitations`` are added to the checkpoint's info. The model card
itself (``src/moma/pretrained/NAME.md``) is written by hand from the reports it cites.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moma.checkpoint import load_checkpoint, save_checkpoint
from moma.inference.predictor import PRETRAINED_DIR


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("name", help="the bundled model's name (file stem), e.g. emodb-nemo-8class")
    parser.add_argument("--description", required=True)
    parser.add_argument("--intended-use", required=True)
    parser.add_argument("--limitations", required=True)
    parser.add_argument("--out-dir", type=Path, default=PRETRAINED_DIR,
                        help=f"where NAME.safetensors is written (default: the package's {PRETRAINED_DIR})")
    args = parser.parse_args()
    loaded = load_checkpoint(args.checkpoint)
    out = args.out_dir / f"{args.name}.safetensors"
    info = {k: v for k, v in loaded.info.items() if k not in ("moma_version", "torch_version", "python", "created")}
    info.update(description=args.description, intended_use=args.intended_use, limitations=args.limitations,
                trained=loaded.info.get("trained") or loaded.info.get("created", ""))  # rebundling keeps the first
    # a fusion model (features.functionals) is unusable without the statistics of its functionals; the
    # out-of-domain statistics (moma train fits them) are kept too
    save_checkpoint(out, loaded.model, loaded.config, loaded.labels, loaded.normaliser, info=info,
                    functionals_normaliser=loaded.functionals_normaliser, ood=loaded.ood)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); card: {Path(out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
