"""Pure graph helpers for the app: click-style edits, the canvas editor's data and edits, and
offline pyvis pictures.

Edits return a new :class:`~mdcm.graph.CausalGraph` or raise :class:`~mdcm.graph.GraphError`
naming the problem (cycle, bad name, duplicate edge), so the page can show it inline. The canvas
editor (:mod:`mdcm_app.canvas`) sends one edit per gesture as a plain dict;
:func:`apply_canvas_edit` checks it (it comes from the browser) and applies it to the graph and the
node positions. Pictures are self-contained HTML (vis-network inlined, no CDN), shown with
``st.iframe``: directed edges solid, bidirected (latent confounder) edges dashed with two heads,
c-components colored (Tian & Pearl 2002).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import networkx as nx

from mdcm.graph import NAME_RE, CausalGraph, GraphError

__all__ = [
    "CANVAS_H",
    "CANVAS_W",
    "PALETTE",
    "CanvasEdit",
    "add_edge",
    "add_variable",
    "apply_canvas_edit",
    "canvas_data",
    "component_colors",
    "edge_list",
    "graph_html",
    "layout_positions",
    "node_positions",
    "plan_dependency_html",
    "remove_edge",
    "remove_variable",
    "strip_remote",
]

PALETTE = (
    "#8ecae6",
    "#ffb703",
    "#90be6d",
    "#f28482",
    "#cdb4db",
    "#f6bd60",
    "#84a59d",
    "#bde0fe",
    "#e9c46a",
    "#a8dadc",
)

_REMOTE_RE = re.compile(
    r"<link[^>]*https?://[^>]*>|<script[^>]*src=\"https?://[^\"]*\"[^>]*>\s*</script>",
    re.IGNORECASE | re.DOTALL,
)


# ---------------------------------------------------------------------- edits
def add_variable(graph: CausalGraph, name: str) -> CausalGraph:
    """The graph with one more (isolated) variable ``name``."""
    name = (name or "").strip()
    if not name:
        raise GraphError("type a variable name first")
    if not NAME_RE.match(name):
        raise GraphError(
            f"bad variable name {name!r}: use letters, digits and '_', "
            "starting with a letter or '_'"
        )
    if name in graph.nodes:
        raise GraphError(f"variable {name!r} already exists")
    return CausalGraph(graph.nodes + (name,), graph.directed, graph.bidirected)


def remove_variable(graph: CausalGraph, name: str) -> CausalGraph:
    """The graph without ``name`` and every edge touching it."""
    if name not in graph.nodes:
        raise GraphError(f"unknown variable {name!r}")
    keep = [v for v in graph.nodes if v != name]
    return graph.subgraph(keep)


def add_edge(graph: CausalGraph, a: str, b: str, kind: str) -> CausalGraph:
    """Add ``a -> b`` (kind "->") or ``a <-> b`` (kind "<->"); refuses cycles and duplicates."""
    for v in (a, b):
        if v not in graph.nodes:
            raise GraphError(f"unknown variable {v!r}")
    if a == b:
        raise GraphError(f"self-loop {a} {kind} {b}: pick two different variables")
    if kind == "->":
        if (a, b) in graph.directed:
            raise GraphError(f"edge {a} -> {b} already exists")
        return CausalGraph(graph.nodes, graph.directed | {(a, b)}, graph.bidirected)
    if kind == "<->":
        pair = (a, b) if a <= b else (b, a)
        if pair in graph.bidirected:
            raise GraphError(f"edge {a} <-> {b} already exists")
        return CausalGraph(graph.nodes, graph.directed, graph.bidirected | {pair})
    raise GraphError(f"unknown edge type {kind!r}: use '->' or '<->'")


def remove_edge(graph: CausalGraph, a: str, b: str, kind: str) -> CausalGraph:
    """Remove one edge (no-op error if it is absent)."""
    if kind == "->":
        if (a, b) not in graph.directed:
            raise GraphError(f"there is no edge {a} -> {b}")
        return CausalGraph(graph.nodes, graph.directed - {(a, b)}, graph.bidirected)
    pair = (a, b) if a <= b else (b, a)
    if pair not in graph.bidirected:
        raise GraphError(f"there is no edge {a} <-> {b}")
    return CausalGraph(graph.nodes, graph.directed, graph.bidirected - {pair})


def edge_list(graph: CausalGraph) -> list[tuple[str, str, str]]:
    """All edges as ``(a, kind, b)`` in a stable order (directed first, declaration order)."""
    idx = {v: i for i, v in enumerate(graph.nodes)}
    d = sorted(graph.directed, key=lambda e: (idx[e[0]], idx[e[1]]))
    bi = sorted(graph.bidirected, key=lambda e: (idx[e[0]], idx[e[1]]))
    return [(a, "->", b) for a, b in d] + [(a, "<->", b) for a, b in bi]


# ---------------------------------------------------------------------- canvas editor
#: the canvas's logical size (SVG user units); positions are stored in these units
CANVAS_W, CANVAS_H = 640, 360
_MARGIN = 40
_EDGE_KINDS = ("->", "<->")
_OPS = ("add_node", "add_edge", "remove_node", "remove_edge", "move")


@dataclass(frozen=True)
class CanvasEdit:
    """The outcome of one canvas gesture: the new graph and positions, and what changed."""

    graph: CausalGraph
    positions: dict[str, tuple[float, float]]
    notice: str
    graph_changed: bool


def _clamp_point(x: object, y: object) -> tuple[float, float]:
    """A finite point inside the canvas (the browser may send anything)."""
    try:
        fx, fy = float(x), float(y)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise GraphError(f"bad canvas position ({x!r}, {y!r})") from None
    if not (math.isfinite(fx) and math.isfinite(fy)):
        raise GraphError(f"bad canvas position ({x!r}, {y!r})")
    return (
        round(min(max(fx, _MARGIN / 2), CANVAS_W - _MARGIN / 2), 1),
        round(min(max(fy, _MARGIN / 2), CANVAS_H - _MARGIN / 2), 1),
    )


def node_positions(
    graph: CausalGraph, stored: Mapping[str, Sequence[float]] | None = None
) -> dict[str, tuple[float, float]]:
    """Where each variable sits on the canvas: its stored position when it has a valid one, else
    its place in the layered layout (:func:`layout_positions`) scaled into the canvas and moved
    off any variable already placed. Stored positions of variables no longer in the graph are
    dropped."""
    out: dict[str, tuple[float, float]] = {}
    for v in graph.nodes:
        p = (stored or {}).get(v)
        if isinstance(p, list | tuple) and len(p) == 2:
            with contextlib.suppress(GraphError):  # a bad stored position: placed anew
                out[v] = _clamp_point(p[0], p[1])
    missing = [v for v in graph.nodes if v not in out]
    if not missing:
        return out
    raw = layout_positions(graph.nodes, graph.directed)
    xs = [x for x, _ in raw.values()]
    ys = [y for _, y in raw.values()]
    sx = min(1.6, (CANVAS_W - 4 * _MARGIN) / ((max(xs) - min(xs)) or 1))
    sy = min(1.6, (CANVAS_H - 3 * _MARGIN) / ((max(ys) - min(ys)) or 1))
    for v in missing:
        x, y = raw[v]
        px, py = _clamp_point(
            CANVAS_W / 2 + (x - (max(xs) + min(xs)) / 2) * sx,
            CANVAS_H / 2 + (y - (max(ys) + min(ys)) / 2) * sy,
        )
        for _ in range(100):  # step off the variables already placed (bounded: a full canvas)
            if not any(abs(px - qx) < 60 and abs(py - qy) < 40 for qx, qy in out.values()):
                break
            px, py = _clamp_point(px + 37, py + 53 if py + 53 < CANVAS_H - _MARGIN else _MARGIN)
        out[v] = (px, py)
    return out


def canvas_data(
    graph: CausalGraph,
    positions: Mapping[str, tuple[float, float]],
    kinds: Mapping[str, str] | None = None,
) -> dict:
    """The JSON the canvas component draws: nodes (position, c-component color, kind) and edges
    (``kind`` "->" solid, "<->" dashed)."""
    colors = component_colors(graph) if graph.nodes else {}
    kinds = kinds or {}
    return {
        "width": CANVAS_W,
        "height": CANVAS_H,
        "nodes": [
            {
                "id": v,
                "x": positions[v][0],
                "y": positions[v][1],
                "color": colors.get(v, PALETTE[0]),
                "kind": kinds.get(v, ""),
            }
            for v in graph.nodes
        ],
        "edges": [{"a": a, "b": b, "kind": k} for a, k, b in edge_list(graph)],
    }


def _edit_name(edit: Mapping[str, object], field: str) -> str:
    v = edit.get(field)
    if not isinstance(v, str):
        raise GraphError(f"canvas edit: {field!r} must be a variable name")
    return v.strip()


def apply_canvas_edit(
    graph: CausalGraph,
    positions: Mapping[str, tuple[float, float]],
    edit: Mapping[str, object],
) -> CanvasEdit:
    """Apply one canvas gesture to the graph and the node positions.

    ``edit`` is what the browser sent: ``{"op": "add_node", "name", "x", "y"}``,
    ``{"op": "add_edge", "a", "b", "kind": "->"|"<->"}``, ``{"op": "remove_node", "name"}``,
    ``{"op": "remove_edge", "a", "b", "kind"}`` or ``{"op": "move", "name", "x", "y"}``. Raises
    GraphError naming the problem (bad name, duplicate, cycle, unknown variable)."""
    if not isinstance(edit, Mapping):
        raise GraphError("canvas edit must be an object")
    op = edit.get("op")
    if op not in _OPS:
        raise GraphError(f"unknown canvas edit {op!r}")
    pos = {v: positions[v] for v in graph.nodes if v in positions}
    if op == "add_node":
        name = _edit_name(edit, "name")
        new = add_variable(graph, name)
        pos[name] = _clamp_point(edit.get("x"), edit.get("y"))
        return CanvasEdit(new, pos, f"added variable `{name}`", True)
    if op == "move":
        name = _edit_name(edit, "name")
        if name not in graph.nodes:
            raise GraphError(f"unknown variable {name!r}")
        pos[name] = _clamp_point(edit.get("x"), edit.get("y"))
        return CanvasEdit(graph, pos, f"moved `{name}`", False)
    if op == "remove_node":
        name = _edit_name(edit, "name")
        new = remove_variable(graph, name)
        pos.pop(name, None)
        return CanvasEdit(new, pos, f"removed variable `{name}`", True)
    a, b = _edit_name(edit, "a"), _edit_name(edit, "b")
    kind = edit.get("kind")
    if kind not in _EDGE_KINDS:
        raise GraphError(f"unknown edge type {kind!r}: use '->' or '<->'")
    if op == "add_edge":
        new = add_edge(graph, a, b, str(kind))
        return CanvasEdit(new, pos, f"added edge `{a} {kind} {b}`", True)
    new = remove_edge(graph, a, b, str(kind))
    return CanvasEdit(new, pos, f"removed edge `{a} {kind} {b}`", True)


# ---------------------------------------------------------------------- pictures
def component_colors(graph: CausalGraph) -> dict[str, str]:
    """One color per c-component (variables sharing a latent confounder share a color)."""
    out: dict[str, str] = {}
    for i, comp in enumerate(graph.c_components()):
        for v in comp:
            out[v] = PALETTE[i % len(PALETTE)]
    return out


def layout_positions(
    nodes: Sequence[str], edges: Iterable[tuple[str, str]], dx: int = 150, dy: int = 110
) -> dict[str, tuple[int, int]]:
    """Layered layout: x = longest-path depth, y spread within a layer (deterministic)."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    idx = {v: i for i, v in enumerate(nodes)}
    depth: dict[str, int] = {}
    for v in nx.lexicographical_topological_sort(g, key=lambda v: idx[v]):
        depth[v] = max((depth[p] + 1 for p in g.predecessors(v)), default=0)
    layers: dict[int, list[str]] = {}
    for v in nodes:
        layers.setdefault(depth[v], []).append(v)
    pos = {}
    for d, vs in layers.items():
        for j, v in enumerate(vs):
            pos[v] = (d * dx, int((j - (len(vs) - 1) / 2) * dy))
    return pos


def strip_remote(html: str) -> str:
    """Remove every tag that would fetch from the network (pyvis adds bootstrap from a CDN)."""
    return _REMOTE_RE.sub("", html)


def _network(height: int):
    from pyvis.network import Network

    net = Network(
        height=f"{height}px",
        width="100%",
        directed=True,
        cdn_resources="in_line",
        bgcolor="#ffffff",
    )
    net.toggle_physics(False)
    return net


def graph_html(
    graph: CausalGraph, kinds: Mapping[str, str] | None = None, height: int = 340
) -> str:
    """Self-contained HTML picture of an ADMG (directed solid, bidirected dashed, c-components
    colored; the node label shows the variable kind)."""
    net = _network(height)
    colors = component_colors(graph)
    pos = layout_positions(graph.nodes, graph.directed)
    kinds = kinds or {}
    for v in graph.nodes:
        x, y = pos[v]
        kind = kinds.get(v, "")
        shape = "box" if kind == "image" else "ellipse"
        label = f"{v}\n({kind})" if kind else v
        comp = sorted(graph.c_component_of(v))
        net.add_node(
            v,
            label=label,
            x=x,
            y=y,
            color=colors[v],
            shape=shape,
            title=f"{v}: {kind or 'kind not set'}; c-component {{{', '.join(comp)}}}",
            font={"size": 16},
        )
    for a, b in graph.directed:
        skip = abs(pos[b][0] - pos[a][0]) > 150 or pos[a][1] != pos[b][1]
        net.add_edge(
            a,
            b,
            color="#333333",
            width=2,
            arrows="to",
            smooth={
                "enabled": True,
                "type": "curvedCW",
                "roundness": 0.3 if skip and pos[a][1] == pos[b][1] else 0.05,
            },
        )
    for a, b in graph.bidirected:
        net.add_edge(
            a,
            b,
            color="#d62828",
            width=2,
            dashes=True,
            arrows="to;from",
            title=f"latent confounder {a} <-> {b}",
            smooth={"enabled": True, "type": "curvedCCW", "roundness": 0.45},
        )
    return strip_remote(net.generate_html())


def plan_dependency_html(stages: Sequence[object], height: int = 260) -> str:
    """Picture of the stage dependency graph: one box per stage (what it trains), an arrow
    from a stage to every stage that needs it frozen; x position = parallel level."""
    net = _network(height)
    ids = [str(getattr(s, "id", i)) for i, s in enumerate(stages)]
    edges = []
    for s, sid in zip(stages, ids, strict=True):
        for d in getattr(s, "depends_on", ()) or ():
            edges.append((str(d), sid))
    pos = layout_positions(ids, [e for e in edges if e[0] in ids], dx=190, dy=90)
    for i, (s, sid) in enumerate(zip(stages, ids, strict=True)):
        trains = list(getattr(s, "trains", ()) or ())
        x, y = pos[sid]
        joint = len(trains) > 1
        net.add_node(
            sid,
            label=f"stage {sid}\ntrains {{{', '.join(trains)}}}",
            x=x,
            y=y,
            shape="box",
            color="#ffd6a5" if joint else PALETTE[i % len(PALETTE)],
            title=f"level {getattr(s, 'level', '?')}",
            font={"size": 14},
        )
    for a, b in edges:
        if a in ids:
            net.add_edge(a, b, arrows="to", color="#555555", width=2)
    return strip_remote(net.generate_html())
