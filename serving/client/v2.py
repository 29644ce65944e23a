"""The model's KServe v2 (Open Inference Protocol) signature: its input and output tensors.

One table for the server's model metadata and request parsing and for the clients that build
requests; it imports nothing, so the client library stays free of server code."""

from __future__ import annotations

# Inputs are one-element tensors but for the pairs below. Integer inputs take any INT/UINT type,
# floats any FP or INT.
DECLARED_INPUTS: dict[str, str] = {
    "prompt": "BYTES",
    "negative_prompt": "BYTES",
    "scheduler": "BYTES",
    "steps": "INT32",
    "width": "INT32",
    "height": "INT32",
    "num_images": "INT32",
    "seed": "INT64",
    "guidance_scale": "FP32",
    "guidance_rescale": "FP32",
    "original_size": "INT32",
    "crops_coords_top_left": "INT32",
    "target_size": "INT32",
    # Image-to-image: the picture's file (gRPC: its bytes; REST: base64 text) and the strength;
    # `input_image`, as `image` is the output of the pictures made.
    "input_image": "BYTES",
    "strength": "FP32",
    # Inpainting: the mask's file, as input_image (white repaints).
    "input_mask": "BYTES",
}
# Two-element inputs ([height, width], [top, left]): SDXL's size conditioning, which only SDXL
# models declare.
PAIR_INPUTS = ("original_size", "crops_coords_top_left", "target_size")


def input_shape(name: str) -> list[int]:
    return [2] if name in PAIR_INPUTS else [1]


# name -> (datatype, shape); -1 is a dimension that varies.
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "image": ("UINT8", [-1, -1, -1, 3]),
    "image_bytes": ("BYTES", [-1]),
    "seed": ("INT64", [-1]),
}
INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


def accepted_datatypes(declared: str) -> frozenset[str]:
    """The datatypes a request may use for an input declared as `declared`."""
    if declared in INT_TYPES:
        return INT_TYPES
    if declared in FLOAT_TYPES:
        return FLOAT_TYPES | INT_TYPES
    return frozenset({declared})


# gRPC trailing metadata of an error: the field it names, and seconds to wait before retrying.
FIELD_METADATA = "sd-field"
RETRY_AFTER_METADATA = "retry-after"
