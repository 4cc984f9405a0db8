"""Triton python-backend model: the prepared SFace ONNX file on ONNX Runtime (CPU).

Every request of a dynamic batch is stacked into one ONNX Runtime call, as Triton's own
onnxruntime backend would do on a GPU. Runs inside Triton's python stub, not in facestream.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        path = config["parameters"]["onnx_path"]["string_value"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [pb_utils.get_input_tensor_by_name(r, "data").as_numpy() for r in requests]
        sizes = [len(x) for x in inputs]
        outputs = self.session.run(["fc1"], {"data": np.concatenate(inputs)})[0]
        responses = []
        start = 0
        for size in sizes:
            part = outputs[start : start + size].astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("fc1", part)]))
            start += size
        return responses
