"""Checks that need the backends, the predictor or real frames: ONNX parity, the FP16 check, the engine gate."""
