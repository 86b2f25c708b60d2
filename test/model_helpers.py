"""Small real models shared by the tests (random weights, the shipped architecture code)."""
from vltseg_core.models import load_preset

TINY_M2F_HEAD = {"type": "mask2former", "hidden_dim": 64, "num_queries": 10, "dec_layers": 3, "dec_ffn_dim": 128,
                 "enc_layers": 2, "enc_ffn_dim": 128}


def tiny_mask2former_preset() -> dict:
    """The tiny-test backbone with a small Mask2Former head (deformable-attention pixel decoder, masked attention)."""
    preset = load_preset("tiny-test")
    preset["head"] = dict(TINY_M2F_HEAD)
    return preset
