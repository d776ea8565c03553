#!/usr/bin/env python3
"""Python reference for scripts/bench-image.sh: the same model files on the same images.

- meme_classifier: onnxruntime on sscd_distilled.onnx, with the same preprocessing
  (decode, RGB, longer side scaled to 320 with a bilinear/triangle filter, uint8 NHWC) and
  the same gallery lookup (dot products with the gallery's embeddings).
- ocr: rapidocr 3.10 with the same PP-OCRv6 small det/rec files, angle classifier off
  (plugworker has none), other settings at rapidocr's defaults, which plugworker mirrors.

OCR character accuracy is counted on the same images as plugworker's bench counts it
(caption text from the `.txt` beside each image, whitespace ignored).

Thread settings are onnxruntime's defaults (intra-op threads: one per physical core;
sequential execution; all graph optimisations), which plugworker's match on a machine
without SMT (one intra-op thread per core, graph optimisation level All).

Every classification is checked against the template label the Rust bench wrote beside
the image (`.label`), so a wrong answer fails the run instead of printing a figure.
`--meme-only` measures the classifier alone (scripts/bench-image.sh's alternating rounds).

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

arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
meme_only = "--meme-only" in sys.argv[1:]
inputs = sorted(pathlib.Path(arguments[0]).glob("*.jpg"))
models = pathlib.Path(arguments[1])
images = [p.read_bytes() for p in inputs]
labels = [p.with_suffix(".label").read_text() for p in inputs]


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


def preprocess(image):
    w, h = image.size
    scale = 320 / max(w, h)
    if scale < 1:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return image


def infer(image):
    x = np.asarray(image, dtype=np.uint8)[None]
    v = session.run(None, {"image": x})[0][0]
    return v / np.linalg.norm(v)


def embed(image):
    return infer(preprocess(image))


templates = sorted((models / "gallery").glob("*/*.jpg"))
gallery = np.stack([embed(decode(p.read_bytes())) for p in templates])
template_labels = [p.parent.name for p in templates]


def classify(i):
    scores = gallery @ embed(decode(images[i % len(images)]))
    best = int(np.argmax(scores))
    # plugworker's threshold: a label only at a cosine similarity of 0.3 or more.
    label = template_labels[best] if scores[best] >= 0.3 else "unknown"
    assert label == labels[i % len(images)], f"{inputs[i % len(images)]}: {label} ({scores[best]:.3f})"


meme = measure(60, 5, classify)

# Where the time goes: each stage alone, over the same images (as the Rust bench).
decoded = [decode(b) for b in images]
scaled = [preprocess(d) for d in decoded]
stages = {
    "decode": measure(60, 5, lambda i: decode(images[i % len(images)]))[0],
    "resize": measure(60, 5, lambda i: preprocess(decoded[i % len(decoded)]))[0],
    "inference": measure(60, 5, lambda i: infer(scaled[i % len(scaled)]))[0],
}
if meme_only:
    print("RESULT " + json.dumps({"meme_p50_ms": meme[0], "meme_p95_ms": meme[1], "stages_ms": stages}))
    sys.exit(0)

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
    "meme_p50_ms": meme[0], "meme_p95_ms": meme[1], "stages_ms": stages, "ocr_p50_ms": ocr[0], "ocr_p95_ms": ocr[1],
    "ocr_accuracy": 1 - edits / characters,
}))
