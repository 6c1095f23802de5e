"""Configs are valid once loaded: names, ranges, method parameters, per-method overrides and
``extends`` chains are all checked (and parsed once) by ``load_config``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgecl.config import MethodSpec, RunConfig, deep_merge, load_config, read_tree
from edgecl.errors import ConfigError
from edgecl.methods.base import OptimConfig
from edgecl.methods.er import ERParams
from edgecl.methods.ncm import NCMParams

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def write(path: Path, tree: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tree if isinstance(tree, str) else yaml.safe_dump(tree, sort_keys=False))
    return path


def message(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    text = str(info.value)
    assert "\n" not in text
    return text


# ---- method parameters: validated and parsed once, at load time ---------------------------
def test_method_params_are_typed_and_parsed_once() -> None:
    cfg = load_config(overrides=["methods.1.buffer_size=50"])
    spec = cfg.methods[1]
    assert isinstance(spec.params, ERParams) and spec.params.buffer_size == 50
    assert spec.method_params() is spec.method_params() is spec.params


def test_method_field_errors_name_method_and_field() -> None:
    assert message(["methods.1.buffer_sise=3"]) == (
        "invalid config: methods.1 (er): buffer_sise: Extra inputs are not permitted")
    assert "methods.1 (er): buffer_size: Input should be greater than" in message(
        ["methods.1.buffer_size=-5"])
    assert "unknown method 'foo'; available: " in message(["methods.0.name=foo"])
    # a Params model validator (no single field): the method is still named
    assert "methods.2 (l2p): top_k=20 exceeds pool_size=10" in message(["methods.2.top_k=20"])


def test_labels_must_be_distinct_and_name_a_directory(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {"methods": [{"name": "finetune"}, {"name": "finetune"}]})
    assert "methods need distinct labels" in message([], path)
    assert load_config(path, ["methods.1.label=ft2"]).methods[1].run_name == "ft2"
    assert "methods.0 (finetune): label: must name a directory" in message(["methods.0.label=a/b"])
    assert "methods.0 (finetune): label: must name a directory" in message(["methods.0.label=.."])
    assert "name: must name a directory" in message(["name=runs/x"])
    assert "methods: List should have at least 1 item" in message(["methods=[]"])


def test_dump_round_trips_with_params_flat_and_resolved(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "cifar100_l2p_rep_reduced.yaml")
    tree = cfg.model_dump(mode="json")
    er_like = tree["methods"][1]
    assert er_like["name"] == "l2p_rep" and er_like["selector"]["resolution"] == 112
    assert er_like["ald_clock"] == "run"  # a default, written out
    assert "params" not in er_like
    assert RunConfig(**tree) == cfg
    saved = write(tmp_path / "config.yaml", tree)
    assert load_config(saved) == cfg
    assert RunConfig(**cfg.model_dump()) == cfg


def test_spec_built_in_code() -> None:
    spec = MethodSpec(name="er", params=ERParams(buffer_size=7))
    assert spec.method_params().buffer_size == 7
    assert MethodSpec(**spec.model_dump()) == spec
    with pytest.raises(ValueError, match="params must be ERParams"):
        MethodSpec(name="er", params=NCMParams())


# ---- per-method optim/train: merged field by field onto the shared blocks -----------------
def test_method_optim_overrides_merge_onto_the_shared_optimizer() -> None:
    cfg = load_config(overrides=[
        "optim={name: adam, lr: 0.01, grad_clip: 2.0, lr_schedule: cosine}",
        "methods.0.optim={lr: 0.001}",
    ])
    merged = cfg.methods[0].optim_config(cfg.optim)
    assert merged == OptimConfig(name="adam", lr=0.001, grad_clip=2.0, lr_schedule="cosine")
    assert cfg.methods[1].optim_config(cfg.optim) == cfg.optim  # no override: the shared one
    assert cfg.methods[0].optim == {"lr": 0.001}  # the override itself is what is saved


def test_method_train_overrides_merge_onto_the_shared_training() -> None:
    cfg = load_config(overrides=["train.batch_size=4", "methods.0.train={epochs: 3}"])
    merged = cfg.methods[0].train_config(cfg.train)
    assert (merged.epochs, merged.batch_size) == (3, 4)
    assert cfg.methods[1].train_config(cfg.train) == cfg.train


def test_bad_method_overrides_fail_at_load_time() -> None:
    assert message(["methods.0.optim={lr: -1}"]) == (
        "invalid config: methods.0 (finetune): optim.lr: Input should be greater than 0")
    assert message(["methods.0.train={epochz: 1}"]) == (
        "invalid config: methods.0 (finetune): train.epochz: Extra inputs are not permitted")
    assert "methods.0 (finetune): optim.name: Input should be 'sgd', 'adam' or 'adamw'" in (
        message(["methods.0.optim={name: rmsprop}"]))


def test_merged_blocks_are_validated_as_a_whole() -> None:
    """A shared block built in code skips validation; the merge with an override does not."""
    with pytest.raises(ValueError, match=r"methods\.0 \(finetune\): optim: lr: Input should"):
        RunConfig(optim=OptimConfig.model_construct(lr=-1.0),
                  methods=[{"name": "finetune", "optim": {"momentum": 0.5}}])


# ---- names and ranges ---------------------------------------------------------------------
@pytest.mark.parametrize(("override", "field"), [
    ("optim.name=rmsprop", "optim.name"),
    ("optim.lr_schedule=linear", "optim.lr_schedule"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=.nan", "optim.lr"),
    ("optim.momentum=1", "optim.momentum"),
    ("optim.momentum=-0.1", "optim.momentum"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay"),
    ("optim.betas=[1.0, 0.999]", "optim.betas.0"),
    ("optim.betas=[0.9, -0.1]", "optim.betas.1"),
    ("optim.grad_clip=0", "optim.grad_clip"),
    ("threads=0", "threads"),
    ("backbone.img_size=0", "backbone.img_size"),
    ("seed=-1", "seed"),
    ("device=gpu", "device"),
    ("device=cuda:x", "device"),
    ("device=cuda:", "device"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.n_tasks=0", "data.n_tasks"),
    ("data.dataset=imagenet", "data.dataset"),
    ("eval.protocol=matrix", "eval.protocol"),
    ("cost.device_profiles=[toaster]", "unknown device profiles"),
])
def test_bad_values_name_their_field(override: str, field: str) -> None:
    assert field in message([override])


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "auto"])
def test_device_syntax_only(device: str) -> None:
    """cuda loads on a machine without CUDA: the runner checks availability, not the config."""
    assert load_config(overrides=[f"device={device}"]).device == device


def test_optimizer_values_on_their_edges() -> None:
    cfg = OptimConfig(momentum=0.0, weight_decay=0.0, betas=(0.0, 0.999), grad_clip=None)
    assert cfg.name == "sgd"
    assert load_config(overrides=["threads=null", "backbone.img_size=1", "seed=0"]).seed == 0


def test_class_order_is_checked() -> None:
    assert "data.class_order: must be fixed, seeded or a list of class ids, got 'random'" in (
        message(["data.class_order=random"]))
    assert "repeats class ids [1]" in message(["data.n_tasks=1", "data.class_order=[1, 1]"])
    assert "non-negative class ids" in message(["data.n_tasks=1", "data.class_order=[-1, 2]"])
    assert "lists 3 classes, which data.n_tasks 2 does not divide" in message(
        ["data.n_tasks=2", "data.class_order=[0, 1, 2]"])
    assert load_config(overrides=["data.n_tasks=2", "data.class_order=[3, 1, 4, 5]"])


# ---- --set and files ----------------------------------------------------------------------
def test_override_errors() -> None:
    assert "key=value" in message(["train.epochs"])
    assert "key=value" in message(["train..epochs=1"])
    assert "--set train.epochs: value '[1' is not valid YAML" in message(["train.epochs=[1"])
    assert "--set seed.x: seed is 42, not a mapping or list" in message(["seed.x=1"])
    assert "'9' is not an index below 4" in message(["methods.9.buffer_size=1"])
    assert "train.epochs: Input should be a valid integer" in message(["train.epochs=abc"])


def test_file_errors(tmp_path: Path) -> None:
    assert message([], tmp_path / "missing.yaml") == (
        f"config file {tmp_path / 'missing.yaml'} not found")
    assert "not valid YAML" in message([], write(tmp_path / "bad.yaml", "data: [unclosed"))
    assert "top level must be a mapping" in message([], write(tmp_path / "l.yaml", "- a\n- b\n"))
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    assert "not a text (YAML) file" in message([], binary)
    assert "cannot read config file" in message([], tmp_path)
    assert load_config(write(tmp_path / "empty.yaml", "")) == RunConfig()


# ---- extends ------------------------------------------------------------------------------
def test_deep_merge() -> None:
    base = {"a": {"x": 1, "y": {"p": 1}}, "l": [1, 2], "s": 1}
    over = {"a": {"y": {"q": 2}}, "l": [3], "s": {"now": "a mapping"}}
    assert deep_merge(base, over) == {
        "a": {"x": 1, "y": {"p": 1, "q": 2}}, "l": [3], "s": {"now": "a mapping"}}
    assert base == {"a": {"x": 1, "y": {"p": 1}}, "l": [1, 2], "s": 1}  # untouched


def test_extends_chain_merges_relative_to_each_file(tmp_path: Path) -> None:
    write(tmp_path / "protocols" / "base.yaml", {
        "name": "base", "seed": 7,
        "train": {"epochs": 5, "batch_size": 32},
        "optim": {"name": "adam", "lr": 0.01, "grad_clip": 1.0},
        "methods": [{"name": "finetune"}, {"name": "er", "buffer_size": 100}],
    })
    write(tmp_path / "protocols" / "mid.yaml",
          {"extends": "base.yaml", "name": "mid", "train": {"epochs": 2}})
    leaf = write(tmp_path / "leaf.yaml", {
        "extends": "protocols/mid.yaml", "name": "leaf", "optim": {"lr": 0.001},
        "methods": [{"name": "er", "buffer_size": 10}],
    })
    tree = read_tree(leaf)
    assert "extends" not in tree
    cfg = load_config(leaf, ["train.batch_size=8"])  # overrides apply after the merge
    assert (cfg.name, cfg.seed, cfg.train.epochs, cfg.train.batch_size) == ("leaf", 7, 2, 8)
    assert cfg.optim == OptimConfig(name="adam", lr=0.001, grad_clip=1.0)
    assert [(m.name, m.params.buffer_size) for m in cfg.methods] == [("er", 10)]  # replaced


def test_extends_errors(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    assert message([], a) == f"extends cycle: {a} -> {tmp_path / 'b.yaml'} -> {a}"
    selfish = write(tmp_path / "self.yaml", {"extends": "self.yaml"})
    assert "extends cycle" in message([], selfish)
    missing = write(tmp_path / "m.yaml", {"extends": "nowhere.yaml"})
    assert message([], missing) == (
        f"{missing}: extends 'nowhere.yaml', but {tmp_path / 'nowhere.yaml'} is not a file")
    assert "extends must be the path of a YAML file" in message(
        [], write(tmp_path / "n.yaml", {"extends": 3}))
    assert "extends: Extra inputs are not permitted" in message(["extends=a.yaml"])


REDUCED = sorted(CONFIGS.glob("*_reduced.yaml"))


@pytest.mark.parametrize("path", REDUCED, ids=lambda p: p.stem)
def test_reduced_profiles_extend_their_protocol(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    assert (CONFIGS / raw["extends"]).is_file()
    cfg = load_config(path)
    assert cfg.name == path.stem
    protocol = load_config(CONFIGS / raw["extends"])
    assert cfg.data.dataset != protocol.data.dataset or (
        cfg.data.train_per_class is not None and protocol.data.train_per_class is None)


def test_reduced_l2p_keeps_every_protocol_setting() -> None:
    reduced = load_config(CONFIGS / "cifar100_l2p_reduced.yaml")
    protocol = load_config(CONFIGS / "cifar100_l2p.yaml")
    assert reduced.methods == protocol.methods
    assert (reduced.train.epochs, reduced.train.batch_size) == (1, protocol.train.batch_size)
    assert reduced.backbone.name == "vit_tiny_patch16_224"
    assert reduced.methods[0].optim_config(reduced.optim).lr == 0.001875
