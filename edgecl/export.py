"""Export a method's inference path to ONNX, normalization included (see docs/export.md).

The graph takes what a deployment has at hand: a float32 (or uint8) NCHW RGB batch in
[0, 255], already resized to the model's input size; it normalizes, runs the method's own
``predict`` and returns the logits over the classes seen so far and their softmax. The resize
stays outside the graph (:func:`model_input` is edgecl's, minus the normalization): ONNX
``Resize`` differs between runtimes, so a deployer reproduces it with their own image code.

The graph is traced from ``method.predict`` itself, so what runs in ONNX is what edgecl
evaluates; an export that does not reproduce ``predict`` on a probe batch is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecl import __version__
from edgecl.errors import ConfigError, one_line
from edgecl.io import atomic_write_bytes
from edgecl.methods.base import Method

InputDType = Literal["float32", "uint8"]
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")
FORMAT_VERSION = "1"
# Methods whose export tests/test_export.py checks against predict. Any other method is tried
# the same way and kept only if it passes the same check at export time.
SUPPORTED_METHODS = (
    "finetune", "joint", "er", "derpp", "ewc", "lwf", "sparcl", "lightcl", "latent_replay",
    "ncm", "l2p", "dualprompt", "coda_prompt", "cps_prompt", "l2p_rep", "dualprompt_rep",
    "coda_prompt_rep", "cps_prompt_rep", "csko",
)
# REP's selector shrinks its input with an antialiased bilinear resize inside the model;
# ONNX Resize has the antialias attribute from opset 18 on.
ANTIALIAS_OPSET = 18
# Export-time check: |ONNX - predict| <= VERIFY_ATOL + VERIFY_RTOL * max|logit| on a probe
# batch (float32 through different kernels; tests/test_export.py measures far less).
VERIFY_ATOL, VERIFY_RTOL = 1e-4, 1e-4
PROBE_TRACE, PROBE_VERIFY = 2, 3  # batch sizes: verifying on another proves the dynamic axis
RESIZE = {
    "function": "torch.nn.functional.interpolate",
    "mode": "bilinear",
    "align_corners": False,
    "antialias": "when shrinking either side",
    "aspect_ratio": "not kept: straight to size x size, no crop",
    "input": "the uint8 image as float32, not rescaled; the result is not rounded",
}
_EXPORT_LOCK = threading.Lock()  # the exporter's symbolic registry is process-global


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export_onnx` wrote; ``metadata`` is the file's ``metadata_props``."""

    path: Path
    method: str
    class_names: tuple[str, ...]
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_dtype: InputDType
    opset: int
    preprocessing: str
    edgecl_version: str
    model_version: str
    max_abs_diff: float | None  # ONNX vs predict at export (None: not verified)
    metadata: dict[str, str]
    sha256: str
    n_bytes: int


def preprocessing_text(img_size: int, mean: Sequence[float], std: Sequence[float],
                       input_dtype: InputDType = "float32") -> str:
    s = img_size
    return (
        f"Input '{INPUT_NAME}': {input_dtype} (B, 3, {s}, {s}), NCHW, RGB, pixel values in "
        f"[0, 255]. Resize outside the model as edgecl's eval transform does: "
        f"torch.nn.functional.interpolate(size=({s}, {s}), mode='bilinear', "
        "align_corners=False, antialias=True when shrinking either side) of the uint8 image "
        "as float, straight to the square (aspect ratio not kept, no crop), not rounded; grey "
        "images repeat their channel 3 times. Inside the model: (x / 255 - mean) / std with "
        f"mean={list(mean)}, std={list(std)}."
    )


def model_input(images: Tensor | np.ndarray, img_size: int) -> Tensor:
    """uint8 ``(B, H, W, C)`` images (C = 1 or 3) → the exported graph's float32 input.

    Exactly :func:`edgecl.data.transforms.eval_transform` without its normalization.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ConfigError(f"model_input takes uint8 (B, H, W, C) images with C in {{1, 3}}; "
                          f"got {images.dtype} {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    h, w = x.shape[-2:]
    if (h, w) != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False,
                          antialias=img_size < h or img_size < w)
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


class InferenceGraph(nn.Module):
    """[0, 255] images → normalize → ``method.predict`` → (logits, softmax) over ``n`` classes."""

    def __init__(self, method: Method, n_classes: int, mean: Sequence[float],
                 std: Sequence[float], input_dtype: InputDType = "float32") -> None:
        super().__init__()
        self.device = torch.device(getattr(method, "device", "cpu"))
        self.method_modules = method.modules  # its tensors become named initializers
        self.predict = method.predict
        self.n_classes = n_classes
        self.input_dtype = input_dtype
        # The eval transform's folded multiply-add, with its very constants.
        scale = [1.0 / (255.0 * s) for s in std]
        shift = [-m / s for m, s in zip(mean, std, strict=True)]
        for name, values in (("scale", scale), ("shift", shift)):
            tensor = torch.tensor(values).view(1, 3, 1, 1).to(self.device)
            self.register_buffer(name, tensor, persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        return images.to(torch.float32) * self.scale + self.shift

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.predict(self.normalize(images))[:, : self.n_classes]
        return logits, logits.softmax(dim=1)


# ---- exporter gaps, filled for the duration of one export ------------------------------------
def _sort_symbolic(g: Any, self: Any, *args: Any) -> Any:
    """aten::sort (``stable=True`` included) as ONNX TopK over the whole axis.

    TopK breaks ties by the lower index, which is the stable sort's order; the built-in
    symbolic refuses the ``stable`` overload the prompt pools use for top-k selection.
    """
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "i", "b")
    def topk_sort(g: Any, x: Any, dim: int, descending: bool) -> Any:
        shape = g.op("Shape", x)
        k = g.op("Gather", shape, g.op("Constant", value_t=torch.tensor([dim])), axis_i=0)
        return g.op("TopK", x, k, axis_i=dim, largest_i=int(descending), sorted_i=1, outputs=2)

    return topk_sort(g, self, args[-2], args[-1])


def _resize_aa_symbolic(g: Any, self: Any, output_size: Any, align_corners: Any,
                        *rest: Any) -> Any:
    """aten::_upsample_bilinear2d_aa as ONNX Resize with ``antialias=1`` (opset 18+).

    ``exclude_outside=1`` with half-pixel centres reproduces torch's antialiased bilinear
    filter (onnxruntime agrees to ~5e-5 on a 0-255 scale).
    """
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "is", "b")
    def resize(g: Any, x: Any, size: list[int], corners: bool) -> Any:
        if corners:
            raise ConfigError("an antialiased resize with align_corners=True has no ONNX form")
        shape = g.op("Shape", x)
        batch_channels = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([0])),
                              g.op("Constant", value_t=torch.tensor([2])))
        sizes = g.op("Concat", batch_channels,
                     g.op("Constant", value_t=torch.tensor(size, dtype=torch.int64)), axis_i=0)
        empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        return g.op("Resize", x, empty, empty, sizes, mode_s="linear", antialias_i=1,
                    exclude_outside_i=1, coordinate_transformation_mode_s="half_pixel")

    return resize(g, self, output_size, align_corners)


class _NeedsOpset(Exception):
    """Raised inside a symbolic: the graph needs a newer opset than the one asked for."""

    def __init__(self, opset: int, why: str) -> None:
        super().__init__(f"{why}, which ONNX has from opset {opset}; pass opset={opset}")
        self.opset = opset


def _needs_antialias_opset(g: Any, *args: Any) -> Any:
    raise _NeedsOpset(ANTIALIAS_OPSET, "it resizes with antialiasing inside the model "
                                       "(REP's selector)")


@contextlib.contextmanager
def _symbolics(opset: int) -> Iterator[None]:
    aa = _resize_aa_symbolic if opset >= ANTIALIAS_OPSET else _needs_antialias_opset
    table = {"aten::sort": _sort_symbolic, "aten::_upsample_bilinear2d_aa": aa}
    for name, fn in table.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in table:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


@contextlib.contextmanager
def _untouched(method: Method) -> Iterator[None]:
    """Leave no trace of the export's passes: module modes and the run's cost meter as found.

    ``predict`` switches modules to eval mode and may book FLOPs; a learner that exports
    between steps must see neither.
    """
    modes = [(m, m.training) for m in method.modules.modules()]
    meter = getattr(method, "meter", None)
    counters = [] if meter is None else [meter.flops, meter.seconds]
    saved = [dict(c) for c in counters]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for counter, values in zip(counters, saved, strict=True):
            counter.clear()
            counter.update(values)


# ---- checks --------------------------------------------------------------------------------
def _require(module: str, why: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{why} needs the {module} package: pip install onnx onnxruntime"
                          ) from err


def _check_exportable(method: Method, opset: int) -> None:
    if type(method).predict is Method.predict:
        raise ConfigError(f"{method.name}: the method has no predict, nothing to export")
    if getattr(method.params, "batchwise_eval", False):
        raise ConfigError(
            f"{method.name}: batchwise_eval=true picks prompts by a vote over the whole batch, "
            "so a prediction is not a function of its image; export with batchwise_eval=false"
        )
    if opset < 11:
        raise ConfigError(f"export needs opset >= 11 (TopK with a dynamic k), got {opset}")


def _probe(n: int, img_size: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, img_size, img_size), generator=g).to(torch.float32)


def _export_error(method: Method, err: Exception, opset: int) -> ConfigError:
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, _NeedsOpset):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return ConfigError(f"{method.name} cannot be exported at opset {opset}: {cause}")
    return ConfigError(f"{method.name} cannot be exported to ONNX: {one_line(err)[:400]}")


def logit_gap(onnx_logits: np.ndarray, reference: np.ndarray) -> float:
    """max |ONNX - reference| over the finite logits; inf if the -inf patterns differ."""
    finite = np.isfinite(reference)
    if not np.array_equal(finite, np.isfinite(onnx_logits)):
        return float("inf")
    if not finite.any():
        return 0.0
    return float(np.abs(onnx_logits[finite] - reference[finite]).max())


@contextlib.contextmanager
def _no_tf32(device: torch.device) -> Iterator[None]:
    """The reference in full float32: CUDA convolutions default to TF32, whose rounding
    (~1e-3) is the GPU's, not part of what the exported model computes."""
    if device.type != "cuda":
        yield
        return
    flags = (torch.backends.cudnn, torch.backends.cuda.matmul)
    saved = [f.allow_tf32 for f in flags]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in flags:
            f.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f, value in zip(flags, saved, strict=True):
                f.allow_tf32 = value


def _verify(data: bytes, graph: InferenceGraph, method: Method, img_size: int,
            input_dtype: InputDType) -> float:
    ort = _require("onnxruntime", "verifying an export (verify=False skips it)")
    probe = _probe(PROBE_VERIFY, img_size, seed=1)
    with torch.no_grad(), _no_tf32(graph.device):
        reference = graph(probe.to(graph.device))[0].float().cpu().numpy()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feed = probe.numpy().astype(np.uint8 if input_dtype == "uint8" else np.float32)
    logits = session.run([OUTPUT_NAMES[0]], {INPUT_NAME: feed})[0]
    gap = logit_gap(logits, reference)
    finite = reference[np.isfinite(reference)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    if not gap <= VERIFY_ATOL + VERIFY_RTOL * scale:
        raise ConfigError(
            f"{method.name}: the ONNX model does not reproduce predict (max |logit diff| "
            f"{gap:.3g} at logit scale {scale:.3g}); not written"
        )
    return gap


# ---- the export ----------------------------------------------------------------------------
def _three(values: Sequence[float], what: str) -> tuple[float, float, float]:
    out = tuple(float(v) for v in values)
    if len(out) == 1:
        out = out * 3
    if len(out) != 3:
        raise ConfigError(f"export {what} needs 1 or 3 values, got {len(out)}")
    return out  # type: ignore[return-value]


def _trace(graph: InferenceGraph, img_size: int, opset: int, input_dtype: InputDType) -> bytes:
    example = _probe(PROBE_TRACE, img_size, seed=0).to(graph.device)
    if input_dtype == "uint8":
        example = example.to(torch.uint8)
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with _EXPORT_LOCK, _symbolics(opset), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # verify() catches misuse
        torch.onnx.export(
            graph, (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def export_onnx(
    method: Method,
    path: Path,
    *,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: list[str],
    opset: int = 17,
    input_dtype: InputDType = "float32",
    model_version: str | None = None,
    verify: bool = True,
) -> ExportInfo:
    """Write ``method``'s inference path as an ONNX model at ``path`` (atomically).

    ``class_names[i]`` names class id ``i``; the outputs cover ``len(class_names)`` classes,
    which must be the classes the method has seen (when it has seen any). ``model_version``
    defaults to a digest of the exported graph. With ``verify`` the file is written only if
    onnxruntime reproduces ``method.predict`` on a probe batch.
    """
    onnx = _require("onnx", "ONNX export")
    _check_exportable(method, opset)
    mean, std = _three(mean, "mean"), _three(std, "std")
    if img_size < 1 or min(std) <= 0:
        raise ConfigError(f"export needs img_size >= 1 and std > 0, got {img_size} and {std}")
    names = [str(n) for n in class_names]
    seen = int(getattr(method, "seen_classes", 0))
    if not names or (seen and len(names) != seen):
        raise ConfigError(
            f"export needs one class name per class seen: {len(names)} names for "
            f"{seen} classes seen by {method.name}"
        )
    graph = InferenceGraph(method, len(names), mean, std, input_dtype)
    with _untouched(method):
        graph.eval()  # the inference path: what predict runs, in eval mode
        width = graph.predict(graph.normalize(_probe(1, img_size, 0).to(graph.device))).shape[1]
        if len(names) > width:
            raise ConfigError(f"export: {len(names)} class names for {width} logits of "
                              f"{method.name}")
        try:
            data = _trace(graph, img_size, opset, input_dtype)
        except ConfigError:
            raise
        except Exception as err:  # the exporter raises many kinds; each is a refusal
            raise _export_error(method, err, opset) from err
        gap = _verify(data, graph, method, img_size, input_dtype) if verify else None

    model = onnx.load_from_string(data)
    version = model_version or "sha256:" + hashlib.sha256(data).hexdigest()[:16]
    preprocessing = preprocessing_text(img_size, mean, std, input_dtype)
    metadata = {
        "edgecl_export_format": FORMAT_VERSION,
        "edgecl_version": __version__,
        "model_version": version,
        "method": method.name,
        "class_names": json.dumps(names),
        "num_classes": str(len(names)),
        "input_name": INPUT_NAME,
        "input_size": str(img_size),
        "input_layout": "NCHW",
        "input_dtype": input_dtype,
        "input_range": "0-255",
        "mean": json.dumps(list(mean)),
        "std": json.dumps(list(std)),
        "resize": json.dumps(RESIZE),
        "preprocessing": preprocessing,
        "outputs": ",".join(OUTPUT_NAMES),
        "verified_max_abs_diff": "" if gap is None else repr(gap),
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "edgecl", __version__
    model.doc_string = preprocessing
    onnx.checker.check_model(model)
    payload = model.SerializeToString()
    path = Path(path)
    atomic_write_bytes(path, payload)
    return _info(path, metadata, payload, _opset_of(model))


def _opset_of(model: Any) -> int:
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _info(path: Path, meta: dict[str, str], payload: bytes, opset: int) -> ExportInfo:
    diff = meta.get("verified_max_abs_diff", "")
    return ExportInfo(
        path=path,
        method=meta["method"],
        class_names=tuple(json.loads(meta["class_names"])),
        img_size=int(meta["input_size"]),
        mean=tuple(json.loads(meta["mean"])),  # type: ignore[arg-type]
        std=tuple(json.loads(meta["std"])),  # type: ignore[arg-type]
        input_dtype=meta["input_dtype"],  # type: ignore[arg-type]
        opset=opset,
        preprocessing=meta["preprocessing"],
        edgecl_version=meta["edgecl_version"],
        model_version=meta["model_version"],
        max_abs_diff=float(diff) if diff else None,
        metadata=dict(meta),
        sha256=hashlib.sha256(payload).hexdigest(),
        n_bytes=len(payload),
    )


def read_export_info(path: Path) -> ExportInfo:
    """The :class:`ExportInfo` of a file :func:`export_onnx` wrote, from its metadata."""
    onnx = _require("onnx", "reading an export")
    payload = Path(path).read_bytes()
    try:
        model = onnx.load_from_string(payload)
    except Exception as err:  # protobuf's DecodeError and friends
        raise ConfigError(f"{path} is not an ONNX model: {one_line(err)}") from err
    meta = {p.key: p.value for p in model.metadata_props}
    if "edgecl_export_format" not in meta:
        raise ConfigError(f"{path} was not written by edgecl.export (no edgecl metadata)")
    return _info(Path(path), meta, payload, _opset_of(model))
