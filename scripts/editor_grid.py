"""Draw an editor's sample grid on ferkit's own procedural faces (no dataset images, so the
figure may live in the repository): one face per class the generator knows (rows; with a mask
generator each row is followed by its masks), the input, then the face moved to each expression.

    .venv/bin/python scripts/editor_grid.py                       # the bundled fer2013-editor
    .venv/bin/python scripts/editor_grid.py RUN --out docs/gan-editor-procedural.png --seed 11

The faces are those of ``ferkit synth faces --per-class 1 --size <the generator's size> --seed S``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("generator", nargs="?", default="fer2013-editor",
                    help="GAN run folder, generator checkpoint or bundled name (default fer2013-editor)")
    ap.add_argument("--out", default="docs/gan-editor-procedural.png", help="PNG to write")
    ap.add_argument("--seed", type=int, default=11, help="seed of the procedural faces (default 11)")
    a = ap.parse_args(argv)

    import torch

    from ferkit.data import load_dataset
    from ferkit.errors import FerkitError
    from ferkit.models import InputSpec
    from ferkit.synth import generate_faces
    from ferkit.synth.gan import load_generator
    from ferkit.train.gan import GAN_INPUT, sample_grid, write_png

    try:
        G, record, _ = load_generator(a.generator)
        size, classes = record.image_size, tuple(record.classes)
        with tempfile.TemporaryDirectory() as tmp:
            generate_faces(Path(tmp) / "faces", per_class=1, classes=classes, size=size, seed=a.seed,
                           progress=False, workers=1)
            faces = load_dataset(Path(tmp) / "faces", classes, size, use_cache=False, progress=False)
        spec = InputSpec(size, **GAN_INPUT)
        grid = sample_grid(G, faces.images, faces.labels, classes, spec, torch.device("cpu"))
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_png(out, grid)
    except FerkitError as exc:
        print(f"editor_grid: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: {len(classes)} faces x (input + {len(classes)} expressions), generator {a.generator}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
