"""Plain words for query results: sentences built from the study's own descriptions.

A clinician or a teacher reads an answer as one sentence ("If symptom C were set to 1 (present)
for everyone, the model expects diagnosis N to be positive in 56% of cases …"), not as
``P(N | do(C=1))``. The words come from the variables' optional ``label`` and ``values``
(:mod:`mdcm.variables`); without them the sentences use the variable names and class numbers.

Also here: the textbook criterion behind an identifiable query when there is one (back-door or
front-door adjustment, Pearl 1993, 1995; Pearl 2009 §3.3), so the formula can say its name, and a
glossary of the technical terms the app keeps in tooltips and expanders.

Pure functions over :class:`~mdcm.variables.Schema`, :class:`~mdcm.graph.CausalGraph` and plain
numbers: no torch, no IO.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .graph import CausalGraph
from .variables import Schema, Variable

__all__ = [
    "GLOSSARY",
    "Criterion",
    "answer_sentence",
    "class_label",
    "class_labels",
    "criterion",
    "do_phrase",
    "percent",
    "query_words",
    "value_text",
    "var_name",
    "verdict_headline",
]

#: one-line meanings of the technical terms, for tooltips and "technical details" expanders
GLOSSARY: dict[str, str] = {
    "do()": "do(X=x) means X is set to x by an intervention for everyone, whatever would "
    "have caused it; P(Y | do(X=x)) is what Y would look like then.",
    "identifiable": "the question has one answer that follows from the graph and the data; a "
    "model that fits the data then gives that answer.",
    "not identifiable": "different causal worlds fit the same data but give different answers; "
    "no amount of this kind of data can decide between them.",
    "back-door": "the back-door criterion: comparing cases with the same values of a set of "
    "variables (an adjustment set) removes the confounding; the effect is the average of the "
    "comparisons, weighted by how common each group is.",
    "front-door": "the front-door criterion: the effect passes only through a mediator that is "
    "not confounded with the treatment; it is found in two steps, treatment to mediator and "
    "mediator to outcome.",
    "hedge": "the structure (two c-forests) that the ID algorithm finds when a query is not "
    "identifiable (Shpitser & Pearl 2006).",
    "c-component": "a group of variables joined by hidden confounders (dashed edges); their "
    "mechanisms must be trained together.",
    "R1": "rule R1: conditioning on the inputs of a stage must mean the same as setting them "
    "(do-calculus rule 2), or the data do not show what the stage needs.",
    "R2": "rule R2: a frozen mechanism that a stage runs must already be pinned down by an "
    "earlier stage.",
    "R3": "rule R3: a stage comes after every stage whose mechanisms it runs frozen.",
    "MLE": "maximum likelihood: fit a mechanism by making the data's values as probable as "
    "possible under it.",
    "MMD": "maximum mean discrepancy: a kernel distance between real and generated samples, "
    "minimised without a second network.",
    "WGAN-GP": "an adversarial loss: a critic network learns to tell real from generated "
    "samples and the generator learns to fool it.",
    "TVD": "total variation distance: half the sum of the absolute differences between two "
    "distributions; 0 means equal, 1 means no overlap.",
    "interval": "the 95% interval shows the sampling noise of the model's answer (how much it "
    "would move with another batch of samples), not whether the model or the graph is right.",
}


# ---------------------------------------------------------------------- words for values
def var_name(var: Variable) -> str:
    """ "diagnosis N" when the study names the variable, else "N"."""
    return f"{var.label} {var.name}" if var.label else var.name


def class_label(var: Variable, value: int) -> str:
    """A class as shown on a chart axis: "1 (positive)" or "1"."""
    name = var.value_name(value)
    return f"{int(value)} ({name})" if name else str(int(value))


def class_labels(var: Variable) -> list[str]:
    """Axis labels of every class of a categorical variable."""
    return [class_label(var, k) for k in range(int(var.classes or 0))]


def value_text(var: Variable, value: Any) -> str:
    """A set or observed value in words: "1 (present)", "0.50", "the chosen image"."""
    if var.kind == "categorical":
        return class_label(var, int(value))
    if var.kind == "continuous":
        vals = [float(x) for x in (value if isinstance(value, Sequence) else [value])]
        if len(set(vals)) == 1:
            return f"{vals[0]:.2f}"
        return "(" + ", ".join(f"{x:.2f}" for x in vals) + ")"
    return "the chosen image"


def percent(p: float) -> str:
    """A probability as a whole percentage ("56%"); below 1% and above 99% keep a decimal."""
    q = 100.0 * float(p)
    if 0 < q < 1 or 99 < q < 100:
        return f"{q:.1f}%"
    return f"{q:.0f}%"


def _pct_range(lo: float, hi: float) -> str:
    a, b = percent(lo), percent(hi)
    return f"{a[:-1]}–{b}" if a != b else a


def _join(parts: Sequence[str]) -> str:
    parts = list(parts)
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def do_phrase(schema: Schema, do: Mapping[str, Any]) -> str:
    """ "symptom C were set to 1 (present)" (several: "C were set to 1 and X to …")."""
    parts = []
    for i, (name, value) in enumerate(do.items()):
        var = schema[name]
        verb = " were" if i == 0 else ""
        if var.kind == "image":
            parts.append(f"{var_name(var)}{verb} replaced by the chosen image")
        else:
            parts.append(f"{var_name(var)}{verb} set to {value_text(var, value)}")
    return _join(parts)


def _given_phrase(schema: Schema, given: Mapping[str, int]) -> str:
    return _join([f"{var_name(schema[g])} = {value_text(schema[g], v)}" for g, v in given.items()])


# ---------------------------------------------------------------------- the answer sentence
def answer_sentence(
    schema: Schema,
    outcome: str,
    do: Mapping[str, Any],
    *,
    probs: Sequence[float] | None = None,
    ci: Sequence[Sequence[float]] | None = None,
    mean: Sequence[float] | None = None,
    given: Mapping[str, int] | None = None,
    naive: Sequence[float] | None = None,
    identifiable: bool | None = True,
    spread: tuple[float, float, int] | None = None,
    unlike_data: Sequence[str] = (),
) -> str:
    """One paragraph that says the answer in words, with the same numbers the chart shows.

    ``probs``/``ci`` (categorical outcome) or ``mean``/``ci`` (continuous) are the model's
    answer; ``naive`` the data's plain conditional among cases that had the treatment values;
    ``spread`` = (lowest, highest, number of models) of the answer over several trained models
    (for a binary outcome: of P(outcome = last class)). A non-identifiable answer says that
    the data cannot decide it and that its interval is sampling noise only; ``unlike_data``
    names image treatments whose chosen image is out of the data's range (an extrapolation).
    """
    return _answer_text(
        schema, outcome, do, probs, ci, mean, given, naive, identifiable, spread
    ) + _unlike(schema, unlike_data)


def _unlike(schema: Schema, names: Sequence[str]) -> str:
    if not names:
        return ""
    what = _join([var_name(schema[n]) for n in names])
    return (
        f" The image chosen for {what} is unlike every image in the data, so this answer is "
        "an extrapolation by the networks."
    )


def _answer_text(
    schema: Schema,
    outcome: str,
    do: Mapping[str, Any],
    probs: Sequence[float] | None,
    ci: Sequence[Sequence[float]] | None,
    mean: Sequence[float] | None,
    given: Mapping[str, int] | None,
    naive: Sequence[float] | None,
    identifiable: bool | None,
    spread: tuple[float, float, int] | None,
) -> str:
    var = schema[outcome]
    given = dict(given or {})
    lead = f"If {do_phrase(schema, do)} for everyone"
    if given:
        lead += f", then among cases with {_given_phrase(schema, given)}"
    who = "cases"
    unsure = identifiable is False
    if var.kind == "image":
        return lead + f", the images below show what the model draws for {var_name(var)}."
    if var.kind == "continuous":
        if mean is None:
            raise ValueError("a continuous outcome needs its mean")
        mu = float(mean[0])
        text = f"{lead}, the model expects {var_name(var)} to average {mu:.2f}"
        if ci is not None:
            lo, hi = float(ci[0][0]), float(ci[0][1])
            text += (
                f" ({lo:.2f}–{hi:.2f} from sampling noise alone)"
                if unsure
                else f" (95% interval {lo:.2f}–{hi:.2f})"
            )
        text += "."
        if naive is not None and not given:
            text += f" Among {who} that simply had these values in the data it was {naive[0]:.2f}."
        return text + _caveat(unsure, spread, lambda x: f"{x:.2f}")
    if probs is None:
        raise ValueError("a categorical outcome needs its probabilities")
    k = len(probs)
    if k == 2:
        pos = 1
        p = float(probs[pos])
        say = var.value_name(pos) or f"{pos}"
        text = f"{lead}, the model expects {var_name(var)} to be {say} in {percent(p)} of {who}"
        if ci is not None:
            lo, hi = float(ci[pos][0]), float(ci[pos][1])
            text += (
                f" ({_pct_range(lo, hi)} from sampling noise alone)"
                if unsure
                else f" (95% interval {_pct_range(lo, hi)})"
            )
        text += "."
        if naive is not None and not given and len(naive) == 2:
            q = float(naive[pos])
            cond = _join([f"{n}={value_text(schema[n], v)}" for n, v in do.items()])
            text += f" Among {who} that simply had {cond} in the data it was {percent(q)}"
            half = (float(ci[pos][1]) - float(ci[pos][0])) / 2 if ci is not None else 0.0
            if unsure:
                text += "."
            elif abs(q - p) > max(half, 0.01):
                text += (
                    ": the difference is what confounding does to a plain comparison, as far "
                    "as the model fits the data (see Checks)."
                )
            else:
                text += ": about the same, so confounding changes little here."
        return text + _caveat(unsure, spread, percent)
    shares = _join([f"{var.value_name(c) or c} in {percent(float(probs[c]))}" for c in range(k)])
    text = f"{lead}, the model expects {var_name(var)} to be {shares} of {who}."
    if unsure:
        text += " The intervals on the chart show sampling noise only."
    return text + _caveat(unsure, spread, percent)


def _caveat(unsure: bool, spread: tuple[float, float, int] | None, fmt) -> str:
    if not unsure:
        return ""
    text = (
        " But the data cannot decide this number: other models that fit the data equally "
        "well give other answers"
    )
    if spread is not None and spread[2] >= 2:
        lo, hi, m = spread
        text += (
            f" (the {m} models trained on this study with different seeds answered between "
            f"{fmt(lo)} and {fmt(hi)})"
        )
    else:
        text += " (train more models with other seeds to see how far they disagree)"
    return text + ". Use it to explore, not to conclude."


# ---------------------------------------------------------------------- the verdict in words
def query_words(
    schema: Schema,
    treatment: Sequence[str],
    outcome: str,
    given: Sequence[str] = (),
) -> str:
    """A query in words: "what diagnosis N would be if symptom C were set"."""
    names = _join([var_name(schema[t]) for t in treatment])
    text = f"what {var_name(schema[outcome])} would be if {names} were set"
    if given:
        text += f", among cases with given {_join([var_name(schema[g]) for g in given])}"
    return text


def verdict_headline(identifiable: bool, query: str) -> str:
    """The verdict as a plain headline (``query`` in words, see :func:`query_words`)."""
    if identifiable:
        return (
            f"The data can answer {query}: a model that fits the data well gives the right answer."
        )
    return (
        f"The data cannot decide {query}: different causal worlds fit the same data and give "
        "different answers, so the model's numbers are one of many answers that fit the data "
        "equally well."
    )


@dataclass(frozen=True)
class Criterion:
    """A textbook identification route: ``name`` ("back-door", "front-door" or
    "no confounding"), the adjustment set or the mediators ``via``, and the formula as text."""

    name: str
    via: tuple[str, ...]
    formula: str

    @property
    def title(self) -> str:
        if self.name == "no confounding":
            return "no confounding: the effect equals the plain conditional"
        what = "adjusting for" if self.name == "back-door" else "through"
        return f"{self.name} criterion, {what} {', '.join(self.via)}"


def _is_backdoor(g: CausalGraph, x: str, y: str, z: set[str]) -> bool:
    """Pearl's back-door criterion: no z is a descendant of x, and z blocks every path between
    x and y that starts with an arrow into x (d-separation once x's outgoing edges are cut)."""
    if z & g.descendants([x]):
        return False
    return g.remove_outgoing([x]).d_separated([x], [y], z)


def _is_frontdoor(g: CausalGraph, x: str, y: str, m: set[str]) -> bool:
    """Pearl's front-door criterion: m intercepts every directed path x -> y, no back-door path
    from x to m is open, and x blocks every back-door path from m to y."""
    if not m or x in m or y in m:
        return False
    rest = [v for v in g.nodes if v not in m]
    if y in g.subgraph(rest).descendants([x]):
        return False
    if not g.remove_outgoing([x]).d_separated([x], m, ()):
        return False
    return g.remove_outgoing(m).d_separated(m, [y], [x])


def criterion(graph: CausalGraph, treatment: str, outcome: str) -> Criterion | None:
    """The textbook criterion that identifies P(outcome | do(treatment)), if one does.

    Back-door first (the candidate adjustment set is every observed non-descendant of the
    treatment that is an ancestor of treatment or outcome, the set that is admissible whenever
    any is; then shrunk one variable at a time while it stays admissible), then front-door
    through the mediators on the directed paths. None when neither applies (e.g. the napkin
    graph, which only the general ID algorithm solves, or a non-identifiable query).
    """
    x, y = treatment, outcome
    g = graph
    if x == y or x not in g.nodes or y not in g.nodes:
        return None
    if _is_backdoor(g, x, y, set()):
        return Criterion("no confounding", (), f"P({y} | do({x})) = P({y} | {x})")
    cand = (g.ancestors([x, y]) - g.descendants([x])) - {x, y}
    if _is_backdoor(g, x, y, set(cand)):
        z = set(cand)
        for v in sorted(cand, key=g.nodes.index, reverse=True):
            if _is_backdoor(g, x, y, z - {v}):
                z -= {v}
        zs = g.order(z)
        zt = ", ".join(zs)
        return Criterion(
            "back-door",
            tuple(zs),
            f"P({y} | do({x})) = Σ_{{{zt}}} P({y} | {x}, {zt}) P({zt})",
        )
    med = (g.descendants([x]) & g.ancestors([y])) - {x, y}
    if _is_frontdoor(g, x, y, set(med)):
        ms = g.order(med)
        mt = ", ".join(ms)
        return Criterion(
            "front-door",
            tuple(ms),
            f"P({y} | do({x})) = Σ_{{{mt}}} P({mt} | {x}) Σ_{{{x}'}} P({x}') P({y} | {x}', {mt})",
        )
    return None
