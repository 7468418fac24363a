r"""Evaluation of Video-STR checkpoints with each benchmark's own metric, side by side (any number of checkpoints
on one file of questions, a column per model); the rotation stress test; the toy Tables 1 and 2.

Paper: Video-STR (arXiv 2510.10976) Sec. 5 reports STI-Bench, V-STaR, VSI-Bench, SPAR-Bench, Video-MME and
TempCompass, inferring with 32 frames and greedy decoding.

Scoring rules. Every row carries `rule`, the benchmark whose own public scoring code scores it (set by its adapter
below; rows in our format: "ours"); `score` is that benchmark's headline metric, computed by the function named:
    vsibench  VSI-Bench, lmms_eval/tasks/vsibench/utils.py of thinking-in-space (vision-x-nyu/thinking-in-space;
              the same in EvolvingLMMs-Lab/lmms-eval): mc vsi_accuracy (first token), num number_mra (MRA)
    stibench  STI-Bench, opensource_test.py (MINT-SJTU/STI-Bench): mc sti_accuracy (its answer patterns)
    vstar     V-STaR, eval.py (V-STaR-Bench/V-STaR): iou interval_metrics (mean tIoU, R@k), boxes viou (m_vIoU)
    videor1   Video-R1, src/eval_bench.py (tulerfeng/Video-R1; its Video-MME and TempCompass numbers): r1_score
    ours      VSI-Bench's rules for mc / num (the synthetic tasks mirror VSI-Bench's), V-STaR's for iou / boxes
              (one box [x1, y1, x2, y2]: V-STaR's compute_iou, rewards.box_iou).
Also per question: format = R_format (rewards.py); node / edge = R_n / R_e (graph.graph_reward) where a row has
graphs. The answer is the text in the last <answer> tags, or the whole completion without them (the benchmarks'
prompts ask for a bare letter: an untrained model is not scored 0 for lacking tags; the format rate shows them).
The training reward needs the tags and reads mc strictly (rewards.answer_reward: "B chair" scores 0); it is kept
per question in --dump for comparison. MRA and the IoUs are the same functions in both (rewards.py).

Differences from the papers: SPAR-Bench has no adapter (convert it to our JSONL); V-STaR's chained what -> when
-> where dialogue is asked as independent single-turn questions and its open "what" answer (LLM-judged) is not
scored; V-STaR's inference_demo.py reads intervals and boxes from each model's own reply format (here: the forms
of parse_frame_boxes); the benchmarks' scripts score the whole reply, here the text in the answer tags; the
prompt is model.build_prompt's for every benchmark; STI-Bench uses at most 30 frames (pass --frames 30). Every
model is asked as it was trained: with its --variant's instruction (train.py saves it in config.json;
data.with_think).

Run (each command's flags: `python eval.py COMMAND --help`; README.md's "Other runs" and RESULTS.md show them):
  python eval.py --model tiny_base --model runs/default/final --data data/synth/test.jsonl   # score, side by side
  python eval.py demo                              # hand-written completions, good and poor, scored without a model
  python eval.py rotation --model tiny_base --axis roll --angles 0 30 90   # the rotation stress test
  python eval.py ablation --run runs/graph_s0 --run runs/none_s0           # the toy Table 2 from finished runs
  python eval.py generalization --run runs/grpo_s0 --run runs/sft_s0 --base tiny_base --set in=data/synth/test.jsonl
      --set objects=data/ood_objects/test.jsonl    # the toy Table 1: SFT and GRPO in and out of distribution
"""
import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

import data
import graph
import rewards
from data import BadRow, r1_extract

R_AT = (0.3, 0.5, 0.7)              # V-STaR R1@k thresholds on tIoU
N_BOOT = 1000                       # bootstrap resamples
VSI_NUMERIC = ("object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation")
FRAME_BOX_RE = re.compile(r"(\d{1,7})\s*:\s*(\[[^\[\]]{1,160}\])")


# --- answer rules ---------------------------------------------------------------------------------------------------

RULES = ("vsibench", "stibench", "vstar", "videor1", "ours")        # module docstring, "Scoring rules"
STI_PATTERNS = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in (   # STI-Bench's ANSWER_PATTERNS, in order
    r"\(([A-E])\)", r"Ans\s*=\s*['\"]?([A-E])['\"]?", r"Answer\s*[:=]\s*([A-E])", r"Option\s+([A-E])",
    r"\b([A-E])\s*(?:is|was)\s*correct", r"\b([A-E])[\.\)]\s*$")]


def answer_text(completion):
    """The last <answer>...</answer>'s text, stripped, else the whole completion as generated (read raw, as VSI-Bench
    reads a reply: a leading space matters)."""
    found = rewards.extract_answer(completion)
    return found if found is not None else (completion if isinstance(completion, str) else "")


def vsi_first_token(text):
    r"""VSI-Bench's fuzzy_matching exactly: pred.split(' ')[0].rstrip('.').strip() (split at ' ' only, so
    ' D' -> '' and 'D\nBecause' -> 'D\nBecause'; 'D.\n' -> 'D.' as rstrip meets the new line first)."""
    return (text or "").split(" ")[0].rstrip(".").strip()


def vsi_accuracy(pred_text, gt_letter):
    """VSI-Bench mc: exact_match(fuzzy_matching(pred), gt) = 1[first token.lower() == gt.lower()]."""
    return 1.0 if vsi_first_token(pred_text).lower() == str(gt_letter).lower() else 0.0


def sti_option(text):
    """STI-Bench's model_out: group 1 of the first of STI_PATTERNS found in the text (upper-cased), else the
    stripped text (opensource_test.py: `extract_answer(decoded) or decoded.strip()`)."""
    for pattern in STI_PATTERNS:
        m = pattern.search(text or "")
        if m:
            return m.group(1).upper()
    return (text or "").strip()


def sti_accuracy(pred_text, gt_letter):
    """STI-Bench's correct column: 1[out[-1] in 'ABCDE' and out[-1] == gt] of out = sti_option(pred); the last
    character, so 'The answer is B' counts and 'b' does not. An empty out scores 0 (the script would raise)."""
    out = sti_option(pred_text)
    return 1.0 if out and out[-1] in "ABCDE" and out[-1] == str(gt_letter) else 0.0


def vsi_number(pred_text):
    """VSI-Bench's to_float(fuzzy_matching(pred)): float(first token), else None, also for nan / inf (all of
    VSI-Bench's comparisons are False for them). rewards.parse_number (training) reads '3,500' and units too."""
    try:
        value = float(vsi_first_token(pred_text))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def number_mra(pred_text, gt):
    """VSI-Bench num: MRA (rewards.mra) of vsi_number(pred) against gt; unparseable -> 0."""
    value = vsi_number(pred_text)
    return 0.0 if value is None else rewards.mra(value, float(gt))


def r1_number(text):
    """Video-R1's normalize_number: float(text without ','), or None where that fails."""
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def r1_mra(pred, gt):
    """Video-R1's mean_relative_accuracy: float32 tensors, rel = |pred - gt| / (|gt| + 1e-8),
    mean of 1[rel < 1 - theta] over theta = arange(0.5, 0.975, 0.05) (strict '<', unlike VSI-Bench's '<=')."""
    import torch
    p, g = torch.tensor(pred, dtype=torch.float32), torch.tensor(gt, dtype=torch.float32)
    rel = torch.abs(p - g) / (torch.abs(g) + 1e-8)
    thresholds = torch.arange(0.5, 0.95 + 0.05 / 2, 0.05, dtype=torch.float32)        # (10,)
    return (rel < (1 - thresholds)).float().mean().item()


def r1_score(completion, row):
    r"""Video-R1's reward_fn (src/eval_bench.py): a = the first <answer>\s*(.*?)\s*</answer>, stripped, or the whole
    completion when that is empty; gt = row['gt_text'] (the solution read the same way, set by from_videor1), else
    the row's answer. mc: 1[a.strip() == gt.strip()] (exact: "b", "B." score 0); numerical: 0 if only one of a, gt
    holds '.' or ',', else 1[round(a, 2) == round(gt, 2)]; regression: r1_mra."""
    a = r1_extract(completion) or (completion if isinstance(completion, str) else "")
    gt = str(row.get("gt_text", row["answer"]))
    if row["answer_type"] == "mc":
        return 1.0 if a.strip() == gt.strip() else 0.0
    p, g = r1_number(a), r1_number(gt)
    if p is None or g is None:
        return 0.0
    if row.get("problem_type") == "numerical":
        return float(("." in gt or "," in gt) == ("." in a or "," in a) and round(g, 2) == round(p, 2))
    return r1_mra(p, g)


def interval_metrics(pred_text, gt):
    """V-STaR's calculate_temporal_iou (rewards.interval_iou; 0 for an unreadable interval) and the recalls:
    {'tIoU': tIoU, 'R@0.3': 1[tIoU >= 0.3], ...}."""
    values = rewards.parse_interval(pred_text)
    tiou = rewards.interval_iou(values, gt) if values is not None and len(values) == 2 else 0.0
    return {"tIoU": tiou, **{f"R@{k}": float(tiou >= k) for k in R_AT}}


def parse_frame_boxes(text):
    """The answer form of a V-STaR "where" row: one `FRAME: [x1, y1, x2, y2]` per frame (pixels of the original
    video, FRAME = source-video frame index, as in graph.py), separated by ';' or new lines -> {12: [1, 2, 30, 40],
    ...} (first box of a frame wins); a bare '[x1, y1, x2, y2]' -> {None: box}, used for every frame. Never raises."""
    if not isinstance(text, str) or len(text) > 20000:
        return {}
    boxes = {}
    for frame, inner in FRAME_BOX_RE.findall(text):
        values = rewards.parse_interval(inner)
        if values is not None and len(values) == 4:
            boxes.setdefault(int(frame), values)
    values = None if boxes else rewards.parse_interval(text)
    return {None: values} if values is not None and len(values) == 4 else boxes


def viou(pred_text, gt_boxes):
    """V-STaR's calculate_spatial_metrics: vIoU = 1/|F| sum_{f in F} IoU(pred_f, gt_f) over the ground-truth frames
    F, 0 for a frame not predicted (IoU: rewards.box_iou); gt_boxes: [{"frame": int, "box": [x1, y1, x2, y2]}]."""
    if not gt_boxes:
        return 0.0
    pred = parse_frame_boxes(pred_text)
    boxes = [pred.get(int(g["frame"]), pred.get(None)) for g in gt_boxes]
    return sum(0.0 if b is None else rewards.box_iou(b, g["box"]) for b, g in zip(boxes, gt_boxes)) / len(gt_boxes)


def score_completion(completion, row):
    """All metrics of one completion for one row under the row's rule (no 'rule' = "ours"): {'score': headline
    metric, 'format', optional 'tIoU', 'R@k', 'node', 'edge', 'edge_from_centres', 'train_reward'}."""
    ans = answer_text(completion)
    kind, gt, rule = row["answer_type"], row["answer"], row.get("rule", "ours")
    if rule not in RULES:
        raise ValueError(f"row {row.get('id')}: rule must be one of {', '.join(RULES)}, got {rule!r}")
    out = {"format": rewards.format_reward(completion)}
    if rule == "videor1" and kind in ("mc", "num"):
        out["score"] = r1_score(completion, row)
    elif kind == "mc":
        out["score"] = sti_accuracy(ans, gt) if rule == "stibench" else vsi_accuracy(ans, gt)
    elif kind == "num":
        out["score"] = number_mra(ans, gt)
    elif kind == "iou" and len(gt) == 2:
        out.update(interval_metrics(ans, gt))
        out["score"] = out["tIoU"]
    elif kind == "iou":
        values = rewards.parse_interval(ans)
        out["score"] = rewards.box_iou(values, gt) if values is not None and len(values) == 4 else 0.0
    elif kind == "boxes":
        out["score"] = viou(ans, gt)
    else:
        raise ValueError(f"row {row.get('id')}: answer_type must be mc, num, iou or boxes, got {kind!r}")
    if kind != "boxes":
        out["train_reward"] = rewards.answer_reward(rewards.extract_answer(completion), gt, kind)
    if row.get("graphs"):
        _, parts = rewards.graph_reward_of(completion, row["graphs"])
        out["node"], out["edge"] = parts["node"], parts["edge"]
        # edge_from_centres: R_e of the edges implied by the written centres (d, a computed from them, written edges
        # ignored): the relations a model that writes centres alone (--variant coords) states, comparable with R_e
        reasoning = completion.split("<answer>", 1)[0] if isinstance(completion, str) else ""
        implied = [graph.Graph(g.frame, g.nodes, graph.derive_edges(g.nodes)) for g in graph.parse_graphs(reasoning)]
        truth = [graph.Graph.from_dict(g) for g in row["graphs"]]
        out["edge_from_centres"] = graph.graph_reward(implied, truth)[1]["edge"]
    return {**out, **follows(completion, row)}


# --- does the answer follow the model's own reasoning? --------------------------------------------------------------
# GRPO reinforces whole completions: it can teach the reasoning only where the reasoning decides the answer. Two
# checks on synthetic rows, each present only where it applies (a mean over the questions that have it):
#   follows_graph     1 iff the answer is the one the completion's own graph implies at the row's key frame
#                     (abs_distance: the d written on the asked pair's edge; closest_object: the option with the
#                     smallest written d to the named object; relative_direction: the signs of x and z between the
#                     written centres), 0 when the answer differs or the graph lacks what it needs.
#   follows_sentence  mc whose reference sentence names an option: 1 iff the letter is that of the option the
#                     text after the graphs names, 0 when it differs or the text names none.
GRAPH_TASKS = ("abs_distance", "closest_object", "relative_direction")


def names_in(text, names):
    """The names that occur in text as whole words ("car 1" is not in "car 10"), in the order they first occur."""
    found = ((re.search(rf"(?<!\w){re.escape(n)}(?!\w)", text), n) for n in set(names))
    return [n for _, n in sorted((m.start(), n) for m, n in found if m)]


def graph_answer(written, row):
    """The answer text that graph.Graph `written` implies for the row's question, or None if it cannot."""
    asked = names_in(row.get("question") or "", [n["category"] for n in row["graphs"][0]["nodes"]])
    at = {n.category: np.array(n.center) for n in written.nodes}
    d = {frozenset((written.nodes[e.i].category, written.nodes[e.j].category)): e.dist for e in written.edges}
    if row["task"] == "abs_distance" and len(asked) == 2:
        found = d.get(frozenset(asked))
        return None if found is None else graph.fmt_num(found)
    options = row.get("options") or []
    if row["task"] == "closest_object" and asked:
        near = sorted((dist, next(iter(pair - {asked[0]}))) for pair, dist in d.items() if asked[0] in pair)
        pick = near[0][1] if near else None
    elif row["task"] == "relative_direction" and len(asked) == 2 and all(n in at for n in asked):
        dx, _, dz = at[asked[0]] - at[asked[1]]          # "where is the B relative to the A": B named first
        pick = f"{'left' if dx < 0 else 'right'} and {'nearer' if dz < 0 else 'farther'}"
    else:
        return None
    return data.LETTERS[options.index(pick)] if pick in options else None


def named_option(reasoning, options):
    """The letter of the (longest) option that the text after the last graph block names (up to the options a
    reasoning of layout "options" restates: data.OPTIONS_MARK), or None."""
    sentence = re.split(r"</\s*graph\s*>", reasoning.split("<answer>", 1)[0])[-1].split(data.OPTIONS_MARK)[0].lower()
    named = sorted((o for o in options if o.lower() in sentence), key=len)
    return data.LETTERS[options.index(named[-1])] if named else None


def follows(completion, row):
    """{'follows_graph': 0/1, 'follows_sentence': 0/1}, each only where the row allows it (the comment above: which
    questions have it depends on the row alone, so two models' values pair question by question)."""
    if not isinstance(completion, str) or not row.get("graphs") or row.get("answer_type") not in ("mc", "num"):
        return {}
    answer, out = rewards.extract_answer(completion), {}
    truth = row["graphs"]
    if row.get("task") in GRAPH_TASKS and len(truth) == 1:
        written = [g for g in graph.parse_graphs(completion.split("<answer>", 1)[0]) if g.frame == truth[0]["frame"]]
        implied = graph_answer(written[0], row) if written else None
        out["follows_graph"] = float(implied is not None and answer == implied)
    options = row.get("options") or []
    if row["answer_type"] == "mc" and named_option(row.get("reasoning") or "", options):
        named = named_option(completion, options)
        out["follows_sentence"] = float(named is not None and answer == named)
    return out


# --- aggregates -----------------------------------------------------------------------------------------------------

def bootstrap_mean_ci(values, n_boot=N_BOOT, seed=0, level=0.95):
    """Percentile bootstrap interval of the mean, (lo, hi) = the (1-level)/2 and (1+level)/2 quantiles of the means
    of n_boot resamples with replacement; deterministic for a seed (bootstrap_task_mean_ci of one task)."""
    return bootstrap_task_mean_ci({"": values}, n_boot, seed, level)


def unweighted_task_mean(task_means):
    """VSI-Bench overall: mean over task families of (mean over the family's tasks of the task mean); VSI-Bench
    merges object_rel_direction_easy/_medium/_hard into one family, object_rel_direction, before the overall."""
    families = {}
    for task, m in task_means.items():
        families.setdefault(re.sub(r"_(easy|medium|hard)$", "", task), []).append(m)
    return float(np.mean([np.mean(v) for v in families.values()]))


def bootstrap_task_mean_ci(scores_by_task, n_boot=N_BOOT, seed=0, level=0.95):
    """Stratified bootstrap of unweighted_task_mean: each resample redraws every task's questions within
    that task (task sizes fixed), then recomputes the task means and their unweighted mean."""
    rng = np.random.default_rng(seed)
    tasks = {t: np.asarray(v, dtype=np.float64) for t, v in scores_by_task.items() if len(v)}
    if not tasks:
        return float("nan"), float("nan")
    stats = [unweighted_task_mean({t: x[rng.integers(0, len(x), len(x))].mean() for t, x in tasks.items()})
             for _ in range(n_boot)]                                # (n_boot,)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mean_ci(values, n_boot=N_BOOT, seed=0):
    """(mean, lo, hi) with the 95 % bootstrap interval, or None without values."""
    return (float(np.mean(values)), *bootstrap_mean_ci(values, n_boot, seed)) if len(values) else None


def fmt_ci(stat, signed=False, digits=3):
    """'0.512 [0.457, 0.559]' of a (mean, lo, hi), signed for a difference; '-' for None."""
    f = f"{{:{'+' * signed}.{digits}f}}"
    return "-" if stat is None else f"{f.format(stat[0])} [{f.format(stat[1])}, {f.format(stat[2])}]"


def summary_stat(values, n_boot=N_BOOT, seed=0):
    """{'mean', 'lo', 'hi', 'n'} of a list of per-question values."""
    lo, hi = bootstrap_mean_ci(values, n_boot, seed)
    return {"mean": float(np.mean(values)) if len(values) else float("nan"), "lo": lo, "hi": hi, "n": len(values)}


def summarize(rows, scored, n_boot=N_BOOT, seed=0):
    """Aggregates of one model, each with its seeded bootstrap 95% interval. rows[i] (task, answer_type) with
    scored[i] (score_completion's dict) -> {'overall_task' (VSI-Bench: unweighted task mean, resampled within each
    task), 'overall_q' (STI-Bench: question mean), 'tasks': {task: stat}, 'answer_types': {type: stat},
    'metrics': {name: stat}}."""
    by_task, by_type, by_metric = {}, {}, {}
    for row, s in zip(rows, scored):
        by_task.setdefault(row["task"], []).append(s["score"])
        by_type.setdefault(row["answer_type"], []).append(s["score"])
        for name, v in s.items():
            if name not in ("score", "train_reward"):
                by_metric.setdefault(name, []).append(v)
    all_scores = [s["score"] for s in scored]
    tasks = {t: summary_stat(v, n_boot, seed) for t, v in sorted(by_task.items())}
    lo, hi = bootstrap_task_mean_ci(by_task, n_boot, seed)
    overall_task = {"mean": unweighted_task_mean({t: st["mean"] for t, st in tasks.items()}) if tasks else
                    float("nan"), "lo": lo, "hi": hi, "n": len(all_scores)}
    return {"overall_task": overall_task, "overall_q": summary_stat(all_scores, n_boot, seed), "tasks": tasks,
            "answer_types": {t: summary_stat(v, n_boot, seed) for t, v in sorted(by_type.items())},
            "metrics": {m: summary_stat(v, n_boot, seed) for m, v in sorted(by_metric.items())}}


# --- rotation stress test -------------------------------------------------------------------------------------------
# Theorem 1: Phi(RX, C) = Phi(X, C) for a rotation R about the camera centre C. The synthetic test scenes
# (scenes.jsonl beside the rows) are re-rendered with the camera turned by each angle (scene["camera"]["offset"],
# applied by data.camera_pose, through which every pose of data.py passes), the questions remade (a fixed rng: the
# same texts, answers and graphs of the turned camera), each model scored at each angle. --axis as data.offset_pose
# defines it: yaw and roll turn about C (Theorem 1 exactly); orbit round the objects' start centroid keeps d_ij, not
# a_ij. Under yaw objects leave the 60 deg view beyond ~20 deg (the plot shows the share in view). Camera-frame
# coordinates move, edges do not: a model that has learned relations keeps R_e (one that writes centres alone: R_e
# of the edges they imply, edge_from_centres).

def with_offset(scene, axis, deg):
    """A copy of a scene whose camera is turned by deg degrees (the pivot of an orbit: objects' start centroid)."""
    pivot = np.mean([data.object_center(o, 0.0) for o in scene["objects"]], axis=0) * [1, 1, 0]
    return {**scene, "camera": {**scene["camera"], "offset": {"axis": axis, "deg": float(deg),
                                                             "pivot": pivot.tolist()}}}


def scene_ids(rows):
    """Scene indices of synthetic rows: 'synth-000123-04' -> 123."""
    ids = sorted({int(m.group(1)) for r in rows for m in [re.match(r"synth-(\d+)-", str(r.get("id")))] if m})
    if not ids:
        raise BadRow(None, "no synthetic rows (ids 'synth-NNNNNN-KK') in the data file", "rotation")
    return ids


def load_scenes(folder, ids):
    """Scene dicts from data.make_dataset's scenes.jsonl, by scene id."""
    path = os.path.join(folder, "scenes.jsonl")
    if not os.path.isfile(path):
        raise BadRow(None, "missing (data.make_dataset writes it with the videos; remake the set)", path)
    scenes = {s["id"]: s for s in data.read_jsonl(path)}
    missing = [i for i in ids if i not in scenes]
    if missing:
        raise BadRow(None, f"no scene for ids {missing[:5]}", path)
    return [scenes[i] for i in ids]


def rotated_rows(scene, axis, deg, seed, video_dir):
    """One scene rendered with the turned camera (its video written) and its questions, the rng fixed per scene;
    each row has `visible`: the share of (key frame, object) centres inside the image, in front of the camera."""
    rs = with_offset(scene, axis, deg)
    rows = data.make_questions(rs, np.random.default_rng([seed, int(scene["id"])]))
    H, W = rs["size"]
    centres = [np.array(n["center"], dtype=np.float64) for g in (rows[0]["graphs"] if rows else [])
               for n in g["nodes"]]
    hits = [x[2] > 0.1 and 0 <= u < W and 0 <= v < H for x in centres for u, v in [data.project(rs, x)]]
    os.makedirs(video_dir, exist_ok=True)
    path = os.path.join(video_dir, f"{int(scene['id']):06d}.mp4")
    data.write_video(path, data.render_clip(rs), rs["fps"])                  # (F, H, W, 3)
    return [{**r, "video": path, "visible": float(np.mean(hits)) if hits else 0.0} for r in rows]


def question_key(row):
    """(scene, task, question text): the same question at another angle (options and answer may change)."""
    return row["id"].rsplit("-", 1)[0], row["task"], row["question"]


def common_questions(rows_by_angle):
    """Keep the questions asked at every angle, sorted the same way at each angle (row k = same question)."""
    shared = set.intersection(*[{question_key(r) for r in rows} for rows in rows_by_angle.values()])
    return {a: sorted((r for r in rows if question_key(r) in shared), key=question_key)
            for a, rows in rows_by_angle.items()}


def coordinate_change(rows0, rows1):
    """Ground truth between two angles, over matching questions' key-frame graphs: mean |x_1 - x_0| (metres,
    camera-frame centres), mean |d_1 - d_0| (metres) and |a_1 - a_0| (degrees) of the edges."""
    dx, dd, da, seen = [], [], [], set()
    for r0, r1 in zip(rows0, rows1):
        if question_key(r0)[0] in seen:                                          # graphs are per scene
            continue
        seen.add(question_key(r0)[0])
        for g0, g1 in zip(r0["graphs"], r1["graphs"]):
            c0, c1 = ({n["category"]: n["center"] for n in g["nodes"]} for g in (g0, g1))
            names = [n for n in c1 if n in c0]
            x0, x1 = (np.array([c[n] for n in names]).reshape(-1, 3) for c in (c0, c1))     # (N, 3) each
            dx += np.linalg.norm(x1 - x0, axis=1).tolist()
            (d0, a0), (d1, a1) = graph.edge_features(x0), graph.edge_features(x1)
            iu = np.triu_indices(len(names), 1)
            dd += np.abs(d1 - d0)[iu].tolist()
            da += np.abs(a1 - a0)[iu].tolist()
    return {"coord_change_m": float(np.mean(dx or [0.0])), "edge_d_change_m": float(np.mean(dd or [0.0])),
            "edge_a_change_deg": float(np.mean(da or [0.0]))}


def angle_result(scored, scored0, rows, rows0, edge_key, n_boot=N_BOOT, seed=0):
    """One model (or several of a variant, their questions concatenated) at one angle: scored[k] the
    score_completion dict of rows[k] (None: not asked), scored0 / rows0 the same questions at the first angle. The
    summary (95 % intervals), the share of objects in view, the ground-truth change (coordinate_change) and the
    paired change against the first angle, question by question: mean_q [s_a(q) - s_0(q)] of the answer score and
    of the edge reward edge_key (R_e, or for a model that writes no edges the R_e of its centres' edges)."""
    kept = [(r, s) for r, s in zip(rows, scored) if s is not None]
    change = lambda key: [s[key] - s0[key] for s, s0 in zip(scored, scored0) if s is not None and s0 is not None]
    return {"summary": summarize([r for r, _ in kept], [s for _, s in kept], n_boot, seed), "rows": len(kept),
            "visible": float(np.mean([r["visible"] for r in rows])), "edge_key": edge_key,
            "answer_change": summary_stat(change("score"), n_boot, seed),
            "edge_change": summary_stat(change(edge_key), n_boot, seed), **coordinate_change(rows0, rows)}


def rotation_table(results):
    """Markdown: one row per angle (x100 for scores, metres / degrees for the ground-truth changes); the changes are
    paired against the first angle (the edge: R_e, or R_e from centres for a model that writes no edges)."""
    out = ["| angle | answer score | answer change | node R_n | edge R_e | R_e from centres | edge change | format "
           "| visible | GT coord change m | GT edge d change m | GT edge a change deg |", "|---" * 12 + "|"]
    for a, r in results.items():
        m = r["summary"]["metrics"]
        out.append(f"| {a:g} | {cell(r['summary']['overall_q'])} | {cell(r['answer_change'], True)} | "
                   f"{cell(m.get('node'))} | {cell(m.get('edge'))} | {cell(m.get('edge_from_centres'))} | "
                   f"{cell(r['edge_change'], True)} | {cell(m.get('format'))} | {100 * r['visible']:.0f}% | "
                   f"{r['coord_change_m']:.2f} | {r['edge_d_change_m']:.3f} | {r['edge_a_change_deg']:.2f} |")
    return "\n".join(out)


def plot_rotation(by_model, path, title):
    """Per model (a colour each) against the angle, with 95 % CIs: the answer score, R_n, R_e (edge_from_centres
    for a variant that writes no edges); right: the ground truth's change."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for k, (name, results) in enumerate(by_model.items()):
        angles = list(results)
        edge = results[angles[0]]["edge_key"]
        for ax, label, key in zip(axes, ("answer score", "node reward R_n", "edge reward R_e"), (None, "node", edge)):
            st = [(results[a]["summary"]["metrics"].get(key) if key else results[a]["summary"]["overall_q"])
                  or {"mean": np.nan, "lo": np.nan, "hi": np.nan} for a in angles]
            suffix = " (from its centres)" if key == "edge_from_centres" else ""
            ax.plot(angles, [x["mean"] for x in st], "o-", c=f"C{k}", label=name + suffix)
            ax.fill_between(angles, [x["lo"] for x in st], [x["hi"] for x in st], color=f"C{k}", alpha=0.15)
            ax.set(xlabel="camera rotation (deg)", title=label, ylim=(-0.02, 1.02))
        axes[0].plot(angles, [results[a]["visible"] for a in angles], "k--",
                     label="objects in view (share)" * (k == 0))
    bx, tx, results = axes[3], axes[3].twinx(), next(iter(by_model.values()))
    angles = list(results)
    for ax, key, style, label in ((bx, "coord_change_m", "o-C3", "|delta x| camera-frame centres (m)"),
                                  (bx, "edge_d_change_m", "s-C2", "|delta d| edges (m)"),
                                  (tx, "edge_a_change_deg", "^:C4", "|delta a| edges (deg)")):
        ax.plot(angles, [results[a][key] for a in angles], style, label=label)
    bx.set(xlabel="camera rotation (deg)", ylabel="metres", title="ground truth vs angle 0")
    top = max(5.0, 1.1 * max(results[a]["edge_a_change_deg"] for a in angles))       # rounding noise stays small
    tx.set(ylabel="degrees", ylim=(0, top))
    bx.legend(handles=bx.get_lines() + tx.get_lines(), fontsize=8, loc="upper left")
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in axes[:3]:
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def rotation(args):
    """`eval.py rotation`: render every angle, score each model at each; a table per model and, where several
    models share a variant (seeds), per variant pooled; rotation.json, rotation.png (pooled where pooled)."""
    import torch
    import model as qwen
    torch.set_num_threads(args.threads)
    ids = scene_ids(data.load_rows(args.data))[:args.scenes]
    scenes = load_scenes(os.path.dirname(os.path.abspath(args.data)), ids)
    videos = {a: os.path.join(args.out, "videos", f"{args.axis}{a:g}") for a in args.angles}
    rows_by_angle = common_questions(
        {a: [r for s in scenes for r in rotated_rows(s, args.axis, a, args.seed, videos[a])] for a in args.angles})
    first, scored, variants = args.angles[0], {}, {}
    for name, path in zip(model_names(args.model), args.model):
        mdl, tokenizer = qwen.load(path, device=args.device)
        variants[name] = model_variant(mdl)
        scored[name] = {}
        for a, rows in rows_by_angle.items():
            completions, _ = ask(mdl, tokenizer, rows, args, f"{name} {args.axis} {a:g} deg")
            scored[name][a] = [None if c is None else score_completion(c, r) for c, r in zip(completions, rows)]
        del mdl
    pools = {v: [n for n in scored if variants[n] == v] for v in dict.fromkeys(variants.values())}
    edge_key = lambda v: "edge" if rewards.VARIANTS[v][0] == "graph" else "edge_from_centres"

    def results_of(names):                                        # one model, or a variant's models pooled
        pool = lambda a: [s for n in names for s in scored[n][a]]
        return {a: angle_result(pool(a), pool(first), rows * len(names), rows_by_angle[first] * len(names),
                                edge_key(variants[names[0]]), args.n_boot, args.seed)
                for a, rows in rows_by_angle.items()}
    by_model = {n: results_of([n]) for n in scored}
    pooled = {v: results_of(names) for v, names in pools.items() if len(names) > 1}
    label = lambda v: f"{v} ({len(pools[v])} models pooled)"
    shown = {**{n: by_model[n] for n in scored if variants[n] not in pooled},
             **{label(v): r for v, r in pooled.items()}}
    title = (f"{' vs '.join(f'{n} ({variants[n]})' if n in variants else n for n in shown)}: camera {args.axis} "
             f"on {len(scenes)} scenes, {len(rows_by_angle[first])} questions per angle and model")
    for name, results in by_model.items():
        print(f"\n{name} (variant {variants[name]})\n" + rotation_table(results))
    for v, results in pooled.items():
        print(f"\n{label(v)}\n" + rotation_table(results))
    angles = lambda results: {f"{a:g}": r for a, r in results.items()}
    data.write_file(os.path.join(args.out, "rotation.json"), json.dumps(
        {"axis": args.axis, "data": args.data,
         "models": {n: {"path": p, "variant": variants[n], "angles": angles(by_model[n])}
                    for n, p in zip(scored, args.model)},
         "pooled": {v: {"models": pools[v], "angles": angles(r)} for v, r in pooled.items()}}, indent=1))
    plot_rotation(shown, os.path.join(args.out, "rotation.png"), title)
    print(f"wrote {args.out}/rotation.json, rotation.png")


# --- the toy Table 2 (ablation) -------------------------------------------------------------------------------------

GROUPS = (*data.TASK_GROUPS, "overall")        # the table's columns: data.TASK_GROUPS, then all questions
NO_LENGTH = " w/o R_l"                         # a run's label gets it when its --w_length is 0 ("graph w/o R_l")


def run_file(run_dir, name):
    """A JSON file of a train.py run folder (config.json, test_after_GRPO.json, ...), or BadRow naming it."""
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise BadRow(None, "missing: not a finished train.py run (finish it with --resume)", path)
    return json.loads(Path(path).read_text(encoding="utf-8")), path


def load_run(run_dir):
    """(variant, seed, {question id: record}, its table line) of a finished train.py run: its config.json, the
    per-question test results of its final model (test_after_GRPO.json, the rows of its results.md) and the answer
    of its own table (results.json): blind, the state GRPO started from, after GRPO."""
    (cfg, cfg_path), (records, res_path) = (run_file(run_dir, n) for n in ("config.json", "test_after_GRPO.json"))
    if not isinstance(records, list) or any(not isinstance(r, dict) or "id" not in r for r in records):
        raise BadRow("id", "per-question records without ids (delete the file and run train.py --resume)", res_path)
    variant = cfg.get("variant", "graph")
    if variant not in rewards.VARIANTS:
        raise BadRow("variant", f"{variant!r} is not one of {', '.join(rewards.VARIANTS)}", cfg_path)
    variant += NO_LENGTH * (cfg.get("w_length", 1.0) == 0)          # the reward isolated: R_l off (--w_length 0)
    seed, path = int(cfg.get("seed", 0)), os.path.join(run_dir, "results.json")
    stats = json.loads(Path(path).read_text(encoding="utf-8"))["stats"] if os.path.isfile(path) else {}
    get = lambda col: fmt_ci(stats.get(col, {}).get("answer"))
    start = "after warm-up" if "after warm-up" in stats else "base"
    line = f"| {run_dir} | {variant} | {seed} | {get('blind')} | {start} {get(start)} | {get('after GRPO')} |"
    return variant, seed, {r["id"]: r for r in records}, line


def group_values(records, group, key="answer"):
    """{(seed, id): value} of the questions of one task group (data.TASK_GROUPS; "overall": all)."""
    tasks = data.TASK_GROUPS.get(group)
    return {k: r[key] for k, r in records.items() if key in r and (tasks is None or r["task"] in tasks)}


def ablation_stats(by_variant, n_boot=N_BOOT, seed=0, ref="graph"):
    """{variant: {group: (mean, lo, hi, n)}} of the answer score, and {variant: {group: (mean, lo, hi, n)}} of
    the paired difference variant - ref over the questions both answered (same seed, same id)."""
    ci = lambda v: (*mean_ci(v, n_boot, seed), len(v)) if v else None
    paired = lambda a, b: ci([a[k] - b[k] for k in a if k in b])
    means = {v: {f: ci(list(group_values(recs, f).values())) for f in GROUPS} for v, recs in by_variant.items()}
    diffs = {v: {f: paired(group_values(recs, f), group_values(by_variant[ref], f)) for f in GROUPS}
             for v, recs in by_variant.items() if v != ref and ref in by_variant}
    return means, diffs


def ablation_table(means, diffs, runs, first="variant"):
    """Markdown: answer per group and overall (95 % CI) per variant, then for each reference ref in diffs ({ref:
    {variant: stats}}) each variant - ref, paired."""
    lines = [f"| {first} | seeds | " + " | ".join(GROUPS) + " | questions |", "|---" * (len(GROUPS) + 3) + "|"]
    rows = [(f"{v} | {', '.join(map(str, sorted(runs[v])))}", st, False) for v, st in means.items()]
    rows += [(f"{v} - {ref} (paired) |", st, True) for ref, by in diffs.items() for v, st in by.items()]
    for label, st, signed in rows:
        lines.append(f"| {label} | " + " | ".join(fmt_ci(st[f], signed) for f in GROUPS)
                     + f" | {st['overall'][3] if st['overall'] else 0} |")
    return "\n".join(lines)


def ablation(args):
    """`eval.py ablation --run DIR [--run DIR ...]`, the toy Table 2: the runs' final test records pooled per
    variant over seeds, the answer per task group and overall with 95 % bootstrap intervals, each variant minus
    graph paired question by question; printed and written (ablation.md, ablation.json, ablation.png)."""
    by_variant, runs, per_run = {}, {}, []
    for run_dir in args.run:
        variant, seed, records, line = load_run(run_dir)
        per_run.append(line)
        if seed in runs.get(variant, ()):
            raise BadRow(None, f"a second run of variant {variant} with seed {seed}", run_dir)
        runs.setdefault(variant, []).append(seed)
        by_variant.setdefault(variant, {}).update({(seed, i): r for i, r in records.items()})
    order = [v + x for v in rewards.VARIANTS for x in ("", NO_LENGTH)]                 # the order of VARIANTS
    by_variant = {v: by_variant[v] for v in order if v in by_variant}
    means, diffs = ablation_stats(by_variant, args.n_boot, args.seed)
    node_edge = {v: {k: float(np.mean([r[k] for r in recs.values()])) for k in ("graph_node", "graph_edge")}
                 for v, recs in by_variant.items()}
    lines = [ablation_table(means, {"graph": diffs}, runs), "", "| variant | R_n written | R_e written |",
             "|---|---|---|"] + [
        f"| {v} | {ne['graph_node']:.3f} | {ne['graph_edge']:.3f} |" for v, ne in node_edge.items()] + [
        "", "| run | variant | seed | blind | GRPO started from | after GRPO |", "|---" * 6 + "|"] + per_run
    print("\n".join(lines))
    data.write_file(os.path.join(args.out, "ablation.md"), "\n".join(lines) + "\n")
    data.write_file(os.path.join(args.out, "ablation.json"), json.dumps(
        {"runs": args.run, "seeds": runs, "answer": means, "minus_graph": diffs, "written": node_edge}, indent=1))
    title = f"answer by variant ({', '.join(f'{v}: {len(s)} seed(s)' for v, s in runs.items())})"
    bar_chart(os.path.join(args.out, "ablation.png"), GROUPS, {v: [st[f] for f in GROUPS] for v, st in means.items()},
              "answer (R_ans, test split)", title, (0, 1), (8.5, 4))
    print(f"wrote {args.out}/ablation.md, ablation.json, ablation.png")


# --- the toy Table 1 (generalization) -------------------------------------------------------------------------------
# The paper's Table 1: from one base, SFT gains in distribution (STI-Bench) and loses out of it (TempCompass), where
# Video-STR's GRPO gains on both. Here both arms start from the same base and see the same training rows: the GRPO
# arm is a train.py run (--grpo_steps K --batch B), the SFT arm a train.py run that is teacher-forced on the rows'
# reference completions instead (--grpo_steps 0 --sft_steps K --sft_batch B --sft_grpo_rows: GRPO's rows, in its
# order). Both are asked, greedy, on the in-distribution test split and on sets rendered outside it (data.py make:
# more objects, a camera rolled past the training range; and 32 frames at inference, as the paper evaluates).

def parse_set(spec):
    """--set 'NAME=FILE' or 'NAME=FILE@FRAMES' -> (name, file, frames or None: --frames)."""
    name, sep, rest = spec.partition("=")
    path, at, frames = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if not (sep and name and path) or (at and not frames.isdigit()):
        raise BadRow(None, "expected NAME=FILE or NAME=FILE@FRAMES, e.g. roll=data/ood_roll/test.jsonl@16",
                     f"--set {spec}")
    return name, path, int(frames) if at else None


def arm_of(run_dir):
    """(arm, seed, model folder) of a finished train.py run: "GRPO" (its final model) when it made GRPO steps, else
    "SFT" (its warm-up)."""
    cfg, cfg_path = run_file(run_dir, "config.json")
    arm, folder = ("GRPO", "final") if cfg.get("grpo_steps", 0) > 0 else ("SFT", "warmup")
    if arm == "SFT" and not cfg.get("sft_steps", 0):
        raise BadRow("sft_steps", "neither GRPO nor warm-up steps: no arm", cfg_path)
    path = os.path.join(run_dir, folder)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise BadRow(None, f"missing: the {arm} run has not finished (finish it with train.py --resume)", path)
    return arm, int(cfg.get("seed", 0)), path


def answers_on(mdl, tokenizer, rows, args, frames, tag):
    """{id: {answer: R_ans (the training reward's part, as train.py's tables and the toy Table 2), task}} of one
    model's greedy completions on rows at `frames` frames; rows that cannot be asked are left out."""
    completions, _ = ask(mdl, tokenizer, rows, argparse.Namespace(**{**vars(args), "frames": frames}), tag)
    return {r["id"]: {"answer": score_completion(c, r)["train_reward"], "task": r["task"]}
            for c, r in zip(completions, rows) if c is not None}


def generalization(args):
    """`eval.py generalization --run DIR ... --set NAME=FILE[@FRAMES] ... [--base DIR]`, the toy Table 1: every
    run's model (arm_of) and the base asked on the first --limit rows of every set; per set, the answer per task
    group and overall (seeds pooled, 95 % bootstrap intervals), GRPO - SFT and each arm - base paired question by
    question (same seed, same id; the base's answers serve every seed). Printed and written (generalization.md,
    .json, .png)."""
    import torch
    import model as qwen
    torch.set_num_threads(args.threads)
    sets = [parse_set(spec) for spec in args.set]
    if len({name for name, _, _ in sets}) < len(sets):
        raise BadRow(None, "two sets of one name", "--set")
    rows = {name: rows_with_videos(data.load_rows(path)[:args.limit], args.skip_bad)[0] for name, path, _ in sets}
    models = [arm_of(run_dir) for run_dir in args.run]
    seeds = sorted({seed for _, seed, _ in models})
    if len({(arm, seed) for arm, seed, _ in models}) < len(models):
        raise BadRow(None, "two runs of one arm with one seed", "--run")
    models += [("base", seeds[0], args.base)] if args.base else []       # asked once; its answers pair every seed
    found = {name: {} for name, _, _ in sets}                       # set -> arm -> {(seed, id): record}
    for arm, seed, path in models:
        mdl, tokenizer = qwen.load(path, device=args.device)
        for name, _, frames in sets:
            got = answers_on(mdl, tokenizer, rows[name], args, frames or args.frames, f"{arm} s{seed} {name}")
            keys = seeds if arm == "base" else [seed]
            found[name].setdefault(arm, {}).update({(s, i): rec for s in keys for i, rec in got.items()})
        del mdl
    lines, stats, runs = [], {}, {arm: sorted({s for a, s, _ in models if a == arm}) for arm, _, _ in models}
    for name, path, frames in sets:
        by_arm = {a: found[name][a] for a in ("base", "SFT", "GRPO") if a in found[name]}
        once = {a: {k: r for k, r in recs.items() if a != "base" or k[0] == seeds[0]} for a, recs in by_arm.items()}
        means, vs_sft = ablation_stats(once, args.n_boot, args.seed, ref="SFT")        # the base's questions once
        _, vs_base = ablation_stats(by_arm, args.n_boot, args.seed, ref="base")
        diffs = {k: v for k, v in vs_sft.items() if k == "GRPO"}
        table = ablation_table(means, {"SFT": diffs, "base": vs_base}, runs, "arm")
        lines += [f"{name}: {path}, {frames or args.frames} frames, the first {args.limit} rows", "", table, ""]
        stats[name] = {"path": path, "frames": frames or args.frames, "answer": means, "grpo_minus_sft": diffs,
                       "minus_base": vs_base, "per_question": {a: {f"{s}/{i}": rec["answer"] for (s, i), rec in
                                                                   found[name][a].items()} for a in by_arm}}
    print("\n".join(lines))
    data.write_file(os.path.join(args.out, "generalization.md"), "\n".join(lines))
    data.write_file(os.path.join(args.out, "generalization.json"), json.dumps(
        {"runs": args.run, "base": args.base, "seeds": runs, "sets": stats}, indent=1))
    arms = [a for a in ("base", "SFT", "GRPO") if a in runs]
    bar_chart(os.path.join(args.out, "generalization.png"), list(stats),
              {a: [stats[n]["answer"].get(a, {}).get("overall") for n in stats] for a in arms},
              "answer (R_ans), all questions", f"SFT and GRPO from one base, in and out of distribution "
              f"(seeds {', '.join(map(str, seeds))})", (0, 1), (8.5, 4))
    print(f"wrote {args.out}/generalization.md, generalization.json, generalization.png")


# --- support: no paper content below; benchmark adapters ------------------------------------------------------------

# Each raises data.BadRow(field, why, where) for a bad row; `where` is "FILE row K" (K counted from 0).

def need(rec, field, where):
    if field not in rec or rec[field] is None:
        raise BadRow(field, f"missing (the row has {sorted(rec)[:12]})", where)
    return rec[field]


def letter(value, n_options, where, field):
    """'B', 'b', 'B.', '(B)' -> 'B', checked against the number of options."""
    s = str(value).strip().strip("().").upper()
    if len(s) != 1 or not "A" <= s < chr(ord("A") + n_options):
        raise BadRow(field, f"must be an option letter of {n_options} options, got {value!r:.40}", where)
    return s


def to_float(value, where, field):
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise BadRow(field, f"must be a number, got {value!r:.40}", where) from None
    if not math.isfinite(x):
        raise BadRow(field, f"is not finite ({value!r})", where)
    return x


def from_vsibench(rec, root, where):
    """VSI-Bench row (dataset, scene_name, question_type, question, options, ground_truth) -> our row: video
    {root}/{dataset}/{scene_name}.mp4; the numeric question types -> num (MRA), the rest mc (options 'A. text')."""
    qtype = str(need(rec, "question_type", where))
    video = os.path.join(root, str(need(rec, "dataset", where)), f"{need(rec, 'scene_name', where)}.mp4")
    row = {"id": f"vsi-{rec.get('id', where.rsplit(' ', 1)[-1])}", "video": video, "rule": "vsibench",
           "question": str(need(rec, "question", where)), "task": qtype, "time_window": None, "graphs": None}
    gt = need(rec, "ground_truth", where)
    if qtype in VSI_NUMERIC:
        return {**row, "options": None, "answer": to_float(gt, where, "ground_truth"), "answer_type": "num"}
    options = data.option_texts(need(rec, "options", where), where)
    return {**row, "options": options, "answer": letter(gt, len(options), where, "ground_truth"), "answer_type": "mc"}


def from_stibench(rec, root, where):
    """STI-Bench row -> our row: 5-way mc, clip window [time_start, time_end] seconds -> time_window (the prompt
    then starts "From {ts} s to {te} s." as STI-Bench's does: model.build_prompt)."""
    cands = need(rec, "Candidates", where)
    if isinstance(cands, str):
        try:
            cands = json.loads(cands)
        except json.JSONDecodeError as e:
            raise BadRow("Candidates", f"not JSON ({e})", where) from None
    if not isinstance(cands, dict) or not cands:
        raise BadRow("Candidates", "must be a JSON object of letter -> text", where)
    options = data.option_texts([f"{k}. {cands[k]}" for k in sorted(cands)], where)
    ts, te = (to_float(need(rec, f, where), where, f) for f in ("time_start", "time_end"))
    if te < ts:
        raise BadRow("time_end", f"{te} < time_start {ts}", where)
    return {"id": f"sti-{need(rec, 'ID', where)}", "video": os.path.join(root, str(need(rec, "Video", where))),
            "question": str(need(rec, "Question", where)), "options": options, "answer_type": "mc",
            "answer": letter(need(rec, "Answer", where), len(options), where, "Answer"), "rule": "stibench",
            "task": str(rec.get("Task") or "sti"), "scene": rec.get("Scene"), "time_window": [ts, te], "graphs": None}


def from_vstar(rec, root, where):
    """V-STaR item -> [when row (iou on [s, e] seconds)] + [where row (boxes)] if bboxes are given; the where row's
    question asks for the answer form of parse_frame_boxes."""
    base = {"video": os.path.join(root, f"{need(rec, 'vid', where)}.mp4"), "options": None, "time_window": None,
            "graphs": None, "domain": rec.get("domain"), "rule": "vstar"}
    idx = where.rsplit(" ", 1)[-1]
    ts = need(rec, "timestamps", where)
    if not isinstance(ts, (list, tuple)) or len(ts) != 2:
        raise BadRow("timestamps", f"must be [start, end] seconds, got {ts!r:.60}", where)
    rows = [{**base, "id": f"vstar-{idx}-when", "question": str(need(rec, "temporal_question", where)) +
             " Answer with [start, end] in seconds.", "answer": [to_float(v, where, "timestamps") for v in ts],
             "answer_type": "iou", "task": "when"}]
    boxes = []
    for k, b in enumerate(rec.get("bboxes") or []):
        if not isinstance(b, dict):
            raise BadRow(f"bboxes[{k}]", "must be an object with frame_index, xmin, ymin, xmax, ymax", where)
        value = lambda f: to_float(need(b, f, f"{where} bboxes[{k}]"), where, f"bboxes[{k}].{f}")
        box = [value(f) for f in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append({"frame": int(value("frame_index")), "box": box})
    if boxes:
        size = f"{rec.get('width')}x{rec.get('height')}" if rec.get("width") else "original"
        question = (f"{rec.get('spatial_question') or rec.get('question')} Give one box per frame for frames "
                    f"{', '.join(str(b['frame']) for b in boxes)} (frame indices at {rec.get('fps')} fps) as "
                    f"'FRAME: [x1, y1, x2, y2]' in pixels of the {size} video, separated by ';'.")
        rows.append({**base, "id": f"vstar-{idx}-where", "question": question, "answer": boxes,
                     "answer_type": "boxes", "task": "where"})
    return rows


def from_videor1(rec, root, where):
    """Video-R1 eval row -> our row: data.from_video_r1 with the video path resolved against root; task =
    data_source (VideoMME...); the problem type and the solution's answer text kept for r1_score."""
    try:
        row = data.from_video_r1(rec)
    except BadRow as e:
        raise e.at(where) from None
    video = os.path.normpath(os.path.join(root, row["video"]))
    return {**row, "id": f"r1-{rec.get('problem_id', where.rsplit(' ', 1)[-1])}", "video": video, "reasoning": None,
            "rule": "videor1", "problem_type": rec["problem_type"], "gt_text": r1_extract(str(rec.get("solution")))}


FORMAT_KEYS = {                        # a format is detected when the first row has all of its keys
    "vsibench": ("dataset", "scene_name", "question_type", "ground_truth"),
    "stibench": ("Video", "Candidates", "Question", "Answer"),
    "vstar": ("vid", "timestamps", "temporal_question"),
    "videor1": ("path", "problem", "problem_type", "solution"),
    "ours": ("video", "question", "answer", "answer_type"),
}
ADAPTERS = {"vsibench": from_vsibench, "stibench": from_stibench, "vstar": from_vstar, "videor1": from_videor1}
KNOWN_KEYS = "known formats need: " + "; ".join(f"{n}: {', '.join(k)}" for n, k in FORMAT_KEYS.items())


def detect_format(rec, where="row 0"):
    """The first format of FORMAT_KEYS whose keys the record has, else a clear error."""
    for name, keys in FORMAT_KEYS.items():
        if isinstance(rec, dict) and all(k in rec for k in keys):
            return name
    keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
    raise BadRow(None, f"cannot detect the format from keys {keys}; {KNOWN_KEYS}", where)


def first_format(records, path, skip_bad):
    """The format of the first record; with skip_bad, of the first record whose format can be detected (a bad
    first row then is skipped and counted like any other, instead of defeating --format auto)."""
    for k, rec in enumerate(records):
        if isinstance(rec, BadRow):
            continue
        try:
            return detect_format(rec, f"{path} row {k}" if skip_bad else f"{path} first row")
        except BadRow:
            if not skip_bad:
                raise
    raise BadRow(None, f"no row has the keys of a known format ({KNOWN_KEYS})", path)


def load_benchmark(path, fmt="auto", video_root=None, skip_bad=False):
    """Rows in our format (data.py's) from a .jsonl / .json file (data.read_records: a line that is not JSON is a
    BadRow naming it) or a .parquet file (needs pandas) -> (rows, fmt, n_skipped). A bad row raises a clear error
    naming the file, row and field, or is skipped and counted with skip_bad."""
    hint = " (use --skip_bad to skip and count such rows)"
    if not path.endswith(".parquet"):
        records = [rec for _, rec in data.read_records(path)[0]]
    else:
        try:
            import pandas
        except ImportError:
            raise BadRow(None, "reading parquet needs pandas + pyarrow, which are not installed here; install them "
                               "or export the rows to JSON/JSONL (same columns)", path) from None
        records = pandas.read_parquet(path).to_dict(orient="records")
    if all(isinstance(r, BadRow) for r in records):
        raise BadRow(None, "no readable rows" + (f" ({records[0]})" if records else ""), path)
    if fmt == "auto":
        fmt = first_format(records, path, skip_bad)
    if fmt == "ours":
        try:
            rows = data.load_rows(path, skip_bad=skip_bad)
        except BadRow as e:                                       # data.py names the file, line and field
            raise e.at(e.where, hint) from None
        return rows, fmt, len(records) - len(rows)
    root = video_root or os.path.dirname(os.path.abspath(path))
    rows, skipped = [], 0
    for k, rec in enumerate(records):
        try:
            if isinstance(rec, BadRow):
                raise rec
            if not isinstance(rec, dict):
                raise BadRow("row", "not an object", f"{path} row {k}")
            out = ADAPTERS[fmt](rec, root, f"{path} row {k}")
            rows.extend({**r, "file_line": f"{path} row {k}"} for r in (out if isinstance(out, list) else [out]))
        except BadRow as e:
            if not skip_bad:
                raise e.at(e.where, hint) from None
            skipped += 1
    return rows, fmt, skipped


# --- report ---------------------------------------------------------------------------------------------------------

METRIC_LABELS = {"format": "format rate", "node": "graph node reward R_n", "edge": "graph edge reward R_e",
                 "tIoU": "when: mean tIoU", **{f"R@{k}": f"when: R@{k}" for k in R_AT}}


def markdown_table(summaries):
    """One markdown table: a row per aggregate (the two overalls, each task, each answer type, the other metrics), a
    column per model; values x100 with bootstrap 95% intervals."""
    lines = [("overall: unweighted task mean (VSI)", "overall_task", None),
             ("overall: question mean (STI)", "overall_q", None)]
    for section, prefix in (("tasks", "task"), ("answer_types", "type")):
        lines += [(f"{prefix}: {k}", section, k) for k in sorted({k for s in summaries.values() for k in s[section]})]
    order = list(METRIC_LABELS)
    metrics = sorted({k for s in summaries.values() for k in s["metrics"]},
                     key=lambda k: (order.index(k) if k in order else len(order), k))
    out = ["| metric (x100, 95% CI) | n | " + " | ".join(summaries) + " |", "|---|---|" + "---|" * len(summaries)]
    for label, section, key in lines + [(METRIC_LABELS.get(k, k), "metrics", k) for k in metrics]:
        stats = [s[section] if key is None else s[section].get(key) for s in summaries.values()]
        n = max((st or {}).get("n", 0) for st in stats)
        out.append(f"| {label} | {n} | " + " | ".join(cell(st) for st in stats) + " |")
    return "\n".join(out)


def cell(stat, signed=False):
    """'52.3 [48.1, 56.0]' (x100; '+1.2 [-0.4, +2.9]' signed, for a change), or '-' when missing."""
    if not stat or stat.get("n", 0) == 0 or stat["mean"] != stat["mean"]:
        return "-"
    return fmt_ci([100 * stat[k] for k in ("mean", "lo", "hi")], signed, digits=1)


def bar_chart(path, groups, series, ylabel, title, ylim, figsize, title_size="large", **tick_kw):
    """Grouped bars, one group per x label and one bar (a colour each) per series {name: [(mean, lo, hi, ...) or
    None, one per group]}, 95 % intervals as error bars; written as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=figsize)
    width = 0.8 / max(1, len(series))
    for k, (name, stats) in enumerate(series.items()):
        st = np.array([s[:3] if s else (np.nan,) * 3 for s in stats], dtype=np.float64)     # (groups, 3)
        x = np.arange(len(groups)) + (k - (len(series) - 1) / 2) * width
        err = np.nan_to_num([st[:, 0] - st[:, 1], st[:, 2] - st[:, 0]])                     # (2, groups)
        ax.bar(x, st[:, 0], width, yerr=err, capsize=3, label=name, color=f"C{k}")
    ax.set_xticks(np.arange(len(groups)), groups, **tick_kw)
    ax.set(ylabel=ylabel, ylim=ylim)
    ax.set_title(title, fontsize=title_size)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def save_png(fig, path):
    """Render a figure to PNG bytes and write them atomically (data.write_file); closes the figure."""
    import io
    import matplotlib.pyplot as plt
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    data.write_file(path, png.getvalue())


# --- model layer (thin) ---------------------------------------------------------------------------------------------

def prompt_row(row):
    """The row model.build_prompt sees: a 'boxes' row is asked as a box question (its question text already
    says one box per frame)."""
    return {**row, "answer_type": "iou", "answer": [0.0, 0.0, 0.0, 0.0]} if row["answer_type"] == "boxes" else row


def greedy_batch(mdl, tokenizer, rows, videos, max_new_tokens, min_pixels, max_pixels):
    """Greedy completions for one batch of B rows: model.make_inputs -> grpo.sample(G=1, temperature=0).
    Returns (texts, token counts with the closing EOS)."""
    import torch
    import grpo
    import model as qwen
    eos, suppress = qwen.special_ids(tokenizer)
    inputs = qwen.make_inputs(tokenizer, mdl.config, [prompt_row(r) for r in rows], videos, min_pixels, max_pixels)
    inputs = qwen.to_device(inputs, mdl.device, next(mdl.parameters()).dtype)
    with torch.no_grad():
        ids, mask, _ = grpo.sample(mdl, inputs, 1, max_new_tokens, temperature=0.0,
                                   eos_ids=eos, suppress_ids=suppress)       # (B, T)
    return qwen.decode_completions(tokenizer, ids, mask)                     # (texts, token counts)


def model_variant(mdl):
    """The --variant a checkpoint was trained as (train.py saves it in config.json; "graph" when absent)."""
    variant = getattr(mdl.config, "video_str_variant", None) or "graph"
    if variant not in rewards.VARIANTS:
        raise BadRow("video_str_variant", f"{variant!r} is not one of {', '.join(rewards.VARIANTS)}", "config.json")
    return variant


def ask(mdl, tokenizer, rows, args, tag):
    """eval.py's questions to a loaded model, asked as its variant asks (data.with_think): complete() with a row
    left out (BadRow without --skip_bad) when its prompt is longer than --max_prompt_tokens or its video does not
    decode (data.clip_problem: damage the cheap checks cannot see). Returns (completions, {row index: why})."""
    import model as qwen

    def clip(row):
        why = qwen.prompt_problem(tokenizer, prompt_row(row), args.max_prompt_tokens)
        return (None, why) if why else data.clip_problem(lambda r: data.row_clip(r, args.frames), row)
    rows = [data.with_think(r, rewards.VARIANTS[model_variant(mdl)][0]) for r in rows]
    texts, _, problems = complete(mdl, tokenizer, rows, clip, args.batch, args.max_new_tokens, args.min_pixels,
                                  args.max_pixels, tag, args.skip_bad)
    return texts, problems


def complete(mdl, tokenizer, rows, clip, batch, max_new_tokens, min_pixels, max_pixels, tag=None, skip_bad=True):
    """Greedy completions (greedy_batch) for every row, `batch` rows at a time; the one loop behind eval.py and
    train.py's held-out evaluations. clip(row) -> (clip, None), or (None, why) for a row that cannot be asked: it
    is skipped (skip_bad) or BadRow names it. Returns (texts, token counts, {row index: why}), None for a row not
    asked. tag: a self-overwriting progress line on stderr (rows done, rate, ETA)."""
    texts, lengths, problems, t0 = [None] * len(rows), [None] * len(rows), {}, time.time()
    for lo in range(0, len(rows), batch):
        asked, videos = [], []
        for i in range(lo, min(lo + batch, len(rows))):
            video, why = clip(rows[i])
            if why is None:
                asked.append(i)
                videos.append(video)
            elif skip_bad:
                problems[i] = why
            else:
                raise BadRow(None, f"{why} (use --skip_bad to skip and count such rows)",
                             rows[i].get("file_line", rows[i].get("id")))
        if asked:
            out = greedy_batch(mdl, tokenizer, [rows[i] for i in asked], videos, max_new_tokens, min_pixels,
                               max_pixels)
            for i, text, n_tok in zip(asked, *out):
                texts[i], lengths[i] = text, n_tok
        if tag:
            done = min(lo + batch, len(rows))
            rate = done / max(time.time() - t0, 1e-9)                # > 0: done >= 1
            print(f"\r[{tag}] {done}/{len(rows)} rows  {rate:.2f} rows/s  ETA {(len(rows) - done) / rate:5.0f} s ",
                  end="\n" * (done == len(rows)), file=sys.stderr, flush=True)
    return texts, lengths, problems


# --- command line ---------------------------------------------------------------------------------------------------

def model_names(paths):
    """Column names: the folder's name ('runs/a/final' -> 'final'), its last two parts ('a/final') when two
    folders share a name, '#k' appended when the same folder is given twice."""
    parts = [tuple(os.path.normpath(p).split(os.sep)) for p in paths]
    base = [q[-1] if len({r for r in parts if r[-1] == q[-1]}) == 1 else "/".join(q[-2:]) for q in parts]
    return [f"{b}#{k + 1}" if base.count(b) > 1 else b for k, b in enumerate(base)]


def rows_with_videos(rows, skip_bad):
    """Rows whose video passes data.video_problem's cheap checks (exists, opens, the window lies inside it); the
    others are an error naming the first (row and why), or skipped and counted. (rows kept, number skipped)"""
    keep, bad = data.check_videos(rows)
    if bad and not skip_bad:
        raise BadRow(None, f"{len(bad)} row(s) with an unusable video, e.g. " + "; ".join(
            f"{w}: {y}" for w, y in bad[:3]) + " (check --video_root, or --skip_bad to skip their rows)")
    return keep, len(bad)


def report(summaries, meta, out_dir, dumps=(), title=""):
    """Print the table; write results.json, results.png (bars of the two overalls and each task, a colour per
    model, x100 with 95% intervals) and (if any) dump.jsonl into out_dir."""
    print(markdown_table(summaries))
    data.write_file(os.path.join(out_dir, "results.json"), json.dumps({**meta, "models": summaries}, indent=1))
    tasks = sorted({t for s in summaries.values() for t in s["tasks"]})
    x100 = lambda st: (100 * st["mean"], 100 * st["lo"], 100 * st["hi"]) if st else None
    series = {name: [x100(st) for st in (s["overall_task"], s["overall_q"], *(s["tasks"].get(t) for t in tasks))]
              for name, s in summaries.items()}
    width = max(6.0, 1.1 * (len(tasks) + 2) * max(1, len(summaries)) ** 0.5 + 2)
    bar_chart(os.path.join(out_dir, "results.png"), ["overall (tasks)", "overall (questions)", *tasks], series,
              "score x100 (95% bootstrap CI)", title, (0, 105), (width, 4.5), 9, rotation=30, ha="right", fontsize=8)
    if dumps:
        data.write_file(os.path.join(out_dir, "dump.jsonl"), "".join(json.dumps(d) + "\n" for d in dumps))
    print(f"wrote {out_dir}/results.json, results.png" + (", dump.jsonl" if dumps else ""))


TINY_PIXELS = 56 * 56   # = model.TINY_MIN_PIXELS = TINY_MAX_PIXELS (test_all checks; eval.py imports no torch here)


def cli():
    """The command line (the docstring's "Run:"): scoring, or a command; scoring and rotation share most flags."""
    p = argparse.ArgumentParser(prog="python eval.py", description="Score checkpoints with each benchmark's own "
                                "metric, side by side (see the docstring); or run a command.")
    sub = p.add_subparsers(dest="command", title="commands (none: scoring)", parser_class=data.SubcommandParser)
    sub.add_parser("demo", help="score hand-written completions without a model")
    rot = sub.add_parser("rotation", help="the rotation stress test on the synthetic scenes, models side by side "
                         "(the models of one variant, e.g. its seeds, also pooled)")
    ab = sub.add_parser("ablation", help="the toy Table 2 from finished train.py runs of several --variant values")
    ab.add_argument("--run", action="append", help="a train.py run folder (runs/NAME); repeat (needed)")
    gen = sub.add_parser("generalization", help="the toy Table 1: SFT and GRPO runs from one base, in and out of "
                         "distribution")
    gen.add_argument("--run", action="append", help="a finished train.py run: GRPO (--grpo_steps > 0) or SFT "
                     "(--grpo_steps 0 --sft_grpo_rows); repeat, one per arm and seed (needed)")
    gen.add_argument("--set", action="append", help="NAME=FILE or NAME=FILE@FRAMES: a test set (rows in our "
                     "format, e.g. data.py make's test.jsonl) and the frames to ask it with (default --frames, "
                     f"{data.TRAIN_FRAMES} here: as trained); repeat (needed)")
    gen.add_argument("--base", default=None, help="the model both arms started from (a column of its own)")
    gen.add_argument("--limit", type=int, default=300, help="the first N rows of each set")
    for q in (p, rot, gen):
        if q is not gen:
            q.add_argument("--model", action="append", help="checkpoint folder; repeat for side by side (needed)")
        frames = data.TRAIN_FRAMES if q is gen else 32                    # generalization: as trained; @32 per set
        q.add_argument("--frames", type=int, default=frames, help=f"frames per video (default {frames}; paper: 32 "
                       "at inference)")
        q.add_argument("--min_pixels", type=int, default=TINY_PIXELS, help="per frame (tiny default; 7B: 16*28*28)")
        q.add_argument("--max_pixels", type=int, default=TINY_PIXELS, help="per frame (tiny default; 7B: 128*28*28)")
        for flag, default in (("--batch", 8), ("--max_new_tokens", 512)):
            q.add_argument(flag, type=int, default=default)
        q.add_argument("--threads", type=int, default=1, help="torch CPU threads (train.py's default: 1)")
        q.add_argument("--device", default=None)
        q.add_argument("--skip_bad", action="store_true", help="skip and count bad rows (a bad field, a video that "
                       "does not open or decode, a prompt over --max_prompt_tokens) instead of stopping; the rest is "
                       "scored and written")
        q.add_argument("--max_prompt_tokens", type=int, default=data.MAX_PROMPT_TOKENS, help="rows whose prompt "
                       "text has more tokens (model.prompt_problem, video not counted) are bad rows")
    for q, out in ((p, "out/eval"), (rot, "out/rotation"), (ab, "out/ablation"), (gen, "out/generalization")):
        q.add_argument("--out", default=out)
        q.add_argument("--n_boot", type=int, default=N_BOOT, help="bootstrap resamples of the 95 %% intervals")
        q.add_argument("--seed", type=int, default=0)
    rot.add_argument("--angles", type=float, nargs="+", default=[0, 30, 60, 90, 180])
    rot.add_argument("--axis", default="yaw", choices=["yaw", "roll", "orbit"])
    rot.add_argument("--data", default="data/synth/test.jsonl", help="synthetic rows; scenes.jsonl beside it")
    rot.add_argument("--scenes", type=int, default=20, help="first N scenes of the file")
    p.add_argument("--data", help="rows: .jsonl / .json / .parquet (needed)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMAT_KEYS])
    p.add_argument("--video_root", default=None, help="videos of benchmark rows (default: the data file's folder)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    p.add_argument("--dump", type=int, default=0, help="write N completions per model with their metrics")
    return p


def main(argv=None):
    p = cli()
    args = p.parse_args(argv)
    needed = {None: ("model", "data"), "rotation": ("model",), "ablation": ("run",),
              "generalization": ("run", "set")}.get(args.command, ())
    if any(getattr(args, k) is None for k in needed):
        p.error(f"{args.command or 'scoring'} needs {' and '.join('--' + k for k in needed)}")
    {None: score_models, "demo": lambda _: demo(), "rotation": rotation, "ablation": ablation,
     "generalization": generalization}[args.command](args)


def score_models(args):
    """Scoring (no command): each --model on --data, one column each; results.json, results.png (report)."""
    for path in args.model:
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise BadRow(None, "no checkpoint folder there (config.json, *.safetensors, tokenizer)",
                         f"--model {path}")
    import torch
    import model as qwen
    torch.set_num_threads(args.threads)
    rows, fmt, skipped = load_benchmark(args.data, args.format, args.video_root, args.skip_bad)
    rows, missing = rows_with_videos(rows[:args.limit] if args.limit else rows, args.skip_bad)
    print(f"{args.data}: format {fmt}, {len(rows)} rows to score, {skipped} bad rows and {missing} rows without a "
          f"usable video skipped; {args.frames} frames, greedy, at most {args.max_new_tokens} new tokens; each row "
          f"scored by its benchmark's own rule (docstring), not train.py's training-reward table", file=sys.stderr)
    outputs = {name: ask(*qwen.load(path, device=args.device), rows, args, name)      # each model freed after it
               for name, path in zip(model_names(args.model), args.model)}
    problems = {i: why for _, found in outputs.values() for i, why in found.items()}
    asked = [i for i in range(len(rows)) if i not in problems]         # every column scores the same rows
    skipped_rows = [f"{rows[i].get('file_line', rows[i].get('id'))}: {why}" for i, why in problems.items()]
    if problems:
        print(f"skipped {len(problems)} row(s) that could not be asked, e.g. " + "; ".join(skipped_rows[:3]),
              file=sys.stderr)
    summaries, dumps, kept = {}, [], [rows[i] for i in asked]
    for name, (completions, _) in outputs.items():
        completions = [completions[i] for i in asked]
        scored = [score_completion(c, r) for c, r in zip(completions, kept)]
        summaries[name] = summarize(kept, scored, args.n_boot, args.seed)
        dumps += [{"model": name, "id": r["id"], "task": r["task"], "answer_type": r["answer_type"],
                   "gt": r["answer"], "answer_text": answer_text(c), "completion": c, **s}     # --dump: the first N
                  for r, c, s in list(zip(kept, completions, scored))[:args.dump]]
    meta = {"data": args.data, "format": fmt, "rows": len(kept), "skipped_bad": skipped, "skipped_no_video": missing,
            "skipped_unreadable": len(problems), "skipped_rows": skipped_rows, "frames": args.frames, "decoding":
            "greedy", "max_new_tokens": args.max_new_tokens, "max_prompt_tokens": args.max_prompt_tokens, "rules":
            "each benchmark's own scoring code (eval.py docstring)", "paths": dict(zip(summaries, args.model))}
    report(summaries, meta, args.out, dumps, f"{os.path.basename(args.data)} ({fmt}, {len(kept)} questions)")


# --- demo without a model -------------------------------------------------------------------------------------------

def demo():
    """Hand-written completions, good and poor, for four rows (mc, num, interval, boxes; a ground-truth graph on the
    first), scored without a model."""
    g = graph.Graph(0, [graph.Node("red cube", (1.2, 0.4, 5.1)), graph.Node("blue ball", (-0.8, 0.4, 6.0))])
    rows = [{"id": "d-mc", "task": "closest_object", "answer_type": "mc", "answer": "B", "graphs": [g.to_dict()]},
            {"id": "d-num", "task": "object_abs_distance", "answer_type": "num", "answer": 2.0},
            {"id": "d-when", "task": "when", "answer_type": "iou", "answer": [2.0, 4.0]},
            {"id": "d-where", "task": "where", "answer_type": "boxes",
             "answer": [{"frame": 3, "box": [0, 0, 10, 10]}, {"frame": 6, "box": [10, 10, 20, 20]}]}]
    good = [f"<think>{graph.to_text(g)} The ball.</think><answer>B</answer>", "<answer>2.2</answer>",
            "<think>t</think><answer>[2.0, 3.0]</answer>", "<answer>3: [0, 0, 10, 10]; 6: [10, 10, 20, 30]</answer>"]
    poor = ["B chair", "about 2 m", "<answer>[5, 6]</answer>", "<answer>[0, 0, 10, 10]</answer>"]
    for name, comps in (("good", good), ("poor", poor)):
        print(f"--- {name}")
        for row, c in zip(rows, comps):
            print(f"{row['answer_type']:6s} {c[-45:]!r:50s} -> {score_completion(c, row)}")
    summaries = {n: summarize(rows, [score_completion(c, r) for c, r in zip(cs, rows)], 200)
                 for n, cs in (("good", good), ("poor", poor))}
    print(markdown_table(summaries))


if __name__ == "__main__":
    try:
        main()
    except BadRow as err:
        sys.exit(f"eval.py: {err}")
