#!/usr/bin/env python3
"""Python reference for scripts/bench-image.sh: the same model files on the same images.

- meme_classifier: onnxruntime on sscd_distilled.onnx, with the same preprocessing
  (decode, RGB, longer side scaled to 320 with a bilinear/triangle filter, uint8 NHWC) and
  the same gallery lookup (dot products with the gallery's embeddings).
- ocr: rapidocr 3.10 with the same PP-OCRv6 small det/rec files, angle classifier off
  (plugworker has none), other settings at rapidocr's defaults, which plugworker mirrors.

OCR character accuracy is counted on the same images as plugworker's bench counts it
(caption text from the `.txt` beside each image, whitespace ignored).

Prints one RESULT line of JSON.
"""
import json
import pathlib
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image
from rapidocr import RapidOCR

inputs = sorted(pathlib.Path(sys.argv[1]).glob("*.jpg"))
models = pathlib.Path(sys.argv[2])
images = [p.read_bytes() for p in inputs]


def percentile(samples, p):
    samples = sorted(samples)
    return samples[round((len(samples) - 1) * p)]


def measure(iterations, warmup, work):
    for i in range(warmup):
        work(i)
    samples = []
    for i in range(iterations):
        started = time.perf_counter()
        work(i)
        samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 0.5), percentile(samples, 0.95)


def decode(data):
    import io
    return Image.open(io.BytesIO(data)).convert("RGB")


session = ort.InferenceSession(str(models / "cache/sscd/sscd_distilled.onnx"), providers=["CPUExecutionProvider"])


def embed(image):
    w, h = image.size
    scale = 320 / max(w, h)
    if scale < 1:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    x = np.asarray(image, dtype=np.uint8)[None]
    v = session.run(None, {"image": x})[0][0]
    return v / np.linalg.norm(v)


gallery = np.stack([embed(decode(p.read_bytes())) for p in sorted((models / "gallery").glob("*/*.jpg"))])


def classify(i):
    scores = gallery @ embed(decode(images[i % len(images)]))
    return int(np.argmax(scores))


meme = measure(60, 5, classify)

engine = RapidOCR(params={
    "Global.use_cls": False,
    "Global.log_level": "warning",
    "Det.model_path": str(models / "cache/ppocr/PP-OCRv6_det_small.onnx"),
    "Rec.model_path": str(models / "cache/ppocr/PP-OCRv6_rec_small.onnx"),
})


def read(i):
    image = np.asarray(decode(images[i % len(images)]))[:, :, ::-1]  # RGB -> BGR, as cv2 loads
    return engine(image)


def edit_distance(a, b):
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a):
        current = [i + 1]
        for j, cb in enumerate(b):
            current.append(min(previous[j] + (ca != cb), previous[j + 1] + 1, current[j] + 1))
        previous = current
    return previous[-1]


def squeeze(text):
    return "".join(text.split())


edits = characters = 0
for i, path in enumerate(inputs):
    expected = squeeze(path.with_suffix(".txt").read_text())
    result = read(i)
    lines = result.txts or () if result is not None else ()
    edits += edit_distance(expected, squeeze("".join(lines)))
    characters += len(expected)

ocr = measure(18, 2, read)
print("RESULT " + json.dumps({
    "meme_p50_ms": meme[0], "meme_p95_ms": meme[1], "ocr_p50_ms": ocr[0], "ocr_p95_ms": ocr[1],
    "ocr_accuracy": 1 - edits / characters,
}))
