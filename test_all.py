"""All tests of the repo, as plain `test_*` functions.

Run: `python test_all.py` (its own small runner: prints each failure, ends with `N passed, N failed`,
exits non-zero on a failure; `python test_all.py NAME` runs the tests whose name contains NAME) or
`pytest test_all.py`. Tests use tiny inputs worked out by hand, plus one end-to-end smoke run and
one learning check; nothing downloads anything.
"""
import math
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import graph
import grpo
import rewards


def close(a, b, tol=1e-6):
    return abs(a - b) <= tol


# ---------------------------------------------------------------------------- grpo.py: the loss

def test_group_advantages_by_hand():
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), G=4, eps=0.0)
    # mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.57735 -> A = +-0.5 / 0.57735 = +-0.86603
    assert torch.allclose(adv, torch.tensor([0.86603, -0.86603, -0.86603, 0.86603]), atol=1e-4)
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), G=4, scale=False)
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # two groups of two; the second is constant -> exactly 0, no NaN
    adv = grpo.group_advantages(torch.tensor([2.0, 0.0, 3.0, 3.0]), G=2)
    assert torch.isfinite(adv).all()
    assert adv[2] == 0 and adv[3] == 0
    assert close(adv[0].item(), 1.0 / (math.sqrt(2.0) + 1e-4), 1e-5)


def test_kl_k3():
    lp = torch.log(torch.tensor([[0.2, 0.5, 0.9]]))
    assert torch.allclose(grpo.kl_k3(lp, lp), torch.zeros(1, 3))
    ref = torch.log(torch.tensor([[0.4, 0.25, 0.9]]))
    kl = grpo.kl_k3(lp, ref)
    # token 0: ratio 2 -> 2 - ln 2 - 1 = 0.30685; token 1: ratio 0.5 -> 0.5 + ln 2 - 1 = 0.19315
    assert torch.allclose(kl, torch.tensor([[0.30685, 0.19315, 0.0]]), atol=1e-5)


def _loss_case():
    logp = torch.log(torch.tensor([[0.5, 0.4, 0.9], [0.3, 0.6, 0.1]]))
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.6, 0.6, 0.1]]))
    ref = torch.log(torch.tensor([[0.25, 0.4, 0.9], [0.3, 0.6, 0.1]]))
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, old, ref, adv, mask


def test_policy_loss_matches_hand_computation():
    logp, old, ref, adv, mask = _loss_case()
    # ratios: seq0 [1, 2, 1], seq1 [0.5, 1, 1]; eps 0.2
    # seq0 (A=+1): min(r, clip(r)) = [1, 1.2, 1]; seq1 (A=-1): min(-r, -clip(r)) = [-0.8, -1, (pad)]
    # k3 with beta 0.04: seq0 token0 ref/pi = 0.5 -> 0.5 + ln2 - 1 = 0.193147; all others 0
    o0 = [1 - 0.04 * 0.193147, 1.2, 1.0]
    o1 = [-0.8, -1.0]
    seq = -((sum(o0) / 3 + sum(o1) / 2) / 2)
    token = -(sum(o0) + sum(o1)) / 5
    const = -(sum(o0) + sum(o1)) / (2 * 3)
    for agg, want in (("seq", seq), ("token", token), ("const", const)):
        loss, stats = grpo.policy_loss(logp, old, ref, adv, mask, agg=agg)
        assert close(loss.item(), want, 1e-5), (agg, loss.item(), want)
    # clipped tokens: seq0 token1 (r=2 > 1.2, A>0) and seq1 token0 (r=0.5 < 0.8, A<0) -> 2 of 5
    assert close(stats["clip_frac"], 0.4)
    assert close(stats["kl"], 0.193147 / 5, 1e-5)
    # beta = 0 or ref None drops the KL
    l1, s1 = grpo.policy_loss(logp, old, None, adv, mask)
    l2, _ = grpo.policy_loss(logp, old, ref, adv, mask, beta=0.0)
    assert close(l1.item(), l2.item()) and s1["kl"] == 0.0


def test_clipping_zeroes_gradient_outside_band():
    logp, old, ref, adv, mask = _loss_case()
    logp = logp.clone().requires_grad_()
    loss, _ = grpo.policy_loss(logp, old, None, adv, mask, agg="token")
    loss.backward()
    g = logp.grad
    assert g[0, 1] == 0 and g[1, 0] == 0          # outside the band, on the clipped side
    assert g[0, 0] != 0 and g[1, 1] != 0          # inside the band
    assert g[1, 2] == 0                            # padding
    # clip-higher widens the upper band: ratio 2 is still clipped at 1.28, ratio 1.25 would not be
    logp2 = (old + torch.log(torch.tensor([[1.25, 1.25, 1.25], [1, 1, 1]]))).requires_grad_()
    loss, _ = grpo.policy_loss(logp2, old, None, adv, mask, clip_eps_high=0.28)
    loss.backward()
    assert logp2.grad[0, 0] != 0


def test_on_policy_ratio_is_one_with_gradient():
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    loss, stats = grpo.policy_loss(logp, None, None, torch.tensor([2.0]), torch.ones(1, 2))
    assert close(loss.item(), -2.0) and close(stats["ratio_mean"], 1.0)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, -1.0]]))  # d/dlogp of -(A * rho)/2 tokens


# ---------------------------------------------------------------------------- graph.py

def _scene(rng, n=4):
    names = ["red cube", "blue ball", "green cone", "yellow cylinder", "red ball", "blue cube"][:n]
    centers = np.column_stack([rng.uniform(-3, 3, n), rng.uniform(0.5, 1.5, n), rng.uniform(2, 9, n)])
    return graph.Graph(3, [graph.Node(c, tuple(x)) for c, x in zip(names, centers)])


def test_edge_features_by_hand():
    # x0 = (1,0,0), x1 = (0,0,1): distance sqrt(2), angle at the camera 90 degrees
    dist, angle = graph.edge_features(np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 0, 2.0]]))
    assert close(dist[0, 1], math.sqrt(2)) and close(angle[0, 1], 90.0, 1e-6)
    assert close(dist[1, 2], 1.0) and close(angle[1, 2], 0.0, 1e-4)
    assert np.allclose(dist, dist.T) and np.allclose(angle, angle.T)


def test_rotation_invariance_theorem_1():
    """Phi(RX) = Phi(X) for 100 random R in SO(3), while the coordinates (and azimuths) do change."""
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


def test_rotated_prediction_keeps_edge_reward():
    """A prediction with correct edges but coordinates of a rotated camera: R_e stays ~1, R_n drops."""
    rng = np.random.default_rng(2)
    gt = _scene(rng, 3)
    rot = graph.Graph(gt.frame, [graph.Node(n.category, tuple(graph.yaw(0.8) @ np.array(n.center))) for n in gt.nodes])
    pred = graph.parse_graphs(graph.to_text(rot))[0]
    assert graph.edge_reward(pred, gt) > 0.95
    assert graph.node_reward(pred, gt) < graph.node_reward(graph.parse_graphs(graph.to_text(gt))[0], gt)


def test_text_round_trip():
    rng = np.random.default_rng(3)
    for n in range(1, 6):
        g = _scene(rng, n)
        g = graph.Graph(g.frame, g.nodes, graph.derive_edges(g.nodes))
        (h,) = graph.parse_graphs("noise " + graph.to_text(g) + " more")
        assert h.frame == g.frame and [a.category for a in h.nodes] == [a.category for a in g.nodes]
        for a, b in zip(h.nodes, g.nodes):
            assert np.allclose(a.center, b.center, atol=0.05 + 1e-9)
        assert [(e.i, e.j) for e in h.edges] == [(e.i, e.j) for e in g.edges]
        for a, b in zip(h.edges, g.edges):
            assert abs(a.dist - b.dist) <= 0.05 + 1e-9 and abs(a.angle - b.angle) <= 0.5 + 1e-9


def test_parser_skips_malformed_and_unattached():
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


def test_parser_fuzz_never_raises():
    rng = np.random.default_rng(4)
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
        for g in graph.parse_graphs(s):
            assert isinstance(g, graph.Graph) and g.nodes
    t0 = time.time()
    noise = "".join(rng.choice(alphabet) for _ in range(100_000))
    graph.parse_graphs(noise)
    graph.parse_graphs("<graph t=1> " * 10_000)
    assert time.time() - t0 < 10.0


def test_node_reward_by_hand():
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


def test_edge_and_graph_reward_by_hand():
    N = graph.Node
    gt = graph.Graph(5, [N("a", (0, 0, 4)), N("b", (4, 0, 4)), N("c", (0, 0, 8))])
    d, a = graph.edge_features([n.center for n in gt.nodes])
    # predict only edge a-b with d off by 25 % (-> 0.75) and angle off by 10 degrees (-> 0.5)
    text = f"<graph t=5> a (0,0,4); b (4,0,4); c (0,0,8) | a-b d={d[0, 1] * 1.25:.4f} a={a[0, 1] + 10:.4f} </graph>"
    (pred,) = graph.parse_graphs(text)
    assert close(graph.edge_reward(pred, gt), (0.5 * 0.75 + 0.5 * 0.5) / 3, 1e-6)
    total, parts = graph.graph_reward([pred], [gt, graph.Graph(9, gt.nodes)])   # frame 9 omitted -> 0
    assert close(parts["node"], 0.5) and close(parts["frames_found"], 0.5)
    assert close(total, (1.0 + (0.5 * 0.75 + 0.5 * 0.5) / 3) / 2, 1e-6)
    full = graph.parse_graphs(graph.to_text(gt))
    assert graph.graph_reward(full, [gt])[0] > 1.95
    assert graph.graph_reward([], [gt])[0] == 0.0


# ---------------------------------------------------------------------------- rewards.py

def test_format_reward():
    assert rewards.format_reward("<think>a</think><answer>B</answer>") == 1.0
    assert rewards.format_reward("  <think>\na\n</think> \n<answer> B </answer>\n") == 1.0
    for bad in ("<answer>B</answer>", "<think>a</think>", "x<think>a</think><answer>B</answer>",
                "<think>a</think><answer>B</answer>tail", "<think>a</think><answer>B</answer><answer>C</answer>",
                "<think><think>a</think><answer>B</answer>", "", None):
        assert rewards.format_reward(bad) == 0.0, bad


def test_extract_and_parse():
    assert rewards.extract_answer("<think>x</think><answer> 3.5 m </answer>") == "3.5 m"
    assert rewards.extract_answer("no answer") is None
    for text, want in (("3.5", 3.5), ("3,500", 3500.0), ("3.5 m", 3.5), ("-2", -2.0), ("1e3", 1000.0)):
        assert rewards.parse_number(text) == want
    for bad in ("nan", "inf", "-inf", "1e999", "3 or 4", "", "abc", "__import__('os')", "1,23", None):
        assert rewards.parse_number(bad) is None, bad
    assert rewards.parse_interval("[1.5, 3]") == [1.5, 3.0]
    assert rewards.parse_interval("[1, 2, 3]") is None


def test_answer_reward_mc_is_strict():
    for text, want in (("B", 1.0), ("b", 1.0), ("(B)", 1.0), ("B.", 1.0), ("A", 0.0), ("A or B", 0.0),
                       ("", 0.0), ("AB", 0.0), ("B C", 0.0), (None, 0.0)):
        assert rewards.answer_reward(text, "B", "mc") == want, text


def test_mra_by_hand():
    # |3.3 - 3| / 3 = 0.1 <= 1 - theta for theta in 0.50..0.90 (9 of 10)
    assert close(rewards.mra(3.3, 3.0), 0.9)
    assert close(rewards.mra(3.0, 3.0), 1.0)
    assert close(rewards.mra(6.0, 3.0), 0.0)                  # rel error 1.0 > 0.5
    assert close(rewards.mra(4.5, 3.0), 1 / 10)               # rel error 0.5 <= 1 - 0.5 only
    assert close(rewards.mra(0.0, 0.0), 1.0) and close(rewards.mra(0.3, 0.0), 0.5)   # gt 0: absolute error
    assert close(rewards.answer_reward("3.3 m", 3.0, "num"), 0.9)
    assert rewards.answer_reward("three", 3.0, "num") == 0.0


def test_iou_by_hand():
    assert close(rewards.interval_iou([1, 3], [2, 4]), 1 / 3)
    assert rewards.interval_iou([1, 2], [3, 4]) == 0.0
    assert rewards.interval_iou([3, 1], [1, 3]) == 0.0
    assert close(rewards.box_iou([0, 0, 2, 2], [1, 1, 3, 3]), 1 / 7)
    assert close(rewards.answer_reward("[2, 4]", [1, 3], "iou"), 1 / 3)
    assert rewards.answer_reward("[2, 4]", [0, 0, 2, 2], "iou") == 0.0


def test_length_and_total_reward():
    assert rewards.length_reward(400, True) == 0.2
    assert rewards.length_reward(400, False) == 0.0 and rewards.length_reward(600, True) == 0.0
    g = graph.Graph(0, [graph.Node("red cube", (1.2, 0.4, 5.1)), graph.Node("blue ball", (-0.8, 0.4, 6.0))])
    row = {"answer": 2.0, "answer_type": "num", "graphs": [g.to_dict()]}
    text = f"<think>{graph.to_text(g)} so </think><answer>2</answer>"
    total, parts = rewards.total_reward(text, 20, row, lo=10, hi=30)
    assert parts["format"] == 1.0 and parts["answer"] == 1.0 and parts["length"] == 0.2
    assert parts["graph"] > 1.9 and close(total, 1 + 1 + parts["graph"] + 0.2)
    total0, _ = rewards.total_reward(text, 20, row, weights={"graph": 0.0}, lo=10, hi=30)
    assert close(total0, 2.2)
    # a graph written inside the answer earns nothing
    _, parts = rewards.total_reward(f"<think>x</think><answer>{graph.to_text(g)}</answer>", 20, row)
    assert parts["graph"] == 0.0


def test_import_is_light():
    import subprocess
    code = "import sys, grpo, rewards, graph; print(sorted(m for m in ('transformers', 'av', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


# ---------------------------------------------------------------------------- runner

def main():
    pattern = sys.argv[1] if len(sys.argv) > 1 else ""
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f) and pattern in n]
    passed = failed = 0
    for name, fn in tests:
        t0 = time.time()
        try:
            fn()
        except Exception:  # report every failure, keep going
            failed += 1
            print(f"FAIL {name} ({time.time() - t0:.1f}s)")
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {name} ({time.time() - t0:.1f}s)")
        sys.stdout.flush()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
