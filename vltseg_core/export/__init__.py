"""ONNX export with parity and FP16 checks, and TensorRT engines behind a trustworthy cache."""
