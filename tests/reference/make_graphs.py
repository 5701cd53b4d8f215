#!/usr/bin/env python3
"""Builds tiny ONNX models with known outputs for the decoder tests.

    make_graphs.py OUT_DIR

writes OUT_DIR/{yolov8,yolov5,classify}/ with model.onnx and model.toml.
The detectors ignore their input (the output is a constant plus 0 x the
input's mean, so the input is still consumed); the classifier's logits are
the per-channel means of its NHWC input, so colour order and layout show.
"""

import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def const_detector(out_name, const):
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    out = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, list(const.shape))
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["table", "z"], [out_name]),
    ]
    inits = [numpy_helper.from_array(const.astype(np.float32), "table"), numpy_helper.from_array(np.array(0, np.float32), "zero")]
    return helper.make_model(helper.make_graph(nodes, "g", [images], [out], inits), opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def classifier():
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 8, 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])
    nodes = [
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([1, 2], np.int64))),
        helper.make_node("ReduceMean", ["input", "axes"], ["logits"], keepdims=0),
    ]
    return helper.make_model(helper.make_graph(nodes, "c", [x], [y]), opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def write(out, name, model, manifest):
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    (d / "model.onnx").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    (d / "model.toml").write_text(
        f'name = "{name}"\nversion = "1"\ntask = "{manifest.pop("task")}"\nlicence = "Apache-2.0"\n'
        f'provenance = "tests/reference/make_graphs.py"\n\n[[files]]\nrole = "model"\npath = "model.onnx"\nsha256 = "{sha}"\n\n'
        + manifest.pop("rest")
    )


def main():
    out = Path(sys.argv[1])
    # YOLOv8 [1, 4+C, N]: columns are anchors (cx, cy, w, h, class 0, class 1).
    anchors = [
        [20, 30, 8, 6, 0.9, 0.1],  # kept
        [21, 30, 8, 6, 0.8, 0.1],  # same class, IoU 0.78 with the first: suppressed
        [20, 30, 8, 6, 0.1, 0.7],  # other class at the same place: kept
        [50, 40, 4, 4, 0.1, 0.05],  # below the threshold
    ]
    v8 = const_detector("output0", np.array(anchors, np.float32).T[None])
    v8.metadata_props.append(onnx.StringStringEntryProto(key="names", value="{0: 'bolt', 1: 'nut'}"))
    write(out, "yolov8", v8, {"task": "detect", "rest": '[input]\nname = "images"\nwidth = 64\nheight = 64\n\n[output]\ndecoder = "yolov8"\n\n[labels]\nmetadata_key = "names"\n'})
    # YOLOv5 [1, N, 5+C]: rows (cx, cy, w, h, objectness, class 0, class 1).
    rows = [
        [20, 30, 8, 6, 0.9, 1.0, 0.0],  # 0.9, class 0
        [40, 40, 10, 10, 0.5, 0.2, 0.6],  # 0.3, class 1
        [40, 40, 10, 10, 0.2, 0.9, 0.1],  # 0.18: dropped
    ]
    v5 = const_detector("output", np.array(rows, np.float32)[None])
    write(out, "yolov5", v5, {"task": "detect", "rest": '[input]\nname = "images"\nwidth = 64\nheight = 64\nfit = "stretch"\n\n[output]\ndecoder = "yolov5"\n\n[labels]\ninline = ["bolt", "nut"]\n'})
    write(out, "classify", classifier(), {"task": "classify", "rest": '[input]\nname = "input"\nwidth = 8\nheight = 8\nlayout = "nhwc"\ncolour = "bgr"\nfit = "stretch"\n\n[output]\ndecoder = "softmax"\ntop_k = 3\n\n[labels]\ninline = ["blue", "green", "red"]\n'})


if __name__ == "__main__":
    main()
