"""PyTorch backend: the reference the other backends are checked against (CPU or CUDA; fp32/fp16/bf16)."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from vltseg_core.backends.base import check_batch, check_precision
from vltseg_core.errors import VLTSegError

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend:
    name = "torch"
    input_size = None  # the model pads internally, so any size works

    def __init__(self, model: torch.nn.Module, device: str = "cpu", precision: str = "fp32", model_id: str = ""):
        check_precision(self.name, precision)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise VLTSegError(f"backend torch: device '{device}' requested but no CUDA GPU is visible (use device=cpu)")
        self.device = torch.device(device)
        self.precision = precision
        self.model = model.eval().to(self.device)
        self.num_classes = int(getattr(model, "num_classes"))
        self.model_id = model_id

    def _autocast(self):
        # Autocast keeps LayerNorm/softmax in fp32 while matmuls run in half precision.
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AUTOCAST[self.precision])

    @torch.inference_mode()
    def infer_device(self, batch: np.ndarray) -> torch.Tensor:
        batch = check_batch(batch, None, "backend torch")
        images = torch.from_numpy(batch).to(self.device, non_blocking=True).float()
        with self._autocast():
            probs = self.model(images).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # done when returned, so the predictor's timings are true
        return probs

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.infer_device(batch).cpu().numpy()

    def identity(self) -> dict:
        return {"backend": self.name, "device": str(self.device), "precision": self.precision,
                "model": self.model_id, "torch": torch.__version__}
