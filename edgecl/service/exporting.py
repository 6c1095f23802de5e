"""``POST /v1/export``: the learner's prediction snapshot as an ONNX model."""

from __future__ import annotations

from typing import Any

from edgecl.errors import EdgeclError


class ExportUnavailable(EdgeclError, RuntimeError):
    """ONNX export is not installed (no ``edgecl.export`` or no onnx): answered 501."""


class NothingToExport(EdgeclError, RuntimeError):
    """No class trained yet, or the method cannot be exported: answered 409."""


def export_snapshot(learner: Any) -> dict[str, Any]:
    """Write ``<state>/exports/model-v<version>.onnx`` of the snapshot predictions use.

    Holds the learner's prediction lock: the prediction engine is not reloaded while it is
    traced (predictions wait for an export in progress; training never does)."""
    try:
        from edgecl.export import INPUT_NAME, OUTPUT_NAMES, RESIZE, export_onnx
    except ImportError as exc:
        raise ExportUnavailable(f"ONNX export is not available ({exc}); install the "
                                "'learner' extra: pip install 'edgecl[learner]'") from None
    from edgecl.errors import ConfigError

    with learner.predict_lock:
        engine, version = learner._predictor()
        seen = int(engine.method.seen_classes)
        names = learner.store.classes()[:seen]
        if not seen:
            raise NothingToExport("nothing to export yet: no class is trained (add samples "
                                  "and wait for training, see GET /v1/status)")
        path = learner.state_dir / "exports" / f"model-v{version}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        t = engine.transform
        try:
            info = export_onnx(engine.method, path, img_size=t.size, mean=t.mean, std=t.std,
                               class_names=names, model_version=str(version))
        except ConfigError as exc:
            raise NothingToExport(f"cannot export: {exc}") from None
    return {
        "path": str(info.path), "model_version": version, "class_names": list(info.class_names),
        "preprocessing": {
            "description": info.preprocessing, "input_name": INPUT_NAME,
            "input_shape": ["batch", 3, info.img_size, info.img_size],
            "input_dtype": info.input_dtype, "input_range": [0, 255], "img_size": info.img_size,
            "mean": list(info.mean), "std": list(info.std), "resize": RESIZE,
        },
        "outputs": list(OUTPUT_NAMES), "method": info.method, "opset": info.opset,
        "sha256": info.sha256, "bytes": info.n_bytes, "verified_max_abs_diff": info.max_abs_diff,
    }
