"""ONNX export: onnxruntime must predict what ``method.predict`` predicts after edgecl's own
eval transform, for every supported method (a tiny ViT or CNN) and for latent replay on the
real ViT-Ti at 224 px.

Tolerance: logits are float32 computed by different kernels (torch vs onnxruntime's MLAS:
other summation orders, fused vs unfused ops), so they differ by a few float32 ulps per op,
i.e. relative to the logits' magnitude. ``ATOL + RTOL * max|logit|`` with 1e-5 each sits ~10x
above what was measured (tiny models: <= 1e-6 at logit scales 0.15-3, relative <= 6e-7;
ViT-Ti at 224 px: <= 1e-4 at scale ~100, relative ~1e-6) and far below the top-2 logit
margins that decide a prediction.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecl.backbones.registry import Backbone, create_backbone
from edgecl.backbones.vit import VisionTransformer, ViTConfig
from edgecl.data.cifar import load_cifar100
from edgecl.data.transforms import eval_transform, train_transform
from edgecl.errors import ConfigError
from edgecl.export import (
    INPUT_NAME,
    OUTPUT_NAMES,
    SUPPORTED_METHODS,
    export_onnx,
    logit_gap,
    model_input,
    read_export_info,
)
from edgecl.methods import REGISTRY, method_class
from edgecl.methods.base import Batch, BenchmarkInfo, Method, OptimConfig, TaskInfo
from edgecl.metrics.cost import CostMeter

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ATOL, RTOL = 1e-5, 1e-5
S, PER_TASK, N_TASKS = 32, 3, 2
# Small settings so every method trains two tasks in well under a second on the tiny ViT.
PARAMS: dict[str, dict] = {
    "er": {"buffer_size": 8},
    "derpp": {"buffer_size": 8},
    "sparcl": {"buffer_size": 8, "sparsity": 0.5, "schedule_scale": 0.2},
    "latent_replay": {"rm_sz": 8, "lr_init": 0.1, "lr_inc": 0.05},
    "lightcl": {"buffer_size": 4, "importance_samples": 8},
    "l2p": {"pool_size": 4, "top_k": 2},
    "dualprompt": {"prompt_layers": [1], "g_layers": [0]},
    "coda_prompt": {"pool_size": 4, "prompt_layers": [0, 1]},
    "cps_prompt": {"pool_size": 4, "prompt_layers": [0, 1], "phase_split": "steps"},
    "csko": {"selection_batches": 1, "stats_batches": 1},
    "l2p_rep": {"pool_size": 4, "top_k": 2, "selector": {"resolution": 16}},
    "dualprompt_rep": {"prompt_layers": [1], "g_layers": [0], "selector": {"resolution": 16}},
    "coda_prompt_rep": {"pool_size": 4, "prompt_layers": [0, 1],
                        "selector": {"resolution": 16}},
    "cps_prompt_rep": {"pool_size": 4, "prompt_layers": [0, 1], "phase_split": "steps",
                       "selector": {"resolution": 16}},
}
CNN_METHODS = ("sparcl", "csko")  # SparCL prunes residual 3x3 convs, CsKO splits them: a ResNet
ADAM_METHODS = ("csko",)  # CsKO's projected update is an Adam
# antialiased resize
OPSET = {"l2p_rep": 18, "dualprompt_rep": 18, "coda_prompt_rep": 18, "cps_prompt_rep": 18}


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    """A random 2-block ViT saved as a weights file and built through the registry."""
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig(img_size=S, patch_size=8, embed_dim=32, depth=2,
                                      num_heads=1))
    path = tmp_path_factory.mktemp("vit") / "tiny.npz"
    np.savez(path, **{k: v.numpy() for k, v in vit.state_dict().items()})
    return create_backbone("vit_tiny_patch16_224", weights=str(path), img_size=S)


@pytest.fixture(scope="module")
def tiny_cnn() -> Backbone:
    """ResNet-18 is fully convolutional: 16 px keeps its passes cheap."""
    torch.manual_seed(0)
    return create_backbone("resnet18_cifar", weights="random", img_size=16)


def trained(name: str, bundle: Backbone, images: np.ndarray | None = None, per_task: int = PER_TASK,
            steps: int = 2, batch: int = 4, **params: object) -> Method:
    """``name`` set up on a copy of ``bundle`` and trained ``steps`` steps on each of two tasks."""
    size = bundle.img_size
    train_tf = train_transform(size, bundle.mean, bundle.std)
    n_classes = N_TASKS * per_task
    info = BenchmarkInfo(
        num_classes=n_classes, n_tasks=N_TASKS,
        task_classes=[torch.arange(t * per_task, (t + 1) * per_task) for t in range(N_TASKS)],
        train_transform=train_tf, device=torch.device("cpu"), meter=CostMeter(), seed=0,
        steps_per_task=[steps] * N_TASKS, input_size=size,
    )
    cls = method_class(name)
    optim = OptimConfig(name="adam", lr=1e-3) if name in ADAM_METHODS else OptimConfig(lr=0.05)
    method = cls(cls.Params(**{**PARAMS.get(name, {}), **params}), optim)
    torch.manual_seed(0)
    method.setup(copy.deepcopy(bundle.module), info)
    g = torch.Generator().manual_seed(1)
    for t in range(N_TASKS):
        task = TaskInfo(t, info.task_classes[t], steps * batch, steps)
        method.begin_task(task)
        for s in range(steps):
            y = t * per_task + torch.randint(0, per_task, (batch,), generator=g)
            if images is None:
                raw = torch.randint(0, 256, (batch, 36, 36, 3), dtype=torch.uint8, generator=g)
            else:
                raw = torch.from_numpy(images[(t * steps + s) * batch:][:batch])
            method.observe(Batch(train_tf(raw, g), y, raw, torch.arange(batch) + s * batch, t))
        method.end_task(task)
    return method


def run_onnx(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    return logits, probs


def check_agreement(method: Method, bundle: Backbone, path: Path, raw: torch.Tensor,
                    n: int) -> float:
    """ONNX on the documented input vs predict after the eval transform; returns the gap."""
    logits, probs = run_onnx(path, model_input(raw, bundle.img_size).numpy())
    reference = method.predict(eval_transform(bundle.img_size, bundle.mean, bundle.std)(raw))
    reference = reference[:, :n].numpy()
    assert logits.shape == probs.shape == (len(raw), n)
    np.testing.assert_array_equal(logits.argmax(1), reference.argmax(1))  # (a)
    gap = logit_gap(logits, reference)
    scale = float(np.abs(reference[np.isfinite(reference)]).max())
    assert gap <= ATOL + RTOL * scale, (gap, scale)  # (b)
    expected = torch.from_numpy(reference).softmax(1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    return gap


def vit_or_cnn(name: str, tiny_vit: Backbone, tiny_cnn: Backbone) -> Backbone:
    return tiny_cnn if name in CNN_METHODS else tiny_vit


def test_every_registered_method_is_listed_as_exportable() -> None:
    assert sorted(SUPPORTED_METHODS) == sorted(REGISTRY)


@pytest.mark.parametrize("name", SUPPORTED_METHODS)
def test_onnx_predicts_what_the_method_predicts(one_thread, name: str, tiny_vit: Backbone,
                                                tiny_cnn: Backbone, tmp_path: Path) -> None:
    bundle = vit_or_cnn(name, tiny_vit, tiny_cnn)
    method = trained(name, bundle, steps=3 if name == "csko" else 1 if name in CNN_METHODS else 2)
    n = method.seen_classes
    names = [f"class-{i}" for i in range(n)]
    path = tmp_path / "model.onnx"
    size = bundle.img_size
    info = export_onnx(method, path, img_size=size, mean=bundle.mean, std=bundle.std,
                       class_names=names, opset=OPSET.get(name, 17))
    # larger and smaller images: edgecl's resize shrinks (antialiased) and enlarges them first
    g = torch.Generator().manual_seed(5)
    for side in (size + 8, size - 8):
        raw = torch.randint(0, 256, (5, side, side, 3), dtype=torch.uint8, generator=g)
        check_agreement(method, bundle, path, raw, n)
    assert info.max_abs_diff is not None and info.max_abs_diff < 1e-4
    # (c) metadata round-trips: the file's metadata_props are what export_onnx returned
    assert read_export_info(path) == info
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props == info.metadata
    assert json.loads(props["class_names"]) == names and props["method"] == name
    assert json.loads(props["mean"]) == list(bundle.mean) == list(info.mean)
    assert props["input_size"] == str(size) and props["input_layout"] == "NCHW"
    assert props["edgecl_version"] and props["model_version"].startswith("sha256:")
    assert "bilinear" in props["preprocessing"] and info.opset == OPSET.get(name, 17)


def test_export_leaves_the_method_as_it_was(one_thread, tiny_vit: Backbone,
                                            tmp_path: Path) -> None:
    """A learner exports between steps: module modes, weights and the cost meter untouched."""
    method = trained("ncm", tiny_vit)
    method.modules.train()  # NCM's predict does not switch modes itself
    flops = dict(method.meter.flops)
    before = {k: v.clone() for k, v in method.modules.state_dict().items()}
    kwargs = {"img_size": S, "mean": tiny_vit.mean, "std": tiny_vit.std,
              "class_names": list("abcdef")}
    first = export_onnx(method, tmp_path / "m.onnx", **kwargs)
    assert all(m.training for m in method.modules.modules())
    assert dict(method.meter.flops) == flops
    after = method.modules.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the default model version digests the graph: same model, same version; new means, new
    assert export_onnx(method, tmp_path / "m.onnx", **kwargs).model_version == first.model_version
    method.sums[0] += 1.0
    assert export_onnx(method, tmp_path / "m.onnx", **kwargs).model_version != first.model_version


def test_uint8_input_and_a_given_model_version(one_thread, tiny_vit: Backbone,
                                               tmp_path: Path) -> None:
    method = trained("latent_replay", tiny_vit)
    info = export_onnx(method, tmp_path / "u8.onnx", img_size=S, mean=tiny_vit.mean,
                       std=tiny_vit.std, class_names=list("abcdef"), input_dtype="uint8",
                       model_version="7")
    assert info.model_version == "7" and info.metadata["input_dtype"] == "uint8"
    raw = torch.randint(0, 256, (3, S, S, 3), dtype=torch.uint8)
    logits, _ = run_onnx(info.path, raw.permute(0, 3, 1, 2).numpy())
    reference = method.predict(eval_transform(S, tiny_vit.mean, tiny_vit.std)(raw)).numpy()
    assert logit_gap(logits, reference) <= 1e-5


def test_ncm_keeps_unseen_classes_at_minus_infinity(one_thread, tiny_vit: Backbone,
                                                    tmp_path: Path) -> None:
    method = trained("ncm", tiny_vit)
    method.counts[4] = 0  # a seen id without examples (a class-IL stream with gaps)
    info = export_onnx(method, tmp_path / "ncm.onnx", img_size=S, mean=tiny_vit.mean,
                       std=tiny_vit.std, class_names=list("abcdef"))
    logits, probs = run_onnx(info.path, model_input(
        torch.randint(0, 256, (2, S, S, 3), dtype=torch.uint8), S).numpy())
    assert np.isneginf(logits[:, 4]).all() and (probs[:, 4] == 0).all()
    assert np.isfinite(logits[:, :4]).all()


def test_l2p_ties_in_prompt_matching_go_to_the_lower_id(one_thread, tiny_vit: Backbone,
                                                        tmp_path: Path) -> None:
    """Equal keys: edgecl's stable top-k and ONNX TopK must pick the same prompts."""
    method = trained("l2p", tiny_vit)
    with torch.no_grad():
        method.pool.keys[:] = method.pool.keys[0].clone()
    info = export_onnx(method, tmp_path / "tie.onnx", img_size=S, mean=tiny_vit.mean,
                       std=tiny_vit.std, class_names=list("abcdef"))
    raw = torch.randint(0, 256, (4, S, S, 3), dtype=torch.uint8)
    check_agreement(method, tiny_vit, info.path, raw, 6)
    # the tie matters: with prompts 0, 1 and 2, 3 swapped edgecl's logits are others
    with torch.no_grad():
        method.pool.prompts[:] = method.pool.prompts[[2, 3, 0, 1]].clone()
    logits, _ = run_onnx(info.path, model_input(raw, S).numpy())
    swapped = method.predict(eval_transform(S, tiny_vit.mean, tiny_vit.std)(raw)).numpy()
    assert logit_gap(logits, swapped[:, :6]) > 1e-3


def test_methods_that_cannot_be_exported_are_config_errors(one_thread, tiny_vit: Backbone,
                                                           tmp_path: Path) -> None:
    kwargs = {"img_size": S, "mean": tiny_vit.mean, "std": tiny_vit.std,
              "class_names": list("abcdef")}
    voting = trained("l2p", tiny_vit, batchwise_eval=True)
    with pytest.raises(ConfigError, match="l2p: batchwise_eval=true"):
        export_onnx(voting, tmp_path / "a.onnx", **kwargs)
    rep = trained("l2p_rep", tiny_vit)
    with pytest.raises(ConfigError, match="l2p_rep cannot be exported at opset 17.*opset=18"):
        export_onnx(rep, tmp_path / "b.onnx", **kwargs)
    with pytest.raises(ConfigError, match="one class name per class seen: 5 names for 6"):
        export_onnx(rep, tmp_path / "c.onnx", **{**kwargs, "class_names": list("abcde")})
    assert not list(tmp_path.iterdir())  # nothing written, not even a temp file


def test_real_vit_tiny_latent_replay_at_224(one_thread, vit_tiny_path: Path,
                                            tmp_path: Path) -> None:
    bundle = create_backbone("vit_tiny_patch16_224", weights=str(vit_tiny_path))
    assert bundle.img_size == 224
    root = vit_tiny_path.parents[1]
    if (root / "cifar-100-python").is_dir():  # real CIFAR-100 images when shared, else random
        data = load_cifar100("test", root, download=False)
        images, class_names = data.images[:24], list(data.class_names[:6])
    else:
        images = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
        class_names = [f"class-{i}" for i in range(6)]
    method = trained("latent_replay", bundle, images=images[:16], steps=2, batch=4)
    info = export_onnx(method, tmp_path / "vit_ti.onnx", img_size=224, mean=bundle.mean,
                       std=bundle.std, class_names=class_names)
    gap = check_agreement(method, bundle, info.path, torch.from_numpy(images[16:]), 6)
    assert math.isfinite(gap) and read_export_info(info.path).class_names == tuple(class_names)


def test_reading_a_file_edgecl_did_not_write_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model")
    with pytest.raises(ConfigError, match="is not an ONNX model"):
        read_export_info(tmp_path / "junk.onnx")
    bare = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ConfigError, match="not written by edgecl.export"):
        read_export_info(tmp_path / "bare.onnx")
