"""GRPO by hand: group-relative advantages, the k3 KL estimator and the clipped policy loss.

Paper: Video-STR (arXiv 2510.10976) Sec. 4 trains Qwen2.5-VL with GRPO (DeepSeekMath, Shao et al. 2024),
G = 8 completions per prompt, beta = 0.04. The objective, per prompt q with completions o_1..o_G:

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t ( min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) - beta D_KL,it ) ]
    rho_it   = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)                      (importance ratio)
    A_i      = (r_i - mean(r_1..r_G)) / std(r_1..r_G)                                   (Eq. 3, group advantage)
    D_KL,it  = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1                              (k3 estimator, >= 0)

Variants are flags of the same functions, not copies:
  * Dr. GRPO: `group_advantages(scale=False)` (no division by std) and `policy_loss(agg="const")`
    (sum over tokens / (sequences x max length): no 1/|o_i| length bias).
  * DAPO: `policy_loss(agg="token", clip_eps_high=0.28, beta=0)` (token-level mean, clip-higher, no KL).
  * Video-R1 / mu = 1 on-policy: `old_logp=None` uses logp.detach(), so rho = 1 but its gradient is not 0.

Differences from the paper: none in the formulas; the paper does not say which aggregation it uses,
the default here is DeepSeekMath's ("seq"). The log-ratio inside the KL is clamped to +-10 as Video-R1
does, so a bf16 outlier token cannot produce an inf.

Letters used in shape comments: B prompts, G completions per prompt, N = B*G sequences,
T completion tokens (padded), P prompt tokens, V vocabulary.

Run: `python grpo.py` prints a worked example of the loss; `python grpo.py bench` times the sampler.
"""
import sys

import torch


def group_advantages(rewards, G, scale=True, eps=1e-4):
    """A_i of each completion relative to the other completions of its prompt.

    rewards: (N,) with N = B*G, grouped as [prompt0: G values, prompt1: G values, ...].
    scale=True:  Eq. 3, A_i = (r_i - mean(r)) / (std(r) + eps)  (GRPO; std is the unbiased sample std, as TRL).
    scale=False: A_i = r_i - mean(r)  (Dr. GRPO: dividing by std over-weights too easy / too hard prompts).
    A group whose rewards are all equal gets A = 0 (no signal), never NaN.
    """
    r = rewards.float().view(-1, G)                       # (B, G)
    adv = r - r.mean(dim=1, keepdim=True)                 # (B, G)
    if scale:
        std = r.std(dim=1, keepdim=True) if G > 1 else torch.zeros_like(r[:, :1])  # (B, 1)
        adv = adv / (std + eps)
    return adv.view(-1)                                   # (N,)


def kl_k3(logp, ref_logp):
    """Per-token k3 estimate of KL(pi_theta || pi_ref) (Schulman 2020), unbiased and always >= 0.

    D_KL = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 = exp(ref_logp - logp) - (ref_logp - logp) - 1.
    logp, ref_logp: (N, T) log-probabilities of the sampled tokens. Returns (N, T).
    """
    log_ratio = (ref_logp - logp).clamp(-10.0, 10.0)      # (N, T), clamped as Video-R1 does
    return torch.exp(log_ratio) - log_ratio - 1.0


def aggregate(per_token, mask, agg="seq", const_len=None):
    """Reduce a per-token quantity (N, T) to a scalar, the three ways the GRPO family does it.

    "seq":   1/N sum_i 1/|o_i| sum_t x_it        (DeepSeekMath GRPO: token mean per sequence, then mean)
    "token": sum_it x_it / sum_it mask_it        (DAPO: every token of the batch weighs the same)
    "const": sum_it x_it / (N * const_len)       (Dr. GRPO: a constant normaliser; const_len defaults to T)
    """
    m = mask.to(per_token.dtype)                          # (N, T)
    total = per_token * m                                 # (N, T)
    if agg == "seq":
        return (total.sum(1) / m.sum(1).clamp(min=1.0)).mean()
    if agg == "token":
        return total.sum() / m.sum().clamp(min=1.0)
    if agg == "const":
        n_seq, n_tok = per_token.shape
        return total.sum() / (n_seq * (const_len or n_tok))
    raise ValueError(f"agg must be 'seq', 'token' or 'const', got {agg!r}")


def policy_loss(logp, old_logp, ref_logp, adv, mask, clip_eps=0.2, clip_eps_high=None, beta=0.04,
                agg="seq", const_len=None, entropy=None):
    """Loss = -J(theta), the clipped GRPO surrogate minus beta * KL (module docstring for J).

    logp:     (N, T) log pi_theta of the sampled tokens, with grad.
    old_logp: (N, T) log pi_old at sampling time, or None for mu = 1 (then pi_old = pi_theta.detach()).
    ref_logp: (N, T) log pi_ref (the frozen start policy), or None / beta = 0 to drop the KL term.
    adv:      (N,)   A_i, one per completion, broadcast over its tokens.
    mask:     (N, T) 1 on completion tokens, 0 on padding after EOS.
    clip_eps / clip_eps_high: the band [1 - clip_eps, 1 + clip_eps_high] (DAPO clip-higher when they differ).
    entropy:  optional (N, T) per-token entropy, only reported.
    Returns (loss scalar, stats dict of floats: kl, clip_frac, ratio_mean, entropy).
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if old_logp is None:
        old_logp = logp.detach()
    m = mask.to(logp.dtype)                                            # (N, T)
    ratio = torch.exp(logp - old_logp)                                 # (N, T) rho_it
    a = adv.to(logp.dtype).unsqueeze(1)                                # (N, 1) A_i
    surr = ratio * a                                                   # (N, T) rho A
    surr_clipped = ratio.clamp(1.0 - clip_eps, 1.0 + eps_high) * a     # (N, T) clip(rho) A
    objective = torch.minimum(surr, surr_clipped)                      # (N, T)
    kl = None
    if ref_logp is not None and beta != 0:
        kl = kl_k3(logp, ref_logp)                                     # (N, T)
        objective = objective - beta * kl
    loss = -aggregate(objective, mask, agg, const_len)
    with torch.no_grad():
        n_tok = m.sum().clamp(min=1.0)
        # a token is clipped when the clipped branch is the active (gradient-free) one
        clipped = ((ratio < 1.0 - clip_eps) & (a < 0)) | ((ratio > 1.0 + eps_high) & (a > 0))  # (N, T)
        stats = {
            "kl": float((kl * m).sum() / n_tok) if kl is not None else 0.0,
            "clip_frac": float((clipped.to(m.dtype) * m).sum() / n_tok),
            "ratio_mean": float((ratio * m).sum() / n_tok),
            "entropy": float((entropy * m).sum() / n_tok) if entropy is not None else float("nan"),
        }
    return loss, stats


# ----------------------------------------------------------------------------------------------
# Sampling and log-probabilities by hand (issue C) go below this line.
# ----------------------------------------------------------------------------------------------


def demo():
    """A worked example: one prompt, G = 4 completions of 3 tokens, rewards [1, 0, 0, 1]."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])                       # (N,) with B=1, G=4
    adv = group_advantages(rewards, G=4)                               # (N,)
    print("rewards   ", rewards.tolist())
    print("advantages", [round(x, 4) for x in adv.tolist()], "(mean 0, +-0.866 = 0.5 / std 0.577)")
    logp = torch.log(torch.tensor([[0.5, 0.4, 0.9]] * 4)).requires_grad_()  # (N, T)
    ref_logp = torch.log(torch.tensor([[0.5, 0.5, 0.9]] * 4))              # (N, T)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])       # (N, T)
    for agg in ("seq", "token", "const"):
        loss, stats = policy_loss(logp, None, ref_logp, adv, mask, agg=agg)
        print(f"agg={agg:5s} loss {loss.item():+.5f}  kl {stats['kl']:.5f}  clip_frac {stats['clip_frac']}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "bench":
        bench()  # noqa: F821  (defined with the sampler, issue C)
    else:
        demo()
