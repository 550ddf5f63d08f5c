"""Apply a trained model to photos, folders, videos and a webcam — offline.

Faces are found with OpenCV's bundled Haar cascade (``haarcascade_frontalface_alt2.xml``,
shipped inside opencv-python, nothing is downloaded), cropped as a square around the detected
box with a margin, and converted exactly as in training: the crop of the *gray* image goes
through :func:`ferkit.data.preprocess_gray` and the model's input contract. Image files are
decoded with :func:`ferkit.data.decode_image` (the training decoder: EXIF orientation, 16-bit,
alpha, pixel limit), video frames with :func:`ferkit.data.bgr_to_gray`.

Example::

    from ferkit import Recognizer
    r = Recognizer.load()                             # the default bundled model; or a run folder, .safetensors, .onnx
    for face in r.predict("group.jpg"):               # path, BGR/gray numpy array, or PIL image
        print(face.box, face.label, face.confidence)
    r.predict_faces([crop1, crop2])                   # already-cropped gray faces, batched

Limits of the Haar detector (measured, see the project notes): frontal and near-frontal faces
only — profile faces (beyond roughly 30-45 degrees of yaw), strongly tilted heads (beyond
roughly 20 degrees of roll) and faces smaller than ``min_face`` of the image are missed; the
cascade also yields occasional false positives on textured background.
"""
from .detect import CASCADES, FaceDetector, crop_face, draw_faces
from .recognizer import (
                         FacePrediction,
                         OnnxBackend,
                         Recognizer,
                         TorchBackend,
                         open_backend,
                         read_color,
                         read_gray,
                         to_gray,
)
from .runner import VIDEO_EXTENSIONS, PredictionWriter, Predictor, RunSummary, collect_inputs, predict_inputs

__all__ = ["CASCADES", "FaceDetector", "FacePrediction", "OnnxBackend", "Predictor", "PredictionWriter", "Recognizer",
           "RunSummary", "TorchBackend", "VIDEO_EXTENSIONS", "collect_inputs", "crop_face", "draw_faces",
           "open_backend", "predict_inputs", "read_color", "read_gray", "to_gray"]
