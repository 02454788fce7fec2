"""Names shared by the export side (torch), the ONNX Runtime adapters and the TensorRT plugins.
Torch-free: ``runtime/build_engine.py`` reads them without PyTorch installed."""

CUSTOM_DOMAIN = "ai.onnx.contrib"
PLUGIN_NAMESPACE = "pfpn"
PLUGIN_VERSION = "1"
ROI_ALIGN_NAME = "MultiLevelRoIAlign"
NMS_NAME = "BatchedNMS"
