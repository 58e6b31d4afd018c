"""Running a trained detector: the torch inferencer behind ``spadecam score`` and
``spadecam evaluate`` (:class:`TorchInferencer`); the ONNX exporter is to come beside it."""

from spadecam.deploy.torch_inferencer import TorchInferencer, map_names, overlay, write_png

__all__ = ["TorchInferencer", "map_names", "overlay", "write_png"]
