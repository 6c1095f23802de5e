"""Method registry: ``name -> class``. Each method lives in its own module."""

from __future__ import annotations

import importlib

from edgecl.methods.base import Method

# name -> "module:Class"; imported lazily so a method's optional dependencies load on use.
REGISTRY: dict[str, str] = {
    "finetune": "edgecl.methods.finetune:Finetune",
    "joint": "edgecl.methods.joint:Joint",
    "er": "edgecl.methods.er:ER",
    "ncm": "edgecl.methods.ncm:NCM",
    "l2p": "edgecl.methods.l2p:L2P",
    "dualprompt": "edgecl.methods.dualprompt:DualPrompt",
    "coda_prompt": "edgecl.methods.coda_prompt:CodaPrompt",
    "cps_prompt": "edgecl.methods.cps_prompt:CpsPrompt",
    "cps_prompt_rep": "edgecl.methods.cps_prompt_rep:CpsPromptREP",
    "l2p_rep": "edgecl.methods.rep:L2PREP",
    "dualprompt_rep": "edgecl.methods.rep:DualPromptREP",
    "coda_prompt_rep": "edgecl.methods.rep:CodaPromptREP",
    "derpp": "edgecl.methods.derpp:DERpp",
    "ewc": "edgecl.methods.ewc:OnlineEWC",
    "lwf": "edgecl.methods.lwf:LwF",
    "sparcl": "edgecl.methods.sparcl:SparCL",
    "lightcl": "edgecl.methods.lightcl:LightCL",
    "latent_replay": "edgecl.methods.latent_replay:LatentReplay",
    "csko": "edgecl.methods.csko:CsKO",
}


def method_class(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
