"""mdcm: modular deep causal generative models (Rahman & Kocaoglu, ICML 2024).

The public API for notebooks and scripts. Names load lazily, so ``import mdcm`` (and the ``plan``
and ``identify`` commands) never import torch::

    import mdcm

    ex = mdcm.load_example("xray")                      # or mdcm.load_study("my_study/")
    plan = mdcm.make_plan(ex.study.graph)
    model = mdcm.DCM(ex.study.schema)
    mdcm.train(model, plan, ex.study, mdcm.TrainConfig(steps=1000))
    print(mdcm.interventional_distribution(model, "N", {"C": 1}).probs)
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

from .graph import CausalGraph, GraphError, parse_graph

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first use)
_LAZY = {
    "DataError": "data",
    "Dataset": "data",
    "Study": "data",
    "load_study": "data",
    "save_study": "data",
    "load_example": "examples",
    "export_example": "examples",
    "Plan": "plan",
    "make_plan": "plan",
    "joint_plan": "plan",
    "identify": "identify",
    "DCM": "model",
    "ModelConfig": "model",
    "load_model": "model",
    "save_model": "model",
    "TrainConfig": "train",
    "TrainingError": "train",
    "train": "train",
    "sample": "query",
    "interventional_distribution": "query",
    "effect_table": "query",
    "counterfactual_distribution": "counterfactual",
    "counterfactual_samples": "counterfactual",
    "identify_counterfactual": "identify",
    "export_samples": "bundle",
    "load_pretrained": "bundle",
    "model_bundle_bytes": "bundle",
    "import_model_bundle": "bundle",
}

__all__ = ["CausalGraph", "GraphError", "parse_graph", "__version__", *_LAZY]


class _CallableModule(ModuleType):
    """A submodule that is also its main function (``mdcm.train``, ``mdcm.identify``): Python
    binds ``mdcm.train`` to the module once ``mdcm.train`` is imported anywhere, so the module
    itself forwards calls to the function of the same name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def _callable_module(name: str) -> None:
    """Make the already-imported module ``name`` callable (see :class:`_CallableModule`)."""
    sys.modules[name].__class__ = _CallableModule


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mdcm' has no attribute {name!r}")
    mod = importlib.import_module(f".{module}", __name__)
    value = mod if module == name else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
