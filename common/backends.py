"""Models by backend, loaded ready to run: torch (common.models) or onnxruntime (common.onnx_models,
an export_onnx.py directory). The onnx backends never import torch."""


import os

BACKENDS = ("torch", "onnx", "onnx-int8")


def encoder_name(model, backend):
    """What an index records as its encoder: an absolute path for local models, so the index finds it from
    any working directory, else the name."""
    if backend == "torch":
        from common.models import resolve_model

        model = resolve_model(model)
    return os.path.abspath(model) if os.path.isdir(model) else model


def load_encoder(model, backend="torch", device="auto", **overrides):
    """A bi-encoder ready to encode: a BiEncoder in eval mode on `device`, or for backend onnx /
    onnx-int8 an export_onnx.py directory run by onnxruntime (torch is then never imported).
    overrides: max lengths, prefixes and (torch only: it is inside an ONNX graph) pooling; None keeps
    the saved value."""
    if backend != "torch":
        from common.onnx_models import OnnxBiEncoder
        from common.run import UserError

        if overrides.pop("pooling", None) is not None:
            raise UserError(f"{model}: an ONNX export pools inside its graph; drop the pooling setting, or "
                            "re-export a model saved with the pooling you want")
        return OnnxBiEncoder.from_dir(model, quantized=backend == "onnx-int8", **overrides)
    from common.models import BiEncoder, pick_device

    return BiEncoder.from_pretrained(model, **overrides).to(pick_device(device)).eval()


def load_reranker(model, backend="torch", device="auto", max_length=None):
    """A cross-encoder ready to score: CrossEncoder, or OnnxCrossEncoder for the onnx backends."""
    if backend != "torch":
        from common.onnx_models import OnnxCrossEncoder

        return OnnxCrossEncoder.from_dir(model, quantized=backend == "onnx-int8", max_length=max_length)
    from common.models import CrossEncoder, pick_device

    return CrossEncoder.from_pretrained(model, max_length=max_length).to(pick_device(device)).eval()
