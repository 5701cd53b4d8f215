#!/usr/bin/env python3
"""Reference reader of the codes golden test (tests/e2e/codes.rs) and of
`vision-gateway bench codes`: zxing-cpp 3.1.1 (C++, Python bindings) reads
DataMatrix, Code 128 and QR codes on each image given, at its defaults
(rotations, downscaling, inverted), text in plain mode (a GS1 code's inner
FNC1 as ASCII 29, as the gateway gives it). One JSON object on stdout:
{file: {"ms": decode time, "codes": [{symbology, text, symbology_id,
corners}]}}.

    python tests/reference/codes_reference.py a.png b.png
"""

import json
import sys
import time

import zxingcpp
from PIL import Image

NAMES = {
    zxingcpp.BarcodeFormat.DataMatrix: "data_matrix",
    zxingcpp.BarcodeFormat.Code128: "code128",
    zxingcpp.BarcodeFormat.QRCode: "qr",
}


def main():
    formats = [zxingcpp.BarcodeFormat.DataMatrix, zxingcpp.BarcodeFormat.Code128, zxingcpp.BarcodeFormat.QRCode]
    out = {}
    for path in sys.argv[1:]:
        img = Image.open(path).convert("L")
        t = time.perf_counter()
        found = zxingcpp.read_barcodes(img, formats=formats, text_mode=zxingcpp.TextMode.Plain)
        ms = (time.perf_counter() - t) * 1e3
        codes = []
        for b in found:
            p = b.position
            corners = [[p.top_left.x, p.top_left.y], [p.top_right.x, p.top_right.y],
                       [p.bottom_right.x, p.bottom_right.y], [p.bottom_left.x, p.bottom_left.y]]
            codes.append({"symbology": NAMES.get(b.format, str(b.format)), "text": b.text,
                          "symbology_id": b.symbology_identifier, "corners": corners})
        out[path] = {"ms": ms, "codes": codes}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
