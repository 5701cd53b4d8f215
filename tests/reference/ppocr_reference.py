#!/usr/bin/env python3
"""Reference PP-OCR results for the golden test.

Runs RapidOCR 1.4.4 (Python onnxruntime 1.31.1, the same PP-OCRv4 det/rec
files the gateway pins) on each image given, without the angle classifier,
and prints one JSON object per line:

    {"file": ..., "items": [{"quad": [[x, y] x4], "text": ..., "score": ...}]}

Run by the golden test through the venv that tests/run creates from
tests/reference/requirements.txt.
"""

import json
import sys

from rapidocr_onnxruntime import RapidOCR


def main() -> None:
    engine = RapidOCR()
    for path in sys.argv[1:]:
        result, _ = engine(path, use_cls=False)
        items = []
        for quad, text, score in result or []:
            items.append({"quad": [[float(x), float(y)] for x, y in quad], "text": text, "score": float(score)})
        print(json.dumps({"file": path, "items": items}), flush=True)


if __name__ == "__main__":
    main()
