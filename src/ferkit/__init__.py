"""ferkit: facial expression recognition — train, evaluate, apply, and study generated faces.

Import is cheap: heavy modules (torch, OpenCV) load only when their API is first used.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "Recognizer", "FerkitError"]

from .errors import FerkitError


def __getattr__(name):  # lazy: `from ferkit import Recognizer` without importing torch at import time
    if name == "Recognizer":
        from .predict import Recognizer
        return Recognizer
    raise AttributeError(name)
