"""Triton Python-backend model ``pfpn_network``: the exported network (runtime/contract.py
inputs and outputs) run by this project's ONNX Runtime backend inside the Python backend, the
backend that runs on a plain CPU machine. In NVIDIA's Triton containers the same model folder
can instead use the native ``onnxruntime`` or ``tensorrt`` backend (runtime/triton_repo.py
``--network-backend``)."""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from pfpn.runtime.backends import open_backend
from pfpn.runtime.contract import INPUT_NAMES, OUTPUT_NAMES


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        threads = int(params.get("threads", "1"))
        self.backend = open_backend(folder / params["model_file"], params.get("runtime_backend") or None,
                                    threads=threads)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images, sizes = (pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in INPUT_NAMES)
                outputs = self.backend.run(images, sizes)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, outputs[name]) for name in OUTPUT_NAMES]))
            except Exception as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}")))
        return responses
