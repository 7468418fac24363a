"""All tests, as plain `test_*` functions (pytest runs them too): tiny inputs worked out by hand, one end-to-end
smoke run, one learning check; nothing is downloaded. `python test_all.py [NAME]` runs the tests whose name contains
NAME, ending with `N passed, N failed` (exit 1 on a failure); `--video` runs the video tests (names with
"read_frames") with PyAV and numpy alone, no torch, as .ci/run does again on Python 3.12+ with the newest PyAV."""
import atexit
import collections
import contextlib
import dataclasses
import filecmp
import fractions
import functools
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
import traceback
import warnings
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VIDEO_TESTS = "read_frames"                      # `--video` runs the tests whose name contains this
VIDEO_ONLY = __name__ == "__main__" and sys.argv[1:] == ["--video"]

import av
import numpy as np

import data
import eval as ev
import graph
import rewards
if not VIDEO_ONLY:                               # the video tests need PyAV and numpy only (.ci/run: no torch there)
    import torch

    import grpo
    import model as qwen
    import train


def close(a, b, tol=1e-6):
    return abs(a - b) <= tol


# --- grpo.py: the loss ----------------------------------------------------------------------------------------------

def test_group_advantages_kl_k3_policy_loss_and_its_gradients_by_hand():
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), G=4, eps=0.0)
    # mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.57735 -> A = +-0.5 / 0.57735 = +-0.86603
    assert torch.allclose(adv, torch.tensor([0.86603, -0.86603, -0.86603, 0.86603]), atol=1e-4)
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), G=4, scale=False)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # two groups of two: [2, 0] -> +-1 / (sqrt 2 + eps 1e-4); [3, 3] is constant -> exactly 0, no NaN
    adv = grpo.group_advantages(torch.tensor([2.0, 0.0, 3.0, 3.0]), G=2)
    assert torch.allclose(adv, torch.tensor([1.0, -1.0, 0, 0]) / (math.sqrt(2.0) + 1e-4)) and adv[2] == adv[3] == 0
    # the float32 mean of 8 x 1.7 is 1 ulp off 1.7; divided by std + eps that gave +-0.001 before
    for v in (0.1, 1.7, 2.2 + 0.2, 0.3, 2.9, 1 / 3):
        for scale in (True, False):
            adv = grpo.group_advantages(torch.tensor([v] * 8 + [0.0, 1.0] * 4), G=8, scale=scale)
            assert (adv[:8] == 0).all(), (v, scale, adv[:8])
            assert (adv[8:].abs() > 0.4).all()                                 # the other group keeps its signal
    lp = torch.log(torch.tensor([[0.2, 0.5, 0.9]]))
    assert torch.allclose(grpo.kl_k3(lp, lp), torch.zeros(1, 3))
    kl = grpo.kl_k3(lp, torch.log(torch.tensor([[0.4, 0.25, 0.9]])))
    # token 0: ratio 2 -> 2 - ln 2 - 1 = 0.30685; token 1: ratio 0.5 -> 0.5 + ln 2 - 1 = 0.19315
    assert torch.allclose(kl, torch.tensor([[0.30685, 0.19315, 0.0]]), atol=1e-5)
    logp = torch.log(torch.tensor([[0.5, 0.4, 0.9], [0.3, 0.6, 0.1]]))
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.6, 0.6, 0.1]]))
    ref = torch.log(torch.tensor([[0.25, 0.4, 0.9], [0.3, 0.6, 0.1]]))
    adv, mask = torch.tensor([1.0, -1.0]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    # ratios: seq0 [1, 2, 1], seq1 [0.5, 1, 1]; eps 0.2
    # seq0 (A=+1): min(r, clip(r)) = [1, 1.2, 1]; seq1 (A=-1): min(-r, -clip(r)) = [-0.8, -1, (pad)]
    # k3 with beta 0.04: seq0 token0 ref/pi = 0.5 -> 0.5 + ln2 - 1 = 0.193147; all others 0
    o0, o1 = [1 - 0.04 * 0.193147, 1.2, 1.0], [-0.8, -1.0]
    # seq: mean over sequences of each one's token mean; token: over all 5 tokens; const: over B * T = 2 * 3
    for agg, want in (("seq", -(sum(o0) / 3 + sum(o1) / 2) / 2), ("token", -(sum(o0) + sum(o1)) / 5),
                      ("const", -(sum(o0) + sum(o1)) / (2 * 3))):
        loss, stats = grpo.policy_loss(logp, old, ref, adv, mask, agg=agg)
        assert close(loss.item(), want, 1e-5), (agg, loss.item(), want)
    # clipped tokens: seq0 token1 (r=2 > 1.2, A>0) and seq1 token0 (r=0.5 < 0.8, A<0) -> 2 of 5
    assert close(stats["clip_frac"], 0.4) and close(stats["kl"], 0.193147 / 5, 1e-5)
    # beta = 0 or ref None drops the KL
    l1, s1 = grpo.policy_loss(logp, old, None, adv, mask)
    l2, _ = grpo.policy_loss(logp, old, ref, adv, mask, beta=0.0)
    assert close(l1.item(), l2.item()) and s1["kl"] == 0.0
    logp = logp.clone().requires_grad_()
    grpo.policy_loss(logp, old, None, adv, mask, agg="token")[0].backward()
    g = logp.grad
    assert g[0, 1] == 0 and g[1, 0] == 0 and g[1, 2] == 0     # outside the band on the clipped side; padding
    assert g[0, 0] != 0 and g[1, 1] != 0                      # inside the band
    # clip-higher widens the upper band: ratio 2 is still clipped at 1.28, ratio 1.25 would not be
    logp2 = (old + torch.log(torch.tensor([[1.25, 1.25, 1.25], [1, 1, 1]]))).requires_grad_()
    grpo.policy_loss(logp2, old, None, adv, mask, clip_eps_high=0.28)[0].backward()
    assert logp2.grad[0, 0] != 0
    # on-policy (old None): ratio 1, and the gradient still flows
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    loss, stats = grpo.policy_loss(logp, None, None, torch.tensor([2.0]), torch.ones(1, 2))
    assert close(loss.item(), -2.0) and close(stats["ratio_mean"], 1.0)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, -1.0]]))  # d/dlogp of -(A * rho)/2 tokens


def test_grpo_learns_a_toy_task():
    """The learning test: free logits over V=5 tokens, T=4 per completion, reward = share of tokens equal to 2;
    GRPO (mu=2 epochs, so ratios move) must raise the mean reward from ~0.2 to > 0.8 in 60 steps, every agg."""
    for agg in ("seq", "token", "const"):
        torch.manual_seed(0)
        logits = torch.zeros(4, 5, requires_grad=True)                    # (T, V) the whole policy
        ref = torch.zeros(4, 5)                                            # pi_ref: uniform
        opt = torch.optim.Adam([logits], lr=0.1)
        B, G, first = 2, 8, None
        for step in range(60):
            with torch.no_grad():
                ids = torch.multinomial(logits.softmax(-1).repeat(B * G, 1), 1).view(B * G, 4)   # (N, T)
                reward = (ids == 2).float().mean(1)                        # (N,)
                old_logp = logits.log_softmax(-1).gather(1, ids.T).T        # (N, T)
                ref_logp = ref.log_softmax(-1).gather(1, ids.T).T
            first = reward.mean().item() if first is None else first
            adv = grpo.group_advantages(reward, G)
            mask = torch.ones(B * G, 4)
            for _ in range(2):                                             # mu = 2
                logp = logits.log_softmax(-1).gather(1, ids.T).T            # (N, T)
                loss, _ = grpo.policy_loss(logp, old_logp, ref_logp, adv, mask, beta=0.01, agg=agg)
                opt.zero_grad()
                loss.backward()
                opt.step()
        final = logits.softmax(-1)[:, 2].mean().item()
        assert first < 0.4 and final > 0.8, (agg, first, final)


# --- graph.py -------------------------------------------------------------------------------------------------------

def _scene(rng, n=4):
    names = ["red cube", "blue ball", "green cone", "yellow cylinder", "red ball", "blue cube"][:n]
    centers = np.column_stack([rng.uniform(-3, 3, n), rng.uniform(0.5, 1.5, n), rng.uniform(2, 9, n)])
    return graph.Graph(3, [graph.Node(c, tuple(x)) for c, x in zip(names, centers)])


def test_rotation_invariance_theorem_1():
    """Phi by hand, then Phi(RX) = Phi(X) for 100 random R in SO(3), while the coordinates (and azimuths) change."""
    # x0 = (1,0,0), x1 = (0,0,1): distance sqrt(2), angle at the camera 90 degrees
    dist, angle = graph.edge_features(np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 0, 2.0]]))
    assert close(dist[0, 1], math.sqrt(2)) and close(angle[0, 1], 90.0, 1e-6)
    assert close(dist[1, 2], 1.0) and close(angle[1, 2], 0.0, 1e-4)
    assert np.allclose(dist, dist.T) and np.allclose(angle, angle.T)
    rng = np.random.default_rng(1)
    X = np.array([n.center for n in _scene(rng, 5).nodes])              # (N, 3)
    d0, a0 = graph.edge_features(X)
    for _ in range(100):
        R = graph.random_rotation(rng)
        assert np.allclose(R.T @ R, np.eye(3)) and close(np.linalg.det(R), 1.0, 1e-9)
        XR = X @ R.T                                                       # every centre rotated about the camera
        d1, a1 = graph.edge_features(XR)
        assert np.allclose(d0, d1, atol=1e-9) and np.allclose(a0, a1, atol=1e-4)
        assert np.abs(XR - X).max() > 1e-3                                 # the coordinates moved
    yawed = X @ graph.yaw(0.5).T
    az0, az1 = np.arctan2(X[:, 0], X[:, 2]), np.arctan2(yawed[:, 0], yawed[:, 2])
    assert np.allclose(az1 - az0, -0.5) or np.allclose(az1 - az0, 0.5)     # azimuth shifts by the yaw


def test_parser_round_trip_skips_malformed_and_never_raises():
    rng = np.random.default_rng(3)
    for n in range(1, 6):
        nodes = _scene(rng, n).nodes
        g = graph.Graph(3, nodes, graph.derive_edges(nodes))
        (h,) = graph.parse_graphs("noise " + graph.to_text(g) + " more")
        assert h.frame == g.frame and [a.category for a in h.nodes] == [a.category for a in g.nodes]
        assert np.allclose([a.center for a in h.nodes], [a.center for a in g.nodes], atol=0.05 + 1e-9)
        assert [(e.i, e.j) for e in h.edges] == [(e.i, e.j) for e in g.edges]
        for a, b in zip(h.edges, g.edges):
            assert abs(a.dist - b.dist) <= 0.05 + 1e-9 and abs(a.angle - b.angle) <= 0.5 + 1e-9
    text = ("<graph t=1> red cube (1,2,3); bad node; blue ball (0,0,4) | red cube-blue ball d=2 a=10; "
            "red cube-ghost d=1 a=1; nonsense </graph> <graph t=2> red cube (1,2,3) <graph t=3> blue ball (1,1,1) "
            "</graph> <graph t=4> red cube (1,2")
    gs = graph.parse_graphs(text)
    assert [g.frame for g in gs] == [1, 3]                  # t=2 never closes before t=3 opens; t=4 truncated
    assert [n.category for n in gs[0].nodes] == ["red cube", "blue ball"]
    assert len(gs[0].edges) == 1 and gs[0].edges[0].dist == 2.0
    assert graph.parse_graphs("<graph t=1> | a-b d=1 a=2 </graph>") == []
    assert graph.parse_graphs(None) == [] and graph.parse_graphs("") == []
    # hyphenated names attach by trying every split
    (g,) = graph.parse_graphs("<graph t=0> x-ray box (0,0,1); y (0,0,2) | x-ray box-y d=1 a=0 </graph>")
    assert len(g.edges) == 1
    # fuzz: random strings and mutated graph texts never raise, and every graph parsed has nodes
    base = graph.to_text(_scene(rng, 4))
    alphabet = list("<>/|;,.()-=graphtd a0123456789\n\u00e9\u4e2d\U0001f600") + ["<graph t=", "</graph>", "|", ";"]
    for k in range(3000):
        if k % 2:
            s = "".join(rng.choice(alphabet) for _ in range(rng.integers(0, 80)))
        else:
            chars = list(base)
            for _ in range(rng.integers(1, 8)):
                pos = int(rng.integers(0, len(chars)))
                op = rng.integers(0, 3)
                if op == 0:
                    del chars[pos]
                elif op == 1:
                    chars.insert(pos, str(rng.choice(alphabet)))
                else:
                    chars = chars[:pos]
                if not chars:
                    break
            s = "".join(chars)
        assert all(isinstance(g, graph.Graph) and g.nodes for g in graph.parse_graphs(s)), s
    # linear time: a tenfold input costs ~10 times the CPU time (quadratic: ~100); process time, best of 3
    cost = lambda x: max(min(timeit.repeat(lambda: graph.parse_graphs(x), timer=time.process_time, number=1,
                                           repeat=3)), 1e-4)
    noise = "".join(rng.choice(alphabet) for _ in range(200_000))
    for text in (noise, "<graph t=1> " * 20_000, "<graph t=1> red cube (1,2,3); " * 5_000):
        assert cost(text) / cost(text[:len(text) // 10]) < 40


def test_graph_rewards_by_hand_and_under_rotation():
    N = graph.Node
    gt = graph.Graph(0, [N("red cube", (0, 0, 4)), N("red cube", (2, 0, 4)), N("blue ball", (0, 0, 8))])
    # greedy: each predicted cube is matched 1 m from a true one (0.5 each): cubes (0.5 + 0.5) / max(2, 2) with
    # weight 2, the ball is missing (0): R_n = (2 * 0.5 + 0) / 3
    pred = graph.Graph(0, [N("red cube", (1, 0, 4)), N("red cube", (3, 0, 4))])
    assert close(graph.node_reward(pred, gt), (2 * (0.5 + 0.5) / 2 + 0) / 3)
    pred = graph.Graph(0, [N("red cube", (0, 0, 4)), N("red cube", (2, 0, 5)), N("blue ball", (0, 0, 8)),
                           N("green cone", (0, 0, 1))])
    # cubes (1 + 0.5) / 2 * 2 = 1.5, ball 1 -> 2.5 over 3 gt nodes + 1 hallucinated category node
    assert close(graph.node_reward(pred, gt), 2.5 / 4)
    assert close(graph.node_reward(gt, gt), 1.0)
    gt = graph.Graph(5, [N("a", (0, 0, 4)), N("b", (4, 0, 4)), N("c", (0, 0, 8))])
    d, a = graph.edge_features([n.center for n in gt.nodes])
    # predict only edge a-b with d off by 25 % (-> 0.75) and angle off by 10 degrees (-> 0.5)
    text = f"<graph t=5> a (0,0,4); b (4,0,4); c (0,0,8) | a-b d={d[0, 1] * 1.25:.4f} a={a[0, 1] + 10:.4f} </graph>"
    (pred,) = graph.parse_graphs(text)
    assert close(graph.edge_reward(pred, gt), (0.5 * 0.75 + 0.5 * 0.5) / 3, 1e-6)
    total, parts = graph.graph_reward([pred], [gt, graph.Graph(9, gt.nodes)])   # frame 9 omitted -> 0
    assert close(parts["node"], 0.5) and close(parts["frames_found"], 0.5)
    assert close(total, (1.0 + (0.5 * 0.75 + 0.5 * 0.5) / 3) / 2, 1e-6)
    assert graph.graph_reward(graph.parse_graphs(graph.to_text(gt)), [gt])[0] > 1.95
    assert graph.graph_reward([], [gt])[0] == 0.0
    # correct edges but the coordinates of a rotated camera: R_e stays ~1, R_n drops
    gt = _scene(np.random.default_rng(2), 3)
    rot = graph.Graph(gt.frame, [N(n.category, tuple(graph.yaw(0.8) @ np.array(n.center))) for n in gt.nodes])
    pred = graph.parse_graphs(graph.to_text(rot))[0]
    assert graph.edge_reward(pred, gt) > 0.95
    assert graph.node_reward(pred, gt) < graph.node_reward(graph.parse_graphs(graph.to_text(gt))[0], gt)


# --- rewards.py -----------------------------------------------------------------------------------------------------

def test_format_extract_parse_strict_mc_and_extraction_linear_as_the_regex():
    for text, want in (("<think>a</think><answer>B</answer>", 1.0),
                       ("  <think>\na\n</think> \n<answer> B </answer>\n", 1.0),
                       ("<answer>B</answer>", 0.0), ("<think>a</think>", 0.0), ("", 0.0), (None, 0.0),
                       ("x<think>a</think><answer>B</answer>", 0.0), ("<think>a</think><answer>B</answer>tail", 0.0),
                       ("<think>a</think><answer>B</answer><answer>C</answer>", 0.0),
                       ("<think><think>a</think><answer>B</answer>", 0.0)):
        assert rewards.format_reward(text) == want, text
    assert rewards.extract_answer("<think>x</think><answer> 3.5 m </answer>") == "3.5 m"
    assert rewards.extract_answer("no answer") is None
    for text, want in (("3.5", 3.5), ("3,500", 3500.0), ("3.5 m", 3.5), ("-2", -2.0), ("1e3", 1000.0),
                       ("5.", 5.0), ("3.5 m.", 3.5), (" 5. ", 5.0)):                # a full stop is dropped
        assert rewards.parse_number(text) == want, text
    for bad in ("nan", "inf", "-inf", "1e999", "3 or 4", "", "abc", "__import__('os')", "1,23", "5..", "5 .",
                None):
        assert rewards.parse_number(bad) is None, bad
    assert rewards.parse_interval("[1.5, 3]") == [1.5, 3.0] and rewards.parse_interval("[1, 2, 3]") is None
    for text, want in (("B", 1.0), ("b", 1.0), ("(B)", 1.0), ("B.", 1.0), ("A", 0.0), ("A or B", 0.0),
                       ("", 0.0), ("AB", 0.0), ("B C", 0.0), (None, 0.0)):        # multiple choice: one letter
        assert rewards.answer_reward(text, "B", "mc") == want, text
    regex = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)              # the old reading, quadratic
    r1 = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)            # Video-R1's
    rng = np.random.default_rng(5)
    parts = ["<answer>", "</answer>", "<answer", "answer>", " ", "B", "\n", "x</", "<"]
    for _ in range(5000):
        text = "".join(rng.choice(parts) for _ in range(rng.integers(0, 14)))
        found = regex.findall(text)
        assert rewards.extract_answer(text) == (found[-1].strip() if found else None), text
        m = r1.search(text)
        assert ev.r1_extract(text) == (m.group(1).strip() if m else ""), text
    # 2 MB of repeated tags: the regexes rescan the rest from every unclosed tag (hours); str.find is linear
    assert rewards.extract_answer("<answer>" * 250_000) is None and ev.r1_extract("<answer>" * 250_000) == ""
    assert rewards.extract_answer("<answer>x</answer>" * 120_000 + "<answer>" * 100_000) == "x"
    assert ev.answer_text("<answer>" * 100_000) == "<answer>" * 100_000


def test_mra_and_iou_by_hand_and_never_nan_on_huge_values():
    # share of theta in linspace(0.5, 0.95, 10) with |pred - gt| / gt <= 1 - theta, in VSI-Bench's float
    # arithmetic (no tolerance: on a threshold, float rounding decides); gt 0: the absolute error
    for pred, gt, want in (("3.3", 3.0, 0.9),       # 0.1 <= 1 - theta for theta 0.50..0.90
                           ("4.5", 3.0, 0.1),       # 0.5 <= 1 - 0.5 only
                           ("6", 5.0, 0.6),         # 0.2 vs 1 - 0.8 = 0.19999999999999996: theta 0.50..0.75 only
                           ("2.5", 2.0, 0.6),       # 0.25 <= 1 - 0.75 = 0.25 holds
                           ("5.5", 5.0, 0.9),       # 0.1 <= 1 - 0.8999999999999999 holds
                           ("2.2", 2.0, 0.9), ("3.0", 3.0, 1.0), ("6.0", 3.0, 0.0), ("7", 2.0, 0.0),
                           ("0.0", 0.0, 1.0), ("0.3", 0.0, 0.5)):
        assert rewards.mra(float(pred), gt) == ev.number_mra(pred, gt) == want, pred
    for pred, gt in (("3.0 m", 3.0), ("4.", 4.0), ("5.\n", 5.0)):    # VSI-Bench reads '5.' of '5.\n' as 5
        assert ev.number_mra(pred, gt) == 1.0, pred
    for bad in ("3m", "about 3", "nan", "inf", "", "1e999", " 3", "3\nm", None):   # unparseable / non-finite -> 0
        assert ev.number_mra(bad, 3.0) == 0.0, bad
    assert ev.vsi_number("5.") == 5.0 and ev.vsi_number(" 5") is None
    # the training reward reads the whole answer: units and a full stop allowed
    assert rewards.answer_reward("5.", 5.0, "num") == 1.0 and rewards.answer_reward("three", 3.0, "num") == 0.0
    assert close(rewards.answer_reward("3.3 m", 3.0, "num"), 0.9)
    iou, box = rewards.interval_iou, rewards.box_iou
    # V-STaR: 0 when the union is 0, also for identical zero-length intervals / zero-area boxes
    for fn, a, b, want in ((iou, [1, 3], [2, 4], 1 / 3), (iou, [1, 2], [3, 4], 0), (iou, [3, 1], [1, 3], 0),
                           (iou, [2, 2], [2, 2], 0), (iou, [2, 2], [1, 3], 0), (iou, [0.0, math.inf], [0.0, 1.0], 0),
                           (box, [0, 0, 2, 2], [1, 1, 3, 3], 1 / 7), (box, [1, 1, 1, 5], [1, 1, 1, 5], 0),
                           (box, [1, 1, 1, 1], [1, 1, 1, 1], 0), (box, [0, 0, math.nan, 1], [0, 0, 1, 1], 0)):
        assert close(fn(a, b), want, 1e-12), (a, b)
    big = 1e308
    for text, gt, want in (("[2, 2]", [2, 2], 0.0), ("[2, 4]", [1, 3], 1 / 3), ("[2, 4]", [0, 0, 2, 2], 0.0),
                           ("[-1e308, 1e308]", [-big, big], 1.0), ("[0, 1e308]", [-big, big], 0.5),
                           ("[-1e308, 0]", [0.0, big], 0.0), ("[1, 3]", [-big, big], 2 / 2e308),
                           ("[0, 0, 1e308, 1e308]", [0.0, 0.0, big, big], 1.0),
                           ("[0, 0, 1e308, 5e307]", [0.0, 0.0, big, big], 0.5),
                           ("[-1e308, -1e308, 1e308, 1e308]", [-big, -big, big, big], 1.0)):
        got = rewards.answer_reward(text, gt, "iou")
        assert math.isfinite(got) and close(got, want, 1e-12), (text, gt, got)
    assert math.isfinite(iou([-big, big], [-big, big])) and math.isfinite(iou([0.0, 0.0], [-big, big]))
    _, parts = rewards.total_reward("<think>t</think><answer>[-1e308, 1e308]</answer>", 10,
                                    {"answer": [-big, big], "answer_type": "iou"})
    assert all(math.isfinite(v) for v in parts.values())


def test_length_total_reward_and_eval_graph_parts():
    assert [rewards.length_reward(n, ok) for n, ok in ((400, True), (400, False), (600, True))] == [0.2, 0.0, 0.0]
    g = graph.Graph(0, [graph.Node("red cube", (1.2, 0.4, 5.1)), graph.Node("blue ball", (-0.8, 0.4, 6.0))])
    row = {"answer": 2.0, "answer_type": "num", "graphs": [g.to_dict()]}
    text = f"<think>{graph.to_text(g)} so </think><answer>2</answer>"
    total, parts = rewards.total_reward(text, 20, row, lo=10, hi=30)
    assert parts["format"] == 1.0 and parts["answer"] == 1.0 and parts["length"] == 0.2
    assert parts["graph"] > 1.9 and close(total, 1 + 1 + parts["graph"] + 0.2)
    assert close(rewards.total_reward(text, 20, row, weights={"graph": 0.0}, lo=10, hi=30)[0], 2.2)
    in_answer = f"<think>x</think><answer>B {graph.to_text(g)}</answer>"      # a graph in the answer earns nothing
    assert rewards.total_reward(in_answer, 20, row)[1]["graph"] == 0.0
    # eval.py reports the graph parts where a row has graphs
    row = {"answer_type": "mc", "answer": "B", "graphs": [g.to_dict()]}
    s = ev.score_completion(f"<think>{graph.to_text(g)}</think><answer>B</answer>", row)
    assert s["node"] == 1.0 and s["edge"] > 0.95 and s["format"] == 1.0
    assert ev.score_completion(in_answer, row)["node"] == 0.0
    assert "node" not in ev.score_completion("B", {"answer_type": "mc", "answer": "B"})


def test_import_is_light():
    code = ("import sys, grpo, rewards, graph; "
            "print(sorted(m for m in ('transformers', 'av', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


# --- data.py: test videos, read_frames ------------------------------------------------------------------------------

def _stamp(i, H=48, W=64, noise=False):
    """A frame whose 8 vertical bands spell i in binary (survives lossy coding); noise: frame data fills the file."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:, ((i >> (np.arange(W) * 8 // W)) & 1).astype(bool)] = 255    # band b: columns b*W/8 .. , white if bit b
    if noise:
        img[: H // 4] = np.random.default_rng(i).integers(0, 256, (H // 4, W, 3), dtype=np.uint8)
    return img


def _unstamp(frames):
    """(F, H, W, 3) -> (F,) the numbers written by _stamp."""
    W, mid = frames.shape[2], frames.shape[1] // 2
    return sum((frames[:, mid, b * W // 8 + W // 16, 0] > 128).astype(int) << b for b in range(8))


def _stamped_video(path, n, fps=25, times=None, gop=None, noise=False, **kw):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    data.write_video(path, np.stack([_stamp(i, noise=noise) for i in range(n)]), fps=fps, times=times, gop=gop, **kw)
    return path


def _pyav_video(path, frames, rate=25, mirrored_rotation=None, title=None):
    """64x48 H.264 by PyAV: index at the end (no faststart), maybe mirrored or titled; no frames: an empty stream."""
    with av.open(path, "w") as c:
        if title:
            c.metadata["title"] = title
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        if mirrored_rotation is not None:
            s.set_display_rotation(mirrored_rotation, hflip=True)
        if len(frames) == 0:
            c.start_encoding()
            return path
        for frame in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(s.encode())
    return path


def _raises(exc, fn, *args, contains=(), **kw):
    """Call fn; it must raise exc and the message must contain every string of `contains`. Returns the error."""
    try:
        fn(*args, **kw)
    except exc as e:
        for s in contains:
            assert s in str(e), f"{s!r} not in {str(e)!r}"
        return e
    raise AssertionError(f"{fn.__name__} did not raise {exc.__name__}")


def _file(path, content="", mode="w"):
    """Write (mode "w") or append ("a") text (str) or bytes to path, its folder made; returns path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, mode + "b" if isinstance(content, bytes) else mode) as fh:
        fh.write(content)
    return path


def _tmp():
    """A temporary folder that lives until the process ends (for the cached fixtures tests share)."""
    d = tempfile.mkdtemp(prefix="videostr_test_")
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


def test_read_frames_counts_times_fps_cap_and_window():
    with tempfile.TemporaryDirectory() as d:
        for n in (3, 10, 33, 100):
            p = _stamped_video(os.path.join(d, f"v{n}.mp4"), n, fps=25, gop=10)
            for want in (16, 7, 32):
                frames, times = data.read_frames(p, want)
                F = max(2, min(want, n) - min(want, n) % 2)          # even, clamped to the frames that exist
                idx = np.round(np.linspace(0, n - 1, F)).astype(int)
                assert frames.shape == (F, 48, 64, 3) and frames.dtype == np.uint8 and times.dtype == np.float64
                assert np.array_equal(_unstamp(frames), idx), (n, want, _unstamp(frames), idx)
                assert np.allclose(times, idx / 25.0, atol=1e-3)
        # p: 100 frames, 4.0 s
        assert [len(data.read_frames(p, 16, fps=fps)[0]) for fps in (2, 1, 0.3, 100)] == [8, 4, 2, 16]
        frames, times = data.read_frames(p, 16, start=1.0, end=2.0)     # frames 25..50: 26 in the window
        assert np.array_equal(_unstamp(frames), 25 + np.round(np.linspace(0, 25, 16)).astype(int))
        assert times[0] >= 1.0 - 1e-6 and times[-1] <= 2.0 + 1e-6
        assert len(data.read_frames(p, 16, fps=4, start=1.0, end=2.0)[0]) == 4          # 4 fps x 1.04 s -> 4 frames
        _raises(data.VideoError, data.read_frames, p, 16, start=5.0, end=6.0, contains=(p, "window"))
        _raises(data.VideoError, data.read_frames, p, 16, start=2.0, end=1.0, contains=(p,))


def test_read_frames_variable_frame_rate_and_seek_equals_forward():
    with tempfile.TemporaryDirectory() as d:
        ts = np.round(np.cumsum(np.r_[0, np.random.default_rng(0).uniform(0.01, 0.3, 39)]), 3)
        p = _stamped_video(os.path.join(d, "vfr.mp4"), 40, times=ts)
        frames, times = data.read_frames(p, 40)
        assert np.array_equal(_unstamp(frames), np.arange(40))
        assert np.allclose(times, ts, atol=1e-3)                        # true times, not index / fps
        frames, times = data.read_frames(p, 8, start=ts[10], end=ts[30])
        idx = _unstamp(frames)
        assert np.allclose(times, ts[idx], atol=1e-3) and idx.min() >= 10 and idx.max() <= 30
        for gop in (5, 250):
            p = _stamped_video(os.path.join(d, f"g{gop}.mp4"), 200, gop=gop)
            results = []
            for gap in (0, 10 ** 9):                                     # always seek / never seek
                with mock.patch.object(data, "SEEK_GAP", gap):
                    results.append(data.read_frames(p, 16))
            (fa, ta), (fb, tb) = results
            assert np.array_equal(fa, fb) and np.array_equal(ta, tb)
            assert np.array_equal(_unstamp(fa), np.round(np.linspace(0, 199, 16)).astype(int))


def test_read_frames_odd_size_mirror_flag_and_a_latin1_title():
    with tempfile.TemporaryDirectory() as d:
        odd = np.zeros((6, 37, 51, 3), np.uint8)
        odd[:, :10, :10] = 255
        p = os.path.join(d, "odd.mp4")
        data.write_video(p, odd)
        frames, _ = data.read_frames(p, 4)
        assert frames.shape == (4, 37, 51, 3) and frames[0, 2, 2, 0] > 200 and frames[0, 30, 40, 0] < 50
        for rot in (0, 90):                                              # a mirror flag is refused, not ignored
            p = _pyav_video(os.path.join(d, f"flip{rot}.mp4"), [_stamp(0), _stamp(1)], rate=8, mirrored_rotation=rot)
            _raises(data.VideoError, data.read_frames, p, 2, contains=(p, "mirrored"))
        # a Latin-1 title, as older tools write it: PyAV 18 fails the open unless told to ignore metadata errors,
        # PyAV 19 has no such argument and never fails (data._av_open serves both)
        p = _pyav_video(os.path.join(d, "latin1.mp4"), [_stamp(i) for i in range(4)], title="Cafe du Monde")
        blob = open(p, "rb").read()
        assert blob.count(b"Cafe du Monde") == 1
        _file(p, blob.replace(b"Cafe du Monde", b"Caf\xe9 du Monde"))       # e-acute in Latin-1: the same length
        assert np.array_equal(_unstamp(data.read_frames(p, 4)[0]), [0, 1, 2, 3])


def test_read_frames_bad_inputs():
    with tempfile.TemporaryDirectory() as d:
        missing, fifo, audio = (os.path.join(d, f) for f in ("nope.mp4", "pipe.mp4", "audio.mp4"))
        _raises(FileNotFoundError, data.read_frames, missing, contains=(missing,))
        os.mkfifo(fifo)                                                  # opening it would block: refused
        with av.open(audio, "w") as c:                                   # an audio-only mp4
            s = c.add_stream("aac", rate=16000)
            for k in range(10):
                fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                fr.sample_rate, fr.pts = 16000, k * 1024
                c.mux(s.encode(fr))
            c.mux(s.encode())
        for path, *why in ((_file(os.path.join(d, "empty.mp4")), "empty"), (d, "folder"), (fifo, "regular file"),
                           (_file(os.path.join(d, "text.mp4"), "not a video\n" * 50), "not a readable video"),
                           (audio, "no video stream", "audio"),
                           (_pyav_video(os.path.join(d, "noframes.avi"), []), "zero frames"),
                           (_pyav_video(os.path.join(d, "noframes.mp4"), []), "no video stream")):   # mp4: no track
            _raises(data.VideoError, data.read_frames, path, contains=(path, *why))


def test_read_frames_truncated():
    with tempfile.TemporaryDirectory() as d:
        p = _stamped_video(os.path.join(d, "full.mp4"), 100, gop=10, noise=True)  # index at the front (faststart)
        blob = open(p, "rb").read()
        half = _file(os.path.join(d, "half.mp4"), blob[: len(blob) // 2])
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            frames, times = data.read_frames(half, 16)
        assert any("truncated" in str(x.message) and half in str(x.message) for x in w)
        assert 2 <= len(frames) <= 16 and len(frames) % 2 == 0 and times[-1] < 100 / 25
        assert np.allclose(times, _unstamp(frames) / 25.0, atol=1e-3)   # the frames are the ones their times say
        stub = _file(os.path.join(d, "stub.mp4"), blob[:2000])           # header only: nothing decodes
        _raises(data.VideoError, data.read_frames, stub, contains=(stub, "truncated"))
        tail = open(_pyav_video(os.path.join(d, "tail_index.mp4"), [_stamp(i) for i in range(50)]), "rb").read()
        cut = _file(os.path.join(d, "tail_cut.mp4"), tail[: len(tail) // 2])   # index at the end: cut -> unreadable
        _raises(data.VideoError, data.read_frames, cut, contains=(cut, "truncated"))


def test_read_frames_of_rendered_scenes_plain_and_rotated():
    """make_dataset's videos read back as the rendered frames at their times, and turned counter-clockwise when
    written with a display rotation of 90 / 180 / 270 (H.264 qp 23: mean error ~3 of 255, a wrong turn ~50)."""
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "videos"))
        for i in range(2):
            job = (d, i, 0, 4, (2, 3), data.CLIP_SIZE, data.CLIP_FRAMES, data.CLIP_FPS, 0.5, (0, data.MAX_ROLL),
                   "plain")
            scene, _, clip = data.make_scene_files(job)                  # clip (F, H, W, 3): the rendered frames
            frames, times = data.read_frames(os.path.join(d, "videos", f"{i:06d}.mp4"), data.CLIP_FRAMES)
            assert frames.shape == clip.shape and np.abs(frames.astype(int) - clip).mean() < 6, i
            assert np.allclose(times, data.frame_times(scene), atol=1e-3)
        for deg in (90, 180, 270):
            p = os.path.join(d, f"rot{deg}.mp4")
            data.write_video(p, clip, data.CLIP_FPS, rotation=deg)
            frames, _ = data.read_frames(p, data.CLIP_FRAMES)
            turned = np.rot90(clip, deg // 90, axes=(1, 2))              # (F, W, H, 3) at 90 and 270
            assert frames.shape == turned.shape and np.abs(frames.astype(int) - turned).mean() < 6, deg


# --- data.py: scenes, rendering, questions, load_rows ---------------------------------------------------------------

def _world(o, t):
    """Independent re-implementation of an object's world centre."""
    t0, t1 = o["move"] or (0, 0)
    m = min(max(t, t0), t1) - t0
    return np.array([o["pos"][0] + o["vel"][0] * m, o["pos"][1] + o["vel"][1] * m, o["height"] / 2])


def _cam_axes(scene, t):
    """Independent camera: right, down, forward axes and centre (yaw psi = rate x t, pitch down)."""
    cam = scene["camera"]
    psi, th = cam["yaw_rate"] * t, cam["pitch"]
    right = np.array([math.cos(psi), -math.sin(psi), 0])
    fwd = np.array([math.sin(psi) * math.cos(th), math.cos(psi) * math.cos(th), -math.sin(th)])
    centre = np.array([cam["pos"][0] + cam["vel"][0] * t, cam["pos"][1] + cam["vel"][1] * t, cam["height"]])
    return right, np.cross(fwd, right), fwd, centre                    # down = forward x right


def _scenes(n, seed=0, **kw):
    return [{**data.make_scene(np.random.default_rng([seed, i]), **kw), "id": i} for i in range(n)]


def test_scene_render_and_graphs_match_the_scene():
    s = data.make_scene(np.random.default_rng(5))
    assert s == data.make_scene(np.random.default_rng(5))               # deterministic for a seed
    assert 2 <= len(s["objects"]) <= 3 and any(o["move"] for o in s["objects"])
    assert len({o["name"] for o in s["objects"]}) == len(s["objects"]) and data.scene_ok(s)   # distinct names
    assert abs(s["camera"]["yaw_rate"] * data.clip_end(s)) <= data.MAX_YAW + 1e-3
    f0, f1 = data.render(s, 0.0), data.render(s, data.clip_end(s))
    assert f0.shape == (112, 112, 3) and f0.dtype == np.uint8 and np.abs(f0.astype(int) - f1).mean() > 1
    for o in s["objects"]:                                              # each object shows its colour at its centre
        t = max(o["appear"], 0.0) + 0.01
        u, v = data.project(s, data.to_camera(s, data.object_center(o, t), t))
        img = data.render(s, t).astype(int)
        col = np.array(data.COLOURS[o["colour"]])
        assert np.abs(img[int(v), int(u)] - col).max() < 90 or np.abs(img[int(v), int(u)] - col * 0.75).max() < 60
    assert all(len(b["objects"]) == 5 and data.scene_ok(b) for b in _scenes(5, seed=3, n_objects=(5, 5)))
    for s in _scenes(20, seed=1):
        assert data.key_frames(data.frame_times(s)) == [0, s["num_frames"] - 1]
        rows = data.make_questions(s, np.random.default_rng(0))
        parsed = graph.parse_graphs(rows[0]["reasoning"])                # the text writes centres to 0.1 m
        assert len(parsed) == len(rows[0]["graphs"])
        for p, gd in zip(parsed, rows[0]["graphs"]):                     # the reward's targets keep mm
            t = gd["frame"] / s["fps"]
            right, down, fwd, c = _cam_axes(s, t)
            live = {o["name"]: o for o in s["objects"] if t >= o["appear"]}
            assert {n["category"] for n in gd["nodes"]} == set(live)
            W = np.array([_world(live[n["category"]], t) for n in gd["nodes"]])          # (N, 3) true centres
            centers = [n["center"] for n in gd["nodes"]]
            assert np.allclose(centers, (W - c) @ np.array([right, down, fwd]).T, atol=0.05 + 1e-9)  # camera frame
            dist, _ = graph.edge_features(centers)
            assert np.abs(dist - np.linalg.norm(W[:, None] - W[None], axis=-1)).max() <= 0.18   # rounding only
            assert p.frame == gd["frame"] and [n.category for n in p.nodes] == [n["category"] for n in gd["nodes"]]
            assert np.allclose([n.center for n in p.nodes], centers, atol=0.05 + 1e-9)


def _expected(row, s):
    """The answer of a row recomputed from the scene dict with this file's own geometry."""
    T, task, q = (s["num_frames"] - 1) / s["fps"], row["task"], row["question"]
    t = T if "end of the video" in q else 0.0
    named = [o for _, o in sorted((q.index(o["name"]), o) for o in s["objects"] if o["name"] in q)]   # in q's order
    opts, x = row["options"], (named or [None])[0]                       # x: the first object the question names
    if task == "object_count":
        return float(len(s["objects"]))
    if task == "object_size":
        return x["height"]
    if task == "abs_distance":
        return round(float(np.linalg.norm(_world(x, t) - _world(named[1], t))), 1)
    if task == "closest_object":
        live = [o for o in s["objects"] if o is not x and t >= o["appear"]]
        best = min(live, key=lambda o: np.linalg.norm(_world(o, t) - _world(x, t)))
        return data.LETTERS[opts.index(best["name"])]
    if task == "relative_direction":
        b, a = named
        right, _, fwd, _ = _cam_axes(s, t)
        d = _world(b, t) - _world(a, t)
        text = f"{'left' if d @ right < 0 else 'right'} and {'nearer' if d @ fwd < 0 else 'farther'}"
        return data.LETTERS[opts.index(text)]
    if task == "displacement":
        return round(float(np.linalg.norm(_world(x, T) - _world(x, 0))), 1)
    if task == "average_speed":
        return round(math.hypot(*x["vel"]) * (min(T, x["move"][1]) - x["move"][0]) / T, 2)
    if task == "motion_direction":
        right, _, fwd, _ = _cam_axes(s, 0.0)
        fwd = np.array([fwd[0], fwd[1], 0]) / math.hypot(fwd[0], fwd[1])
        v = np.array([*x["vel"], 0])
        side, z = v @ right, v @ fwd
        return data.LETTERS[opts.index(("left" if side < 0 else "right") if abs(side) > abs(z)
                                       else ("toward the camera" if z < 0 else "away from the camera"))]
    if task == "appearance_order":
        order = ", ".join(o["name"] for o in sorted(s["objects"], key=lambda o: o["appear"]))
        return data.LETTERS[opts.index(order)]
    if task == "when_moving":
        return [round(m, 1) for m in x["move"]]
    raise AssertionError(task)


def test_answers_recomputed_from_scene_mc_letters_balanced_and_reasoning_agrees():
    seen = set()
    for s in _scenes(80, seed=2):
        for row in data.make_questions(s, np.random.default_rng(s["id"])):
            exp, kind = _expected(row, s), row["answer_type"]
            written = row["reasoning"].split("<answer>")[1].split("</answer>")[0]    # the reference answer text
            if kind == "num":
                assert abs(row["answer"] - exp) <= 0.011 and abs(float(written) - row["answer"]) < 1e-9, (row, exp)
            else:
                assert row["answer"] == exp == (written if kind == "mc" else json.loads(written)), (row, exp)
            assert kind != "mc" or len(set(row["options"])) == len(row["options"])      # distinct options
            seen.add(row["task"])
    assert seen == set(data.TASKS)
    counts = collections.Counter(row["answer"] for s in _scenes(150, seed=4, n_objects=(3, 3))
                                 for row in data.make_questions(s, np.random.default_rng([s["id"], 1]))
                                 if row["answer_type"] == "mc" and len(row["options"]) == 4)
    total = sum(counts.values())
    assert total >= 300 and set(counts) == set("ABCD")
    assert all(abs(c / total - 0.25) < 0.06 for c in counts.values()), counts      # ~4.5 sigma band at n >= 300
    # an abs_distance answer is the written d of its pair, also on a rounding boundary (the graph's mm centres)
    checked = 0
    for i in [419] + list(range(100)):                 # scene 419 of seed 0 sat on a boundary (2.5499 vs 2.5503 m)
        rng = np.random.default_rng([0, i])            # as data.make_scene_files draws scene i of seed 0
        s = data.make_scene(rng)
        for row in data.make_questions(s, rng):
            if row["task"] != "abs_distance":
                continue
            pair = re.search(r"between the (\w+ \w+) and the (\w+ \w+)", row["question"]).groups()
            written = {tuple(sorted(e.split("-"))): float(d) for e, d in
                       re.findall(r"([a-z]+ [a-z]+-[a-z]+ [a-z]+) d=([0-9.]+)", row["reasoning"])}
            assert written[tuple(sorted(pair))] == row["answer"], (row["question"], row["reasoning"])
            checked += 1
    assert checked >= 20


def test_synthetic_rows_are_the_bytes_they_were_before_the_track_interface():
    """Rows of synthetic scenes (both layouts, up to 5 objects) are byte for byte those that the scene-dict question
    generator made before the q_* tasks read tracks (commit 32f2eaf): data sets made since train the same."""
    rows = []
    for n, objects, layout, seed in ((40, (2, 3), "plain", 0), (40, (2, 3), "asked_last", 0),
                                     (15, (2, 5), "plain", 3)):
        for i in range(n):
            rng = np.random.default_rng([seed, i])             # as data.make_scene_files draws scene i of a seed
            rows += data.make_questions({**data.make_scene(rng, objects), "id": i}, rng, layout=layout)
    assert len(rows) == 784
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest() == (
        "86809516547bbfa12bf3383c731c9d8d444ad5e92bb3e60d31047b8cb66b3dba")


def test_make_dataset_deterministic_split_by_scene_and_base_scenes_disjoint_from_runs():
    """The shared 10-scene set (train.ensure_data: a pool of min(4, cores) renderers) is byte-identical to one made
    the other way (in this process, or a pool of 2 on a one-core machine); another seed differs."""
    a, seed = _run_base()[1], train.Config().seed
    with tempfile.TemporaryDirectory() as d:
        b, c = os.path.join(d, "b"), os.path.join(d, "c")
        other = 1 if min(4, os.cpu_count() or 1) > 1 else 2
        data.make_dataset(b, 10, seed=seed, sheet=False, log=None, workers=other)
        data.make_dataset(c, 1, seed=seed + 1, sheet=False, log=None, workers=1)      # scene 0 of another seed
        files = ["train.jsonl", "val.jsonl", "test.jsonl", "scenes.jsonl"]
        files += [os.path.join("videos", v) for v in os.listdir(os.path.join(a, "videos"))]
        assert filecmp.cmpfiles(a, b, files, shallow=False)[1:] == ([], [])      # the same bytes, pool or not
        assert open(os.path.join(a, "scenes.jsonl")).readline() != open(os.path.join(c, "scenes.jsonl")).readline()
    videos = {}
    for split in ("train", "val", "test"):
        for row in data.load_rows(os.path.join(a, f"{split}.jsonl")):
            videos.setdefault(row["video"], set()).add(split)
            assert os.path.isabs(row["video"]) and os.path.exists(row["video"])
    assert len(videos) == 10 and all(len(v) == 1 for v in videos.values())   # no scene in two splits
    frames, times = data.read_frames(sorted(videos)[0], 16)
    assert frames.shape == (16, 112, 112, 3) and np.allclose(times, np.round(np.linspace(0, 31, 16)) / 8, atol=1e-3)
    # --preset base renders from BASE_SCENE_SEED, --seed 0/1/2 from their seed: no scene (but the id) in both
    base = train.scene_seed(train.parse_config(["--preset", "base"]))
    seeds = {train.scene_seed(train.parse_config(["--seed", str(s)])) for s in range(3)}
    assert base == train.BASE_SCENE_SEED and seeds == {0, 1, 2}

    def scenes(seed, n):
        return {json.dumps({**data.make_scene(np.random.default_rng([seed, i])), "id": None}, sort_keys=True)
                for i in range(n)}
    ours = scenes(base, 150)
    assert len(ours) == 150
    assert not any(ours & scenes(seed, 50) for seed in seeds)


_GOOD_ROW = {"id": "x-1", "video": "videos/a.mp4", "question": "Which?", "options": ["red cube", "blue ball"],
             "answer": "B", "answer_type": "mc", "task": "closest_object", "time_window": None,
             "graphs": [{"frame": 0, "nodes": [{"category": "red cube", "center": [0.1, 0.2, 3.0]}]}],
             "reasoning": "<think>x</think><answer>B</answer>"}


def _lines(*items):
    """JSONL text: each item a line (dicts dumped, strings as they are)."""
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items)


def _quiet(fn, *args, **kw):
    """(fn's result, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        return fn(*args, **kw), out.getvalue()


def test_load_rows_validates_names_file_line_field_and_reads_video_r1():
    def item(pid, kind, answer, path, options=(), **kw):
        return {"problem_id": pid, "problem": f"question {pid}?", "data_type": "video", "problem_type": kind,
                "options": list(options), "solution": f"<answer>{answer}</answer>", "path": path, **kw}
    bad_rows = [({"question": None}, "question"), ({"answer_type": "box"}, "answer_type"),
                ({"answer": "E"}, "answer"), ({"options": ["only one"], "answer": "A"}, "options"),
                ({"answer_type": "num", "options": None, "answer": "abc"}, "answer"),
                ({"answer_type": "iou", "options": None, "answer": [3.0, 1.0]}, "answer"),
                ({"time_window": [2.0, 1.0]}, "time_window"),
                ({"graphs": [{"frame": 0, "nodes": [{"category": "a"}]}]}, "graphs"), ({"video": ""}, "video")]
    with tempfile.TemporaryDirectory() as d:
        for k, (patch, field) in enumerate(bad_rows):
            p = _file(os.path.join(d, f"bad{k}.jsonl"), _lines(_GOOD_ROW, "", {**_GOOD_ROW, **patch}))
            _raises(ValueError, data.load_rows, p, contains=(f"{p}:3", f"'{field}'"))
        p = _file(os.path.join(d, "mixed.jsonl"), _lines(_GOOD_ROW, "{not json", {**_GOOD_ROW, "answer": "Z"}, {
            **_GOOD_ROW, "answer_type": "num", "options": None, "answer": 2.5, "video": "/abs/v.mp4"}))
        _raises(ValueError, data.load_rows, p, contains=(f"{p}:2", "json"))
        rows, said = _quiet(data.load_rows, p, skip_bad=True)
        assert len(rows) == 2 and "skipped 2" in said
        assert rows[0]["video"] == os.path.join(d, "videos", "a.mp4") and rows[1]["video"] == "/abs/v.mp4"
        assert rows[0]["graphs"] == _GOOD_ROW["graphs"] and rows[1]["answer"] == 2.5
        # Video-R1's format: items 4 (OCR), 5 (an image) and 6 (answer not a number) refused or skipped
        items = [item(1, "multiple choice", "C", "./LLaVA/v1.mp4", data_source="LLaVA-Video-178K",
                      options=["A. a notification", "B. a command", "C. a warning", "D. a weather update"]),
                 item(2, "numerical", 4, "v2.mp4"), item(3, "regression", 2.75, "v3.mp4",
                                                         process="<think>about three steps</think>"),
                 item(4, "OCR", "abc", "v4.mp4"), item(5, "multiple choice", "A", "i.jpg", ["A. x", "B. y"],
                                                        data_type="image"), item(6, "numerical", "many", "v6.mp4")]
        p = _file(os.path.join(d, "r1.json"), json.dumps(items))
        _raises(ValueError, data.load_rows, p, contains=(p, "item 4", "problem_type"))
        (mc, num, reg), said = _quiet(data.load_rows, p, skip_bad=True)
        assert "skipped 3" in said
        assert mc["options"] == ["a notification", "a command", "a warning", "a weather update"]
        assert mc["answer"] == "C" and mc["answer_type"] == "mc" and mc["video"] == os.path.join(d, "LLaVA", "v1.mp4")
        assert num["answer"] == 4.0 and num["answer_type"] == "num" and num["options"] is None
        assert reg["answer"] == 2.75 and reg["reasoning"] == "<think>about three steps</think><answer>2.75</answer>"
        pl = _file(os.path.join(d, "r1.jsonl"), _lines(*items[:3]))        # the same items as JSONL lines
        assert [r["answer"] for r in data.load_rows(pl)] == ["C", 4.0, 2.75]


# --- model.py and grpo's sampler, LoRA, checkpointing, bf16 ---------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tiny_dir():
    return qwen.build_tiny(os.path.join(_tmp(), "tiny"), qwen.demo_texts())


def _tiny(dtype=None):
    torch.manual_seed(0)
    m, tok = qwen.load(_tiny_dir(), dtype=dtype or torch.float32, device="cpu")
    return m.eval(), tok


_ROWS = [{"id": "t0", "question": "Which object is closest to the red cube?", "answer_type": "mc", "answer": "B",
          "options": ["blue ball", "green cone", "yellow cylinder"]},
         {"id": "t1", "question": "How far?", "answer_type": "num", "answer": 2.0}]


def _video(seed, n=8, size=56, fps=2.0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) / fps


def _tiny_inputs():
    """The tiny model, its tokenizer, inputs of the two _ROWS prompts and the vision token ids (never sampled)."""
    m, tok = _tiny()
    inputs = qwen.make_inputs(tok, m.config, _ROWS, [_video(0), _video(1)])
    return m, tok, inputs, tok.convert_tokens_to_ids(qwen.VISION_TOKENS)


def test_tiny_builds_offline_save_load_prompt_layout_and_golden_preprocessing():
    # a missing folder fails fast: model.load checks it before transformers could try the hub
    _raises(FileNotFoundError, qwen.load, os.path.join(tempfile.gettempdir(), "no_such_model_dir_xyz"),
            contains=("no checkpoint folder", "--model"))
    m, tok, inputs, _ = _tiny_inputs()
    assert 300_000 < qwen.count_params(m) < 800_000
    for t in qwen.SPECIAL_TOKENS + qwen.REASONING_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    text = ("<think><graph t=31> red cube (1.2,-0.4,5.1) | a-b d=2.25 a=107 </graph> ünïcode 😀</think>"
            "<answer>B</answer>")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text                                       # exact round trip
    pieces = [tok.decode([i]) for i in tok("(1.2,-0.4,5.1) d=2.3 a=107", add_special_tokens=False)["input_ids"]]
    assert {"1.2", "0.4", "5.1"} <= set(pieces), pieces                  # common centres: one token each
    assert all(set(p) <= set("0123456789.") for p in pieces if any(c.isdigit() for c in p))  # numbers stand alone
    with tempfile.TemporaryDirectory() as d:
        m.save_pretrained(d)
        tok.save_pretrained(d)
        m2, tok2 = qwen.load(d, dtype=torch.float32, device="cpu")
        assert torch.equal(_logits(m, inputs), _logits(m2.eval(), inputs))
    assert tok2(text, add_special_tokens=False)["input_ids"] == ids
    p = qwen.build_prompt(_ROWS[0])
    assert p.count("<|video_pad|>") == 1 and p.endswith("<|im_start|>assistant\n")
    assert "(A) blue ball\n(B) green cone\n(C) yellow cylinder" in p and "<graph t=FRAME>" in p
    assert "letter" in p and "number" in qwen.build_prompt(_ROWS[1])
    assert "[start, end]" in qwen.build_prompt({"question": "When?", "answer_type": "iou", "answer": [1, 2],
                                                "time_window": [0, 8]})
    ids, am, vid = inputs["input_ids"], inputs["attention_mask"], m.config.video_token_id
    assert torch.equal(inputs["mm_token_type_ids"], (ids == vid).int() * 2)
    assert torch.equal((ids == vid).sum(1), inputs["video_grid_thw"].prod(-1) // 4)      # t*h*w / merge^2
    assert am[1, 0] == 0 and am[0].all() and am[1, -1] == 1             # left padding of the shorter prompt
    assert (ids[1][am[1] == 0] == tok.pad_token_id).all()
    assert torch.allclose(inputs["second_per_grid_ts"], torch.tensor([1.0, 1.0]))  # 2 frames / 2 fps
    # preprocessing as Qwen's own pipeline: the golden fixture's ids, grids and pixels
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    g = np.load(qwen.GOLDEN_PATH, allow_pickle=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(str(g["tokenizer_json"])),
                                  pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.padding_side = "left"
    rows = json.loads(str(g["rows_json"]))                               # clips with Qwen's sampled fps:
    videos = [data.Clip(g[f"frames{i}"], g[f"times{i}"], None, float(g["sample_fps"][i])) for i in range(len(rows))]
    ours = qwen.make_inputs(tok, qwen.tiny_config(tok), rows, videos, int(g["min_pixels"]), int(g["max_pixels"]))
    assert all(np.array_equal(ours[k].numpy(), g[k]) for k in ("input_ids", "attention_mask", "mm_token_type_ids",
                                                               "video_grid_thw"))
    assert np.allclose(ours["second_per_grid_ts"].numpy(), g["second_per_grid_ts"], rtol=1e-6)
    assert not close(2 / qwen.sampled_fps(g["times2"]), float(g["second_per_grid_ts"][2]), 1e-3)   # times alone: 0.83
    px, ref = ours["pixel_values_videos"].numpy(), g["pixel_values_videos"]       # within one uint8 step, normalised
    assert px.shape == ref.shape and np.abs(px - ref).max() <= 1 / 255 / min(qwen.CLIP_STD) + 1e-5


def test_hub_kernels_off_after_load_train_and_build():
    """transformers >= 5 would kernelize a loaded model from the Hub (use_kernels defaults to True; on CUDA the
    first .train() downloads kernels-community code, offline a crash): every model the repo makes opts out."""
    m, _ = _tiny()
    assert m.use_kernels is False
    assert m.train().use_kernels is False and m.eval().use_kernels is False
    with torch.device("meta"):
        built = qwen.new_model(m.config)                                    # build_tiny, param_counts, shape7b
    assert built.train().use_kernels is False


def test_seconds_per_grid_and_temporal_positions_follow_qwen_and_frame_times():
    # qwen-vl-utils fetch_video: sample_fps = nframes / total_frames * video_fps; second_per_grid = 2 / sample_fps
    m, tok = _tiny()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "v.mp4")
        data.write_video(path, np.zeros((100, 16, 16, 3), np.uint8), fps=30)
        clip = data.read_clip(path, 16)                                  # round(linspace(0, 99, 16))
        assert close(clip.sample_fps, 16 / 100 * 30, 1e-9)
        spg = qwen.preprocess_video(clip.frames, clip.times, fps=clip.sample_fps)["second_per_grid_ts"]
        assert close(float(spg), 2 / 4.8, 1e-6)                         # 0.4167 s, as Qwen's pipeline
        spg_times = qwen.preprocess_video(clip.frames, clip.times)["second_per_grid_ts"]
        assert close(float(spg_times), 2 * 99 / 30 / 15, 1e-6)         # 0.44 s from the sampled times alone
        window = data.read_clip(path, 16, start=1.0, end=2.0)           # frames 30..60: M = 31
        assert close(window.sample_fps, 16 / 31 * 30, 1e-9) and close(window.times[0], 1.0, 1e-6)
        inputs = qwen.make_inputs(tok, m.config, [_ROWS[1]], [clip])       # a Clip carries its sample_fps
        assert close(float(inputs["second_per_grid_ts"][0]), 2 / 4.8, 1e-6)
    on_gpu = qwen.to_device({"second_per_grid_ts": torch.tensor([2 / 1.2]), "pixel_values_videos": torch.ones(2)},
                            "cpu", torch.bfloat16)                       # bf16 would round 1.667 s to 1.664
    assert on_gpu["second_per_grid_ts"].dtype == torch.float32
    assert on_gpu["pixel_values_videos"].dtype == torch.bfloat16
    tps = m.config.vision_config.tokens_per_second
    for fps in (2.0, 4.0, 1.0, 3.0):
        frames, times = _video(0, n=8, fps=fps)
        times = times + 3.0                                             # a clip that starts at 3 s
        inputs = qwen.make_inputs(tok, m.config, [_ROWS[1]], [(frames, times)])
        pos, next_pos = grpo.prompt_positions(m, inputs)                # (3, 1, P), (1,)
        is_vid = inputs["input_ids"][0] == m.config.video_token_id
        t_pos = pos[0, 0][is_vid].view(4, -1)                          # (t grids, 4 tokens each)
        assert (t_pos == t_pos[:, :1]).all()
        expect = torch.tensor([int(tps * (times[2 * k] - times[0]) + 1e-6) for k in range(4)])  # tps * dt
        assert torch.equal(t_pos[:, 0] - t_pos[0, 0], expect), (fps, t_pos[:, 0])
        hw = pos[1:, 0][:, is_vid].view(2, 4, 4)                        # height/width: 2x2 merged grid
        assert torch.equal(hw[:, 0] - hw[:, 0, :1], torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]]))
        after = int(is_vid.nonzero()[-1]) + 1                           # first text token after the video
        assert (pos[:, 0, after] == pos[:, 0, is_vid].max() + 1).all()  # Qwen's reference: max + 1
        assert next_pos[0] == pos[:, 0].max() + 1
    # a one-grid video (2 frames): no temporal extent, so transformers' own get_rope_index agrees with ours
    inputs = qwen.make_inputs(tok, m.config, _ROWS, [_video(0, n=2), _video(1, n=2)])
    theirs, _ = m.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], **{
        k: inputs[k] for k in ("video_grid_thw", "second_per_grid_ts", "attention_mask")})
    assert torch.equal(grpo.prompt_positions(m, inputs)[0], theirs)


def test_greedy_sample_equals_generate_with_eos_and_padding_and_suppressed_ids_never_sampled():
    m, tok, inputs, sup = _tiny_inputs()                                 # 2 prompts of different lengths
    ids0, mask0, _ = grpo.sample(m, inputs, 2, 10, temperature=0, suppress_ids=sup)
    assert torch.equal(ids0[0], ids0[1]) and torch.equal(ids0[2], ids0[3])  # greedy: G rows identical
    eos = int(ids0[0, 4])                                                # a token seq 0 emits: a stop for it
    ids, mask, _ = grpo.sample(m, inputs, 1, 10, temperature=0, eos_ids=[eos], suppress_ids=sup,
                               pad_id=tok.pad_token_id)
    # model.generate, with transformers' get_rope_index replaced by model.rope_positions (Qwen's reference M-RoPE;
    # transformers 5.24 differs for text after a video), so both decoders see the same positions

    def rope_index(input_ids, mm_token_type_ids=None, video_grid_thw=None, second_per_grid_ts=None,
                   attention_mask=None, **_):
        pos, next_pos = qwen.rope_positions(m.config, input_ids, mm_token_type_ids, attention_mask, video_grid_thw,
                                            second_per_grid_ts)
        return pos, (next_pos - attention_mask.sum(1)).unsqueeze(1)      # transformers' rope_deltas
    with mock.patch.object(m.model, "get_rope_index", rope_index):
        gen = m.generate(**inputs, do_sample=False, max_new_tokens=10, eos_token_id=[eos], suppress_tokens=sup,
                         pad_token_id=tok.pad_token_id)[:, inputs["input_ids"].shape[1]:]
    assert torch.equal(ids, gen[:, :ids.shape[1]]), (ids, gen)
    before = (ids == eos).long().cumsum(1) - (ids == eos).long()        # (N, T) EOS tokens before each position
    assert torch.equal(mask.bool(), before == 0) and (ids[before > 0] == tok.pad_token_id).all()   # EOS kept, pads
    assert mask[0].sum() <= 5 < 10                                        # seq 0 stopped at its EOS
    bias = torch.zeros(m.config.text_config.vocab_size)
    bias[sup] = 8.0                                                      # make vision tokens the favourites
    with m.lm_head.register_forward_hook(lambda mod, args, out: out + bias):      # removed after the block
        ids, _, _ = grpo.sample(m, inputs, 4, 8, generator=torch.Generator().manual_seed(0))
        assert torch.isin(ids, torch.tensor(sup)).any()                  # control: they would be sampled
        for temp in (1.0, 0):
            ids, _, _ = grpo.sample(m, inputs, 4, 8, temperature=temp, suppress_ids=sup,
                                    generator=torch.Generator().manual_seed(0))
            assert not torch.isin(ids, torch.tensor(sup)).any()


def test_static_decoder_gives_plain_tokens_logprobs_and_ends_leaves_the_weights_and_reads_the_device_rarely():
    m, tok, inputs, sup = _tiny_inputs()                                 # 2 prompts of different lengths
    qwen.add_lora(m, rank=4, alpha=8)
    with torch.no_grad():
        for mod in qwen.lora_modules(m):
            mod.lora_B.normal_(0, 0.3)                                   # adapters that change the output
    weights = {k: v.clone() for k, v in m.state_dict().items()}
    stops = list(range(0, m.config.text_config.vocab_size, 3))           # a third of the tokens end a sequence
    cases = {"greedy": dict(temperature=0), "top-p": dict(temperature=0.8, top_p=0.9),
             "eos": dict(temperature=1.0, eos_ids=stops, pad_id=tok.pad_token_id)}
    for (name, case), off in ((c, off) for c in cases.items() for off in (False, True)):
        with qwen.lora_disabled(m) if off else contextlib.nullcontext():      # adapters on, then off
            ids, mask, logp = zip(*(grpo.sample(m, inputs, 3, 20, suppress_ids=sup, decoder=d, **case,
                                                generator=torch.Generator().manual_seed(2))
                                    for d in ("plain", "static")))
            teacher = grpo.token_logprobs(m, inputs, ids[1], mask[1], chunk_tokens=20)     # one row per chunk
        assert torch.equal(ids[0], ids[1]) and torch.equal(mask[0], mask[1]), (name, off)
        # both decoders' log-probs are the raw model's (not the tempered / top-p ones): teacher forcing's
        assert torch.allclose(logp[0], logp[1], atol=1e-5) and torch.allclose(logp[1], teacher, atol=1e-5)
        if off:                                                         # control: the adapters do change the model
            assert not torch.allclose(logp[1], logp_on, atol=1e-3), name
        logp_on = logp[1]
        if name == "eos":                       # every sequence ended before CHECK_EVERY tokens, not all at once:
            T = ids[1].shape[1]                 # the static loop ran on to step CHECK_EVERY - 1, then trimmed
            assert T < grpo.CHECK_EVERY and mask[1].all(1).sum() < len(mask[1]) and mask[1][:, -1].any()
            assert (ids[1][mask[1] == 0] == tok.pad_token_id).all()
    assert all(torch.equal(weights[k], v) for k, v in m.state_dict().items())    # bit-equal, nothing written
    assert all(mod.sampling is None for mod in qwen.lora_modules(m))               # the sampling copies are gone
    if torch.cuda.is_available():               # on a GPU, the captured graph too: plain's tokens and log-probs
        mc, inputs_c = m.to("cuda"), qwen.to_device(inputs, "cuda", torch.float32)
        for case in cases.values():
            ids, mask, logp = zip(*(grpo.sample(mc, inputs_c, 3, 20, suppress_ids=sup, decoder=d, **case,
                                                generator=torch.Generator("cuda").manual_seed(2))
                                    for d in ("plain", "graph")))
            assert torch.equal(ids[0], ids[1]) and torch.equal(mask[0], mask[1]), case
            assert torch.allclose(logp[0], logp[1], atol=1e-4)
        m = mc.to("cpu")
    # bf16 weights, with and without bf16 autocast: log-probs of its own tokens within bf16 rounding
    m16, _ = _tiny(torch.bfloat16)
    for auto in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=auto):
            ids, mask, logp = grpo.sample(m16, inputs, 3, 12, suppress_ids=sup, decoder="static",
                                          generator=torch.Generator().manual_seed(0))
            assert (logp - grpo.token_logprobs(m16, inputs, ids, mask)).abs().max() < 0.03
    # where the static decoders cannot run: auto picks plain, asking for them is an error; graph needs CUDA
    assert grpo.rollout_decoder(m) == "plain" and grpo.rollout_decoder(m, "static") == "static"
    _raises(ValueError, grpo.rollout_decoder, m, "graph", contains=("CUDA",))
    with torch.autocast("cpu", dtype=torch.bfloat16):                   # float32 weights under bf16 autocast
        _raises(ValueError, grpo.sample, m, inputs, 2, 4, decoder="static", contains=("autocast", "'plain'"))
    # pick_tokens draws what torch.multinomial draws from the same generator state
    logits, banned = torch.randn(5, 40, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 4])
    probs = logits.index_fill(1, banned, float("-inf")).softmax(-1)     # (5, 40)
    g, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(10):
        assert torch.equal(grpo.pick_tokens(logits, 1.0, 1.0, banned, g),
                           torch.multinomial(probs, 1, generator=g2)[:, 0])
    # device reads (.item(), bool(), int(), .tolist(): on a GPU each waits for the device, a CUDA graph holds none):
    # for 16 more tokens static asks "all ended?" once per CHECK_EVERY tokens (once more after token 16) and reads
    # nothing else; the plain loop reads at least once per token (its end check, transformers' mask)
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostReads(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))
    with torch.no_grad():
        for mod in qwen.lora_modules(m):
            mod.lora_B.zero_()                                           # adapters as added: the base's tokens
    reads = {}
    for decoder, n in ((d, n) for d in ("plain", "static") for n in (8, 24)):
        with HostReads() as r:
            grpo.sample(m, inputs, 2, n, temperature=0.7, top_p=0.9, eos_ids=[5], suppress_ids=sup, decoder=decoder,
                        generator=torch.Generator().manual_seed(0))
        reads[decoder, n] = r.n
    checks = 24 // grpo.CHECK_EVERY - 8 // grpo.CHECK_EVERY
    assert reads["static", 24] - reads["static", 8] == checks < 16, reads
    assert reads["plain", 24] - reads["plain", 8] >= 16, reads


def _logits(m, inputs):
    with torch.no_grad():
        return m(**inputs).logits


def test_lora_zero_init_adapters_off_grads_merge_checkpointing_and_bf16():
    m, tok, inputs, _ = _tiny_inputs()
    base = _logits(m, inputs)
    assert qwen.add_lora(m, 0) is m and not qwen.lora_modules(m)              # rank 0 = full fine-tuning
    qwen.add_lora(m, rank=4, alpha=8, dropout=0.0)
    assert len(qwen.lora_modules(m)) == 7 * m.config.text_config.num_hidden_layers
    assert torch.equal(_logits(m, inputs), base)                         # B = 0: unchanged
    with torch.no_grad():
        for mod in qwen.lora_modules(m):
            mod.lora_B.normal_(0, 0.5)
    tuned = _logits(m, inputs)
    assert not torch.allclose(tuned, base, atol=1e-4)
    with qwen.lora_disabled(m):
        assert torch.equal(_logits(m, inputs), base)                     # reference = base, exactly
    assert torch.equal(_logits(m, inputs), tuned)
    m.train()
    m(**inputs).logits.float().logsumexp(-1).mean().backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_" in n for n in with_grad)
    assert all(mod.lora_B.grad.abs().sum() > 0 for mod in qwen.lora_modules(m))
    assert set(qwen.lora_state_dict(m)) == {n for n, _ in m.named_parameters() if ".lora_" in n}
    qwen.merge_lora(m.eval())
    assert not qwen.lora_modules(m)
    assert torch.allclose(_logits(m, inputs), tuned, atol=1e-4)
    # gradient checkpointing gives the same gradients; bf16 weights give probabilities within 0.02 of float32's
    m, tok, inputs, _ = _tiny_inputs()
    ids, mask, _ = grpo.sample(m, inputs, 2, 6, generator=torch.Generator().manual_seed(0))
    grads = []
    for on in (False, True):
        qwen.set_checkpointing(m, on)
        m.train()
        m.zero_grad()
        grpo.token_logprobs(m, inputs, ids, mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4) for n in grads[0])
    qwen.set_checkpointing(m, False)
    m16, _ = _tiny(torch.bfloat16)
    assert m16.lm_head.weight.dtype == torch.bfloat16
    p32, p16 = (_logits(x.eval(), inputs).float().softmax(-1) for x in (m, m16))
    assert (p32 - p16).abs()[inputs["attention_mask"].bool()].max() < 0.02


def test_7b_shaped_config_and_memory_estimates():
    """The 7B-shaped check's config keeps the published widths at any depth and takes the tokenizer's special ids;
    the 7B estimate (8.29B parameters; full fine-tuning over 80 GB, LoRA under); estimate_memory(shards=N) splits
    weights, grads, optimizer and reference by N and adds two gathered layers."""
    tok = qwen.train_tokenizer(qwen.demo_texts())
    cfg = qwen.qwen25_vl_7b_config(2, 3, tok)
    tc, vc = cfg.text_config, cfg.vision_config
    assert (tc.hidden_size, tc.intermediate_size, tc.num_attention_heads, tc.num_key_value_heads, tc.vocab_size,
            tc.num_hidden_layers) == (3584, 18944, 28, 4, 152064, 2)
    assert (vc.hidden_size, vc.intermediate_size, vc.depth, vc.fullatt_block_indexes) == (1280, 3420, 3, [2])
    assert cfg.video_token_id == tok.convert_tokens_to_ids(qwen.VIDEO_PAD)
    assert qwen.qwen25_vl_7b_config().video_token_id == 151656
    one = qwen.estimate_memory(qwen.qwen25_vl_7b_config(), 0, 8, 1942, torch.bfloat16, 4096, 768)
    lora = qwen.estimate_memory(qwen.qwen25_vl_7b_config(), 64, 8, 1942, torch.bfloat16, 4096, 768)
    assert abs(one["params"] / 1e9 - 8.29) < 0.01                        # published size 8.29B
    assert one["total_ckpt"] > 80 > lora["total_ckpt"]
    assert lora["reference"] == 0 and one["reference"] == one["weights"]
    assert one["activations_ckpt"] < one["activations_no_ckpt"]
    four = qwen.estimate_memory(qwen.qwen25_vl_7b_config(), 0, 8, 1942, torch.bfloat16, 4096, 768, shards=4)
    for k in ("weights", "grads", "optimizer", "reference"):
        assert close(four[k], one[k] / 4, 1e-9), k
    layer = 2 * 2 * (3584 * 3584 * 2 + 3584 * 512 * 2 + 3 * 3584 * 18944) / 1024 ** 3      # q,o + k,v + MLP, bf16
    assert close(four["gathered"], layer, 1e-3) and one["gathered"] == 0
    assert close(four["total_ckpt"], one["total_ckpt"] - 0.75 * (one["weights"] + one["grads"] + one["optimizer"]
                                                                  + one["reference"]) + layer, 1e-3)


# --- eval.py: benchmark rules and metrics by hand -------------------------------------------------------------------

# one row of each benchmark's own format (VSI-Bench, STI-Bench, V-STaR, Video-R1)
_VSI_ROW = [{"id": 7, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "object_rel_distance",
             "question": "Which is closer to the sofa?", "options": ["A. chair", "B. table", "C. lamp", "D. bed"],
             "ground_truth": "C"},
            {"id": 8, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_abs_distance",
             "question": "How far is the bed from the door (m)?", "options": None, "ground_truth": "2.3"}]
_STI_ROW = {"Video": "videos/clip1.mp4", "ID": 12, "Candidates": json.dumps({"A": "1 m", "B": "2 m", "C": "3 m",
            "D": "4 m", "E": "5 m"}), "time_start": 1.5, "time_end": 4.0, "Question": "How far did the car move?",
            "Answer": "D", "Task": "Displacement & Path Length", "Scene": "outdoor"}
_VSTAR_ROW = {"vid": "abc", "domain": "sports", "fps": 30.0, "width": 640, "height": 360, "frame_count": 300,
              "question": "What is the man holding?", "answer": "a bat", "temporal_question": "When does he swing?",
              "timestamps": [2.0, 5.5], "spatial_question": "Where is the bat?",
              "bboxes": [{"timestamp": 2.0, "frame_index": 60, "xmin": 10, "ymin": 20, "xmax": 50, "ymax": 80},
                         {"timestamp": 3.0, "frame_index": 90, "xmin": 12, "ymin": 22, "xmax": 52, "ymax": 82}]}
R1 = {"problem_id": 3, "problem": "What happens first?", "data_type": "video", "problem_type": "multiple choice",
      "options": ["A. jump", "B. run", "C. sit", "D. swim"], "solution": "<answer>B</answer>",
      "path": "./VideoMME/v1.mp4", "data_source": "VideoMME"}


def test_mc_number_and_interval_rules_of_vsi_sti_videor1_and_vstar():
    # VSI-Bench: exact_match(fuzzy_matching(pred), gt), fuzzy_matching = pred.split(' ')[0].rstrip('.').strip(),
    # compared lower-cased; the split is at ' ' only
    for pred, want in (("B", 1), ("b", 1), ("b.", 1), ("B.", 1), ("B chair", 1), ("B. The chair", 1), ("B\n", 1),
                       (" B", 0), ("B\nBecause ...", 0), ("B.\n", 0), ("B.\nbecause", 0), ("(B)", 0), ("", 0),
                       ("A", 0), ("BA", 0), (None, 0)):
        assert ev.vsi_accuracy(pred, "B") == want, pred
    assert ev.vsi_first_token(" D") == "" and ev.vsi_first_token("D.\n") == "D." and ev.vsi_first_token("D..") == "D"
    # STI-Bench opensource_test.py: the first of its answer patterns found, else the stripped text; then
    # correct = out[-1] in "ABCDE" and out[-1] == gt
    for pred, want in (("B", 1), ("(B)", 1), ("(b)", 1), ("Answer: B", 1), ("answer=b", 1), ("Ans='B'", 1),
                       ("Option B", 1), ("B is correct", 1), ("The answer is B", 1), ("B.", 1), ("b.", 1),
                       ("B)\n", 1), ("I think it is B", 1), ("b", 0), ("B chair", 0), ("B.\nbecause", 1),
                       ("(A) is wrong, B is right", 0), ("", 0), (None, 0), ("A", 0)):
        assert ev.sti_accuracy(pred, "B") == want, pred
    assert ev.sti_option("Answer: B") == "B" and ev.sti_option(" b ") == "b"
    vsi, sti = {"answer_type": "mc", "answer": "B", "rule": "vsibench"}, ev.from_stibench(_STI_ROW, "/d", "w")  # gt D
    # Video-R1 eval_bench.py: first <answer> (or the whole output), exact string match for multiple choice
    r1 = ev.from_videor1(R1, "/e", "w")                                 # gt B
    assert r1["rule"] == "videor1" and r1["gt_text"] == "B"
    num, reg = (ev.from_videor1({**R1, "problem_type": kind, "solution": f"<answer>{gt}</answer>", "options": []},
                                "/e", "w") for kind, gt in (("numerical", 3.5), ("regression", 5)))
    iou = {"answer_type": "iou", "answer": [2.0, 4.0]}
    for comp, row, want in (("<think>x</think><answer>B.</answer>", vsi, 1),
                            ("<answer> B</answer>", vsi, 1),          # the tagged answer is stripped
                            ("B", vsi, 1), (" B", vsi, 0),            # no tags: the whole text, as generated
                            ("B chair", {"answer_type": "mc", "answer": "B"}, 1),        # "ours": VSI's rule
                            ("<answer>The answer is D</answer>", sti, 1), ("D chair", sti, 0),
                            ("D chair", {**sti, "rule": "vsibench"}, 1),
                            ("<answer>B</answer>", r1, 1), ("<answer> B </answer><answer>C</answer>", r1, 1),
                            ("B", r1, 1), ("<answer>b</answer>", r1, 0), ("<answer>B.</answer>", r1, 0),
                            ("<answer></answer>", r1, 0), ("<answer>C</answer><answer>B</answer>", r1, 0),
                            ("<answer>3.5</answer>", num, 1), ("<answer>3.50</answer>", num, 1),
                            ("<answer>3.504</answer>", num, 1), ("<answer>3.51</answer>", num, 0),
                            ("<answer>4</answer>", num, 0), ("<answer>3.5 m</answer>", num, 0),
                            # float32 with a strict '<': |7.5 - 5| / 5 = 0.5 < 1 - 0.5 fails (VSI's '<=': 1 of 10)
                            ("<answer>7.5</answer>", reg, 0), ("<answer>5.5</answer>", reg, 0.9),
                            ("<answer>five</answer>", reg, 0), ("<answer>[2.0, 4.0]</answer>", iou, 1),
                            ("<answer>[0, 0, 10, 10]</answer>", {**iou, "answer": [0, 0, 10, 20]}, 0.5)):
        assert close(ev.score_completion(comp, row)["score"], want), (comp, row)
    assert ev.score_completion("B", vsi)["format"] == 0.0
    s = ev.score_completion("<answer>B chair</answer>", vsi)            # the training reward is stricter
    assert s["score"] == 1.0 and s["train_reward"] == 0.0
    intgt = {**num, "gt_text": "4", "answer": 4.0}
    assert ev.r1_score("<answer>4</answer>", intgt) == 1.0 and ev.r1_score("<answer>4.0</answer>", intgt) == 0.0
    assert ev.number_mra("7.5", 5.0) == 0.1 and ev.score_completion("<answer>[2.0, 4.0]</answer>", iou)["R@0.7"] == 1
    for pred, want in (("[2.0, 3.0]", (0.5, 1, 1, 0)), ("[1, 3]", (1 / 3, 1, 0, 0)),   # overlap 1 of union 2, 1 of 3
                       ("[5, 6]", (0, 0, 0, 0)), ("soon", (0, 0, 0, 0)),
                       ("[1, 2, 3, 4]", (0, 0, 0, 0))):                                 # a box is not an interval
        m = ev.interval_metrics(pred, [2, 4])
        assert np.allclose([m["tIoU"], m["R@0.3"], m["R@0.5"], m["R@0.7"]], want), (pred, m)
    gt = [{"frame": 3, "box": [0, 0, 10, 10]}, {"frame": 6, "box": [10, 10, 20, 20]}]
    # frame 3 exact (1), frame 6 [10,10,20,30] vs [10,10,20,20]: 100 / 200 -> mean 0.75
    assert close(ev.viou("3: [0, 0, 10, 10]; 6: [10, 10, 20, 30]", gt), 0.75)
    assert close(ev.viou("3: [0, 0, 10, 10]", gt), 0.5)                 # frame 6 not predicted -> 0
    assert close(ev.viou("3: [0,0,10,10]\n6: [10,10,20,20]\n9: [0,0,1,1]", gt), 1.0)  # extra frames ignored
    assert close(ev.viou("[0, 0, 10, 10]", gt), 0.5)                    # a bare box is used for every frame
    assert ev.viou("nothing", gt) == 0.0 and ev.viou("3: [0, 0, 10]", gt) == 0.0
    assert ev.parse_frame_boxes("3: [1, 2, 3, 4]; 3: [5, 6, 7, 8]") == {3: [1.0, 2.0, 3.0, 4.0]}  # first wins


def test_bootstrap_summary_table_and_report_by_hand():
    rng = np.random.default_rng(1)
    x = rng.random(50)
    lo, hi = ev.bootstrap_mean_ci(x, seed=3)
    assert lo < x.mean() < hi and hi - lo < 0.4
    assert (lo, hi) == ev.bootstrap_mean_ci(x, seed=3) != ev.bootstrap_mean_ci(x, seed=4)   # a function of the seed
    assert ev.bootstrap_mean_ci([0.7] * 9) == (0.7, 0.7)                # no spread, no interval
    lo, hi = ev.bootstrap_task_mean_ci({"a": x[:20], "b": x[20:]}, seed=3)
    assert lo < ev.unweighted_task_mean({"a": x[:20].mean(), "b": x[20:].mean()}) < hi
    # task a: 4 questions all right, task b: 1 question wrong
    rows = [{"task": "a", "answer_type": "mc"}] * 4 + [{"task": "b", "answer_type": "num"}]
    scored = [{"score": 1.0, "format": 1.0}] * 4 + [{"score": 0.0, "format": 0.0}]
    s = ev.summarize(rows, scored, n_boot=100)
    assert close(s["overall_task"]["mean"], 0.5) and close(s["overall_q"]["mean"], 0.8)   # VSI (1 + 0) / 2, STI 4 / 5
    assert s["tasks"]["a"]["n"] == 4 and close(s["answer_types"]["num"]["mean"], 0.0)
    assert close(s["metrics"]["format"]["mean"], 0.8)
    # VSI-Bench averages rel_direction easy/medium/hard into one task first: (mean(1, 0) + 1) / 2
    assert close(ev.unweighted_task_mean({"dir_easy": 1.0, "dir_hard": 0.0, "count": 1.0}), 0.75)
    table = ev.markdown_table({"m1": s, "m2": s})
    assert "| overall: unweighted task mean (VSI) | 5 | 50.0 [" in table and "\n|---|---|---|---|\n" in table
    with tempfile.TemporaryDirectory() as d:
        ev.report({"x": s, "y": s}, {"data": "f"}, d, dumps=[{"id": 1}])
        assert json.load(open(os.path.join(d, "results.json")))["models"]["x"]["overall_task"]["mean"] == 0.5
        assert os.path.getsize(os.path.join(d, "results.png")) > 1000
        assert os.path.isfile(os.path.join(d, "dump.jsonl"))
    assert ev.model_names(["runs/a/final", "runs/b/final", "c/big/"]) == ["a/final", "b/final", "big"]
    assert ev.model_names(["x/tiny", "x/tiny"]) == ["tiny#1", "tiny#2"]


# --- eval.py: adapters, loading, a whole evaluation, the rotation stress test (no model) ----------------------------

def _has(row, **want):
    """row holds every key of want with that value."""
    assert {k: row.get(k) for k in want} == want, ({k: row.get(k) for k in want}, want)


def test_adapters_format_detection_and_load_benchmark_bad_rows_named_or_skipped():
    a, b = (ev.from_vsibench(r, "/videos", f"f row {k}") for k, r in enumerate(_VSI_ROW))
    _has(a, video="/videos/scannet/scene0011_00.mp4", answer_type="mc", answer="C", task="object_rel_distance",
         options=["chair", "table", "lamp", "bed"], id="vsi-7", time_window=None, rule="vsibench")
    _has(b, video="/videos/arkitscenes/41069025.mp4", answer_type="num", answer=2.3, options=None, rule="vsibench")
    _has(ev.from_stibench(_STI_ROW, "/data", "f row 0"), video="/data/videos/clip1.mp4", time_window=[1.5, 4.0],
         options=["1 m", "2 m", "3 m", "4 m", "5 m"], answer="D", answer_type="mc", id="sti-12", rule="stibench",
         task="Displacement & Path Length")
    row = {**_STI_ROW, "Candidates": {"A": "x", "B": "y"}, "Answer": "b"}
    assert ev.from_stibench(row, "/d", "w")["answer"] == "B"
    when, where = ev.from_vstar(_VSTAR_ROW, "/v", "f row 5")
    _has(when, video="/v/abc.mp4", answer=[2.0, 5.5], answer_type="iou", task="when", rule="vstar")
    _has(where, video="/v/abc.mp4", answer_type="boxes", task="where", rule="vstar",
         answer=[{"frame": 60, "box": [10, 20, 50, 80]}, {"frame": 90, "box": [12, 22, 52, 82]}])
    assert "60, 90" in where["question"] and "FRAME: [x1, y1, x2, y2]" in where["question"]
    assert len(ev.from_vstar({**_VSTAR_ROW, "bboxes": []}, "/v", "w")) == 1   # no boxes -> only the when row
    assert ev.score_completion("<answer>60: [10, 20, 50, 80]</answer>", where)["score"] == 0.5
    assert ev.prompt_row(where)["answer_type"] == "iou"                 # asked as a box question
    _has(ev.from_videor1(R1, "/e", "f row 0"), video="/e/VideoMME/v1.mp4", answer="B", task="VideoMME",
         options=["jump", "run", "sit", "swim"])
    _has(ev.from_videor1({**R1, "problem_type": "regression", "solution": "<answer>3.5</answer>", "options": []},
                         "/e", "w"), answer_type="num", answer=3.5, rule="videor1", problem_type="regression",
         gt_text="3.5")
    ours = {"id": "x", "video": "v.mp4", "question": "q", "options": None, "answer": 1.0, "answer_type": "num"}
    assert [ev.detect_format(r) for r in (_VSI_ROW[0], _STI_ROW, _VSTAR_ROW, R1, ours)] == [
        "vsibench", "stibench", "vstar", "videor1", "ours"]
    _raises(data.BadRow, ev.detect_format, {"foo": 1}, "file.json row 0", contains=("file.json row 0", "foo"))
    with tempfile.TemporaryDirectory() as d:
        bad = {**_VSI_ROW[0], "ground_truth": "F"}                           # 4 options: F is not a letter of them
        no_field = {k: v for k, v in _VSI_ROW[1].items() if k != "question"}
        path = _file(os.path.join(d, "vsi.jsonl"), _lines(_VSI_ROW[0], bad, no_field, _VSI_ROW[1], "{broken"))
        _raises(data.BadRow, ev.load_benchmark, path, contains=("vsi.jsonl row 1", "ground_truth", "--skip_bad"))
        rows, fmt, skipped = ev.load_benchmark(path, skip_bad=True)
        assert fmt == "vsibench" and len(rows) == 2 and skipped == 3
        assert rows[0]["video"] == os.path.join(d, "scannet", "scene0011_00.mp4")   # root = the file's folder
        _raises(data.BadRow, ev.from_vsibench, no_field, "/r", "vsi.jsonl row 2", contains=("row 2", "'question'"))
        # a JSON list (video_root given) and JSONL with a blank line; parquet without pandas is named
        j = _file(os.path.join(d, "sti.json"), json.dumps([_STI_ROW, {**_STI_ROW, "ID": 13}]))
        rows, fmt, _ = ev.load_benchmark(j, video_root="/videos")
        assert fmt == "stibench" and [r["id"] for r in rows] == ["sti-12", "sti-13"]
        assert rows[0]["video"] == "/videos/videos/clip1.mp4"
        rows, fmt, _ = ev.load_benchmark(_file(os.path.join(d, "vstar.jsonl"),
                                               _lines(_VSTAR_ROW, "", {**_VSTAR_ROW, "bboxes": None})))
        assert fmt == "vstar" and [r["task"] for r in rows] == ["when", "where", "when"]
        try:
            import pandas  # noqa: F401
        except ImportError:
            _raises(data.BadRow, ev.load_benchmark, _file(os.path.join(d, "qa.parquet"), b"PAR1"),
                    contains=("pandas",))


def test_eval_end_to_end_two_columns_bad_rows_and_videos_skipped_or_named():
    with tempfile.TemporaryDirectory() as d:
        _stamped_video(os.path.join(d, "VideoMME", "v1.mp4"), 4, fps=4)
        path = _file(os.path.join(d, "r1.json"), json.dumps([R1, {**R1, "problem_id": 4,
                                                                    "path": "./VideoMME/missing.mp4"}]))
        rows, fmt, _ = ev.load_benchmark(path)
        _raises(data.BadRow, ev.rows_with_videos, rows, skip_bad=False, contains=("missing.mp4",))
        kept, n_missing = ev.rows_with_videos(rows, skip_bad=True)
        assert len(kept) == 1 and n_missing == 1
        frames, times = data.row_clip(kept[0], 2)[:2]                   # a data.Clip: frames, times, ...
        assert frames.shape[0] == 2 and frames.shape[-1] == 3 and len(times) == 2
    with tempfile.TemporaryDirectory() as d:
        _truncated_copy(_stamped_video(os.path.join(d, "videos", "clip1.mp4"), 8, fps=4),
                        os.path.join(d, "videos", "broken.mp4"))
        _file(os.path.join(d, "videos", "text.mp4"), "text")
        row = {**_STI_ROW, "time_start": 0.0, "time_end": 1.5}
        rows = [{k: v for k, v in row.items() if k != "Candidates"},                   # bad first row
                {**row, "ID": 1}, {**row, "ID": 2, "Video": "videos/broken.mp4"},
                {**row, "ID": 3, "Video": "videos/text.mp4"}, {**row, "ID": 4, "Question": "which? " * 3000},
                {**row, "ID": 5}, {**row, "ID": 6}]
        qa, out = _file(os.path.join(d, "qa.json"), json.dumps(rows)), os.path.join(d, "out")
        args = ["--model", _tiny_dir(), "--model", _tiny_dir(), "--data", qa, "--frames", "4", "--max_new_tokens",
                "4", "--batch", "2", "--dump", "2", "--n_boot", "20", "--max_prompt_tokens", "600", "--threads", "1",
                "--out", out]
        _raises(data.BadRow, ev.main, args, contains=("first row", "cannot detect the format"))
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings(record=True):
            _raises(data.BadRow, ev.main, args + ["--format", "stibench"], contains=("row 0", "Candidates"))
            ev.main(args + ["--skip_bad"])
        res = json.load(open(os.path.join(out, "results.json")))
        assert list(res["models"]) == ["tiny#1", "tiny#2"] and res["format"] == "stibench" and res["rows"] == 3
        assert res["skipped_bad"] == 1 and res["skipped_no_video"] == 1 and res["skipped_unreadable"] == 2
        # same weights, greedy decoding: identical scores in both columns
        assert res["models"]["tiny#1"]["overall_q"] == res["models"]["tiny#2"]["overall_q"]
        dumps = [json.loads(line) for line in open(os.path.join(out, "dump.jsonl"))]
        assert len(dumps) == 4 and {"completion", "score", "format"} <= set(dumps[0])
        said = " ".join(res["skipped_rows"])
        assert "qa.json row 2" in said and "zero frames" in said and "qa.json row 4" in said and "600" in said
        args[args.index(qa)] = _file(os.path.join(d, "qa2.json"), json.dumps(rows[1:3]))   # without --skip_bad:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings(record=True):   # the row is named
            e = _raises(data.BadRow, ev.main, args)
        assert "qa2.json row 1" in str(e) and "zero frames" in str(e) and "--skip_bad" in str(e)


def test_offset_pose_rotated_scene_and_roll_keep_edges_and_move_coordinates():
    R0, c0 = np.eye(3), np.array([0.0, 0.0, 1.6])
    pts = np.array([[1.0, 5.0, 0.5], [-1.0, 6.0, 0.4], [0.5, 3.0, 0.6]])       # world (N, 3)
    for axis in ("yaw", "roll", "orbit"):
        R, c = data.offset_pose(R0, c0, {"axis": axis, "deg": 40.0, "pivot": [0.0, 5.0, 0.0]})
        assert np.allclose(R @ R.T, np.eye(3)) and close(np.linalg.det(R), 1.0, 1e-9)
        x0, x1 = (pts - c0) @ R0.T, (pts - c) @ R.T                            # camera frames
        (d0, a0), (d1, a1) = graph.edge_features(x0), graph.edge_features(x1)
        assert np.allclose(d0, d1)                                             # distances: always kept
        assert np.abs(x1 - x0).max() > 0.5                                     # coordinates move
        assert axis == "orbit" or np.allclose(a0, a1, atol=1e-4)               # Theorem 1: about C, angles kept
    assert np.allclose(data.offset_pose(R0, c0, {"axis": "roll", "deg": 0.0})[0], R0)
    scene = {**data.make_scene(np.random.default_rng([0, 3])), "id": 3}
    with tempfile.TemporaryDirectory() as d:
        by_angle = {a: ev.rotated_rows(scene, "roll", a, 0, os.path.join(d, str(a))) for a in (0.0, 90.0)}
        by_angle = ev.common_questions(by_angle)
        r0, r90 = by_angle[0.0], by_angle[90.0]
        assert len(r0) == len(r90) >= 2 and [r["question"] for r in r0] == [r["question"] for r in r90]
        change = ev.coordinate_change(r0, r90)
        assert change["coord_change_m"] > 0.5                                  # camera-frame centres move
        assert change["edge_d_change_m"] < 0.1 and change["edge_a_change_deg"] < 2.0   # edges: rounding only
        assert r90[0]["visible"] == 1.0 and data.read_frames(r90[0]["video"], 2)[0].shape[0] == 2
        # a model's results at 90 degrees: question 0 scored 1.0 -> 0.5 (edge 0.8 -> 0.2), the rest not asked there
        s0, s90 = [{"score": 1.0, "edge": 0.8}] * len(r0), [{"score": 0.5, "edge": 0.2}] + [None] * (len(r0) - 1)
        res = ev.angle_result(s90, s0, r90, r0, "edge", n_boot=20)
        assert res["rows"] == res["answer_change"]["n"] == 1 and res["edge_key"] == "edge"
        assert close(res["answer_change"]["mean"], -0.5) and close(res["edge_change"]["mean"], -0.6)
        assert close(res["summary"]["metrics"]["edge"]["mean"], 0.2)
        assert res["coord_change_m"] == change["coord_change_m"]
    assert ev.scene_ids([{"id": "synth-000012-01"}, {"id": "synth-000003-00"}, {"id": "synth-000012-02"}]) == [3, 12]
    # a camera rolled about its optical axis sees the same picture turned (square clip): sky, ground, grid,
    # objects, highlights and the bonnet included, pixel for pixel
    for seed in (3, 5):
        scene = data.make_scene(np.random.default_rng([0, seed]))
        clip = data.render_clip(scene)                                   # (F, H, W, 3)
        for deg, k in ((90.0, 1), (-90.0, -1), (180.0, 2)):
            turned = data.render_clip(ev.with_offset(scene, "roll", deg))
            assert np.array_equal(turned, np.rot90(clip, k, axes=(1, 2))), (seed, deg)


# --- train.py: the whole loop ---------------------------------------------------------------------------------------

def _weights(path, name="model.safetensors"):
    from safetensors.torch import load_file
    return load_file(os.path.join(path, name))


def _varied_reward(completion, n_tokens, sample, *args, **kwargs):
    """A stand-in reward with variance inside every group (a few random steps never earn the real one)."""
    r = len(completion) / 10.0
    return r, {"format": 0.0, "answer": r, "graph": 0.0, "length": 0.0, "graph_node": 0.0, "graph_edge": 0.0}


def _varied():
    """rewards.total_reward (train's) replaced by _varied_reward inside the block."""
    return mock.patch.object(rewards, "total_reward", _varied_reward)


def _train(argv, stand_in=_varied):
    """train.main(argv), quiet, with a stand-in (the varied reward) in place; returns what it printed."""
    out = io.StringIO()
    with stand_in(), contextlib.redirect_stdout(out), warnings.catch_warnings(record=True):
        train.main(argv)
    return out.getvalue()


@functools.lru_cache(maxsize=None)
def _run_base():
    """(folder, data, model): a 10-scene set and the tiny model built from it, shared by the training tests."""
    d = _tmp()
    cfg = train.Config(data=os.path.join(d, "data"), model=os.path.join(d, "tiny"), data_scenes=10,
                       vision_steps=1)                                  # a run that builds the random tiny model
    with contextlib.redirect_stdout(io.StringIO()):
        train.ensure_data(cfg)
        train.ensure_model(cfg, data.load_rows(os.path.join(cfg.data, "train.jsonl")))
    return d, cfg.data, cfg.model


def _smoke_args(name, **changes):
    """The tiny end-to-end run: phase 0, warm-up, GRPO, a checkpoint every step, evaluations at 2 and each end."""
    base, data_dir, model_dir = _run_base()
    flags = {"out": base, "data": data_dir, "model": model_dir, "name": name, "sft_steps": 3, "grpo_steps": 2,
             "sft_batch": 2, "batch": 2, "micro_batch": 1, "G": 2, "max_new_tokens": 12, "eval_every": 2,
             "eval_n": 2, "test_n": 2, "ckpt_every": 1, "keep_ckpts": 10, "sft_lr": 3e-3, "lr": 1e-3,
             "vision_steps": 3, "vision_batch": 2, "threads": 1, "sample_every": 1, "data_scenes": 10, **changes}
    return [a for k, v in flags.items() for a in (f"--{k}", str(v))]


@functools.lru_cache(maxsize=None)
def _reference_run():
    """An uninterrupted tiny run (the varied stand-in reward): what interrupted runs must end with."""
    _train(_smoke_args("reference"))
    return os.path.join(_run_base()[0], "reference")


def _steps(run, phase, name="metrics.jsonl"):
    return [r["step"] for r in data.read_jsonl(os.path.join(run, name)) if r.get("phase", phase) == phase]


def _interrupted_copy(src, dst, drop):
    """A copy of run src as a kill would have left it: without the folders and files that drop(name) picks."""
    shutil.copytree(src, dst, ignore=lambda folder, names: [n for n in names if folder == src and drop(n)])
    return dst


def _ends_like(run, ref, why):
    """run ended with ref's final weights, and logged each step and its samples once, as ref did."""
    wa, wb = _weights(os.path.join(ref, "final")), _weights(os.path.join(run, "final"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa), why
    assert [_steps(run, p) for p in ("sft", "grpo", "eval")] == [_steps(ref, p) for p in ("sft", "grpo", "eval")], why
    assert _steps(run, None, "samples.jsonl") == _steps(ref, None, "samples.jsonl"), why


def test_train_loop_smoke_checkpoint_and_exact_resume():
    """A few warm-up and GRPO steps end to end, then a resume from a mid-GRPO checkpoint ends the same."""
    run = _reference_run()
    base, _, model_dir = _run_base()
    recs = data.read_jsonl(os.path.join(run, "metrics.jsonl"))
    assert (_steps(run, "sft"), _steps(run, "grpo"), _steps(run, "eval")) == ([1, 2, 3], [4, 5], [2, 3, 4, 5])
    assert _steps(run, None, "samples.jsonl") == [4] * 4 + [5] * 4
    # the paired training answer at GRPO step 1 (paired_every 5): pi_ref is still the policy, the noise is shared
    assert [r.get("paired_answer") for r in recs if r["phase"] == "grpo"] == [[0.0, 0.0], None]
    assert all(math.isfinite(r["loss"]) for r in recs if r["phase"] == "sft")
    assert all(math.isfinite(r["kl"]) and math.isfinite(r["reward"]) for r in recs if r["phase"] == "grpo")
    init, warm, final = (_weights(p) for p in (model_dir, os.path.join(run, "warmup"), os.path.join(run, "final")))
    assert any(not torch.equal(init[k], warm[k]) for k in init)          # the warm-up moved the policy
    assert any(not torch.equal(warm[k], final[k]) for k in warm)         # so did GRPO
    assert sorted(d for d in os.listdir(run) if d.startswith("ckpt-"))[-1] == "ckpt-0000005"
    assert all(os.path.exists(os.path.join(run, f)) for f in ("config.json", "curves.png", "vision")), os.listdir(run)
    table = open(os.path.join(run, "results.md")).read()
    assert ("| held-out metric | blind | wrong video | blank clip | after warm-up | after GRPO | "
            "after GRPO - after warm-up | after GRPO - blind |") in table
    tasks = {r["task"] for r in json.load(open(os.path.join(run, "test_after_GRPO.json")))}   # the questions scored
    assert {line.split(" |")[0] for line in table.splitlines() if line.startswith("| answer: ")} == {
        f"| answer: {t}" for t in tasks}
    # an interrupted copy: only the checkpoints up to GRPO step 1 survive, no final export
    copy = _interrupted_copy(run, os.path.join(base, "smoke_resumed"),
                             lambda d: d in ("final", "ckpt-0000005") or d.startswith("test_"))
    _train(["--out", base, "--name", "smoke_resumed", "--resume"])
    _ends_like(copy, run, "resumed")


def test_wrong_videos_derangement_and_comparison_table_by_hand():
    rows = [{"video": f"v{k % 7}.mp4"} for k in range(20)]                  # 7 scenes, several questions each
    swap = train.wrong_videos(rows, seed=0)
    videos = sorted({r["video"] for r in rows})
    assert sorted(swap) == videos and sorted(swap.values()) == videos     # a permutation of the scenes
    assert all(swap[v] != v for v in videos)                              # no question keeps its own video
    assert swap == train.wrong_videos(list(reversed(rows)), seed=0)       # fixed: a function of the set and seed
    assert swap != train.wrong_videos(rows, seed=1) and train.wrong_videos([{"video": "a"}], seed=0) == {}
    res = lambda answers, kind="num": [{"answer": a, "answer_type": kind, "graph": 0.5, "graph_node": 0.2,
                                        "graph_edge": 0.3, "format": 1.0} for a in answers]
    blind = [{"answer": a, "answer_type": "num"} for a in (0.5, 0.5, 0.5, 0.5)]     # no graph, no format
    columns = {"blind": blind, "wrong video": res([0.0, 0.5, 0.0, 0.5]), "after warm-up": res([0.5, 0.5, 1.0, 0.0]),
               "after GRPO": res([1.0, 0.5, 1.0, 0.5])}
    table, stats = train.comparison_table(columns, [("after GRPO", "after warm-up"), ("after GRPO", "blind")])
    assert stats["after GRPO"]["answer"][0] == 0.75 and stats["wrong video"]["answer"][0] == 0.25
    assert stats["after GRPO - after warm-up"]["answer"][0] == 0.25       # paired: (0.5 + 0 + 0 + 0.5) / 4
    assert stats["after GRPO - blind"]["answer"][0] == 0.25
    assert stats["blind"]["graph"] is None and stats["after GRPO - blind"]["graph"] is None
    assert stats["after GRPO"]["answer_mc"] is None and stats["after GRPO"]["answer_num"][0] == 0.75
    lo, hi = stats["after GRPO - after warm-up"]["answer"][1:]
    assert 0.0 <= lo <= 0.25 <= hi <= 0.5                                 # bootstrap interval of 4 paired values
    assert table.splitlines()[0] == ("| held-out metric | blind | wrong video | after warm-up | after GRPO | "
                                     "after GRPO - after warm-up | after GRPO - blind |")
    assert "| graph | - | 0.500 [0.500, 0.500] |" in table and "+0.250 [" in table


def test_base_preset_writes_its_card_and_grpo_starts_from_it():
    """--preset base (phase 0 + warm-up) writes CARD.md (sha256, controls, scaling lines); GRPO from it says base."""
    base, data_dir, _ = _run_base()
    flags = ["--out", base, "--data", data_dir, "--threads", "1", "--vision_steps", "2", "--vision_batch", "2",
             "--sft_steps", "4", "--sft_batch", "2", "--eval_every", "2", "--eval_n", "2", "--test_n", "2",
             "--max_new_tokens", "12", "--data_scenes", "10", "--scene_seed", "0", "--roll_share", "0",
             "--layout", "plain", "--tiny_width", "64"]
    _train(flags + ["--preset", "base", "--name", "base_card", "--model", os.path.join(base, "base_init")],
           contextlib.nullcontext)
    folder = os.path.join(base, "base_card", "warmup")
    card = open(os.path.join(folder, "CARD.md")).read()
    assert train.card_sha256(folder) == train.sha256(os.path.join(folder, "model.safetensors"))
    assert "| held-out metric | blind | wrong video | blank clip | after warm-up | after warm-up - blind |" in card
    assert len(re.findall(r"^\| [24] \| ", card, re.M)) == 2                  # scaling lines at warm-up steps 2, 4
    assert "scenes default_rng([0, i]) for i < 10 " in card        # the data's dataset.json (ensure_data checked it)
    assert "width 64; reasoning layout plain; rolled cameras in 0% of the scenes" in card
    _train(_smoke_args("from_base", model=folder, vision_steps=0, sft_steps=0, grpo_steps=1), _stand_ins)
    table = open(os.path.join(base, "from_base", "results.md")).read()
    assert ("| blind | wrong video | blank clip | base | after GRPO | after GRPO - base | after GRPO - blind |"
            in table)


def test_variants_ask_write_reward_and_a_coords_run_warms_up_on_its_reasoning():
    """Each --variant: what the prompt asks, what the reference reasoning keeps, and R_graph (R_n, R_e measured)."""
    # one mc row whose ground truth a reasoning can write exactly: d = 5.0 m and a = 45 deg between the centres
    g = graph.Graph(31, [graph.Node("red cube", (0.0, 0.0, 5.0)), graph.Node("blue ball", (5.0, 0.0, 5.0))])
    row = {"id": "synth-000001-00", "video": "v.mp4", "question": "Which object is farther right?",
           "options": ["red cube", "blue ball"], "answer": "B", "answer_type": "mc", "task": "relative_direction",
           "graphs": [g.to_dict()], "reasoning": data.reasoning_text([g], "The blue ball is right.", "B")}
    want = {"graph": ("d=DIST", "| red cube-blue ball d=5.0 a=45 </graph>", 2.0, 1.0, 1.0),
            "coords": ("(x,y,z)", "<graph t=31> red cube (0.0,0.0,5.0); blue ball (5.0,0.0,5.0) </graph>", 2.0, 1.0,
                       0.0),
            "none": ("Think in <think> </think>. ", "<think>The blue ball is right. </think>", 0.0, 0.0, 0.0),
            "answer_only": ("d=DIST", "| red cube-blue ball d=5.0 a=45 </graph>", 0.0, 1.0, 1.0)}
    assert set(want) == set(rewards.VARIANTS)
    for variant, (asked, written, r_graph, r_n, r_e) in want.items():
        asked_row = data.with_think(row, rewards.VARIANTS[variant][0])
        prompt = qwen.build_prompt(asked_row)
        assert asked in prompt, (variant, prompt)
        assert ("<graph" in prompt) == (variant != "none")
        assert ("d=DIST" in prompt) == (variant in ("graph", "answer_only"))
        assert written in asked_row["reasoning"] and asked_row["reasoning"].endswith("<answer>B</answer>"), variant
        total, parts = rewards.total_reward(asked_row["reasoning"], 400, asked_row, variant=variant)
        got = (parts["graph"], parts["graph_node"], parts["graph_edge"])
        assert np.allclose(got, (r_graph, r_n, r_e), atol=1e-9), (variant, parts)
        assert close(total, 1.0 + 1.0 + r_graph + rewards.LEN_BONUS, 1e-9)   # format + answer + graph term + length
    assert qwen.build_prompt(data.with_think(row, "graph")) == qwen.build_prompt({**row, "think": None})  # default
    _raises(ValueError, qwen.build_prompt, {**row, "think": "edges"}, contains=("think='edges'",))
    # R_e of the edges a nodes-only reasoning implies: centres exact -> 1, while its written edges earn 0
    nodes_only = data.with_think(row, "nodes")["reasoning"]
    assert ev.score_completion(nodes_only, row)["edge"] == 0.0
    assert ev.score_completion(nodes_only, row)["edge_from_centres"] == 1.0
    # --variant coords: node-only warm-up targets, coords models, test records with ids; a bad --variant refused.
    targets, real, run = [], train.completion_tensors, os.path.join(_run_base()[0], "coords")
    spy = lambda tok, texts, device: targets.extend(texts) or real(tok, texts, device)
    with mock.patch.object(train, "completion_tensors", spy):
        _train(_smoke_args("coords", variant="coords", vision_steps=0, sft_steps=1, grpo_steps=1), _stand_ins)
    assert targets and all("<graph t=" in t and "|" not in t and " d=" not in t for t in targets), targets
    for folder in ("warmup", "final"):                             # eval.py asks as they were trained
        assert ev.model_variant(qwen.load(os.path.join(run, folder), device="cpu")[0]) == "coords"
    records = json.load(open(os.path.join(run, "test_after_GRPO.json")))
    assert all(r["id"].startswith("synth-") for r in records)
    assert "--variant must be one of graph, none, coords, answer_only" in _arg_error(["--variant", "edges"])


def _arg_error(argv):
    """The message train.parse_config exits with (argparse prints usage, then 'error: MESSAGE', to stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        _raises(SystemExit, train.parse_config, argv)
    return err.getvalue().split("error: ", 1)[-1]


def test_ablation_table_pools_seeds_and_pairs_questions_by_hand():
    """eval.py ablation: family means over both seeds, paired differences against graph; bad runs refused."""
    def fake_run(folder, variant, seed, answers, ids=True, w_length=1.0):   # config.json, per-question records
        tasks = ["object_count", "displacement", "when_moving", "closest_object"]
        _file(os.path.join(folder, "config.json"), json.dumps({"variant": variant, "seed": seed,
                                                               "w_length": w_length}))
        _file(os.path.join(folder, "test_after_GRPO.json"), json.dumps([
            {"task": tasks[k], "answer": a, "graph_node": 0.5, "graph_edge": 0.25, **({"id": f"q{k}"} if ids else {})}
            for k, a in enumerate(answers)]))
        return folder
    with tempfile.TemporaryDirectory() as d:
        runs = [fake_run(os.path.join(d, "g0"), "graph", 0, [1.0, 0.5, 0.5, 1.0]),
                fake_run(os.path.join(d, "g1"), "graph", 1, [1.0, 0.0, 0.5, 0.0]),
                fake_run(os.path.join(d, "n0"), "none", 0, [0.0, 0.5, 0.5, 1.0]),
                fake_run(os.path.join(d, "n1"), "none", 1, [1.0, 0.5, 0.0, 0.0]),
                fake_run(os.path.join(d, "l0"), "graph", 0, [1.0, 0.5, 0.5, 0.0], w_length=0.0)]   # R_l off
        out = os.path.join(d, "out")
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            ev.main(["ablation"] + sum((["--run", r] for r in runs), []) + ["--out", out, "--n_boot", "200"])
        res = json.load(open(os.path.join(out, "ablation.json")))
        g, n, diff = res["answer"]["graph"], res["answer"]["none"], res["minus_graph"]["none"]
        assert g["static spatial"][0] == 0.75 and g["static spatial"][3] == 4     # (1 + 1 + 1 + 0) / 4
        assert g["motion"][0] == 0.25 and g["temporal"][0] == 0.5 and g["overall"][0] == 0.5625
        assert n["static spatial"][0] == 0.5 and n["overall"][0] == 0.4375
        assert diff["static spatial"][0] == -0.25 and diff["motion"][0] == 0.25 and diff["temporal"][0] == -0.25
        assert diff["overall"][0] == -0.125 and diff["overall"][3] == 8
        assert "| none - graph (paired) |" in printed.getvalue() and os.path.isfile(os.path.join(out, "ablation.png"))
        assert res["seeds"] == {"graph": [0, 1], "graph w/o R_l": [0], "none": [0, 1]}
        assert list(res["answer"])[1] == "graph w/o R_l"                             # after graph, in VARIANTS order
        assert res["minus_graph"]["graph w/o R_l"]["overall"][0] == -0.25                # (0 + 0 + 0 - 1) / 4
        _raises(data.BadRow, ev.main, ["ablation", "--run", runs[0], "--run", runs[0], "--out", out],
                contains=("variant graph with seed 0",))
        no_ids = fake_run(os.path.join(d, "x"), "coords", 0, [1.0], ids=False)
        _raises(data.BadRow, ev.main, ["ablation", "--run", no_ids, "--out", out], contains=("without ids",))


def test_generalization_sft_arm_sees_the_grpo_rows_and_the_table_pairs_questions_by_hand():
    """The toy Table 1: an SFT run with --sft_grpo_rows draws exactly the rows (and order) of a GRPO run of its seed;
    eval.py generalization asks both arms and the base on two sets (one at other frames), and GRPO - SFT is the
    mean of the per-question differences; a bad --set and an unfinished run are refused, naming them."""
    drawn = []

    def recorded(n_rows, step, batch, seed):
        drawn.append((step, batch, seed))
        return real(n_rows, step, batch, seed)
    real, base, test_rows = train.batch_indices, _reference_run(), os.path.join(_run_base()[1], "test.jsonl")
    with mock.patch.object(train, "batch_indices", recorded):
        _train(_smoke_args("sft_arm", grpo_steps=0, sft_steps=2, vision_steps=0, model=os.path.join(base, "final"))
               + ["--sft_grpo_rows"])
    sft = os.path.join(_run_base()[0], "sft_arm")
    assert [(k, s) for k, b, s in drawn if b == 2] == [(0, 1), (1, 1)]            # run_grpo's seed + 1, steps 0, 1
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out")
        with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(io.StringIO()):
            ev.main(["generalization", "--run", base, "--run", sft, "--set", f"in={test_rows}", "--set",
                     f"few frames={test_rows}@4", "--base", _run_base()[2], "--limit", "3", "--max_new_tokens",
                     "12", "--out", out, "--n_boot", "50", "--device", "cpu"])
        res = json.load(open(os.path.join(out, "generalization.json")))
        assert res["seeds"] == {"GRPO": [0], "SFT": [0], "base": [0]} and list(res["sets"]) == ["in", "few frames"]
        assert [st["frames"] for st in res["sets"].values()] == [data.TRAIN_FRAMES, 4]
        for st in res["sets"].values():
            per = st["per_question"]
            assert set(per) == {"base", "SFT", "GRPO"} and len(per["GRPO"]) == 3
            by_hand = np.mean([per["GRPO"][k] - per["SFT"][k] for k in per["GRPO"]])
            assert abs(st["grpo_minus_sft"]["GRPO"]["overall"][0] - by_hand) < 1e-12
            assert abs(st["minus_base"]["SFT"]["overall"][0] - np.mean([per["SFT"][k] - per["base"][k]
                                                                        for k in per["SFT"]])) < 1e-12
        assert printed.getvalue().count("| GRPO - SFT (paired) |") == 2 and "| SFT - base (paired) |" in \
            printed.getvalue() and os.path.isfile(os.path.join(out, "generalization.png"))
        _raises(data.BadRow, ev.main, ["generalization", "--run", sft, "--set", "nonsense"], contains=("--set",))
        shutil.copytree(sft, os.path.join(d, "half"), ignore=lambda f, names: ["warmup"])
        _raises(data.BadRow, ev.main, ["generalization", "--run", os.path.join(d, "half"), "--set",
                                       f"in={test_rows}"], contains=("has not finished", "half"))


def test_shipped_base_matches_its_card_answers_and_evaluates_under_rotation_beside_a_coords_copy():
    """tiny_base/ has its CARD.md's sha256 and writes graphs in <think>, then an answer; eval.py rotation of it and
    of a coords copy: a table each, their variants and angles saved, the plot."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_base")
    assert train.card_sha256(folder) == train.sha256(os.path.join(folder, "model.safetensors"))
    mdl, tok = qwen.load(folder, dtype=torch.float32, device="cpu")
    cfg, test_rows = train.Config(threads=1), os.path.join(_run_base()[1], "test.jsonl")
    rows = data.load_rows(test_rows)[:2]
    texts, _ = ev.greedy_batch(mdl, tok, rows, [train.clip_of(cfg, r) for r in rows],
                               cfg.max_new_tokens, cfg.min_pixels, cfg.max_pixels)
    assert all(rewards.format_reward(t) == 1.0 and "<graph" in t and rewards.extract_answer(t) for t in texts), texts
    with tempfile.TemporaryDirectory() as d:
        coords = os.path.join(d, "coords")
        config = os.path.join(shutil.copytree(folder, coords), "config.json")
        _file(config, json.dumps({**json.load(open(config)), "video_str_variant": "coords"}))
        graph2 = shutil.copytree(folder, os.path.join(d, "graph2"))     # a second graph model: pooled with the first
        with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(io.StringIO()):
            ev.main(["rotation", "--model", folder, "--model", coords, "--model", graph2, "--data", test_rows,
                     "--scenes", "1", "--angles", "0", "90", "--axis", "roll", "--max_new_tokens", "40",
                     "--frames", "4", "--out", os.path.join(d, "out"), "--n_boot", "50", "--device", "cpu"])
        res = json.load(open(os.path.join(d, "out", "rotation.json")))
        assert {n: m["variant"] for n, m in res["models"].items()} == {"tiny_base": "graph", "coords": "coords",
                                                                      "graph2": "graph"}
        assert all(set(m["angles"]) == {"0", "90"} for m in res["models"].values())
        assert res["models"]["coords"]["angles"]["0"]["edge_key"] == "edge_from_centres"
        pooled, one = res["pooled"]["graph"], res["models"]["tiny_base"]["angles"]["90"]
        assert list(res["pooled"]) == ["graph"] and pooled["models"] == ["tiny_base", "graph2"]
        assert pooled["angles"]["90"]["rows"] == 2 * one["rows"]
        assert pooled["angles"]["0"]["answer_change"]["mean"] == 0
        assert close(pooled["angles"]["90"]["summary"]["overall_q"]["mean"], one["summary"]["overall_q"]["mean"])
        assert printed.getvalue().count("| angle | answer score |") == 4
        assert "graph (2 models pooled)" in printed.getvalue()
        assert os.path.isfile(os.path.join(d, "out", "rotation.png"))


# --- train.py: interruptions, bad data, ranks -----------------------------------------------------------------------

class _Killed(BaseException):
    """Raised where a test kills a run: nothing after that instant runs, as after kill -9."""


def _kill(obj, name, when, half=None):
    """obj.name patched: the first call for which when(n, *args) holds (n counts the calls) raises _Killed instead
    of running, after half(*args) has left what a kill -9 half-way through would (half a file)."""
    real, calls = getattr(obj, name), [0]

    def fn(*args, **kwargs):
        calls[0] += 1
        if when(calls[0], *args):
            if half:
                half(*args)
            raise _Killed(f"{name} call {calls[0]}")
        return real(*args, **kwargs)
    return mock.patch.object(obj, name, fn)


def test_kills_at_any_instant_then_resume_ends_as_the_uninterrupted_run():
    """One run killed in a checkpoint write, half-way through a metrics line, at a random rename, half-way through
    the final test file, then given an empty test file (as an old version left it), each time resumed by --resume
    alone; then a real kill -9 at a random instant after the warm-up: both end as the uninterrupted run did."""
    name, k = "killed", int(np.random.default_rng().integers(1, 14))      # the third run renames 13 times
    ref, base = _reference_run(), _run_base()[0]
    run, resume = os.path.join(base, name), ["--out", base, "--name", name, "--resume"]
    half_line = lambda run_dir, record, _: _file(os.path.join(run_dir, "metrics.jsonl"), json.dumps(record)[:20], "a")
    half_file = lambda path, content: _file(f"{path}.tmp{os.getpid()}", content[: len(content) // 2])
    kills = [(_smoke_args(name, keep_ckpts=2), _kill(torch, "save", lambda n, *a: n == 2)),  # ckpt-2 half written
             (resume, _kill(train, "log", lambda n, *a: n == 2, half_line)),   # step 2's held-out line, after ckpt-2
             (resume, _kill(os, "replace", lambda n, *a: n == k)),
             (resume, _kill(data, "write_file", lambda n, path, _: path.endswith("test_after_GRPO.json"), half_file)),
             (resume, contextlib.nullcontext())]
    out, killed = io.StringIO(), []
    with _varied(), warnings.catch_warnings(record=True), contextlib.redirect_stdout(out):
        for n, (args, kill) in enumerate(kills):
            if n == len(kills) - 1 and os.path.exists(os.path.join(run, "test_after_warmup.json")):
                _file(os.path.join(run, "test_after_warmup.json"))                     # empty, as issue (L) #3
            try:
                with kill:
                    train.main(args)
            except _Killed:
                killed.append(n)
    assert killed[:2] == [0, 1] and n not in killed, (killed, f"rename {k}")
    _ends_like(run, ref, f"rename {k}")
    losses = [[r["loss"] for r in data.read_jsonl(os.path.join(p, "metrics.jsonl")) if r["phase"] == "sft"]
              for p in (ref, run)]
    assert np.allclose(*losses, atol=1e-6), (losses, f"rename {k}")
    json.load(open(os.path.join(run, "test_after_warmup.json")))                # re-evaluated, not left empty
    assert os.path.isfile(os.path.join(run, "results.md")) and "done:" in out.getvalue()
    assert not [f for f in os.listdir(run) if ".tmp" in f or f.startswith(".")], os.listdir(run)
    assert len([d for d in os.listdir(run) if d.startswith("ckpt-")]) == 2
    name, delay = "kill9", float(np.random.default_rng().uniform(0.0, 2.5))   # seconds after warmup/ appears
    code = ("import sys, test_all, train; train.rewards.total_reward = test_all._varied_reward; "
            "train.main(sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", code, *_smoke_args(name)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=os.path.dirname(os.path.abspath(__file__)))
    try:
        while not os.path.isdir(os.path.join(base, name, "warmup")) and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(delay)
    finally:
        proc.kill()
        proc.wait()
    _train(["--out", base, "--name", name, "--resume"])
    _ends_like(os.path.join(base, name), ref, f"killed {delay:.2f} s in")


def test_write_file_atomic_when_the_disk_fills_and_logs_read_tolerantly_and_trimmed():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.json")
        train.write_json(path, {"lr": 1})

        def full_disk(fd):
            raise OSError(28, "No space left on device")
        with mock.patch.object(os, "fsync", full_disk):
            _raises(OSError, train.write_json, path, {"lr": 2}, contains=("No space",))
            _raises(OSError, data.write_file, os.path.join(d, "new.md"), "text")
        assert json.load(open(path)) == {"lr": 1} and os.listdir(d) == ["config.json"]   # old file, no temp file
        data.write_file(os.path.join(d, "b.png"), b"\x89PNG")
        assert open(os.path.join(d, "b.png"), "rb").read() == b"\x89PNG"
    with tempfile.TemporaryDirectory() as run:
        lines = [{"phase": "vision", "step": 3}] + [{"phase": "sft", "step": s, "loss": 1.0} for s in range(1, 6)]
        _file(os.path.join(run, "metrics.jsonl"), _lines(*lines, "{broken", {"phase": "eval", "step": 4})
              + '{"phase": "sft", "st')                                  # line 9 cut off
        _file(os.path.join(run, "samples.jsonl"), _lines(*({"step": s, "completion": "x"} for s in (4, 4, 5, 5, 6))))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            recs = data.read_jsonl(os.path.join(run, "metrics.jsonl"))
        assert [r["step"] for r in recs] == [3, 1, 2, 3, 4, 5, 4]
        said = " ".join(str(w.message) for w in caught)
        assert "metrics.jsonl:7" in said and "metrics.jsonl:9" in said and "cut off" in said
        with warnings.catch_warnings(record=True):
            train.drop_metrics_after(run, 4)                   # resume from ckpt-4; phase 0 unfinished (no vision/)
        assert [(r["phase"], r["step"]) for r in data.read_jsonl(os.path.join(run, "metrics.jsonl"))] == [
            ("sft", 1), ("sft", 2), ("sft", 3), ("sft", 4), ("eval", 4)]
        assert _steps(run, None, "samples.jsonl") == [4, 4]
        assert train.eval_logged(run, 4) and not train.eval_logged(run, 2)
        assert data.read_jsonl(os.path.join(run, "missing.jsonl")) == []


def test_every_flag_has_help_one_pixel_budget_and_resume_flags_allowed_or_refused():
    with tempfile.TemporaryDirectory() as out:
        for f in train.CKPT_FILES:
            _file(os.path.join(out, "r", "ckpt-0000004", f))
        train.write_json(os.path.join(out, "r", "config.json"), dataclasses.asdict(train.Config(
            name="r", out=out, sft_steps=3, grpo_steps=5, lr=2e-4)))
        resume = ["--out", out, "--name", "r", "--resume"]
        cfg = train.parse_config(resume + ["--lr", "1e-5", "--grpo_steps", "12", "--threads", "1"])
        assert (cfg.lr, cfg.grpo_steps, cfg.threads, cfg.sft_steps, cfg.resume) == (1e-5, 12, 1, 3, True)
        msg = _arg_error(resume + ["--lora_rank", "8", "--lr", "1e-5"])
        assert "--lora_rank (saved 0, given 8)" in msg and "cannot change" in msg and "--lr" not in msg.split(
            "cannot change")[0]                                   # --lr may change: it is not among the refused
        assert "--grpo_steps 0 would end before it" in _arg_error(resume + ["--grpo_steps", "0"])
        assert "--sft_steps can change only" in _arg_error(resume + ["--sft_steps", "5"])   # step 4: past the warm-up
        assert "there is no run" in _arg_error(["--out", out, "--name", "nope", "--resume"])
        assert "at least 1" in _arg_error(["--out", out, "--name", "x", "--eval_every", "0"])
        assert train.parse_config(resume + ["--preset", "tiny"]).grpo_steps == 5          # unchanged: fine
    assert (ev.TINY_PIXELS == qwen.TINY_MIN_PIXELS == qwen.TINY_MAX_PIXELS == train.Config.min_pixels
            == train.Config.max_pixels)
    assert ev.cli().parse_args(["--model", "m", "--data", "d"]).threads == train.Config.threads       # one default
    helps = train.field_help()
    assert set(helps) == {f.name for f in dataclasses.fields(train.Config)}
    assert all(helps.values()), [k for k, v in helps.items() if not v]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        train.parse_config(["--help"])
    assert "--len_bonus" in out.getvalue() and "default 0.2" in out.getvalue()


def test_second_process_refused_killed_holder_does_not_block_and_more_ranks_than_gpus_stop():
    with tempfile.TemporaryDirectory() as out:
        run = os.path.join(out, "r")
        os.makedirs(run)
        with train.run_lock(run):
            e = _raises(SystemExit, train.main, ["--out", out, "--name", "r", "--threads", "1"],
                        contains=("in use by process",))
            assert str(os.getpid()) in str(e)
        holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); "
                                   "fcntl.flock(f, fcntl.LOCK_EX); f.truncate(0); f.write(str(os.getpid())); "
                                   "f.flush(); print('locked', flush=True); time.sleep(120)",
                                   os.path.join(run, "run.lock")], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            _raises(SystemExit, train.run_lock, run, contains=(str(holder.pid),))
        finally:
            holder.kill()                                            # kill -9: the lock file stays behind
            holder.wait()
        with train.run_lock(run):                                    # ... and does not block the next run
            assert open(os.path.join(run, "run.lock")).read().strip() == str(os.getpid())
    # 3 ranks on a (patched) 2-GPU machine stop before touching CUDA, saying what to do; on 2, rank 1 gets cuda:1.
    calls = []
    env = {**os.environ, "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "3", "RANK": "1", "LOCAL_RANK": "1"}
    with mock.patch.object(torch.cuda, "device_count", lambda: 2), \
            mock.patch.object(torch.cuda, "set_device", calls.append), \
            mock.patch.object(torch.distributed, "init_process_group", calls.append), \
            mock.patch.object(os, "environ", env):
        e = _raises(SystemExit, train.dist_setup, torch.device("cuda"),
                    contains=("3 ranks", "2 GPU(s)", "--nproc_per_node 2", "--device cpu"))
        assert "\n" not in str(e) and calls == []
        os.environ.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        assert train.dist_setup(torch.device("cuda")) == torch.device("cuda", 1)
    assert calls == [torch.device("cuda", 1), "nccl"]


def test_nonfinite_update_refused_never_saved_and_the_run_stops_with_a_resume_command_that_works():
    lin = torch.nn.Linear(3, 2)
    before = lin.weight.detach().clone()
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2)
    out = lin(torch.ones(4, 3)).sum()
    (out + 0.0 * torch.sqrt(out - out.detach())).backward()              # finite loss, nan gradient (0 * inf)
    _raises(train.NonFinite, train.clipped_update, opt, list(lin.parameters()), 1.0,
            contains=("gradient norm is nan", "not applied"))
    assert torch.equal(lin.weight, before)                                # the update was not applied
    opt = torch.optim.SGD(lin.parameters(), lr=1e38)                    # finite gradients, an overflowing step
    for p in lin.parameters():
        p.grad = torch.full_like(p, 100.0)
    _raises(train.NonFinite, train.clipped_update, opt, list(lin.parameters()), 1e300,
            contains=("weights non-finite", "nothing saved"))
    with tempfile.TemporaryDirectory() as run:
        _raises(train.NonFinite, train.save_checkpoint, run, 7, lin, opt, 2, contains=("not written",))
        _raises(train.NonFinite, train.export, lin, None, os.path.join(run, "final"), contains=("not written",))
        assert os.listdir(run) == []
    # a nan gradient at warm-up step 2: the run stops before that update, names the step and the command to resume
    # with a lower --sft_lr; the kept checkpoint and every export are finite; that command finishes the run
    real, calls = grpo.token_logprobs, [0]

    def nan_gradient(*a, **kw):
        calls[0] += 1
        logp = real(*a, **kw)
        return logp + 0.0 * torch.sqrt(logp - logp.detach()) if calls[0] == 2 else logp
    with mock.patch.object(grpo, "token_logprobs", nan_gradient), contextlib.redirect_stdout(io.StringIO()):
        e = _raises(SystemExit, train.main, _smoke_args("nan", vision_steps=0, grpo_steps=1, eval_every=10,
                                                        keep_ckpts=1))
    run = os.path.join(_run_base()[0], "nan")
    assert "sft step 2" in str(e) and "gradient norm is nan" in str(e) and "ckpt-0000001" in str(e)
    command = str(e).split("Resume with a lower learning rate: ", 1)[1]
    assert command.startswith("python train.py ") and "--resume --sft_lr 0.0003" in command
    assert sorted(d for d in os.listdir(run) if d.startswith("ckpt-")) == ["ckpt-0000001"]
    assert not os.path.exists(os.path.join(run, "warmup")) and _steps(run, "sft") == [1]
    ckpt = _weights(os.path.join(run, "ckpt-0000001"), "trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in ckpt.values())
    _train(command.split()[2:])                                   # exactly the printed command, without the code
    assert json.load(open(os.path.join(run, "config.json")))["sft_lr"] == 3e-4 and _steps(run, "sft") == [1, 2, 3]
    assert all(torch.isfinite(t).all() for f in ("warmup", "final") for t in _weights(os.path.join(run, f)).values())


def _truncated_copy(src, dst):
    """An mp4 cut just after its index and the start of its media data: it opens and states its duration (the
    cheap checks pass) but no frame decodes (read_clip raises VideoError)."""
    raw = open(src, "rb").read()
    start = raw.find(b"mdat") - 4
    assert start > 0
    return _file(dst, raw[: start + 24])


def test_bad_rows_and_videos_are_skipped_counted_and_the_run_goes_on():
    """Bad training rows (missing / text / empty video, window outside it, damaged inside, prompt too long, not
    JSON) are skipped and counted by FILE:LINE in every phase and evaluation; the run finishes."""
    base, data_dir, _ = _run_base()
    folder, v = os.path.join(base, "bad_rows"), os.path.join(base, "bad_rows", "v")
    good = data.load_rows(os.path.join(data_dir, "train.jsonl"))[:3]
    good = [{k: x for k, x in r.items() if k != "file_line"} for r in good]
    broken = _truncated_copy(good[0]["video"], os.path.join(v, "broken.mp4"))
    bad = [{**good[0], "video": os.path.join(v, "missing.mp4")},
           {**good[0], "video": _file(os.path.join(v, "text.mp4"), "not a video\n")},
           {**good[0], "video": _file(os.path.join(v, "empty.mp4"))},
           {**good[1], "time_window": [100.0, 200.0]},
           {**good[2], "question": "how far is it? " * 2000},
           {**good[0], "video": broken}]
    _file(os.path.join(folder, "train.jsonl"), _lines(*good, *bad[:3], "{not json", *bad[3:]))
    for split in ("val", "test"):                               # the damaged video reaches the evaluations too
        _file(os.path.join(folder, f"{split}.jsonl"), _lines(*good[:2], bad[-1]))
    said = _train(_smoke_args("bad_data", data=folder, vision_steps=2, grpo_steps=2, ckpt_every=5, eval_every=5,
                              eval_n=3, test_n=3, max_prompt_tokens=400))
    run = os.path.join(base, "bad_data")
    assert os.path.isdir(os.path.join(run, "final")) and os.path.isfile(os.path.join(run, "results.md"))
    skipped = json.load(open(os.path.join(run, "skipped.json")))
    train_file = os.path.join(folder, "train.jsonl")
    want = {4: "no such file", 5: "not a readable video", 6: "empty file", 7: "not valid JSON",
            8: "outside the video", 9: "exceeds --max_prompt_tokens 400"}
    for line, why in want.items():
        assert why in skipped["train rows"][f"{train_file}:{line}"], (line, skipped["train rows"])
    assert len(skipped["train rows"]) == 6 and "train rows: skipped 6 row(s)" in said
    # line 10: damaged inside, found at a step
    assert all("zero frames" in skipped[w][f"{train_file}:10"] for w in ("warm-up steps", "GRPO steps")), skipped
    assert "zero frames" in skipped["phase 0 steps"][broken]               # phase 0 learns per video
    recs = data.read_jsonl(os.path.join(run, "metrics.jsonl"))
    assert _steps(run, "sft") == [1, 2, 3] and sum(r.get("skipped", 0) for r in recs if r["phase"] != "eval") >= 2
    assert [r["n"] for r in recs if r["phase"] == "eval"] == [2, 2]                  # 3 val rows, 1 unreadable
    assert len(json.load(open(os.path.join(run, "test_after_GRPO.json")))) == 2


def _prompt_sampler(model, prompt_inputs, G, max_new_tokens, *_, eos_ids=(), suppress_ids=(), **__):
    """grpo.sample's stand-in whose completions depend on the prompt's tokens only (not on the model or a shared
    random stream): one process and two ranks draw the same. Returns ids, mask, logp zeros, all (N, T)."""
    ids_in, attn = prompt_inputs["input_ids"], prompt_inputs["attention_mask"]          # (B, P)
    banned = set(eos_ids) | set(suppress_ids)
    allowed = torch.tensor([i for i in range(model.config.text_config.vocab_size) if i not in banned])
    steps, ids, masks = torch.arange(max_new_tokens), [], []
    for prompt in (row[a.bool()].tolist() for row, a in zip(ids_in, attn)):
        g = torch.Generator().manual_seed(sum((i + 1) * t for i, t in enumerate(prompt)) % 2 ** 31)
        for _ in range(G):
            n = int(torch.randint(1, max_new_tokens + 1, (1,), generator=g))
            seq = allowed[torch.randint(len(allowed), (max_new_tokens,), generator=g)]            # (T,)
            if n < max_new_tokens and eos_ids:
                seq[n - 1] = eos_ids[0]
            ids.append(seq.masked_fill(steps >= n, eos_ids[0] if eos_ids else 0))
            masks.append((steps < n).long())
    ids, masks = torch.stack(ids), torch.stack(masks)                                     # (N, T)
    return ids.to(ids_in.device), masks.to(ids_in.device), torch.zeros(ids.shape, device=ids_in.device)


@contextlib.contextmanager
def _stand_ins():
    """_varied_reward and _prompt_sampler in place of the real reward and sampler, inside the block."""
    with _varied(), mock.patch.object(grpo, "sample", _prompt_sampler):
        yield


def _ddp_rank(rank, world, ports, argvs):
    """One rank of a CPU (gloo) process group, as torchrun would start it (torch.multiprocessing.spawn target): it
    runs train.main(argv) for each argv in turn, each run in a process group of its own (on its own port)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    for port, argv in zip(ports, argvs):
        os.environ["MASTER_PORT"] = str(port)
        with _stand_ins():
            train.main(argv)


def test_two_ranks_equal_one_process_write_once_and_resume():
    """Two gloo ranks of batch 1 (replicated, and FSDP2) end with one batch-2 process's weights; only rank 0 writes;
    a two-rank FSDP2 resume ends where the uninterrupted run did; a one-process resume of it is refused by name."""
    def spawn_ranks(*argvs, world=2):
        import socket
        import torch.multiprocessing as mp
        socks = [socket.socket() for _ in argvs]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        ports = [sock.getsockname()[1] for sock in socks]
        for sock in socks:
            sock.close()
        mp.spawn(_ddp_rank, args=(world, ports, argvs), nprocs=world, join=True)
    with tempfile.TemporaryDirectory() as tmp:
        def args(name, per_rank, *more):                  # gloo ranks (--device cpu), also where CUDA is visible
            return _smoke_args(name, out=tmp, sft_steps=2, vision_steps=2, device="cpu", batch=per_rank,
                               sft_batch=per_rank, vision_batch=per_rank) + list(more)
        _train(args("one", 2), _stand_ins)
        spawn_ranks(args("two", 1), args("fsdp", 1, "--fsdp"))
        one, two, fsdp = (_weights(os.path.join(tmp, n, "final")) for n in ("one", "two", "fsdp"))
        for name, other in (("two ranks", two), ("two FSDP2 ranks", fsdp)):       # phase 0's vision tower included
            worst = max(float((one[k] - other[k]).abs().max()) for k in one)
            # float order only: AdamW's normalised step turns summation-order noise in phase 0's near-zero gradients
            # into up to ~1e-5 (8.1e-6 on the 2-core machine, 9.8e-7 on an H200)
            assert worst < 3e-5, f"{name} differ from one process by {worst}"
            print(f"{name}: largest weight difference from one process {worst:.1e}")
        warm = _weights(os.path.join(tmp, "one", "warmup"))
        assert any(not torch.equal(one[k], warm[k]) for k in one)                         # GRPO moved the weights
        run = os.path.join(tmp, "two")
        assert _steps(run, "sft") == [1, 2] and _steps(run, "grpo") == [3, 4] and _steps(run, "eval") == [2, 4]
        sft = [[r for r in data.read_jsonl(os.path.join(tmp, n, "metrics.jsonl")) if r["phase"] == "sft"]
               for n in ("two", "one")]
        for a, b in zip(*sft):
            assert a["tokens"] == b["tokens"] and abs(a["loss"] - b["loss"]) < 1e-4, (a, b)   # global numbers
        assert sorted(d for d in os.listdir(run) if d.startswith("ckpt-")) == [f"ckpt-{s:07d}" for s in (1, 2, 3, 4)]
        assert not [d for d in os.listdir(run) if "tmp" in d]
        state = torch.load(os.path.join(run, "ckpt-0000004", "state.pt"), weights_only=True)
        assert len(state["rank_rng"]) == 2
        assert _steps(run, None, "samples.jsonl") == [3] * 4 + [4] * 4       # written once: both ranks' completions
        assert all(os.path.exists(os.path.join(run, f)) for f in ("config.json", "results.md", "results.json",
                                                                  "curves.png", "vision", "warmup")), os.listdir(run)
        # interrupted after GRPO step 1: resume on two ranks, and a one-process resume is refused
        for name, source in (("resumed", "fsdp"), ("refused", "two")):
            _interrupted_copy(os.path.join(tmp, source), os.path.join(tmp, name), lambda d: d in (
                "final", "ckpt-0000004") or d.startswith("test_") or d.startswith("results"))
        spawn_ranks(["--out", tmp, "--name", "resumed", "--resume"])
        resumed = _weights(os.path.join(tmp, "resumed", "final"))
        assert all(torch.allclose(fsdp[k], resumed[k], atol=1e-6) for k in fsdp)
        with _stand_ins():
            _raises(SystemExit, train.main, ["--out", tmp, "--name", "refused", "--resume"],
                    contains=("made by 2 rank(s)", "torchrun --nproc_per_node 2"))


# --- command lines: every entry point, the data set, the docs' commands -------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))


def _cli(mod, argv):
    """mod.main(argv) in-process: (exit code, stdout, stderr); code 0 when it returns."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            mod.main(argv)
            code = 0
        except SystemExit as e:                 # sys.exit("message"): Python prints it to stderr, exit code 1
            code, _ = (1, err.write(e.code + "\n")) if isinstance(e.code, str) else (e.code, None)
    return code, out.getvalue(), err.getvalue()


def _entry_points():
    """{file: module} of every runnable file but test_all.py."""
    return {"data.py": data, "eval.py": ev, "graph.py": graph, "grpo.py": grpo, "model.py": qwen,
            "rewards.py": rewards, "train.py": train}


@functools.lru_cache(maxsize=None)
def _help(file, command=None):
    """(the flags `python FILE [COMMAND] --help` lists, FILE's commands); None when argparse refuses COMMAND."""
    code, out, _ = _cli(_entry_points()[file], [command, "--help"] if command else ["--help"])
    found = re.search(r"\{([\w,]+)\} \.\.\.", out) if not command else None     # argparse's "{cmd1,cmd2} ..."
    options = " ".join(re.findall(r"^  (-.*?)(?:  |$)", out, re.M))        # "  --flag VALUE  help" lines
    commands = set(found.group(1).split(",")) if found else set()
    return None if code else (set(re.findall(r"--[\w-]+", options)), commands)


def test_every_entry_point_refuses_unknown_arguments_and_help_only_helps():
    """A bad argument exits non-zero naming it (and the valid choices where there are some), --help prints the usage
    and exits 0; neither writes a file. In-process through main(argv) for every case, then three real processes."""
    bad = [("model.py", ["shape7b"], ["shape7b"]), ("train.py", ["--bogus"], ["--bogus", "--help"]),
           ("eval.py", ["--bogus"], ["--bogus", "--model"]),
           ("eval.py", ["--model", "m"], ["needs --model and --data"]),
           ("eval.py", ["rotation", "--bogus"], ["--bogus", "--angles"]), ("eval.py", ["ablation"], ["needs --run"]),
           ("eval.py", ["generalization", "--run", "r"], ["needs --run and --set"]),
           ("data.py", ["frobnicate"], ["frobnicate", "'make', 'bench'"]), ("data.py", ["make", "--bogus"],
           ["--bogus", "--max-objects"]), ("data.py", ["bench", "x"], ["x"]), ("graph.py", ["a", "b"], ["a b"]),
           ("grpo.py", ["nonsense"], ["nonsense", "'bench', 'bench_rollout'"]),
           ("grpo.py", ["bench_rollout", "--bogus"], ["--bogus", "--decoders"]),
           ("rewards.py", ["--bogus"], ["--bogus"])]
    helps = [(f, [c] if c else []) for f in _entry_points() for c in [None, *_help(f)[1]]]
    assert len(helps) == 18, helps                        # 7 files, data.py's 5, eval.py's 4 and grpo.py's 2 commands
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for file, argv, said in bad:
                code, out, err = _cli(_entry_points()[file], argv)
                assert code not in (0, None) and f"usage: python {file}" in err and not out, (file, argv, code, err)
                assert all(s in err for s in said), (file, argv, err)
            for file, argv in helps:
                code, out, err = _cli(_entry_points()[file], argv + ["--help"])
                assert code == 0 and out.startswith(f"usage: python {file}") and not err, (file, argv, code, err)
            assert {"demo", "rotation", "ablation", "generalization"} <= set(_cli(ev, ["--help"])[1].split())
            assert _cli(train, ["--help"])[1].count("\n  --") == len(dataclasses.fields(train.Config))   # one a field
            runs = {argv: subprocess.Popen([sys.executable, os.path.join(HERE, argv[0]), *argv[1:]],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for argv in (("model.py", "shape7b"), ("eval.py", "--bogus"), ("data.py", "make", "--help"))}
            done = {argv: (p.wait(timeout=120), *p.communicate()) for argv, p in runs.items()}
            assert os.listdir(tmp) == [], os.listdir(tmp)                 # nothing written: no shape7b/, no data/
        finally:
            os.chdir(cwd)
    for argv, (code, out, err) in done.items():
        assert (code == 0) == ("--help" in argv) and argv[-1] in (out if code == 0 else err), (argv, code, out, err)
    assert "--max-objects" in done["data.py", "make", "--help"][1]


def test_a_data_set_is_whole_or_absent_and_train_refuses_an_unfinished_or_another_one():
    """`data.py make` killed mid-render leaves no set under the name (only .tmp-NAME, without dataset.json);
    train.ensure_data refuses a folder make began but did not finish, and a set of other scenes or seed, naming the
    folder and the command that remakes it; a user's folder without make's files is used as it is."""
    _, made, _ = _run_base()                                                  # 10 scenes of seed 0
    assert json.load(open(os.path.join(made, "dataset.json")))["scenes"] == 10
    with tempfile.TemporaryDirectory() as tmp:
        out, part = os.path.join(tmp, "synth"), os.path.join(tmp, ".tmp-synth")
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "data.py"), "make", "--out", out, "--n", "400"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.time() + 60
            while time.time() < deadline and not (os.path.exists(os.path.join(part, "scenes.jsonl")) and
                                                  os.path.getsize(os.path.join(part, "scenes.jsonl"))):
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, 9)                                          # the renderer and its workers
            proc.wait()
        assert os.listdir(tmp) == [".tmp-synth"] and "dataset.json" not in os.listdir(part), os.listdir(tmp)
        assert os.path.getsize(os.path.join(part, "scenes.jsonl")) > 0           # it was killed mid-render
        old = shutil.copytree(part, os.path.join(tmp, "old"))     # what an interrupted make left before this change
        _raises(SystemExit, train.ensure_data, train.Config(data=old), contains=(
            old, "unfinished", f"python data.py make --out {old} --n {data.SCENES} --seed 0"))
        for changes, said in (({}, "holds 10 scenes of seed 0"), ({"data_scenes": 10, "seed": 1}, "10 of seed 1"),
                              ({"data_scenes": 10, "roll_share": 0.5}, "rolled share 0.5")):
            _raises(SystemExit, train.ensure_data, train.Config(data=made, **changes), contains=(made, said))
        assert train.ensure_data(train.Config(data=made, data_scenes=10)) is None                  # the same set
        user = os.path.join(tmp, "user")                    # a user's rows: no scenes.jsonl, no dataset.json
        shutil.copytree(made, user, ignore=lambda d, names: [n for n in names if n != "train.jsonl"])
        assert train.ensure_data(train.Config(data=user)) is None                                  # used as it is
        code, _, err = _cli(data, ["make", "--out", user])                      # make replaces only a set of its own
        assert code and "holds no data set" in err and os.listdir(user) == ["train.jsonl"], err


def test_rolled_scenes_leave_level_ones_unchanged_keep_objects_in_view_and_are_recorded():
    """make_dataset(roll_share=0.5): the level scenes are those of roll_share=0 (the roll has its own random stream),
    the rolled ones carry a roll offset within +-MAX_ROLL and keep every object inside the turned frame (scene_ok);
    dataset.json records the share."""
    with tempfile.TemporaryDirectory() as tmp:
        for share in (0.0, 0.5):
            data.make_dataset(os.path.join(tmp, str(share)), 8, seed=4, sheet=False, log=None, workers=1,
                              roll_share=share)
        level, mixed = (data.read_jsonl(os.path.join(tmp, str(share), "scenes.jsonl")) for share in (0.0, 0.5))
        rolled = [s for s in mixed if s["camera"].get("offset")]
        assert 0 < len(rolled) < 8 and json.load(open(os.path.join(tmp, "0.5", "dataset.json")))["roll_share"] == 0.5
        assert [s for s in mixed if s not in rolled] == [s for s in level if s["id"] not in {r["id"] for r in rolled}]
        for s in rolled:
            assert s["camera"]["offset"]["axis"] == "roll" and 0 < abs(s["camera"]["offset"]["deg"]) <= data.MAX_ROLL
            assert data.scene_ok(s)
        ood = os.path.join(tmp, "ood")                      # out of distribution: 4-5 objects, rolled 50-90 degrees
        code, _, err = _cli(data, ["make", "--out", ood, "--n", "3", "--seed", "4", "--min-objects", "4",
                                   "--max-objects", "5", "--roll-share", "1", "--min-roll", "50", "--max-roll", "90"])
        made = data.read_jsonl(os.path.join(ood, "scenes.jsonl"))
        assert not code and all(4 <= len(s["objects"]) <= 5 and 50 <= abs(s["camera"]["offset"]["deg"]) <= 90
                                for s in made), (err, made)
        assert {k: json.load(open(os.path.join(ood, "dataset.json")))[k] for k in ("objects", "min_roll")} == {
            "objects": [4, 5], "min_roll": 50.0}
        u = np.random.default_rng(3).uniform(-45.0, 45.0)                     # -37.29: moved to -(30 + 37.29 / 3)
        assert data.roll_between(np.random.default_rng(3), 0.0, 45.0) == u                 # lo = 0: the old draw
        assert abs(data.roll_between(np.random.default_rng(3), 30.0, 45.0) + 30.0 + abs(u) / 3.0) < 1e-12 and u < 0


def test_warmup_answer_weights_and_a_wider_tiny_model():
    """train.answer_weights puts --sft_answer_weight on the tokens after the last </graph> (by hand); --tiny_width
    builds a language model of that width (heads of 16)."""
    _, tok = qwen.load(os.path.join(HERE, "tiny_base"), dtype=torch.float32, device="cpu")
    texts = ["<think><graph t=3> red cube (1.0,0.2,3.0) </graph> The red cube. </think><answer>A</answer>",
             "<think>no graph</think><answer>B</answer>"]
    ids, mask = train.completion_tensors(tok, texts, "cpu")
    after = tok.convert_ids_to_tokens(ids[0]).index("ĠThe")      # the first token after </graph>
    weights = train.answer_weights(tok, texts, mask, 5.0)
    assert weights[0, :after].tolist() == [1.0] * after and set(weights[0, after:].tolist()) == {5.0}
    assert torch.equal(weights[1], mask[1]) and train.answer_weights(tok, texts, mask, 1.0) is mask
    with tempfile.TemporaryDirectory() as d:
        cfg = train.Config(model=os.path.join(d, "m"), tiny_width=128, vision_steps=1)
        with contextlib.redirect_stdout(io.StringIO()):
            train.ensure_model(cfg, data.load_rows(os.path.join(_run_base()[1], "train.jsonl")))
        text = json.load(open(os.path.join(d, "m", "config.json")))["text_config"]
        assert (text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"]) == (128, 8, 4)


def test_answer_follows_its_own_graph_and_its_sentence_by_hand():
    """eval.follows on hand-made rows: the answer the completion's own graph implies (the asked pair's written d,
    the smallest written d, the signs of x and z between written centres) and the option its sentence names; never
    raises; every reference reasoning follows itself."""
    assert ev.names_in("Is the car 10 left of the car 1?", ["car 1", "car 10", "van"]) == ["car 10", "car 1"]
    g = {"frame": 31, "nodes": [{"category": "red cube", "center": [-2.0, -0.2, 5.3]},
                                {"category": "green ball", "center": [-0.6, 0.2, 4.2]},
                                {"category": "blue cone", "center": [0.3, -0.3, 5.5]}]}
    think = ("<think><graph t=31> red cube (-2.0,-0.2,5.3); green ball (-0.6,0.2,4.2); blue cone (0.3,-0.3,5.5) | "
             "red cube-green ball d=1.9 a=14; red cube-blue cone d=2.5 a=24; green ball-blue cone d=1.6 a=13 "
             "</graph> ")
    dist = {"task": "abs_distance", "answer_type": "num", "answer": 2.3, "graphs": [g], "options": None,
            "question": "What is the distance between the blue cone and the red cube, in metres?"}
    assert ev.follows(think + "2.5 m apart. </think><answer>2.5</answer>", dist) == {"follows_graph": 1.0}  # own d
    assert ev.follows(think + "1.6 m apart. </think><answer>1.6</answer>", dist) == {"follows_graph": 0.0}  # last d
    assert ev.follows("<think>no graph</think><answer>2.5</answer>", dist) == {"follows_graph": 0.0}
    options = ["blue cone", "yellow cube", "green ball", "red ball"]
    closest = {"task": "closest_object", "answer_type": "mc", "answer": "C", "graphs": [g], "options": options,
               "question": "Which object is closest to the red cube?", "reasoning": "The green ball is closest."}
    for sentence, letter, expect in (("The green ball is closest.", "C", (1.0, 1.0)),     # 1.9 < 2.5: green ball
                                     ("The blue cone is closest.", "A", (0.0, 1.0)),      # follows its sentence only
                                     ("The green ball is closest.", "A", (0.0, 0.0)),
                                     ("Closest: nothing.", "C", (1.0, 0.0))):             # names no option
        got = ev.follows(f"{think}{sentence} </think><answer>{letter}</answer>", closest)
        assert (got["follows_graph"], got["follows_sentence"]) == expect, (sentence, letter, got)
    rel = {"task": "relative_direction", "answer_type": "mc", "answer": "B", "graphs": [g],
           "options": ["left and nearer", "right and farther", "left and farther", "right and nearer"],
           "question": "Where is the blue cone relative to the red cube?", "reasoning": "It is right and farther."}
    # blue cone - red cube: x 0.3 - (-2.0) > 0 (right), z 5.5 - 5.3 > 0 (farther): option B
    assert ev.follows(think + "It is right and farther. </think><answer>B</answer>", rel) == {
        "follows_graph": 1.0, "follows_sentence": 1.0}
    restated = data.reasoning_text([], "The green ball is closest.", "C", layout="options", options=options)
    assert restated == ("<think> The green ball is closest. The options: blue cone (A); yellow cube (B); green ball "
                        "(C); red ball (D). The answer is green ball (C). </think><answer>C</answer>")
    assert data.reasoning_text([], "They appear at 0.5 s.", "A", layout="options", options=options) == \
        "<think> They appear at 0.5 s. </think><answer>A</answer>"                 # names no option: plain
    wrong_end = restated.replace("is green ball (C). </think><answer>C", "is blue cone (A). </think><answer>A")
    for text, expect in ((restated, 1.0), (wrong_end, 0.0)):             # the sentence decides, not the restatement
        assert ev.follows(think + text.replace("<think> ", ""), closest)["follows_sentence"] == expect
    for junk in (None, 7, "", "<graph t=31> | - d=x </graph><answer>", "<answer>" * 50, think * 3):
        assert set(ev.follows(junk, rel).values()) <= {0.0}, junk
    scenes = [{**data.make_scene(np.random.default_rng([9, i])), "id": i} for i in range(30)]
    for layout in data.LAYOUTS:
        rows = [row for i, sc in enumerate(scenes)
                for row in data.make_questions(sc, np.random.default_rng([9, i, 2]), layout=layout)]
        checks = [v for row in rows for v in ev.follows(row["reasoning"], row).values()]
        assert len(checks) > 40 and set(checks) == {1.0}, layout
        if layout == "asked_last":              # the asked pair's edge is the last one written, its d the answer
            for row in (r for r in rows if r["task"] == "abs_distance"):
                g = graph.parse_graphs(row["reasoning"])[0]
                last = g.edges[-1]
                assert {g.nodes[last.i].category, g.nodes[last.j].category} == set(ev.names_in(
                    row["question"], [n.category for n in g.nodes])) and last.dist == row["answer"]


def test_every_command_the_docs_show_is_real_and_no_source_line_is_over_118():
    """Each `python FILE ...` (or `torchrun ... train.py ...`) line of README.md and RESULTS.md (when present), in
    code blocks and inline code: FILE's command exists and every --flag is one that `python FILE [COMMAND] --help`
    lists (placeholders such as /path/to/... are not checked); each `file.py:name` they cite is defined in it. And no
    .py line is wider than 118 characters."""
    bad, seen = [], 0
    modules = {"data": data, "eval": ev, "graph": graph, "grpo": grpo, "model": qwen, "rewards": rewards,
               "train": train}
    for doc in ("README.md", "RESULTS.md"):
        path = os.path.join(HERE, doc)
        if not os.path.isfile(path):
            continue
        text = open(path, encoding="utf-8").read()
        bad += [f"{doc}: {f}.py:{name} is not defined" for f, name in re.findall(r"`(\w+)\.py:(\w+)`", text)
                if not hasattr(modules.get(f), name)]
        blocks = re.findall(r"^\s*```[^\n]*\n(.*?)^\s*```", text, re.S | re.M)
        lines = [ln for b in blocks for ln in b.replace("\\\n", " ").split("\n")]
        spans = re.findall(r"`([^`]+)`", re.sub(r"^\s*```[^\n]*\n.*?^\s*```", "", text, flags=re.S | re.M))
        for cmd in [" ".join(x.split()) for x in lines + spans]:
            words = re.sub(r"\s#.*", "", cmd).split()
            script = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
            if words[:1] not in (["python"], ["torchrun"]) or script is None or words[script] == "test_all.py":
                continue
            file, args, seen = os.path.basename(words[script]), words[script + 1:], seen + 1
            if file not in _entry_points():
                bad.append(f"{doc}: {cmd}: no such file")
                continue
            command = args[0] if args and not args[0].startswith("-") and _help(file)[1] else None
            if command and _help(file, command) is None:
                bad.append(f"{doc}: {cmd}: {file} has no command {command} ({', '.join(sorted(_help(file)[1]))})")
                continue
            bad += [f"{doc}: {cmd}: {a}" for a in args if a.startswith("--") and
                    a.split("=")[0] not in _help(file, command)[0]]
    assert seen > 20 and not bad, "\n".join(bad)
    wide = [f"{f}:{n}" for f in os.listdir(HERE) if f.endswith(".py")
            for n, line in enumerate(open(os.path.join(HERE, f), encoding="utf-8"), 1)
            if len(line.rstrip("\n")) > 118]
    assert not wide, wide


# --- data.py: real video (KITTI, ScanNet, TAO) read from files written from synthetic scenes ------------------------

T2 = np.array([0.06, -0.002, 0.004])               # camera 2's offset from KITTI's reference camera in the fixture, m


def _image_bytes(img, codec):
    """A PNG ("png") or JPEG ("mjpeg") file's bytes of an (H, W, 3) uint8 image, encoded by PyAV."""
    cc = av.CodecContext.create(codec, "w")
    cc.width, cc.height, cc.time_base = img.shape[1], img.shape[0], fractions.Fraction(1, 10)
    cc.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format=cc.pix_fmt)
    return b"".join(bytes(p) for p in cc.encode(frame) + cc.encode(None))


def _put(path, content):
    """Write text or bytes to path, its folders made."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(content if isinstance(content, bytes) else content.encode())


@functools.lru_cache(maxsize=None)
def _scene10(static=False):
    """A 32-frame 10 fps synthetic scene (KITTI's rate) of 3 objects that appear one after the other, at least one
    moving; static: none moves and all are in view from the start (ScanNet's world). Its rendered frames too."""
    for i in range(100):
        s = {**data.make_scene(np.random.default_rng([11, i]), (3, 3), num_frames=32, fps=10,
                               stagger_p=0.0 if static else 1.0), "id": i}
        if static:
            s["objects"] = [{**o, "move": None, "vel": [0.0, 0.0]} for o in s["objects"]]
        if data.scene_ok(s) and (static or len({o["appear"] for o in s["objects"]}) == 3):
            return s, data.render_clip(s)
    raise AssertionError("no scene")


def _write_kitti(root, seq="0000", oxts=True):
    """_scene10 as KITTI tracking files: PNG frames of camera 2, label_02 lines (the box's bottom centre in the
    reference camera, 6 decimals, and a DontCare row a frame), calib (P2 = K [I | T2]) and oxts (the scene's camera
    poses as IMU poses through Tr_velo_cam, Mercator from 49 degrees north)."""
    s, clip = _scene10()
    w, tr = data.synthetic_footage(s), os.path.join(root, "training")
    for f, img in enumerate(clip):
        _put(os.path.join(tr, "image_02", seq, f"{f:06d}.png"), _image_bytes(img, "png"))
    lines = []
    for f in range(len(clip)):
        for k, t in enumerate(w.tracks):
            if t.present[f]:
                (x, y, z), (wd, h, ln) = t.cam[f] - T2, t.size
                lines.append(f"{f} {k} {t.name.replace(' ', '_').capitalize()} 0 0 -1.5 10 10 30 30 {h:.6f} {wd:.6f} "
                             f"{ln:.6f} {x:.6f} {y + h / 2:.6f} {z:.6f} 0.3")
        lines.append(f"{f} -1 DontCare -1 -1 -10 1 1 5 5 -1000 -1000 -1000 -10 -1 -1 -1")
    _put(os.path.join(tr, "label_02", f"{seq}.txt"), "\n".join(lines) + "\n")
    K = np.array([[s["focal"], 0, 56.0], [0, s["focal"], 56.0], [0, 0, 1]])
    M0 = np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])                  # IMU (x forward, y left, z up) -> camera
    calib = {"P2:": K @ np.column_stack([np.eye(3), T2]), "R_rect": np.eye(3),
             "Tr_velo_cam": np.column_stack([M0, np.zeros(3)]), "Tr_imu_velo": np.eye(4)[:3]}
    _put(os.path.join(tr, "calib", f"{seq}.txt"), "".join(f"{k} {' '.join(f'{v:.12e}' for v in m.ravel())}\n"
                                                          for k, m in calib.items()))
    if oxts:
        R, c = w.poses
        Rw, t = np.einsum("fji,jk->fik", R, M0), np.einsum("fji,j->fi", R, T2) + c   # IMU->world: R^T M0, R^T T2 + c
        r, lat0 = 6378137.0 * math.cos(math.radians(49.0)), math.radians(49.0)
        y0 = r * math.log(math.tan(math.pi / 4 + lat0 / 2))
        lat = 2 * np.arctan(np.exp((y0 + t[:, 1] - t[0, 1]) / r)) - math.pi / 2
        ox = np.column_stack([np.degrees(lat), np.degrees((t[:, 0] - t[0, 0]) / r), t[:, 2],
                              np.arctan2(Rw[:, 2, 1], Rw[:, 2, 2]), np.arcsin(-Rw[:, 2, 0]),
                              np.arctan2(Rw[:, 1, 0], Rw[:, 0, 0]), np.zeros((len(t), 24))])
        _put(os.path.join(tr, "oxts", f"{seq}.txt"), "".join(" ".join(f"{v:.15g}" for v in row) + "\n" for row in ox))
    return os.path.join(tr, "label_02", f"{seq}.txt")


def _write_scannet(scans, scene="scene0000_00", lost=()):
    """_scene10(static) as ScanNet's exporter writes a scene beside its scan: JPEG frames, camera-to-world poses
    (-inf at the frames in `lost`), the colour intrinsics, a PLY whose vertices are each object's box corners and
    a wall's, the segs (a segment an object) and the aggregation (the objects' names as labels)."""
    s, clip = _scene10(static=True)
    w, d = data.synthetic_footage(s), os.path.join(scans, scene)
    for f, img in enumerate(clip):
        _put(os.path.join(d, "color", f"{f}.jpg"), _image_bytes(img, "mjpeg"))
        pose = np.vstack([np.column_stack([w.poses[0][f].T, w.poses[1][f]]), [0, 0, 0, 1]])   # camera -> world
        pose = np.full((4, 4), -np.inf) if f in lost else pose
        _put(os.path.join(d, "pose", f"{f}.txt"), "\n".join(" ".join(f"{v:.9f}" for v in row) for row in pose))
    _put(os.path.join(d, "intrinsic", "intrinsic_color.txt"),
         f"{s['focal']} 0 56 0\n0 {s['focal']} 56 0\n0 0 1 0\n0 0 0 1\n")
    corners = np.array([[a, b, e] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for e in (-0.5, 0.5)])   # (8, 3)
    boxes = [t.world[0] + corners * [t.size[0], t.size[2], t.size[1]] for t in w.tracks] + [corners * [9, 0.1, 3]]
    xyz = np.concatenate(boxes).astype("<f4")                                # (V, 3) metres
    verts = np.zeros(len(xyz), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                ("blue", "u1"), ("alpha", "u1")])
    verts["x"], verts["y"], verts["z"] = xyz.T
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\n" + "".join(
        f"property {t} {n}\n" for t, n in zip("float float float uchar uchar uchar uchar".split(), verts.dtype.names))
        + "element face 0\nproperty list uchar int vertex_indices\nend_header\n")
    _put(os.path.join(d, f"{scene}_vh_clean_2.ply"), header.encode() + verts.tobytes())
    _put(os.path.join(d, f"{scene}_vh_clean_2.0.010000.segs.json"),
         json.dumps({"sceneId": scene, "segIndices": [10 + k for k in range(len(boxes)) for _ in range(8)]}))
    labels = [t.name for t in w.tracks] + ["wall"]
    _put(os.path.join(d, f"{scene}.aggregation.json"), json.dumps({"sceneId": scene, "segGroups": [
        {"id": k, "objectId": k, "segments": [10 + k], "label": lab} for k, lab in enumerate(labels)]}))


def _write_tao(root):
    """_scene10 as a TAO annotation file (images at frame_index 3 k of a 30 fps video, a box per track and frame where
    the object is present) and its JPEG frames under root/frames. Returns the file's path."""
    s, clip = _scene10()
    w, names = data.synthetic_footage(s), sorted({o["name"] for o in s["objects"]})
    images = [{"id": 100 + k, "video_id": 7, "file_name": f"v7/{k:04d}.jpg", "frame_index": 3 * k, "width": 112,
               "height": 112} for k in range(len(clip))]
    for im, img in zip(images, clip):
        _put(os.path.join(root, "frames", im["file_name"]), _image_bytes(img, "mjpeg"))
    anns = [{"id": len(images) * k + int(f), "image_id": 100 + int(f), "track_id": 50 + k, "video_id": 7,
             "category_id": names.index(t.name), "bbox": [*(data.project(s, t.cam[f]) - 4).tolist(), 8, 8]}
            for k, t in enumerate(w.tracks) for f in np.flatnonzero(t.present)]
    doc = {"videos": [{"id": 7, "name": "v7", "width": 112, "height": 112}], "images": images,
           "categories": [{"id": j, "name": n.replace(" ", "_")} for j, n in enumerate(names)], "annotations": anns,
           "tracks": [{"id": 50 + k, "category_id": names.index(t.name), "video_id": 7}
                      for k, t in enumerate(w.tracks)]}
    _put(os.path.join(root, "tao.json"), json.dumps(doc))
    return os.path.join(root, "tao.json")


def _answer(row):
    """A row's answer as text or value (an mc answer as its option's text: distractors come from the source)."""
    return row["options"][data.LETTERS.index(row["answer"])] if row["answer_type"] == "mc" else row["answer"]


def _same_questions(got, want, tasks, graphs=True):
    """Footage `got` (a reader's) asks each task's question of Footage `want` (the synthetic generator's) with the
    same answer and (graphs) graphs within 1 cm (the same rng). Returns how many questions were compared."""
    n = 0
    for task in tasks:
        a, b = (data.make_questions(w, np.random.default_rng(5), tasks=[task]) for w in (got, want))
        assert len(a) == len(b), (task, a, b)
        for ra, rb in zip(a, b):
            assert (ra["question"], _answer(ra)) == (rb["question"], _answer(rb)), (ra, rb)
            if graphs:
                _graphs_close(ra["graphs"], rb["graphs"])
            n += 1
    return n


def _graphs_close(got, want, tol=0.01):
    """Row graphs (dicts) with the same frames and names, each centre within tol metres."""
    assert (got is None) == (want is None) and len(got or []) == len(want or []), (got, want)
    for g, h in zip(got or [], want or []):
        assert g["frame"] == h["frame"] and [n["category"] for n in g["nodes"]] == [n["category"] for n in h["nodes"]]
        assert np.abs(np.subtract([n["center"] for n in g["nodes"]], [n["center"] for n in h["nodes"]])).max() <= tol


def _convert(argv):
    """(exit code, stdout, stderr) of `python data.py ...argv` run in-process."""
    return _cli(data, argv)


def test_kitti_round_trip_graphs_within_1cm_answers_the_same_and_the_frames_it_shows():
    """A synthetic scene written as KITTI tracking files reads back as the synthetic generator's Footage: every task's
    question, answer and graphs (within 1 cm; camera 2's frame, P2's offset applied); the rows written are those of
    that Footage, each graph's frame in the video shows that frame; without oxts only camera-frame tasks are asked."""
    s, clip = _scene10()
    with tempfile.TemporaryDirectory() as tmp:
        _write_kitti(os.path.join(tmp, "kitti"))
        clips, skipped = data.kitti_clips(os.path.join(tmp, "kitti"), clip_seconds=3.2)
        assert skipped == 0 and len(clips) == 1 and clips[0][1].tasks == tuple(data.TRACK_TASKS)
        got, want = clips[0][1], data.synthetic_footage(s)
        assert _same_questions(got, want, data.TASKS) >= 9                # every task that applies to the scene
        assert [t.name for t in got.tracks] == [t.name for t in want.tracks]
        code, out, err = _convert(["kitti", os.path.join(tmp, "kitti"), "--out", os.path.join(tmp, "rows"),
                                   "--clip_seconds", "3.2"])
        assert code == 0 and "tasks made" in out, (out, err)
        rows = data.load_rows(os.path.join(tmp, "rows", "train.jsonl"))
        made = json.load(open(os.path.join(tmp, "rows", "converted.json")))["tasks"]
        asked = data.make_questions(got, np.random.default_rng([0, 0]))              # write_converted's rng of clip 0
        assert [r["question"] for r in rows] == [r["question"] for r in asked]
        assert {r["task"] for r in rows} == set(made) and len(made) >= 7
        for r in rows:
            _graphs_close(r["graphs"], [data.graph_at(want, g["frame"]).to_dict() for g in r["graphs"]])
        video = data.read_clip(rows[0]["video"], 32)
        assert np.abs(video.frames.astype(int) - clip).mean() < 6 and np.allclose(video.times, np.arange(32) / 10)
        shutil.rmtree(os.path.join(tmp, "kitti", "training", "oxts"))
        clips, _ = data.kitti_clips(os.path.join(tmp, "kitti"), clip_seconds=3.2)
        rows = data.make_questions(clips[0][1], np.random.default_rng(0))
        assert {r["task"] for r in rows} <= set(data.STATIC_TASKS) | {"in_view"} and clips[0][1].poses is None
        assert all("at the" in r["question"] for r in rows if r["task"] in ("abs_distance", "closest_object"))


def test_scannet_round_trip_graphs_within_1cm_and_lost_poses_skipped_and_counted():
    """A static synthetic scene written as ScanNet's exported frames, poses, PLY, segs and aggregation reads back with
    the synthetic generator's static questions, answers and graphs (within 1 cm; the wall left out); frames whose
    pose is -inf are skipped and counted."""
    s, _ = _scene10(static=True)
    with tempfile.TemporaryDirectory() as tmp:
        _write_scannet(os.path.join(tmp, "scans"))
        clips, skipped = data.scannet_clips(os.path.join(tmp, "scans"))
        got, want = clips[0][1], data.synthetic_footage(s)
        assert skipped == 0 and [t.name for t in got.tracks] == [o["name"] for o in s["objects"]]
        assert _same_questions(got, want, data.STATIC_TASKS) >= 4
        _write_scannet(os.path.join(tmp, "lost"), lost=(3, 4))
        code, out, err = _convert(["scannet", os.path.join(tmp, "lost"), "--out", os.path.join(tmp, "rows")])
        summary = json.load(open(os.path.join(tmp, "rows", "converted.json")))
        assert code == 0 and summary["skipped"] == 2 and "skipped for a non-finite pose: 2 frames" in out, (out, err)
        video = data.read_clip(os.path.join(tmp, "rows", "videos", "scannet-scene0000_00.mp4"), 30)
        assert video.frames.shape[0] == 30                                # 32 frames, 2 lost
        assert set(summary["tasks"]) <= set(data.STATIC_TASKS) and summary["rows"]["train"] >= 4


def test_tao_round_trip_temporal_answers_and_rows_without_graphs_add_nothing_to_the_advantages():
    """A synthetic scene written as TAO's JSON and JPEG frames reads back with the synthetic generator's
    appearance-order and in-view answers; its rows have no graphs, so every completion gets the same graph term
    (0): the advantages are those of the other parts alone."""
    s, _ = _scene10()
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_tao(tmp)
        clips, _ = data.tao_clips(path, os.path.join(tmp, "frames"))
        assert _same_questions(clips[0][1], data.synthetic_footage(s), ("appearance_order", "in_view"), False) == 2
        code, out, err = _convert(["tao", path, "--frames", os.path.join(tmp, "frames"), "--out",
                                   os.path.join(tmp, "rows")])
        rows = data.load_rows(os.path.join(tmp, "rows", "train.jsonl"))
        assert code == 0 and {r["task"] for r in rows} == {"appearance_order", "in_view"}, (out, err)
    gt = graph.to_text(data.graph_at(data.synthetic_footage(s), 0))
    for row in rows:
        assert row["graphs"] is None and "<graph" not in row["reasoning"]
        completions = [row["reasoning"], f"<think>{gt} x</think><answer>A</answer>", "<answer>[0, 1]</answer>", ""]
        totals, parts = zip(*(rewards.total_reward(c, 60, row) for c in completions))
        assert {p["graph"] for p in parts} == {0.0}
        no_graph = [t - p["graph"] for t, p in zip(totals, parts)]
        assert np.allclose(grpo.group_advantages(torch.tensor([totals]), 4),
                           grpo.group_advantages(torch.tensor([no_graph]), 4))


def test_names_numbered_left_to_right_matched_by_category_and_stated_in_the_prompt():
    """track_names: one of a category keeps its name, several are numbered by first appearance, then left to right;
    graph matching takes "car 2" as a car (numbers swapped score as right); the prompt states the rule only where
    a row names numbered objects."""
    assert data.track_names(["car", "car", "truck", "car"], [0, 0, 1, 2], [0.5, -0.2, 0.0, -9.0]) == [
        "car 2", "car 1", "truck", "car 3"]
    assert data._category("Person_sitting") == "person sitting" and data._category("car_(automobile)") == "car"
    assert (graph.category_of("car 2"), graph.category_of("red cube"), graph.category_of("2x4 board")) == (
        "car", "red cube", "2x4 board")
    gt = graph.Graph(0, [graph.Node("car 1", (-2.0, 1.0, 8.0)), graph.Node("car 2", (2.0, 1.0, 9.0))])
    swapped = graph.Graph(0, [graph.Node("car 2", (-2.0, 1.0, 8.0)), graph.Node("car 1", (2.0, 1.0, 9.0))])
    written = [graph.graph_reward(graph.parse_graphs(graph.to_text(g)), [gt])[0] for g in (gt, swapped)]
    assert written[0] == written[1] > 1.9
    assert graph.node_reward(graph.Graph(0, [graph.Node("truck 1", (-2.0, 1.0, 8.0))]), gt) == 0.0
    row = {"question": "Which object is closest to the car 1?", "options": ["car 2", "truck"], "answer": "A",
           "answer_type": "mc", "graphs": [gt.to_dict()]}
    assert graph.NAME_RULE in qwen.build_prompt(row)
    synthetic = data.make_questions(_scenes(1)[0], np.random.default_rng(0))
    assert not any(graph.NAME_RULE in qwen.build_prompt(r) for r in synthetic)


def test_bad_real_inputs_exit_naming_file_and_line_and_leave_out_absent():
    """A label line with the wrong number of columns or a word for a number, a label frame past the frames, a
    sequence without calib, a missing root, a ScanNet scene without its aggregation or with segs that do not fit
    the mesh, a TAO annotation of no image: each exits non-zero naming the file (and line) and --out stays absent
    (no temporary folder left either)."""
    with tempfile.TemporaryDirectory() as tmp:
        root, out = os.path.join(tmp, "kitti"), os.path.join(tmp, "out")
        label = _write_kitti(root, oxts=False)
        good = open(label).read().splitlines()

        def fails(argv, *said):
            code, _, err = _convert(argv + ["--out", out])
            assert code == 1 and all(x in err for x in said) and not os.path.exists(out), (argv, err)
            assert not [f for f in os.listdir(tmp) if f.startswith(".tmp-")], os.listdir(tmp)
        for n, line in ((3, " ".join(good[2].split()[:16])), (5, good[4].replace(" 0 0 ", " 0 zero ", 1)),
                        (1, f"32 {good[0].split(' ', 1)[1]}")):              # a frame past the last
            _put(label, "\n".join(good[:n - 1] + [line] + good[n:]) + "\n")
            fails(["kitti", root], f"{label}:{n}:")
        _put(label, "\n".join(good) + "\n")
        calib = os.path.join(root, "training", "calib", "0000.txt")
        os.rename(calib, calib + ".away")
        fails(["kitti", root], calib, "No such file")
        os.rename(calib + ".away", calib)
        fails(["kitti", os.path.join(tmp, "nowhere")], "nowhere", "No such file or directory")
        scans = os.path.join(tmp, "scans")
        _write_scannet(scans)
        segs = os.path.join(scans, "scene0000_00", "scene0000_00_vh_clean_2.0.010000.segs.json")
        _put(segs, json.dumps({"segIndices": [0, 1, 2]}))
        fails(["scannet", scans], segs, "segIndices")
        _write_scannet(scans)
        os.remove(os.path.join(scans, "scene0000_00", "scene0000_00.aggregation.json"))
        fails(["scannet", scans], "scene0000_00.aggregation.json", "No such file")
        path = _write_tao(tmp)
        doc = json.load(open(path))
        doc["annotations"][3]["image_id"] = 999
        _put(path, json.dumps(doc))
        fails(["tao", path, "--frames", os.path.join(tmp, "frames")], f"{path}: annotations item 3", "image_id")
        assert _convert(["kitti", root, "--out", root])[0] == 1 and os.path.isdir(root)   # not a converted set: kept


def test_train_runs_grpo_on_converted_rows():
    """`train.py --data DIR` on rows converted from KITTI files: two GRPO steps, finite rewards, the graph reward
    measured on the rows' graphs."""
    base = _run_base()[0]
    folder = os.path.join(base, "kitti_rows")
    if not os.path.exists(folder):
        _write_kitti(os.path.join(base, "kitti"))
        assert _convert(["kitti", os.path.join(base, "kitti"), "--out", folder, "--clip_seconds", "1.6"])[0] == 0
    _train(_smoke_args("real", data=folder, sft_steps=0, vision_steps=0, ckpt_every=2, eval_every=2))
    recs = [r for r in data.read_jsonl(os.path.join(base, "real", "metrics.jsonl")) if r["phase"] == "grpo"]
    assert [r["step"] for r in recs] == [1, 2] and all(math.isfinite(r["reward"]) for r in recs)


# --- runner ---------------------------------------------------------------------------------------------------------

def main():
    pattern = VIDEO_TESTS if VIDEO_ONLY else sys.argv[1] if len(sys.argv) > 1 else ""
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f) and pattern in n]
    failed = 0
    for name, fn in tests:
        t0 = time.time()
        try:
            fn()
        except Exception:  # report every failure, keep going
            failed += 1
            print(f"FAIL {name} ({time.time() - t0:.1f}s)")
            traceback.print_exc()
        else:
            print(f"ok   {name} ({time.time() - t0:.1f}s)")
        sys.stdout.flush()
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
