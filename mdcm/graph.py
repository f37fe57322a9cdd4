"""Causal graphs with latent confounders (acyclic directed mixed graphs, ADMGs).

A :class:`CausalGraph` holds observed variables, directed edges ``A -> B`` and bidirected edges
``A <-> B``; a bidirected edge stands for an unobserved common cause of its two ends. All
operations are pure: they return new graphs or plain sets.

Text form (DAGitty-like)::

    Z -> X -> Y; X <-> Y   # chains, ';' or newlines separate statements
    Y <- W                 # reversed arrows are allowed
    V                      # an isolated variable

Definitions follow Tian & Pearl (2002) for c-components and Richardson (2003) for d-separation in
ADMGs (each bidirected edge is read as an explicit latent parent of both ends).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx

__all__ = ["CausalGraph", "GraphError", "parse_graph"]

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN_RE = re.compile(r"\s*(<->|->|<-|--|[A-Za-z0-9_.]+|\S)")
_NAMEISH_RE = re.compile(r"[A-Za-z0-9_.]+\Z")
_ARROWS = ("->", "<-", "<->")
_MAX_NAME = 64


class GraphError(ValueError):
    """A malformed graph or an operation that names an unknown variable."""


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class CausalGraph:
    """An acyclic directed mixed graph over observed variables.

    ``nodes`` keeps the order in which variables were declared; every derived order
    (topological order, parent order) is deterministic and follows it.
    """

    nodes: tuple[str, ...]
    directed: frozenset[tuple[str, str]] = frozenset()
    bidirected: frozenset[tuple[str, str]] = frozenset()
    _index: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        index: dict[str, int] = {}
        for v in self.nodes:
            if not isinstance(v, str) or not NAME_RE.match(v) or len(v) > _MAX_NAME:
                raise GraphError(
                    f"bad variable name {v!r}: use letters, digits and '_', "
                    f"starting with a letter or '_' (at most {_MAX_NAME} characters)"
                )
            if v in index:
                raise GraphError(f"variable {v!r} is declared twice")
            index[v] = len(index)
        object.__setattr__(self, "_index", index)
        norm_bi = set()
        for a, b in self.bidirected:
            for v in (a, b):
                if v not in index:
                    raise GraphError(f"edge {a} <-> {b} names unknown variable {v!r}")
            if a == b:
                raise GraphError(
                    f"self-loop {a} <-> {a}: a confounder needs two different variables"
                )
            norm_bi.add(_pair(a, b))
        object.__setattr__(self, "bidirected", frozenset(norm_bi))
        for a, b in self.directed:
            for v in (a, b):
                if v not in index:
                    raise GraphError(f"edge {a} -> {b} names unknown variable {v!r}")
            if a == b:
                raise GraphError(f"self-loop {a} -> {a}: a variable cannot cause itself")
        object.__setattr__(self, "directed", frozenset(self.directed))
        cycle = self._find_cycle()
        if cycle:
            raise GraphError(
                "directed cycle "
                + " -> ".join(cycle + [cycle[0]])
                + ": a causal graph must be acyclic"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        nodes: Iterable[str],
        directed: Iterable[tuple[str, str]] = (),
        bidirected: Iterable[tuple[str, str]] = (),
    ) -> CausalGraph:
        """Build a graph from plain iterables (edges may name nodes not listed; they are added)."""
        order: list[str] = []
        seen: set[str] = set()
        directed = list(directed)
        bidirected = list(bidirected)
        for v in list(nodes) + [x for e in directed + bidirected for x in e]:
            if v not in seen:
                seen.add(v)
                order.append(v)
        return cls(tuple(order), frozenset(map(tuple, directed)), frozenset(map(tuple, bidirected)))

    @classmethod
    def parse(cls, text: str) -> CausalGraph:
        """Parse the DAGitty-like text form; see the module docstring."""
        return parse_graph(text)

    def to_text(self) -> str:
        """Text form that :meth:`parse` reads back to an equal graph (one statement per line)."""
        lines = [f"{a} -> {b}" for a, b in sorted(self.directed, key=self._edge_key)]
        lines += [f"{a} <-> {b}" for a, b in sorted(self.bidirected, key=self._edge_key)]
        touched = {v for e in self.directed | self.bidirected for v in e}
        lines += [v for v in self.nodes if v not in touched]
        if parse_graph("\n".join(lines)).nodes != self.nodes:
            # Declare the variables first so that the declared order survives a round trip.
            lines.insert(0, "; ".join(self.nodes))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "nodes": list(self.nodes),
            "directed": [list(e) for e in sorted(self.directed, key=self._edge_key)],
            "bidirected": [list(e) for e in sorted(self.bidirected, key=self._edge_key)],
        }

    @classmethod
    def from_json(cls, data: dict | str) -> CausalGraph:
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise GraphError(f"graph JSON is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or "nodes" not in data:
            raise GraphError("graph JSON must be an object with 'nodes', 'directed', 'bidirected'")
        try:
            directed = [tuple(e) for e in data.get("directed", [])]
            bidirected = [tuple(e) for e in data.get("bidirected", [])]
        except TypeError:
            raise GraphError("graph JSON edges must be lists of two names") from None
        for e in directed + bidirected:
            if len(e) != 2:
                raise GraphError(f"graph JSON edge {list(e)} must have exactly two ends")
        nodes = list(data["nodes"])
        for v in (x for e in directed + bidirected for x in e):
            if v not in nodes:
                raise GraphError(f"graph JSON edge names undeclared variable {v!r}")
        _check_duplicates(directed, bidirected)
        return cls(tuple(nodes), frozenset(directed), frozenset(bidirected))

    def _edge_key(self, e: tuple[str, str]) -> tuple[int, int]:
        return (self._index[e[0]], self._index[e[1]])

    # ------------------------------------------------------------------ basic relations
    def _check(self, vs: Iterable[str]) -> list[str]:
        vs = [vs] if isinstance(vs, str) else list(vs)
        for v in vs:
            if v not in self._index:
                raise GraphError(f"unknown variable {v!r}; the graph has {', '.join(self.nodes)}")
        return vs

    def order(self, vs: Iterable[str]) -> list[str]:
        """The given variables sorted in declaration order."""
        return sorted(set(self._check(vs)), key=self._index.__getitem__)

    def parents(self, v: str) -> list[str]:
        self._check([v])
        return self.order(a for a, b in self.directed if b == v)

    def children(self, v: str) -> list[str]:
        self._check([v])
        return self.order(b for a, b in self.directed if a == v)

    def spouses(self, v: str) -> list[str]:
        """Variables joined to ``v`` by a bidirected edge."""
        self._check([v])
        return self.order(
            [b for a, b in self.bidirected if a == v] + [a for a, b in self.bidirected if b == v]
        )

    def parents_of(self, vs: Iterable[str]) -> set[str]:
        """pa(S) \\ S."""
        s = set(self._check(vs))
        return {a for a, b in self.directed if b in s} - s

    def ancestors(self, vs: Iterable[str]) -> set[str]:
        """an(S), including S itself (the convention of the ID algorithm)."""
        out = set(self._check(vs))
        stack = list(out)
        pa = self._parent_map()
        while stack:
            for p in pa[stack.pop()]:
                if p not in out:
                    out.add(p)
                    stack.append(p)
        return out

    def descendants(self, vs: Iterable[str]) -> set[str]:
        """de(S), including S itself."""
        out = set(self._check(vs))
        stack = list(out)
        ch = self._child_map()
        while stack:
            for c in ch[stack.pop()]:
                if c not in out:
                    out.add(c)
                    stack.append(c)
        return out

    def _parent_map(self) -> dict[str, list[str]]:
        pa: dict[str, list[str]] = {v: [] for v in self.nodes}
        for a, b in self.directed:
            pa[b].append(a)
        return pa

    def _child_map(self) -> dict[str, list[str]]:
        ch: dict[str, list[str]] = {v: [] for v in self.nodes}
        for a, b in self.directed:
            ch[a].append(b)
        return ch

    def _find_cycle(self) -> list[str]:
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from(self.directed)
        try:
            cyc = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            return []
        return [a for a, _ in cyc]

    def topological_order(self) -> list[str]:
        """A topological order of the directed part; ties broken by declaration order."""
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from(self.directed)
        return list(nx.lexicographical_topological_sort(g, key=self._index.__getitem__))

    def c_components(self) -> list[frozenset[str]]:
        """Maximal sets connected by bidirected edges (Tian & Pearl 2002), in topological order
        of their first member."""
        parent = {v: v for v in self.nodes}

        def find(v: str) -> str:
            while parent[v] != v:
                parent[v] = parent[parent[v]]
                v = parent[v]
            return v

        for a, b in self.bidirected:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[ra] = rb
        groups: dict[str, set[str]] = {}
        for v in self.nodes:
            groups.setdefault(find(v), set()).add(v)
        topo = {v: i for i, v in enumerate(self.topological_order())}
        comps = [frozenset(g) for g in groups.values()]
        return sorted(comps, key=lambda c: min(topo[v] for v in c))

    def c_component_of(self, v: str) -> frozenset[str]:
        self._check([v])
        return next(c for c in self.c_components() if v in c)

    # ------------------------------------------------------------------ graph surgery
    def subgraph(self, vs: Iterable[str]) -> CausalGraph:
        """Induced subgraph G[S]: the variables S and every edge with both ends in S."""
        s = set(self._check(vs))
        return CausalGraph(
            tuple(v for v in self.nodes if v in s),
            frozenset(e for e in self.directed if e[0] in s and e[1] in s),
            frozenset(e for e in self.bidirected if e[0] in s and e[1] in s),
        )

    def mutilate(self, do: Iterable[str]) -> CausalGraph:
        """G_{do(I)}: remove every edge into I (directed edges into I and bidirected edges
        touching I). The variables stay, without a mechanism."""
        i = set(self._check(do))
        return CausalGraph(
            self.nodes,
            frozenset(e for e in self.directed if e[1] not in i),
            frozenset(e for e in self.bidirected if e[0] not in i and e[1] not in i),
        )

    def remove_outgoing(self, vs: Iterable[str]) -> CausalGraph:
        """G_{underline S}: remove directed edges out of S (used by do-calculus rule 2)."""
        s = set(self._check(vs))
        return CausalGraph(
            self.nodes, frozenset(e for e in self.directed if e[0] not in s), self.bidirected
        )

    # ------------------------------------------------------------------ d-separation
    def latent_projection_dag(self) -> nx.DiGraph:
        """The DAG with one explicit latent node ``U[a,b]`` per bidirected edge ``a <-> b``."""
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from(self.directed)
        for a, b in self.bidirected:
            u = f"U[{a},{b}]"
            g.add_edge(u, a)
            g.add_edge(u, b)
        return g

    def d_separated(self, xs: Iterable[str], ys: Iterable[str], zs: Iterable[str] = ()) -> bool:
        """Whether X and Y are d-separated given Z (m-separation in the ADMG)."""
        x, y, z = set(self._check(xs)), set(self._check(ys)), set(self._check(zs))
        if x & y:
            return False
        x, y = x - z, y - z
        if not x or not y:
            return True
        return nx.is_d_separator(self.latent_projection_dag(), x, y, z)

    def __str__(self) -> str:
        return self.to_text().replace("\n", "; ")


# ---------------------------------------------------------------------- parsing
def _strip_comment(line: str) -> str:
    i = line.find("#")
    return line if i < 0 else line[:i]


def _check_duplicates(directed: list[tuple[str, str]], bidirected: list[tuple[str, str]]) -> None:
    seen: set[tuple[str, str]] = set()
    for a, b in directed:
        if (a, b) in seen:
            raise GraphError(f"duplicate edge {a} -> {b}")
        if (b, a) in seen and a != b:
            raise GraphError(f"contradictory edges {b} -> {a} and {a} -> {b} (a directed cycle)")
        seen.add((a, b))
    seen_bi: set[tuple[str, str]] = set()
    for a, b in bidirected:
        p = _pair(a, b)
        if p in seen_bi:
            raise GraphError(f"duplicate edge {a} <-> {b}")
        seen_bi.add(p)


def parse_graph(text: str) -> CausalGraph:
    """Parse ``"Z -> X -> Y; X <-> Y; W"``. Raises :class:`GraphError` naming the problem."""
    if not isinstance(text, str):
        raise GraphError(f"graph text must be a string, not {type(text).__name__}")
    if len(text) > 200_000:
        raise GraphError("graph text is too long (over 200,000 characters)")
    nodes: list[str] = []
    seen: set[str] = set()
    directed: list[tuple[str, str]] = []
    bidirected: list[tuple[str, str]] = []

    def add_node(v: str, where: str) -> None:
        if not NAME_RE.match(v) or len(v) > _MAX_NAME:
            raise GraphError(
                f"bad variable name {v!r} {where}: use letters, digits and '_', "
                f"starting with a letter or '_' (at most {_MAX_NAME} characters)"
            )
        if v not in seen:
            seen.add(v)
            nodes.append(v)

    for lineno, raw_line in enumerate(text.splitlines() or [""], start=1):
        for stmt in _strip_comment(raw_line).split(";"):
            if not stmt.strip():
                continue
            where = f"on line {lineno}" if "\n" in text else f"in {stmt.strip()!r}"
            tokens = [m.group(1) for m in _TOKEN_RE.finditer(stmt)]
            if len(tokens) % 2 == 0:
                if tokens and tokens[-1] in _ARROWS:
                    raise GraphError(f"edge {' '.join(tokens[-2:])} has no target {where}")
                # Report the first token out of the name/arrow alternation ('A B', '=>',
                # '<--'); misplaced arrows ('A -> -> B') are reported by the loop below.
                bad = next(
                    (
                        t
                        for i, t in enumerate(tokens)
                        if not (_NAMEISH_RE.match(t) if i % 2 == 0 else t in _ARROWS or t == "--")
                    ),
                    tokens[-1],
                )
                if _NAMEISH_RE.match(bad):
                    raise GraphError(
                        f"unexpected {bad!r} {where}: expected 'A -> B', "
                        "'A <- B', 'A <-> B' or a variable name"
                    )
                if bad not in _ARROWS and bad != "--":
                    raise GraphError(
                        f"unknown token {bad!r} {where}: expected '->', "
                        "'<-' or '<->' between variables"
                    )
            for i, tok in enumerate(tokens):
                if i % 2 == 1:
                    if tok == "--":
                        raise GraphError(
                            f"undirected edge '--' {where}: use '->' for a cause "
                            "or '<->' for a latent confounder"
                        )
                    if tok not in _ARROWS:
                        raise GraphError(
                            f"unknown token {tok!r} {where}: expected '->', "
                            "'<-' or '<->' between variables"
                        )
                else:
                    if tok in _ARROWS or tok == "--":
                        raise GraphError(f"edge {tok!r} is missing a variable {where}")
                    add_node(tok, where)
            for i in range(1, len(tokens), 2):
                a, op, b = tokens[i - 1], tokens[i], tokens[i + 1]
                if a == b:
                    raise GraphError(f"self-loop {a} {op} {b} {where}")
                if op == "->":
                    directed.append((a, b))
                elif op == "<-":
                    directed.append((b, a))
                else:
                    bidirected.append((a, b))
    _check_duplicates(directed, bidirected)
    return CausalGraph(tuple(nodes), frozenset(directed), frozenset(bidirected))


def random_graph(n: int, n_directed: int, n_bidirected: int, seed: int) -> CausalGraph:
    """A random ADMG over ``V0 … V{n-1}`` (a random causal order, then uniformly drawn distinct
    directed and bidirected pairs), as in the paper's scalability study. Deterministic in
    ``seed``."""
    import random

    rng = random.Random(seed)
    names = [f"V{i}" for i in range(n)]
    order = names[:]
    rng.shuffle(order)
    pairs = [(order[i], order[j]) for i in range(n) for j in range(i + 1, n)]
    n_directed = min(n_directed, len(pairs))
    n_bidirected = min(n_bidirected, len(pairs))
    directed = rng.sample(pairs, n_directed)
    bidirected = rng.sample(pairs, n_bidirected)
    return CausalGraph(tuple(names), frozenset(directed), frozenset(bidirected))
