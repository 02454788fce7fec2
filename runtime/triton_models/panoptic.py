"""Triton Python-backend model ``pfpn_panoptic``: one panoptic request in, its COCO panoptic
result out, with this project's torch-free runtime.

Per request: input ``IMAGE`` (uint8 vector: the bytes of an encoded image) or ``IMAGE_BGR``
(uint8 (H, W, 3)); outputs ``ID_MAP`` (int32 (H, W) COCO segment ids, 0 = VOID),
``SEGMENTS_INFO`` (one JSON string: the ``segments_info`` list) and ``PANOPTIC_PNG`` (uint8
vector: the id map as a COCO panoptic PNG).

Batching: the dynamic batcher hands ``execute`` the requests that arrived together (ragged:
every image has its own size). They are decoded and resized with REFERENCE §2's rule, grouped by the
padded canvas they need (multiples of 32), and each group is one call of the network model
(a BLS request with the group as its batch): what ``runtime.Predictor.predict_batch`` computes
for those images, pixel for pixel. A request that fails (not an image, wrong dtype, ...) gets
an error response naming the problem; the others in the batch are answered normally.
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from pfpn.runtime.contract import INPUT_NAMES, OUTPUT_NAMES, ModelMetadata
from pfpn.runtime.images import check_image, decode_image
from pfpn.runtime.categories import CategoryTable
from pfpn.runtime.panoptic_io import encode_panoptic_png
from pfpn.runtime.predictor import panoptic_map_single_image
from pfpn.runtime.preprocess import pad_batch, padded_size, resize_image
from pfpn.runtime.result import to_panoptic_result


def request_image(request, name: str) -> np.ndarray:
    """The (H, W, 3) uint8 BGR image of one request; ValueError naming the problem."""
    encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE")
    raw = pb_utils.get_input_tensor_by_name(request, "IMAGE_BGR")
    if (encoded is None) == (raw is None):
        raise ValueError(f"{name}: send exactly one of IMAGE (encoded image bytes) and IMAGE_BGR (uint8 H x W x 3)")
    data = (encoded if encoded is not None else raw).as_numpy()
    if data.shape[0] != 1:  # the batch dimension (max_batch_size > 0)
        raise ValueError(f"{name}: send one image per request, got a batch of {data.shape[0]}")
    if data.dtype != np.uint8:
        raise ValueError(f"{name}: {'IMAGE' if encoded is not None else 'IMAGE_BGR'} must be uint8, got {data.dtype}")
    if encoded is not None:
        return decode_image(data.reshape(-1).tobytes(), name)
    return check_image(np.ascontiguousarray(data[0]), name)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.network = params["network_model"]
        self.metadata = ModelMetadata.from_props(json.loads(params["pfpn_metadata"]))
        self.categories = CategoryTable(self.metadata.categories)

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}  # padded canvas -> [(request index, image, resized, factor)]
        meta = self.metadata
        for i, request in enumerate(requests):
            try:
                image = request_image(request, f"request {request.request_id() or i}")
                resized, factor = resize_image(image, meta.max_long_side, meta.max_short_side)
                canvas = padded_size(*resized.shape[:2], meta.size_divisor)
                groups.setdefault(canvas, []).append((i, image, resized, factor))
            except Exception as e:  # one bad request does not fail the batch
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
        for members in groups.values():
            try:
                batch, sizes = pad_batch([m[2] for m in members], meta.size_divisor)
                outputs = self._network(batch, sizes)
                for k, (i, image, _, factor) in enumerate(members):
                    panoptic = panoptic_map_single_image(outputs, k, original_size=image.shape[:2],
                                                         resized_size=sizes[k], scale_factor=factor, metadata=meta)
                    responses[i] = self._response(requests[i], to_panoptic_result(panoptic, self.categories))
            except Exception as e:
                for i, *_ in members:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))
        return responses

    def _network(self, images: np.ndarray, image_sizes: np.ndarray) -> dict:
        request = pb_utils.InferenceRequest(
            model_name=self.network, requested_output_names=list(OUTPUT_NAMES),
            inputs=[pb_utils.Tensor(INPUT_NAMES[0], images), pb_utils.Tensor(INPUT_NAMES[1], image_sizes)])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"network model {self.network!r}: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in OUTPUT_NAMES}

    def _response(self, request, result):
        wanted = set(request.requested_output_names()) or {"ID_MAP", "SEGMENTS_INFO", "PANOPTIC_PNG"}
        tensors = []
        if "ID_MAP" in wanted:  # every output with the batch dimension of 1
            tensors.append(pb_utils.Tensor("ID_MAP", result.id_map.astype(np.int32)[None]))
        if "SEGMENTS_INFO" in wanted:
            info = json.dumps(result.segments_info).encode()
            tensors.append(pb_utils.Tensor("SEGMENTS_INFO", np.array([[info]], dtype=np.object_)))
        if "PANOPTIC_PNG" in wanted:
            png = np.frombuffer(encode_panoptic_png(result.id_map), np.uint8)
            tensors.append(pb_utils.Tensor("PANOPTIC_PNG", png[None]))
        return pb_utils.InferenceResponse(output_tensors=tensors)
