"""Verifiable rewards of Video-STR (paper Sec. 4.2): R = R_format + R_ans + R_graph + R_l.

    R_format  1 iff the completion is exactly <think>...</think> then <answer>...</answer> (white space between).
    R_ans     by answer type: mc   1 iff the answer is exactly the right option letter ("A or B", "", "AB" score 0);
                              num  mean relative accuracy, MRA (VSI-Bench):
                                   MRA = 1/10 sum_{theta in 0.50, 0.55, ..., 0.95} 1[|y_hat - y| / |y| <= 1 - theta];
                              iou  temporal IoU of [start, end] seconds, or box IoU of [x1, y1, x2, y2] (V-STaR).
    R_graph   R_n + R_e averaged over the k ground-truth frames (graph.graph_reward).
    R_l       + bonus (0.2) when the answer is correct and lo <= n_tokens <= hi (320..512 in the paper).

mra (VSI-Bench's), interval_iou and box_iou (V-STaR's) are the benchmarks' own arithmetic exactly, each docstring
naming its source: eval.py reports benchmark numbers with these functions, and the training reward uses them too.
Each part has a weight (a setting). VARIANTS (train.py --variant) set what <think> holds and R's graph term.
Differences from the paper / peers: "correct" for R_l means R_ans >= 0.5 (an exact letter, a number within
~25 %, an IoU >= 0.5); Video-R1 also requires that more than one completion of the group is correct, a group
level rule this per-completion function leaves out. Graphs are read only from the text before the first
<answer>, so a graph written in the answer earns nothing.

Run: `python rewards.py` scores a few completions (good, hacked, malformed) and prints every part.
"""
import argparse
import math
import re

import numpy as np

import graph

MRA_THRESHOLDS = np.linspace(0.5, 0.95, 10)           # theta in 0.50, 0.55, ..., 0.95, as VSI-Bench builds them
CORRECT = 0.5                                          # R_ans at or above this counts as "correct" for R_l
LEN_LO, LEN_HI, LEN_BONUS = 320, 512, 0.2                # the paper's R_l window (tokens of 768) and bonus
DEFAULT_WEIGHTS = {"format": 1.0, "answer": 1.0, "graph": 1.0, "length": 1.0}
VARIANTS = {   # variant: (what <think> holds: model.build_prompt asks for it, data.with_think writes it,
               #           (c_n, c_e): R_graph = c_n R_n + c_e R_e)
    "graph": ("graph", (1.0, 1.0)),       # Video-STR (Sec. 4.2): nodes with centres and edges (d, a), R_n + R_e
    "none": ("free", (0.0, 0.0)),         # the paper's "w/o graph reasoning" (Table 2): no graph asked or rewarded
    "coords": ("nodes", (2.0, 0.0)),      # coordinate prediction: centres only; 2 R_n keeps R_graph's range [0, 2]
    "answer_only": ("graph", (0.0, 0.0)), # graph's prompt and reasoning, R_graph dropped: isolates the reward term
}

_BODY = r"(?:(?!</?think>|</?answer>).)*"               # text with no think/answer tag inside
FORMAT_RE = re.compile(rf"\s*<think>{_BODY}</think>\s*<answer>{_BODY}</answer>\s*", re.DOTALL)
NUMBER_RE = re.compile(r"([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d{1,3})?|[-+]?\.\d+)"
                       r"(?:\s*[A-Za-z%\u00b0]{1,12})?\.?")
LETTER_RE = re.compile(r"\(?([A-Za-z])\)?\.?")
INTERVAL_RE = re.compile(r"\[?\s*([^\[\],]+?)\s*,\s*([^\[\],]+?)\s*(?:,\s*([^\[\],]+?)\s*,\s*([^\[\],]+?)\s*)?\]?")


def format_reward(text):
    """R_format: 1.0 iff the whole completion is <think>...</think><answer>...</answer>, else 0.0."""
    return 1.0 if isinstance(text, str) and FORMAT_RE.fullmatch(text) else 0.0


def extract_answer(text):
    """The content of the last <answer>...</answer>, stripped, or None. The same pairs as
    re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL) (each <answer> closes at the next </answer>, the scan
    goes on after it), found with str.find in linear time: the regex rescans the rest of the text from every
    unclosed <answer>, quadratic on repeated tags (51 kB took 3 s)."""
    if not isinstance(text, str):
        return None
    found, pos = None, 0
    while True:
        i = text.find("<answer>", pos)
        j = text.find("</answer>", i + 8) if i >= 0 else -1
        if j < 0:
            return found.strip() if found is not None else None
        found, pos = text[i + 8:j], j + 9


def parse_number(s):
    """'3.5', '3,500', '3.5 m', '-2', '1e3', '5.' (a sentence's full stop, dropped as VSI-Bench does) -> float;
    anything else (nan, inf, '3 or 4', '') -> None. No eval."""
    if not isinstance(s, str) or len(s) > 64:
        return None
    m = NUMBER_RE.fullmatch(s.strip())
    if not m:
        return None
    value = float(m.group(1).replace(",", ""))
    return value if math.isfinite(value) else None


def parse_interval(s):
    """'[1.0, 2.5]' -> [1.0, 2.5]; '[x1, y1, x2, y2]' -> 4 floats; anything else -> None."""
    if not isinstance(s, str) or len(s) > 200:
        return None
    m = INTERVAL_RE.fullmatch(s.strip())
    if not m:
        return None
    values = [parse_number(g) for g in m.groups() if g is not None]
    return None if any(v is None for v in values) else values


def mra(pred, gt):
    """Mean relative accuracy with VSI-Bench's arithmetic exactly (mean_relative_accuracy in thinking-in-space,
    lmms_eval/tasks/vsibench/utils.py): 1[abs(pred - gt) / gt <= 1 - theta] over theta = np.linspace(0.5, 0.95, 10),
    float64, no tolerance, so an answer exactly on a threshold falls where float rounding puts it (mra(6, 5) = 0.6:
    0.2 <= 1 - 0.8 is False in floats); a tolerance would only move such answers, and the reward would part from the
    reported number. Beyond VSI-Bench (whose ground truths are all > 0): |gt| is the divisor, and with gt == 0
    (undefined there) the absolute error |pred| is used in its place (so an exact 0 scores 1)."""
    rel = abs(pred - gt) / (abs(gt) if gt != 0 else 1.0)
    return float(np.mean(rel <= 1 - MRA_THRESHOLDS))


def interval_iou(a, b):
    """Temporal IoU as V-STaR's calculate_temporal_iou (V-STaR-Bench/V-STaR, eval.py):
    max(0, min(e, e') - max(s, s')) / (max(e, e') - min(s, s')), and 0.0 when that union is 0, so two identical
    zero-length intervals score 0 (V-STaR's choice, kept so that the reward and the reported number agree).
    An inverted interval (s > e) scores 0, which V-STaR's formula also gives against a valid interval. Never NaN:
    a width that overflows (e.g. [-1e308, 1e308]) is computed at a power-of-two scale, and nan / inf give 0."""
    (s0, e0), (s1, e1) = a, b
    if s0 > e0 or s1 > e1 or not all(map(math.isfinite, (s0, e0, s1, e1))):
        return 0.0
    union = max(e0, e1) - min(s0, s1)
    if not math.isfinite(union):                  # e.g. [-1e308, 1e308]: the width overflows; IoU is scale-free
        return interval_iou(*_unit_scale(a, b))
    return max(0.0, min(e0, e1) - max(s0, s1)) / union if union > 0 else 0.0


def _unit_scale(a, b):
    """a, b divided by the power of two that brings the largest |coordinate| into [0.5, 1) (exact in binary
    floats, up to underflow of coordinates ~1e-300 times smaller): the IoU is unchanged and widths and areas no
    longer overflow. Finite values only (the row validator and parse_number refuse nan and inf)."""
    e = math.frexp(max(abs(x) for x in [*a, *b]))[1]
    return [math.ldexp(x, -e) for x in a], [math.ldexp(x, -e) for x in b]


def box_iou(a, b):
    """IoU of two boxes [x1, y1, x2, y2] as V-STaR's compute_iou (V-STaR-Bench/V-STaR, eval.py): intersection /
    union, 0.0 when the union is 0 (so two identical zero-area boxes score 0, as there). An inverted box scores 0,
    which V-STaR's formula also gives (its intersection is 0)."""
    if a[2] < a[0] or a[3] < a[1] or b[2] < b[0] or b[3] < b[1] or not all(map(math.isfinite, [*a, *b])):
        return 0.0
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if not (math.isfinite(union) and math.isfinite(inter)):   # huge boxes: areas overflow; IoU is scale-free
        return box_iou(*_unit_scale(a, b))                   # all |x| < 1 now: no second overflow
    return inter / union if union > 0 else 0.0


def answer_reward(pred_text, gt, answer_type):
    """R_ans in [0, 1] of an extracted answer string against the ground truth of its type."""
    if not isinstance(pred_text, str):
        return 0.0
    if answer_type == "mc":
        m = LETTER_RE.fullmatch(pred_text.strip())
        return 1.0 if m and m.group(1).upper() == str(gt).strip().upper() else 0.0
    if answer_type == "num":
        value = parse_number(pred_text)
        return 0.0 if value is None else mra(value, float(gt))
    if answer_type == "iou":
        values = parse_interval(pred_text)
        if values is None or len(values) != len(gt):
            return 0.0
        return interval_iou(values, gt) if len(gt) == 2 else box_iou(values, gt)
    raise ValueError(f"answer_type must be mc, num or iou, got {answer_type!r}")


def length_reward(n_tokens, correct, lo=LEN_LO, hi=LEN_HI, bonus=LEN_BONUS):
    """R_l: bonus for a correct answer whose completion length lies in [lo, hi] tokens."""
    return bonus if correct and lo <= n_tokens <= hi else 0.0


def graph_reward_of(completion, graphs):
    """R_graph of a completion: the graph blocks written before <answer> against the row's ground-truth graphs
    (dicts, data.py's row format). Returns graph.graph_reward's (R_graph, {"node": R_n, "edge": R_e,
    "frames_found": ...})."""
    reasoning = completion.split("<answer>", 1)[0] if isinstance(completion, str) else ""
    return graph.graph_reward(graph.parse_graphs(reasoning), [graph.Graph.from_dict(g) for g in graphs or []])


def graph_term(r_node, r_edge, variant="graph"):
    """The graph part of R for a variant (VARIANTS): R_graph = c_n R_n + c_e R_e (graph: R_n + R_e, Sec. 4.2)."""
    c_n, c_e = VARIANTS[variant][1]
    return c_n * r_node + c_e * r_edge


def total_reward(completion, n_tokens, row, weights=None, lo=LEN_LO, hi=LEN_HI, bonus=LEN_BONUS, variant="graph"):
    """R = w_f R_format + w_a R_ans + w_g R_graph + w_l R_l for one completion of one dataset row.
    row: a dataset row (data.py): answer, answer_type, and optionally graphs (list of Graph dicts).
    Returns (total, parts) with every part unweighted; "graph" is the variant's graph term (graph_term), and
    the measured R_n, R_e of what was written are "graph_node", "graph_edge" whatever the variant."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    r_answer = answer_reward(extract_answer(completion), row["answer"], row["answer_type"])
    _, g = graph_reward_of(completion, row.get("graphs"))
    parts = {"format": format_reward(completion), "answer": r_answer,
             "graph": graph_term(g["node"], g["edge"], variant),
             "length": length_reward(n_tokens, r_answer >= CORRECT, lo, hi, bonus),
             "graph_node": g["node"], "graph_edge": g["edge"]}
    return sum(w[k] * parts[k] for k in DEFAULT_WEIGHTS), parts


# --- support: no paper content below (demo) -------------------------------------------------------------------------

def main(argv=None):
    argparse.ArgumentParser(prog="python rewards.py", description=__doc__.split("\n")[0]).parse_args(argv)  # no flags
    gt_graph = graph.Graph(0, [graph.Node("red cube", (1.2, 0.4, 5.1)), graph.Node("blue ball", (-0.8, 0.4, 6.0))])
    row = {"answer": "B", "answer_type": "mc", "graphs": [gt_graph.to_dict()]}
    good = f"<think>{graph.to_text(gt_graph)} The ball is farther. </think><answer>B</answer>"
    cases = {"good": good, "right letter, no graph": "<think>The ball is farther.</think><answer>B</answer>",
             "hedged 'A or B'": "<think>...</think><answer>A or B</answer>", "no tags": "B",
             "truncated": good[: len(good) // 2]}
    for name, text in cases.items():
        total, parts = total_reward(text, n_tokens=400, row=row)
        print(f"{name:24s} R={total:.3f}  " + "  ".join(f"{k}={v:.2f}" for k, v in parts.items()))
    print("MRA of 3.3 vs 3.0:", mra(3.3, 3.0), "| tIoU [1,3] vs [2,4]:", round(interval_iou([1, 3], [2, 4]), 3))


if __name__ == "__main__":
    main()
