"""Variable kinds and the study schema (design.md §4).

A :class:`Variable` says what values one node of the causal graph takes:

* ``categorical``: integers ``0 … classes-1`` (generators emit Gumbel-softmax, critics see one-hot);
* ``continuous``: a float vector of length ``shape[0]`` (a scalar is ``shape == (1,)``);
* ``image``: a float array ``shape == (C, H, W)`` with values in ``[-1, 1]`` (C is 1 or 3).

Every variable may also carry words for people (all optional, so old ``study.json`` files stay
valid): a ``label`` ("diagnosis"), one name per class for a categorical variable (``values``:
``["negative", "positive"]``) and a one-line ``description``. They never change what a model is
trained on (:meth:`Schema.to_json` with ``descriptions=False`` leaves them out); the app and
:mod:`mdcm.explain` use them in every sentence, chart and table.

A :class:`Schema` is a graph plus one variable per node. This module is pure (no torch, no IO), so
the planner and the command line stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .graph import CausalGraph, GraphError

Kind = Literal["categorical", "continuous", "image"]
KINDS: tuple[str, ...] = ("categorical", "continuous", "image")
MAX_CLASSES = 1000
MAX_IMAGE_SIDE = 512
MAX_LABEL = 60  # characters of a variable's label and of each class name
MAX_DESCRIPTION = 300


class SchemaError(ValueError):
    """A study schema that does not fit its graph or its data."""


@dataclass(frozen=True)
class Variable:
    name: str
    kind: Kind
    classes: int | None = None
    shape: tuple[int, ...] = (1,)
    label: str | None = None  # words for people: "diagnosis"
    values: tuple[str, ...] | None = None  # categorical: one name per class
    description: str | None = None  # one line: what the variable measures

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SchemaError(
                f"variable {self.name!r}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}"
            )
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.kind == "categorical":
            if not isinstance(self.classes, int) or not 2 <= self.classes <= MAX_CLASSES:
                raise SchemaError(
                    f"variable {self.name!r}: a categorical variable needs "
                    f"'classes' between 2 and {MAX_CLASSES}, got {self.classes!r}"
                )
            object.__setattr__(self, "shape", (self.classes,))
        elif self.kind == "continuous":
            if len(self.shape) != 1 or not 1 <= self.shape[0] <= 64:
                raise SchemaError(
                    f"variable {self.name!r}: a continuous variable has shape [d] "
                    f"with 1 <= d <= 64, got {list(self.shape)}"
                )
        else:
            if (
                len(self.shape) != 3
                or self.shape[0] not in (1, 3)
                or not all(4 <= s <= MAX_IMAGE_SIDE for s in self.shape[1:])
            ):
                raise SchemaError(
                    f"variable {self.name!r}: an image has shape [C, H, W] with C "
                    f"1 or 3 and 4 <= H, W <= {MAX_IMAGE_SIDE}, "
                    f"got {list(self.shape)}"
                )
        self._check_words()

    def _check_words(self) -> None:
        for what, text, most in (
            ("label", self.label, MAX_LABEL),
            ("description", self.description, MAX_DESCRIPTION),
        ):
            if text is not None and (
                not isinstance(text, str) or not text.strip() or len(text) > most or "\n" in text
            ):
                raise SchemaError(
                    f"variable {self.name!r}: '{what}' must be one line of 1 to {most} "
                    f"characters, got {text!r:.80}"
                )
        if self.values is None:
            return
        if self.kind != "categorical":
            raise SchemaError(
                f"variable {self.name!r}: only a categorical variable has 'values' (class "
                f"names); {self.name} is {self.kind}"
            )
        vals = self.values
        if isinstance(vals, str) or not all(isinstance(v, str) for v in vals):
            raise SchemaError(f"variable {self.name!r}: 'values' must be a list of class names")
        vals = tuple(v.strip() for v in vals)
        if len(vals) != self.classes:
            raise SchemaError(
                f"variable {self.name!r}: 'values' names {len(vals)} classes but the variable "
                f"has {self.classes}"
            )
        bad = [v for v in vals if not v or len(v) > MAX_LABEL or "\n" in v]
        if bad or len(set(vals)) != len(vals):
            raise SchemaError(
                f"variable {self.name!r}: class names must be distinct, one line of 1 to "
                f"{MAX_LABEL} characters each, got {list(vals)}"
            )
        object.__setattr__(self, "values", vals)

    def value_name(self, value: int) -> str | None:
        """The class name of a categorical value (None when the study names no classes)."""
        if self.values is None or not 0 <= int(value) < len(self.values):
            return None
        return self.values[int(value)]

    @property
    def width(self) -> int:
        """Size of the flat vector a critic or a child generator sees (one-hot for categorical)."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    def to_json(self, descriptions: bool = True) -> dict:
        """The ``study.json`` entry; ``descriptions=False`` keeps only what training depends on."""
        if self.kind == "categorical":
            out: dict = {"kind": "categorical", "classes": self.classes}
        else:
            out = {"kind": self.kind, "shape": list(self.shape)}
        if descriptions:
            for key in ("label", "values", "description"):
                val = getattr(self, key)
                if val is not None:
                    out[key] = list(val) if key == "values" else val
        return out

    @classmethod
    def from_json(cls, name: str, data: dict) -> Variable:
        if not isinstance(data, dict) or "kind" not in data:
            raise SchemaError(f"variable {name!r}: expected an object with a 'kind'")
        kind = data["kind"]
        words = {k: data.get(k) for k in ("label", "description")}
        values = data.get("values")
        if values is not None and not isinstance(values, list | tuple):
            raise SchemaError(f"variable {name!r}: 'values' must be a list of class names")
        if kind == "categorical":
            return cls(
                name,
                "categorical",
                classes=data.get("classes"),
                values=None if values is None else tuple(values),
                **words,
            )
        if values is not None:
            raise SchemaError(
                f"variable {name!r}: only a categorical variable has 'values' (class names)"
            )
        shape = data.get("shape", [1])
        if not isinstance(shape, list | tuple) or not all(isinstance(s, int) for s in shape):
            raise SchemaError(f"variable {name!r}: 'shape' must be a list of integers")
        return cls(name, kind, shape=tuple(shape), **words)


@dataclass(frozen=True)
class Schema:
    """A causal graph and the kind of every variable in it."""

    graph: CausalGraph
    variables: tuple[Variable, ...]

    def __post_init__(self) -> None:
        names = [v.name for v in self.variables]
        missing = [v for v in self.graph.nodes if v not in names]
        extra = [v for v in names if v not in self.graph.nodes]
        if missing:
            raise SchemaError(f"variable(s) {', '.join(missing)} are in the graph but have no kind")
        if extra:
            raise SchemaError(
                f"variable(s) {', '.join(extra)} have a kind but are not in the graph"
            )
        order = {v: i for i, v in enumerate(self.graph.nodes)}
        object.__setattr__(
            self, "variables", tuple(sorted(self.variables, key=lambda v: order[v.name]))
        )

    def __getitem__(self, name: str) -> Variable:
        for v in self.variables:
            if v.name == name:
                return v
        raise SchemaError(f"unknown variable {name!r}; the study has {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)

    def of_kind(self, kind: Kind) -> list[str]:
        return [v.name for v in self.variables if v.kind == kind]

    def same_structure(self, other: Schema) -> bool:
        """Same variables, edges, kinds and shapes (what a trained model depends on); labels,
        class names, descriptions and the order of declaration do not matter."""
        a, b = self.graph, other.graph
        return (
            set(a.nodes) == set(b.nodes)
            and a.directed == b.directed
            and a.bidirected == b.bidirected
            and {v.name: (v.kind, v.shape) for v in self.variables}
            == {v.name: (v.kind, v.shape) for v in other.variables}
        )

    def to_json(self, descriptions: bool = True) -> dict:
        """``study.json`` content; ``descriptions=False`` leaves out labels and class names (what
        a trained model depends on, for comparisons)."""
        return {
            "graph": self.graph.to_text().replace("\n", "; "),
            "variables": {v.name: v.to_json(descriptions) for v in self.variables},
        }

    @classmethod
    def from_json(cls, data: dict) -> Schema:
        if not isinstance(data, dict) or "graph" not in data:
            raise SchemaError("study.json must be an object with 'graph' and 'variables'")
        try:
            graph = CausalGraph.parse(data["graph"])
        except GraphError as exc:
            raise SchemaError(f"study.json graph: {exc}") from None
        variables = data.get("variables", {})
        if not isinstance(variables, dict):
            raise SchemaError("study.json 'variables' must be an object keyed by variable name")
        return cls(graph, tuple(Variable.from_json(k, v) for k, v in variables.items()))
