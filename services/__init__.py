"""The four services, one folder each (imported as `facestream.services.<name>`):

- `detector/`: fetch the image, decode it safely, find faces (YuNet), gate on quality, align;
- `embedder/`: embed aligned faces (SFace) in-process or on NVIDIA Triton; model preparation;
- `matcher/`: search the gallery (Qdrant) or enrol into it;
- `notifier/`: subscriptions, signed webhook delivery with retries and dead letters, crop links.

Each has `logic.py` (plain functions), `stage.py` (its batch processing) and `service.py` (how the
platform runs it). `main.py` lists the four and is the `facestream` command; services import
the platform (`facestream.*`) and never each other.
"""
