"""The inter-object relation graph of Video-STR, its text form, and its reward (paper Sec. 4.2, Theorem 1).

The policy writes, inside <think>, one graph per key frame: nodes are objects with their 3D centres, edges hold
the pair's distance and angle. The reward compares them with the ground truth.

Invariance (Theorem 1, Phi(RX, C) = Phi(X, C) for R in SO(3)). Let x_i be object centres in the camera frame
(camera centre C at the origin). Phi(X) = (d_ij, a_ij) with
    d_ij = |x_i - x_j|                                  (metres)
    a_ij = arccos( x_i . x_j / (|x_i| |x_j|) )          (degrees; the angle the pair subtends at the camera)
Rotating every centre about the camera, x -> R x, keeps both: |R x_i - R x_j| = |x_i - x_j| and
(R x_i).(R x_j) = x_i . x_j because R^T R = I. The coordinates themselves do change. The 2D cognitive map used
by earlier work stores a camera-frame azimuth, atan2(x_i, z_i): a camera yaw of phi adds phi to every azimuth,
so the same scene seen after the camera turned gets a different map; d_ij and a_ij stay put.

Text grammar (what the model writes; white space is free, names are lower case and unique per graph; a name that
ends in a number, "car 2", is one of several objects of its category, "car": data.track_names, category_of):
    <graph t=FRAME> NAME (X,Y,Z); NAME (X,Y,Z); ... | NAME-NAME d=DIST a=ANGLE; ... </graph>
FRAME is the source-video frame index; X,Y,Z metres in that frame's camera frame (x right, y down, z forward),
one decimal; DIST metres, one decimal; ANGLE whole degrees. A full example with three objects:
    <graph t=0> red cube (1.2,0.4,5.1); blue ball (-0.8,0.4,6.0); green cone (0.3,0.5,3.2) | red cube-blue ball
    d=2.2 a=21; red cube-green cone d=2.1 a=8; blue ball-green cone d=3.0 a=19 </graph>
The parser never raises: a block that is truncated, nested or malformed is skipped, a node or edge it cannot read
is dropped, an edge whose names are not nodes of the block is ignored.

Rewards (the paper gives no formulas; these follow its description and SpaceR's map reward): node_reward R_n
(centres matched greedily within each category), edge_reward R_e (d and a of the edges between matched nodes),
graph_reward R_graph = mean over the k ground-truth frames of (R_n + R_e), in [0, 2]; each docstring has the formula.

Run: `python graph.py [--out graph_demo.png]` prints the invariance on a random scene and draws it.
"""
import argparse
import re
from dataclasses import dataclass, field

import numpy as np

TAU_NODE = 2.0    # metres: a predicted centre this far from the true one scores 0 (1 m off scores 0.5)
ANGLE_TOL = 20.0  # degrees: an edge angle this far off scores 0 on its angle half
MAX_NODES = 64    # a parsed block keeps at most this many nodes (guards against pathological text)
MAX_NAME = 40     # characters in an object name


@dataclass
class Node:
    category: str                          # the object's name, e.g. "red cube", "car 2" (category_of: "car")
    center: tuple                          # (x, y, z) metres, camera frame of this graph's frame


@dataclass
class Edge:
    i: int                                 # index into Graph.nodes
    j: int
    dist: float                            # d_ij, metres
    angle: float                           # a_ij, degrees


@dataclass
class Graph:
    frame: int                             # source-video frame index
    nodes: list
    edges: list = field(default_factory=list)  # empty: derive from the centres (ground truth); parsed: as written

    def to_dict(self):
        return {"frame": int(self.frame),
                "nodes": [{"category": n.category, "center": [float(c) for c in n.center]} for n in self.nodes]}

    @staticmethod
    def from_dict(d):
        return Graph(int(d["frame"]), [Node(str(n["category"]), tuple(float(c) for c in n["center"]))
                                       for n in d["nodes"]])


def edge_features(centers):
    """Phi(X): centres (N, 3) -> (dist (N, N) metres, angle (N, N) degrees), both rotation invariant."""
    x = np.asarray(centers, dtype=np.float64).reshape(-1, 3)            # (N, 3)
    dist = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)        # (N, N) d_ij = |x_i - x_j|
    unit = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)  # (N, 3)
    cos = np.clip(unit @ unit.T, -1.0, 1.0)                              # (N, N)
    angle = np.degrees(np.arccos(cos))                                   # (N, N) a_ij
    return dist, angle


def derive_edges(nodes):
    """All pairs i < j with their (d_ij, a_ij) computed from the centres."""
    if len(nodes) < 2:
        return []
    dist, angle = edge_features([n.center for n in nodes])
    return [Edge(i, j, float(dist[i, j]), float(angle[i, j]))
            for i in range(len(nodes)) for j in range(i + 1, len(nodes))]


def fmt_num(v, digits=1):
    """A number as the model writes it: fixed decimals ("5.0", not "5": one regular pattern is easier for a small
    model to write), an integer without them for digits=0 ("3"), never "-0.0". Graphs and answers both use it."""
    s = f"{v:.{digits}f}" if digits else f"{round(v):d}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def to_text(g):
    """One graph block, as the model should write it (edges derived from centres when g.edges is empty)."""
    nodes = "; ".join(f"{n.category} ({fmt_num(n.center[0])},{fmt_num(n.center[1])},{fmt_num(n.center[2])})"
                      for n in g.nodes)
    edges = "; ".join(f"{g.nodes[e.i].category}-{g.nodes[e.j].category} d={fmt_num(e.dist)} a={fmt_num(e.angle, 0)}"
                      for e in (g.edges or derive_edges(g.nodes)))
    return f"<graph t={g.frame}> {nodes} | {edges} </graph>" if edges else f"<graph t={g.frame}> {nodes} </graph>"


NUM = r"[-+]?\d{1,6}(?:\.\d{1,6})?"
OPEN_RE = re.compile(r"<\s*graph\s+t\s*=\s*(\d{1,6})\s*>")
CLOSE_RE = re.compile(r"<\s*/\s*graph\s*>")
NODE_RE = re.compile(rf"^(.{{1,{MAX_NAME}}}?)\s*\(\s*({NUM})\s*,\s*({NUM})\s*,\s*({NUM})\s*\)$")
EDGE_RE = re.compile(rf"^(.{{3,{2 * MAX_NAME + 3}}}?)\s+d\s*=\s*({NUM})\s+a\s*=\s*({NUM})$")


def _name(s):
    return " ".join(s.lower().split())


def _parse_block(frame, body):
    """Body of one block -> Graph, or None when no node can be read."""
    node_part, _, edge_part = body.partition("|")
    nodes, index = [], {}
    for item in node_part.split(";")[:MAX_NODES]:
        m = NODE_RE.match(item.strip())
        if m and _name(m.group(1)) and _name(m.group(1)) not in index:
            index[_name(m.group(1))] = len(nodes)
            nodes.append(Node(_name(m.group(1)), tuple(float(m.group(k)) for k in (2, 3, 4))))
    if not nodes:
        return None
    edges, seen = [], set()
    for item in edge_part.split(";")[:MAX_NODES * MAX_NODES]:
        m = EDGE_RE.match(item.strip())
        if not m:
            continue
        pair = m.group(1)
        for cut in (k for k, ch in enumerate(pair) if ch == "-"):  # names may hold '-': try every split
            a, b = _name(pair[:cut]), _name(pair[cut + 1:])
            if a in index and b in index and a != b:
                key = frozenset((index[a], index[b]))
                if key not in seen:
                    seen.add(key)
                    edges.append(Edge(index[a], index[b], float(m.group(2)), float(m.group(3))))
                break
    return Graph(int(frame), nodes, edges)


def parse_graphs(text):
    """All well-formed graph blocks of a completion, in order. Never raises; linear in len(text)."""
    if not isinstance(text, str):
        return []
    opens = [(m.start(), m.end(), m.group(1)) for m in OPEN_RE.finditer(text)]
    closes = [m.start() for m in CLOSE_RE.finditer(text)]
    graphs, c = [], 0
    for k, (start, body_start, frame) in enumerate(opens):
        while c < len(closes) and closes[c] < body_start:
            c += 1
        next_open = opens[k + 1][0] if k + 1 < len(opens) else len(text)
        if c < len(closes) and closes[c] < next_open:   # closed before the next block opens: well formed
            g = _parse_block(frame, text[body_start:closes[c]])
            if g is not None:
                graphs.append(g)
    return graphs


NUMBERED_RE = re.compile(r"^(.*\S) \d{1,3}$")
NAME_RULE = ("Objects of one kind are numbered in the order they first appear, those that appear together "
             "from left to right: car 1, car 2.")   # model.build_prompt's words for data.track_names' rule


def category_of(name):
    """The category a node's name stands for: "car 2" -> "car" (real video numbers the objects of one category,
    data.track_names), any other name as it is ("red cube"). Matching pairs nodes within a category by distance, so a
    graph that numbers two cars the other way round scores as one that numbers them as the ground truth does."""
    m = NUMBERED_RE.match(name)
    return m.group(1) if m else name


def match_nodes(pred_nodes, gt_nodes):
    """Greedy matching within each category (category_of), closest pairs first. Returns {gt index: (pred index,
    distance)}."""
    pred_cats, gt_cats = ([category_of(n.category) for n in nodes] for nodes in (pred_nodes, gt_nodes))
    pairs = sorted((float(np.linalg.norm(np.subtract(p.center, g.center))), gi, pi) for gi, g in enumerate(gt_nodes)
                   for pi, p in enumerate(pred_nodes) if pred_cats[pi] == gt_cats[gi])
    matched, used = {}, set()
    for dist, gi, pi in pairs:
        if gi not in matched and pi not in used:
            matched[gi] = (pi, dist)
            used.add(pi)
    return matched


def node_reward(pred, gt):
    """R_n in [0, 1] for one frame: per category_of sum_pairs max(0, 1 - dist/TAU_NODE) / max(n_pred, n_gt),
    weighted by ground-truth counts. Predicted nodes of categories absent from the ground truth count in the
    denominator (otherwise hallucinated objects would be free)."""
    if not gt.nodes:
        return 1.0 if not pred.nodes else 0.0
    matched = match_nodes(pred.nodes, gt.nodes)
    gt_cats = {}
    for gi, n in enumerate(gt.nodes):
        gt_cats.setdefault(category_of(n.category), []).append(gi)
    total = 0.0
    for cat, gis in gt_cats.items():
        n_pred = sum(category_of(p.category) == cat for p in pred.nodes)
        score = sum(max(0.0, 1.0 - matched[gi][1] / TAU_NODE) for gi in gis if gi in matched)
        total += len(gis) * score / max(n_pred, len(gis))   # weight n_gt_c times the category's score
    extra = sum(category_of(p.category) not in gt_cats for p in pred.nodes)
    return total / (len(gt.nodes) + extra)


def relative_accuracy(pred, gt):
    """max(0, 1 - |pred - gt| / |gt|); with gt == 0 it is 1 if pred == 0 else 0."""
    if gt == 0:
        return 1.0 if pred == 0 else 0.0
    return max(0.0, 1.0 - abs(pred - gt) / abs(gt))


def edge_reward(pred, gt):
    """R_e in [0, 1] for one frame: mean over ground-truth edges (from the true centres) of
    1/2 relative_accuracy(d) + 1/2 max(0, 1 - |delta a| / ANGLE_TOL), where the edge's two nodes are matched
    and the prediction wrote that edge; else 0. A ground truth with no edge gives 1 iff none is predicted."""
    gt_edges = derive_edges(gt.nodes)
    if not gt_edges:
        return 1.0 if not pred.edges else 0.0
    matched = match_nodes(pred.nodes, gt.nodes)
    written = {frozenset((e.i, e.j)): e for e in pred.edges}
    total = 0.0
    for e in gt_edges:
        if e.i in matched and e.j in matched:
            p = written.get(frozenset((matched[e.i][0], matched[e.j][0])))
            if p is not None:
                total += 0.5 * relative_accuracy(p.dist, e.dist)
                total += 0.5 * max(0.0, 1.0 - abs(p.angle - e.angle) / ANGLE_TOL)
    return total / len(gt_edges)


def graph_reward(pred_graphs, gt_graphs):
    """R_graph = 1/k sum_frames (R_n + R_e) over the k ground-truth frames, in [0, 2].
    A frame the prediction omits scores 0; of several predicted blocks for one frame the first counts."""
    if not gt_graphs:
        return 0.0, {"node": 0.0, "edge": 0.0, "frames_found": 0.0}
    by_frame = {g.frame: g for g in reversed(pred_graphs)}               # the first block of a frame counts
    r_n = r_e = found = 0.0
    for gt in gt_graphs:
        pred = by_frame.get(gt.frame)
        if pred is not None:
            found += 1
            r_n += node_reward(pred, gt)
            r_e += edge_reward(pred, gt)
    k = len(gt_graphs)
    return (r_n + r_e) / k, {"node": r_n / k, "edge": r_e / k, "frames_found": found / k}


def random_rotation(rng):
    """A uniformly random R in SO(3): QR of a Gaussian matrix, signs fixed, det +1."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def yaw(phi):
    """Rotation of the camera frame about its vertical (y, pointing down) axis by phi radians."""
    c, s = np.cos(phi), np.sin(phi)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


# --- support: no paper content below (plot, demo) -------------------------------------------------------------------

def plot_graphs(graphs, titles, path):
    """Top-down view (x right, z forward) of graphs side by side, each edge labelled with d and a."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(graphs), figsize=(5 * len(graphs), 5))
    for ax, g, title in zip(np.atleast_1d(axes), graphs, titles):
        xz = np.array([[n.center[0], n.center[2]] for n in g.nodes])  # (N, 2)
        for e in derive_edges(g.nodes):
            (x0, z0), (x1, z1) = xz[e.i], xz[e.j]
            ax.plot([x0, x1], [z0, z1], "-", color="gray", lw=1)
            ax.text((x0 + x1) / 2, (z0 + z1) / 2, f"d={e.dist:.1f} a={e.angle:.0f}", fontsize=8, ha="center")
        for (x, z), n in zip(xz, g.nodes):
            ax.plot([0, x], [0, z], ":", color="lightgray", lw=1)        # rays from the camera: a_ij is between them
            ax.plot(x, z, "o", color=n.category.split()[0] if n.category.split()[0] in
                    ("red", "blue", "green", "yellow", "purple", "orange") else "black", ms=12)
            ax.annotate(n.category, (x, z), textcoords="offset points", xytext=(6, 6), fontsize=9)
        ax.plot(0, 0, "k^", ms=12)
        ax.annotate("camera", (0, 0), textcoords="offset points", xytext=(6, -12), fontsize=9)
        ax.set(xlabel="x (m, right)", ylabel="z (m, forward)", xlim=(-5, 5), ylim=(-0.5, 9), aspect="equal")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python graph.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="graph_demo.png", help="the figure (default graph_demo.png)")
    out = p.parse_args(argv).out
    rng = np.random.default_rng(0)
    names = ["red cube", "blue ball", "green cone"]
    centers = np.column_stack([rng.uniform(-3, 3, 3), np.full(3, 1.2), rng.uniform(2, 8, 3)])  # (N, 3)
    g = Graph(0, [Node(n, tuple(np.round(c, 1))) for n, c in zip(names, centers)])
    R = yaw(np.radians(30.0))                                          # the camera turns 30 degrees
    g_rot = Graph(0, [Node(n.category, tuple(np.round(R @ np.array(n.center), 1))) for n in g.nodes])
    print("graph text (model's view):\n ", to_text(g))
    print("same scene, camera yawed by 30 degrees:\n ", to_text(g_rot))
    d0, a0 = edge_features([n.center for n in g.nodes])
    print("azimuths before (deg):", np.round(np.degrees(np.arctan2(centers[:, 0], centers[:, 2])), 1))
    c1 = np.array([n.center for n in g_rot.nodes])
    print("azimuths after  (deg):", np.round(np.degrees(np.arctan2(c1[:, 0], c1[:, 2])), 1), "<- not invariant")
    worst_x = worst_phi = 0.0
    for _ in range(100):
        Rr = random_rotation(rng)
        X = np.array([n.center for n in g.nodes]) @ Rr.T              # (N, 3) every centre rotated
        d1, a1 = edge_features(X)
        worst_phi = max(worst_phi, np.abs(d1 - d0).max(), np.abs(a1 - a0).max())
        worst_x = max(worst_x, np.abs(X - np.array([n.center for n in g.nodes])).max())
    print(f"100 random rotations: coordinates move up to {worst_x:.2f} m, "
          f"Phi (d, a) moves at most {worst_phi:.1e}")
    r, parts = graph_reward(parse_graphs(to_text(g_rot)), [g])
    print(f"R_graph of the rotated coordinates scored against the original: {r:.3f} {parts}")
    plot_graphs([g, g_rot], ["camera frame at t", "camera yawed by 30 deg: coordinates move, d and a do not"], out)
    print("figure written to", out)


if __name__ == "__main__":
    main()
