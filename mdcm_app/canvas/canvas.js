// mdcm graph canvas: a Streamlit Components v2 module (no build step, no network).
//
// Draws the causal graph it gets as `data` ({width, height, nodes: [{id, x, y, color, kind}],
// edges: [{a, b, kind: "->" | "<->"}], ack}) and reports one edit per gesture with
// setTriggerValue("edit", {op, ..., seq}):
//   click on empty canvas, type a name, Enter   -> {op: "add_node", name, x, y}
//   drag a variable onto another                -> {op: "add_edge", a, b, kind}
//      (kind "<->" when the "hidden confounder" toggle is on, or with Shift held)
//   drag a variable to empty space              -> {op: "move", name, x, y}
//   click a variable or an arrow, then Delete / Backspace or the button
//                                               -> {op: "remove_node" | "remove_edge", ...}
// Python checks every edit (mdcm_app.graphview.apply_canvas_edit) and sends the graph back; the
// edit is drawn at once meanwhile. `ack` changes with every processed edit, so a refused edit
// redraws the graph as it was.

const SVGNS = "http://www.w3.org/2000/svg";
const NODE_H = 40;
const DRAG_PX = 4;

function el(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function nodeWidth(n) {
  return Math.max(46, 18 + 9 * n.id.length, 12 + 6 * (n.kind || "").length);
}

// Where the ray from the centre of node n towards (tx, ty) leaves its box (plus a small gap).
function boundary(n, tx, ty, gap) {
  const dx = tx - n.x;
  const dy = ty - n.y;
  const hw = nodeWidth(n) / 2 + gap;
  const hh = NODE_H / 2 + gap;
  if (dx === 0 && dy === 0) return [n.x, n.y];
  const t = Math.min(dx !== 0 ? hw / Math.abs(dx) : Infinity, dy !== 0 ? hh / Math.abs(dy) : Infinity);
  return [n.x + dx * t, n.y + dy * t];
}

function head(g, x, y, fromX, fromY, cls) {
  const a = Math.atan2(y - fromY, x - fromX);
  const s = 11;
  const p = [
    [x, y],
    [x - s * Math.cos(a - 0.38), y - s * Math.sin(a - 0.38)],
    [x - s * Math.cos(a + 0.38), y - s * Math.sin(a + 0.38)],
  ];
  el("polygon", { points: p.map((q) => q.join(",")).join(" "), class: cls }, g);
}

// The drawn geometry of an edge between nodes a and b: a straight arrow for "->", a curve with
// two heads for "<->" (a hidden common cause).
function drawEdge(g, a, b, kind, extraClass) {
  const cls = (kind === "<->" ? "bi" : "di") + (extraClass ? " " + extraClass : "");
  let d;
  const heads = [];
  if (kind === "<->") {
    const mx = (a.x + b.x) / 2;
    const my = (a.y + b.y) / 2;
    const dx = b.x - a.x;
    const dy = b.y - a.y;
    const len = Math.hypot(dx, dy) || 1;
    const off = Math.min(90, 28 + 0.22 * len);
    const cx = mx + (dy / len) * off;
    const cy = my - (dx / len) * off;
    const [sx, sy] = boundary(a, cx, cy, 3);
    const [ex, ey] = boundary(b, cx, cy, 3);
    d = `M ${sx} ${sy} Q ${cx} ${cy} ${ex} ${ey}`;
    heads.push([sx, sy, cx, cy], [ex, ey, cx, cy]);
  } else {
    const [sx, sy] = boundary(a, b.x, b.y, 3);
    const [ex, ey] = boundary(b, a.x, a.y, 3);
    d = `M ${sx} ${sy} L ${ex} ${ey}`;
    heads.push([ex, ey, sx, sy]);
  }
  el("path", { d, class: "hit" }, g);
  el("path", { d, class: "line " + cls }, g);
  for (const [x, y, fx, fy] of heads) head(g, x, y, fx, fy, "head " + cls);
}

function build(parent) {
  const root = document.createElement("div");
  root.className = "mdcm-canvas";
  root.tabIndex = 0;
  root.setAttribute("role", "application");
  root.setAttribute("aria-label", "causal graph editor");
  root.innerHTML = `
    <div class="toolbar">
      <span class="label">New arrows:</span>
      <button type="button" class="kind on" data-kind="->" title="a direct cause">&rarr; cause</button>
      <button type="button" class="kind" data-kind="<->"
        title="a hidden common cause of both (also: hold Shift while dragging)">&harr; hidden confounder</button>
      <button type="button" class="delete" disabled title="or press Delete">Delete selected</button>
      <span class="status" aria-live="polite"></span>
    </div>
    <div class="stage">
      <svg class="board" xmlns="${SVGNS}"></svg>
      <input class="namebox" type="text" maxlength="64" spellcheck="false"
        autocomplete="off" placeholder="name, Enter" aria-label="new variable name" hidden>
      <div class="empty">Click anywhere to add a variable</div>
    </div>
    <div class="hint">Click empty space: new variable &middot; drag a variable onto another: arrow
      (Shift: hidden confounder) &middot; drag to empty space: move &middot; click a variable or
      arrow, then Delete: remove</div>`;
  parent.appendChild(root);
  const st = {
    root,
    svg: root.querySelector("svg"),
    box: root.querySelector(".namebox"),
    status: root.querySelector(".status"),
    data: { width: 640, height: 360, nodes: [], edges: [] },
    selected: null, // {type: "node", id} | {type: "edge", a, b, kind}
    edgeKind: "->",
    drag: null,
    pendingClick: null,
    newAt: null,
    seq: 0,
    send: () => {},
  };
  root.__mdcm = st;
  wire(st);
  return root;
}

function byId(st, id) {
  return st.data.nodes.find((n) => n.id === id);
}

function svgPoint(st, evt) {
  const m = st.svg.getScreenCTM();
  if (!m) return [0, 0];
  const p = new DOMPoint(evt.clientX, evt.clientY).matrixTransform(m.inverse());
  return [p.x, p.y];
}

function nodeAt(st, x, y, except) {
  for (const n of st.data.nodes) {
    if (n.id === except) continue;
    if (Math.abs(x - n.x) <= nodeWidth(n) / 2 + 4 && Math.abs(y - n.y) <= NODE_H / 2 + 4) return n;
  }
  return null;
}

function sameEdge(e, s) {
  return s && s.type === "edge" && e.a === s.a && e.b === s.b && e.kind === s.kind;
}

function render(st) {
  const { svg, data } = st;
  svg.setAttribute("viewBox", `0 0 ${data.width} ${data.height}`);
  svg.replaceChildren();
  el("rect", { class: "bg", x: 0, y: 0, width: data.width, height: data.height }, svg);
  const drag = st.drag && st.drag.moved ? st.drag : null;
  const shown = (n) => (drag && n.id === drag.id && !drag.target ? { ...n, x: drag.x, y: drag.y } : n);
  const edges = el("g", { class: "edges" }, svg);
  for (const e of data.edges) {
    const a = byId(st, e.a);
    const b = byId(st, e.b);
    if (!a || !b) continue;
    const g = el("g", { class: "edge" + (sameEdge(e, st.selected) ? " selected" : "") }, edges);
    g.dataset.a = e.a;
    g.dataset.b = e.b;
    g.dataset.kind = e.kind;
    g.setAttribute("data-testid", `edge-${e.a}${e.kind}${e.b}`);
    drawEdge(g, shown(a), shown(b), e.kind);
  }
  if (drag && drag.target) {
    const g = el("g", { class: "preview" }, svg);
    drawEdge(g, byId(st, drag.id), drag.target, drag.kind, "ghost");
  }
  const nodes = el("g", { class: "nodes" }, svg);
  for (const n0 of data.nodes) {
    const n = shown(n0);
    const w = nodeWidth(n);
    const sel = st.selected && st.selected.type === "node" && st.selected.id === n.id;
    const tgt = drag && drag.target && drag.target.id === n.id;
    const g = el("g", { class: "node" + (sel ? " selected" : "") + (tgt ? " target" : "") }, nodes);
    g.dataset.node = n.id;
    g.setAttribute("data-testid", `node-${n.id}`);
    const r = n.kind === "image" ? 3 : NODE_H / 2;
    el("rect", { x: n.x - w / 2, y: n.y - NODE_H / 2, width: w, height: NODE_H, rx: r, ry: r, fill: n.color || "#ddd" }, g);
    const t = el("text", { x: n.x, y: n.kind ? n.y - 2 : n.y + 5, class: "name" }, g);
    t.textContent = n.id;
    if (n.kind) {
      const k = el("text", { x: n.x, y: n.y + 13, class: "kind" }, g);
      k.textContent = n.kind;
    }
  }
  st.root.querySelector(".empty").hidden = data.nodes.length > 0 || st.newAt !== null;
  st.root.querySelector(".delete").disabled = !st.selected;
  for (const b of st.root.querySelectorAll("button.kind")) {
    b.classList.toggle("on", b.dataset.kind === st.edgeKind);
    b.setAttribute("aria-pressed", b.dataset.kind === st.edgeKind ? "true" : "false");
  }
  st.status.textContent = st.selected
    ? st.selected.type === "node"
      ? `selected ${st.selected.id}`
      : `selected ${st.selected.a} ${st.selected.kind} ${st.selected.b}`
    : "";
}

function openNameBox(st, x, y) {
  st.newAt = [x, y];
  const scale = st.svg.clientWidth / st.data.width || 1;
  const box = st.box;
  box.hidden = false;
  box.value = "";
  box.style.left = `${Math.max(0, x * scale - 60)}px`;
  box.style.top = `${Math.max(0, y * scale - 15)}px`;
  render(st);
  box.focus();
}

function closeNameBox(st, commit) {
  if (st.newAt === null) return;
  const name = st.box.value.trim();
  const [x, y] = st.newAt;
  st.newAt = null;
  st.box.hidden = true;
  if (commit && name) {
    if (!byId(st, name)) st.data.nodes = [...st.data.nodes, { id: name, x, y, color: "#e0e0e0", kind: "" }];
    st.send({ op: "add_node", name, x, y });
  }
  render(st);
  st.root.focus();
}

function removeSelected(st) {
  const s = st.selected;
  if (!s) return;
  st.selected = null;
  if (s.type === "node") {
    st.data.nodes = st.data.nodes.filter((n) => n.id !== s.id);
    st.data.edges = st.data.edges.filter((e) => e.a !== s.id && e.b !== s.id);
    st.send({ op: "remove_node", name: s.id });
  } else {
    st.data.edges = st.data.edges.filter((e) => !sameEdge(e, s));
    st.send({ op: "remove_edge", a: s.a, b: s.b, kind: s.kind });
  }
  render(st);
}

function wire(st) {
  const { svg, root, box } = st;
  svg.addEventListener("pointerdown", (evt) => {
    if (evt.button !== 0) return;
    if (st.newAt !== null) {
      closeNameBox(st, true);
      evt.preventDefault();
      return;
    }
    root.focus({ preventScroll: true });
    const [x, y] = svgPoint(st, evt);
    const nodeEl = evt.target.closest("[data-node]");
    const edgeEl = evt.target.closest("g.edge");
    if (nodeEl) {
      const n = byId(st, nodeEl.dataset.node);
      st.drag = { id: n.id, x0: x, y0: y, dx: n.x - x, dy: n.y - y, x: n.x, y: n.y, moved: false, target: null, kind: st.edgeKind };
      svg.setPointerCapture(evt.pointerId);
    } else if (edgeEl) {
      st.selected = { type: "edge", a: edgeEl.dataset.a, b: edgeEl.dataset.b, kind: edgeEl.dataset.kind };
      render(st);
    } else {
      st.pendingClick = [x, y];
    }
    evt.preventDefault();
  });
  svg.addEventListener("pointermove", (evt) => {
    const d = st.drag;
    if (!d) return;
    const [x, y] = svgPoint(st, evt);
    if (!d.moved && Math.hypot(x - d.x0, y - d.y0) < DRAG_PX) return;
    d.moved = true;
    d.x = Math.min(Math.max(x + d.dx, 20), st.data.width - 20);
    d.y = Math.min(Math.max(y + d.dy, 20), st.data.height - 20);
    d.target = nodeAt(st, x, y, d.id);
    d.kind = evt.shiftKey ? (st.edgeKind === "->" ? "<->" : "->") : st.edgeKind;
    render(st);
  });
  const finish = (evt, cancelled) => {
    const d = st.drag;
    st.drag = null;
    if (d) {
      if (svg.hasPointerCapture(evt.pointerId)) svg.releasePointerCapture(evt.pointerId);
      if (cancelled) {
        render(st);
        return;
      }
      if (!d.moved) {
        st.selected = { type: "node", id: d.id };
      } else if (d.target) {
        const kind = evt.shiftKey ? (st.edgeKind === "->" ? "<->" : "->") : st.edgeKind;
        const e = { a: d.id, b: d.target.id, kind };
        if (!st.data.edges.some((f) => sameEdge(f, { type: "edge", ...e }))) st.data.edges = [...st.data.edges, e];
        st.send({ op: "add_edge", ...e });
      } else {
        st.data.nodes = st.data.nodes.map((n) => (n.id === d.id ? { ...n, x: d.x, y: d.y } : n));
        st.send({ op: "move", name: d.id, x: Math.round(d.x * 10) / 10, y: Math.round(d.y * 10) / 10 });
      }
      render(st);
      return;
    }
    if (st.pendingClick && !cancelled) {
      const [x, y] = st.pendingClick;
      st.pendingClick = null;
      if (st.selected) {
        st.selected = null;
        render(st);
      } else {
        openNameBox(st, x, y);
      }
    }
    st.pendingClick = null;
  };
  svg.addEventListener("pointerup", (evt) => finish(evt, false));
  svg.addEventListener("pointercancel", (evt) => finish(evt, true));
  box.addEventListener("keydown", (evt) => {
    evt.stopPropagation();
    if (evt.key === "Enter") {
      evt.preventDefault();
      closeNameBox(st, true);
    } else if (evt.key === "Escape") {
      evt.preventDefault();
      closeNameBox(st, false);
    }
  });
  box.addEventListener("blur", () => closeNameBox(st, true));
  root.addEventListener("keydown", (evt) => {
    if (evt.target === box) return;
    if ((evt.key === "Delete" || evt.key === "Backspace") && st.selected) {
      evt.preventDefault();
      removeSelected(st);
    } else if (evt.key === "Escape") {
      st.selected = null;
      st.drag = null;
      render(st);
    }
  });
  root.querySelector(".delete").addEventListener("click", () => removeSelected(st));
  for (const b of root.querySelectorAll("button.kind")) {
    b.addEventListener("click", () => {
      st.edgeKind = b.dataset.kind;
      render(st);
    });
  }
}

export default function (component) {
  const { data, setTriggerValue, parentElement } = component;
  const root = parentElement.querySelector(".mdcm-canvas") || build(parentElement);
  const st = root.__mdcm;
  const d = data && Array.isArray(data.nodes) ? data : { width: 640, height: 360, nodes: [], edges: [] };
  st.data = { ...d, nodes: d.nodes.slice(), edges: (d.edges || []).slice() };
  if (st.selected && st.selected.type === "node" && !byId(st, st.selected.id)) st.selected = null;
  if (st.selected && st.selected.type === "edge" && !st.data.edges.some((e) => sameEdge(e, st.selected)))
    st.selected = null;
  st.send = (value) => {
    st.seq = Math.max(st.seq + 1, Date.now()); // unique across page reloads too
    setTriggerValue("edit", { ...value, seq: st.seq });
  };
  render(st);
}
