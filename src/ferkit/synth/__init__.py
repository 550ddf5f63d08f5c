"""Generated faces: each generator is one module behind one small interface, writing through one
atomic dataset writer (:mod:`ferkit.synth.writer`) in the ImageFolder layout plus metadata.csv.

- :mod:`ferkit.synth.procedural`: FACS-based procedural faces (``ferkit synth faces``), no weights.
- :mod:`ferkit.synth.gan`: a learned StarGAN-style generator that moves real faces to a target
  expression (``ferkit synth edit``), trained by ``ferkit gan train``.

Example::

    from ferkit.synth import generate_faces, generate_splits, write_preview
    generate_faces("data/synth", per_class=200)
"""
from .procedural import (
                         AUS,
                         DEFAULT_CLASSES,
                         META_COLUMNS,
                         PROTOTYPES,
                         generate_faces,
                         generate_splits,
                         render_face,
                         sample_face_params,
                         write_preview,
)

__all__ = ["AUS", "DEFAULT_CLASSES", "META_COLUMNS", "PROTOTYPES", "generate_faces", "generate_splits",
           "render_face", "sample_face_params", "write_preview"]
