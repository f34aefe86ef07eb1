"""Automatic captions for a dataset folder: captioners behind one small protocol, and the folder pass.

``load_captioner(NAME_OR_PATH, options)`` gives a ``Captioner`` (``caption(images) -> list[str]``);
``caption_folder`` writes the sidecar files. Heavy libraries load only with the captioner that
needs them (transformers for BLIP, onnxruntime for WD14 taggers).
"""

from studio.captioning.base import Captioner, batches
from studio.captioning.folder import CaptionReport, caption_folder, find_images, has_caption
from studio.captioning.registry import DEFAULT, CaptionerOptions, load_captioner

__all__ = [
    "DEFAULT",
    "CaptionReport",
    "Captioner",
    "CaptionerOptions",
    "batches",
    "caption_folder",
    "find_images",
    "has_caption",
    "load_captioner",
]
