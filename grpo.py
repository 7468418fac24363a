"""GRPO by hand: group-relative advantages, the k3 KL estimator and the clipped policy loss; the sampler.

Paper: Video-STR (arXiv 2510.10976) Sec. 4 trains Qwen2.5-VL with GRPO (DeepSeekMath, Shao et al. 2024),
G = 8 completions per prompt, beta = 0.04. The objective, per prompt q with completions o_1..o_G:

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t ( min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) - beta D_KL,it ) ]
    rho_it   = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)                      (importance ratio)
    A_i      = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)                           (group-relative advantage)
    D_KL,it  = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1                              (k3 estimator, >= 0)

Variants are flags of the same functions, not copies:
  * Dr. GRPO: `group_advantages(scale=False)` (no division by std) and `policy_loss(agg="const")`
    (sum over tokens / (sequences x max length): no 1/|o_i| length bias).
  * DAPO: `policy_loss(agg="token", clip_eps_high=0.28, beta=0)` (token-level mean, clip-higher, no KL).
  * mu = 1 (the default, as Video-R1 and nanochat's chat_rl.py): on policy, `old_logp=None`: rho =
    exp(logp - logp.detach()) = 1, whose gradient is grad log pi (not 0); the clip could never act and is skipped.

Differences from the paper: none in the formulas; the paper does not say which aggregation it uses (here
DeepSeekMath's, "seq"). The log-ratio inside the KL is clamped to +-10 as Video-R1 does, so a bf16 outlier token
cannot produce an inf.

Shape letters: B prompts, G completions per prompt, N = B*G, T completion tokens (padded), P prompt tokens, V vocab.
Run: `python grpo.py` (a worked example of the loss), `python grpo.py bench` (the sampler against model.generate,
fp32 against bf16, tiny model), `python grpo.py bench_rollout [--shape 7b|tiny ...]` (decode steps against the
weights-read floor; `--help` lists the flags).
"""
import argparse
import contextlib
import functools
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel


def group_advantages(rewards, G, scale=True, eps=1e-4):
    """A_i of each completion relative to the other completions of its prompt. rewards: (N,) with N = B*G,
    grouped as [prompt0: G values, prompt1: G values, ...].
    scale=True:  A_i = (r_i - mean(r)) / (std(r) + eps)  (GRPO; std is the unbiased sample std, as TRL).
    scale=False: A_i = r_i - mean(r)  (Dr. GRPO: dividing by std over-weights too easy / too hard prompts).
    A group whose rewards are all equal (max == min) gets A = 0 exactly (no signal), never NaN: the float32 mean
    of G equal values can be 1 ulp off the value, which divided by std + eps would give +-0.001."""
    r = rewards.float().view(-1, G)                       # (B, G)
    adv = r - r.mean(dim=1, keepdim=True)                 # (B, G)
    if scale:
        std = r.std(dim=1, keepdim=True) if G > 1 else torch.zeros_like(r[:, :1])  # (B, 1)
        adv = adv / (std + eps)
    return torch.where(flat_groups(rewards, G)[:, None], torch.zeros_like(adv), adv).view(-1)   # (N,)


def flat_groups(rewards, G):
    """(B,) True where a prompt's G rewards are all equal: no learning signal (A = 0), logged as zero_var."""
    r = rewards.float().view(-1, G)                       # (B, G)
    return r.amax(dim=1) == r.amin(dim=1)                 # (B,)


def kl_k3(logp, ref_logp):
    """Per-token k3 estimate (N, T) of KL(pi_theta || pi_ref) (Schulman 2020), unbiased and always >= 0, from the
    sampled tokens' log-probabilities logp, ref_logp (N, T): D_KL = exp(ref_logp - logp) - (ref_logp - logp) - 1."""
    log_ratio = (ref_logp - logp).clamp(-10.0, 10.0)      # (N, T), clamped as Video-R1 does
    return torch.exp(log_ratio) - log_ratio - 1.0


def aggregate(per_token, mask, agg="seq", const_len=None):
    """Reduce a per-token quantity (N, T) to a scalar, the three ways the GRPO family does it:
    "seq":   1/N sum_i 1/|o_i| sum_t x_it        (DeepSeekMath GRPO: token mean per sequence, then mean)
    "token": sum_it x_it / sum_it mask_it        (DAPO: every token of the batch weighs the same)
    "const": sum_it x_it / (N * const_len)       (Dr. GRPO: a constant normaliser; const_len defaults to T)"""
    m = mask.to(per_token.dtype)                          # (N, T)
    total = per_token * m                                 # (N, T)
    if agg == "seq":
        return (total.sum(1) / m.sum(1).clamp(min=1.0)).mean()
    if agg == "token":
        return total.sum() / m.sum().clamp(min=1.0)
    if agg == "const":
        return total.sum() / (len(per_token) * (const_len or per_token.shape[1]))
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
    Returns (loss scalar, stats dict of floats: kl, clip_frac, ratio_mean, entropy)."""
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    m = mask.to(logp.dtype)                                            # (N, T)
    a = adv.to(logp.dtype).unsqueeze(1)                                # (N, 1) A_i
    ratio = torch.exp(logp - (logp.detach() if old_logp is None else old_logp))  # (N, T) rho_it, = 1 when mu = 1
    objective = ratio * a                                              # (N, T) rho A
    if old_logp is not None:                                           # mu > 1: the clip can act
        surr_clipped = ratio.clamp(1.0 - clip_eps, 1.0 + eps_high) * a  # (N, T) clip(rho) A
        objective = torch.minimum(objective, surr_clipped)             # (N, T)
    kl = torch.zeros_like(logp) if ref_logp is None or beta == 0 else kl_k3(logp, ref_logp)  # (N, T) D_KL
    loss = -aggregate(objective - beta * kl, mask, agg, const_len)
    with torch.no_grad():
        # a token is clipped when the clipped branch is the active (gradient-free) one
        clipped = ((ratio < 1.0 - clip_eps) & (a < 0)) | ((ratio > 1.0 + eps_high) & (a > 0))  # (N, T)
        per_token = {"kl": kl, "clip_frac": clipped.to(m.dtype), "ratio_mean": ratio, "entropy": entropy}
        stats = {k: float((x * m).sum() / m.sum().clamp(min=1.0)) for k, x in per_token.items() if x is not None}
    return loss, stats


def autocast(device, dtype):
    """bf16 autocast for the policy's forwards (CUDA by default; CPU with --dtype bf16); a no-op in fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


# --- sampling and log-probabilities by hand -------------------------------------------------------------------------

def prompt_positions(model, prompt_inputs):
    """M-RoPE position ids of the prompts by model.rope_positions (Qwen2.5-VL's reference scheme), never from
    model.model.rope_deltas, which persists between calls. Returns (pos (3, B, P) long, next_pos (B,) long): the
    first completion token of prompt b sits at next_pos[b] on all three axes, then +1 per token (text is 1-D)."""
    import model as qwen  # here, not at the top: the loss half must import without transformers
    keys = ("input_ids", "mm_token_type_ids", "attention_mask", "video_grid_thw", "second_per_grid_ts")
    return qwen.rope_positions(model.config, *(prompt_inputs[k] for k in keys))


def prompt_embeds(model, prompt_inputs):
    """Token embeddings (B, P, H) of the prompts with the vision tower's output scattered into the video tokens:
    the vision tower runs once per prompt, never once per completion."""
    ids = prompt_inputs["input_ids"]                                       # (B, P)
    embeds = model.get_input_embeddings()(ids)                             # (B, P, H)
    if prompt_inputs.get("pixel_values_videos") is not None:
        feats = model.model.get_video_features(prompt_inputs["pixel_values_videos"], prompt_inputs["video_grid_thw"],
                                               return_dict=True).pooler_output
        feats = torch.cat(feats, 0).to(embeds.dtype)                       # (sum t*h*w/4, H)
        mask = (ids == model.config.video_token_id).unsqueeze(-1)          # (B, P, 1)
        embeds = embeds.masked_scatter(mask.to(embeds.device), feats)
    return embeds


def pick_tokens(logits, temperature, top_p, suppress, generator):
    """Next token from logits (N, V): greedy when temperature == 0, else softmax(logits / temperature)
    restricted to the smallest top-p nucleus. Suppressed ids get -inf first (never chosen).
    The draw is torch.multinomial(probs, 1)'s own algorithm, argmax(probs / q) with q ~ Exp(1) from `generator`
    (the same tokens from the same generator state), without its two validity checks that wait for the device."""
    logits = logits.float()
    if suppress is not None:
        logits = logits.index_fill(1, suppress, float("-inf"))
    if temperature == 0:
        return logits.argmax(-1)                                                   # (N,)
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)                # (N, V)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p                                   # the nucleus already has p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))             # the top token always stays
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(-1)                                                     # (N, V)
    q = torch.empty_like(probs).exponential_(generator=generator)                  # (N, V) ~ Exp(1)
    return (probs / q).argmax(-1)                                                  # (N,)


DECODERS = ("auto", "plain", "static", "graph")
CHECK_EVERY = 16            # the static decoders ask "has every sequence ended?" once per this many tokens


@torch.no_grad()
def sample(model, prompt_inputs, G, max_new_tokens, temperature=1.0, top_p=1.0, eos_ids=(), suppress_ids=(),
           generator=None, pad_id=None, decoder="auto"):
    """G completions per prompt with a KV cache: prefill each prompt (video included) ONCE, repeat its cache
    G times (rows i*G .. i*G+G-1 belong to prompt i), then one token per step for all N = B*G sequences.
    prompt_inputs: make_inputs(...) of B left-padded prompts. temperature 0 = greedy. A sequence stops at its
    first token in eos_ids (that token is kept and masked 1); later positions hold pad_id with mask 0.
    suppress_ids (e.g. the vision placeholder tokens) are never sampled. decoder (DECODERS, rollout_decoder):
    "plain" (plain_step), "static" or "graph" (static_step), the same tokens and log-probs up to rounding; the
    static two check for the end every CHECK_EVERY tokens, so they may draw up to CHECK_EVERY - 1 more times
    from `generator` after the last end. "auto": a graph that fails to capture falls back to static, with a warning.
    Returns completion_ids (N, T) long, mask (N, T) long, logp (N, T) float32: log softmax(logits)[token] of the
    RAW model (temperature 1, no top-p, no suppression), i.e. log pi_theta(o_t | q, o_<t), exactly what
    token_logprobs() computes by teacher forcing, NOT the log-probability under the sampling distribution."""
    if max_new_tokens < 1:
        raise ValueError(f"grpo.sample: max_new_tokens must be >= 1, got {max_new_tokens}")
    import model as qwen
    chosen = rollout_decoder(model, decoder)
    if pad_id is None:
        pad_id = model.generation_config.pad_token_id
        pad_id = pad_id if pad_id is not None else (model.config.text_config.pad_token_id or 0)
    with contextlib.ExitStack() as stack:
        stack.callback(model.train, model.training)                        # back to train mode on exit
        model.eval()                                                       # no LoRA dropout while sampling
        if chosen != "plain":
            stack.enter_context(qwen.lora_sampling(model))
        attn = prompt_inputs["attention_mask"]                             # (B, P)
        pos, next_pos = prompt_positions(model, prompt_inputs)             # (3, B, P), (B,)
        out = model(inputs_embeds=prompt_embeds(model, prompt_inputs), attention_mask=attn, position_ids=pos,
                    use_cache=True, logits_to_keep=1)                      # prefill B prompts once
        logits = out.logits[:, -1].repeat_interleave(G, 0)                 # (N, V)
        attn = attn.repeat_interleave(G, 0)                                # (N, P)
        next_pos = next_pos.repeat_interleave(G, 0)                        # (N,)
        if chosen == "plain":
            out.cache.batch_repeat_interleave(G)                           # (B, ...) -> (N, ...)
            step = functools.partial(plain_step, model, out.cache, attn, next_pos)
        else:
            step = static_step(model, out.cache, G, attn, next_pos, max_new_tokens, graph=chosen == "graph",
                               fallback=decoder == "auto")
        every = 1 if chosen == "plain" else CHECK_EVERY
        del out
        eos = attn.new_tensor(list(eos_ids), dtype=torch.long)
        suppress = attn.new_tensor(sorted(set(suppress_ids)), dtype=torch.long) if suppress_ids else None
        done = torch.zeros_like(next_pos, dtype=torch.bool)                # (N,)
        sync = is_fsdp(model)
        ids, masks, logps = [], [], []
        for t in range(max_new_tokens):
            tok = pick_tokens(logits, temperature, top_p, suppress, generator)  # (N,)
            tok = tok.masked_fill(done, pad_id)
            logps.append(torch.log_softmax(logits.float(), -1).gather(1, tok[:, None]).squeeze(1))  # (N,)
            ids.append(tok)
            masks.append(~done)
            done = done | torch.isin(tok, eos)
            if ((t + 1) % every == 0 and _all_done(done, sync)) or t == max_new_tokens - 1:
                break
            logits = step(tok, t)                                          # (N, V)
    mask = torch.stack(masks, 1).long()                                    # (N, T + steps past the last end)
    T = int(mask.sum(1).max())                                             # the step where every sequence had ended
    logp = torch.where(mask.bool(), torch.stack(logps, 1), 0.0)            # (N, T)
    return torch.stack(ids, 1)[:, :T], mask[:, :T], logp[:, :T]


def rollout_decoder(model, decoder="auto"):
    """The decoder sample() runs for `decoder` (DECODERS): "auto" is "graph" on a CUDA model that the static
    decoders can run and "plain" otherwise; asking for "static" or "graph" where they cannot run raises ValueError.
    They need an unsharded model whose text attention is SDPA without a sliding window (the boolean key mask of
    decode_step), computing in its weights' dtype (autocast off, or to that dtype: decode_step turns autocast off)."""
    if decoder not in DECODERS:
        raise ValueError(f"grpo.sample: decoder must be one of {DECODERS}, got {decoder!r}")
    tc, w = model.config.text_config, model.lm_head.weight
    sliding, problem = getattr(tc, "use_sliding_window", False), None
    if is_fsdp(model):
        problem = "an FSDP-sharded model (each of its forwards is a collective)"
    elif tc._attn_implementation != "sdpa" or sliding:
        problem = f"attention {tc._attn_implementation!r} (sliding window {sliding})"
    elif torch.is_autocast_enabled(w.device.type) and torch.get_autocast_dtype(w.device.type) != w.dtype:
        problem = f"{w.dtype} weights under {torch.get_autocast_dtype(w.device.type)} autocast"
    if decoder == "auto":
        return "graph" if problem is None and w.is_cuda else "plain"
    if decoder != "plain" and problem:
        raise ValueError(f"grpo.sample: decoder {decoder!r} cannot run {problem}; use 'plain'")
    if decoder == "graph" and not w.is_cuda:
        raise ValueError("grpo.sample: decoder 'graph' needs a model on CUDA (CUDA graphs); 'static' runs anywhere")
    return decoder


def is_sharded(p):
    """A parameter split over the ranks by FSDP2 (a DTensor)."""
    from torch.distributed.tensor import DTensor
    return isinstance(p, DTensor)


def is_fsdp(model):
    """True for an FSDP2-sharded model (train.py --fsdp): its every forward is a collective of all ranks."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and any(is_sharded(p) for p in model.parameters())


def _all_done(done, sync):
    """Every sequence has ended (done (N,) bool); with sync, on every rank: a sharded model's ranks must run
    equally many forwards, so a rank whose sequences ended keeps stepping (padding) until all have."""
    flag = done.all().to(torch.int32).reshape(1)
    if sync:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag)


def plain_step(model, cache, attn, next_pos, tok, t):
    """The reference decoder's step: logits (N, V) of the token after token t (tok (N,)) of every sequence, by the
    model's own forward on its DynamicCache `cache` (N rows), which grows by one column. attn (N, P) prompt mask,
    next_pos (N,) first completion position."""
    step_attn = torch.cat([attn, attn.new_ones(len(attn), t + 1)], 1)      # (N, P + t + 1)
    step_pos = (next_pos + t).view(1, -1, 1).expand(3, -1, 1)              # (3, N, 1) text: same on all axes
    out = model(input_ids=tok[:, None], attention_mask=step_attn, position_ids=step_pos, cache=cache, use_cache=True)
    return out.logits[:, -1]                                               # (N, V)


# The fast decoders: per token, the plain loop runs the model's Python (mask building, a growing cache), launches
# every kernel one by one and waits for the device; on a GPU that overhead, not arithmetic, is most of a step.
class StaticKV:
    """A preallocated KV cache in the shape of transformers' Cache protocol (update()), which the model's attention
    layers write into. update() writes one token per sequence at column `slot`, a (1,) tensor (a captured graph
    reads it from memory), and returns every column: decode_step's key mask hides the unwritten."""

    def __init__(self, cache, G, length):
        self.length = -(-length // 64) * 64                    # L: rounded up to 64, aligned rows for attention
        keys = cache.layers[0].keys                            # (B, Hkv, P, D)
        P = keys.shape[2]
        # per layer, keys and values (B, Hkv, P, D) -> (N, Hkv, L, D): each prompt's rows G times, zeros after P
        self.layers = [[torch.nn.functional.pad(x.repeat_interleave(G, 0), (0, 0, 0, self.length - P))
                        for x in (layer.keys, layer.values)] for layer in cache.layers]
        self.slot = torch.full((1,), P, dtype=torch.long, device=keys.device)

    def update(self, keys, values, layer_idx, *args, **kwargs):
        """keys / values (N, Hkv, 1, D) of one token per sequence into column slot; the layer's (N, Hkv, L, D)."""
        k, v = self.layers[layer_idx]
        k.index_copy_(2, self.slot, keys)
        v.index_copy_(2, self.slot, values)
        return k, v


def decode_step(model, kv, tok, pos, key_mask):
    """Logits (N, V) of the token after tok (N,), at text position pos (N,), through the model's own embedding,
    rotary embedding, decoder layers, norm and head; keys and values go to StaticKV kv, attention sees the columns
    where key_mask (N, L) is True. Nothing waits for the device or changes shape, so cuda_graph can capture it.
    Autocast is off (a graph must not keep autocast's cast cache): it computes in the weights' dtype."""
    lm = model.model.language_model
    kernels = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]            # take a boolean mask and capture
    with torch.autocast(tok.device.type, enabled=False), sdpa_kernel(kernels):
        h = lm.embed_tokens(tok[:, None])                                  # (N, 1, H)
        rope = lm.rotary_emb(h, pos.view(1, -1, 1).expand(3, -1, 1))       # cos, sin (N, 1, D): text, 3 axes equal
        mask = key_mask[:, None, None]                                     # (N, 1, 1, L)
        for layer in lm.layers:
            h = layer(h, attention_mask=mask, position_embeddings=rope, cache=kv)   # (N, 1, H)
        return model.lm_head(lm.norm(h))[:, 0]                              # (N, V)


def static_step(model, cache, G, attn, next_pos, max_new_tokens, graph, fallback):
    """The static decoders' step(tok, t) -> logits (N, V): decode_step on a StaticKV of P + max_new_tokens columns
    (filled from the prefill's `cache`), its inputs copied into fixed buffers first. With graph, decode_step is
    captured once here and each step replays it; the warm-up and capture write only column P, which step 0
    writes again before reading it, so with fallback a failed capture leaves the same step without a graph."""
    P = attn.shape[1]
    kv = StaticKV(cache, G, P + max_new_tokens)
    key_mask = torch.nn.functional.pad(attn.bool(), (0, kv.length - P))      # (N, L): the prompts' columns
    tok_in, pos_in = torch.zeros_like(next_pos), next_pos.clone()              # (N,), (N,)
    run = functools.partial(decode_step, model, kv, tok_in, pos_in, key_mask)
    if graph and max_new_tokens > 1:                                           # one token never steps
        try:
            run = cuda_graph(run)
        except GraphCaptureError as e:
            if not fallback:
                raise
            warnings.warn(f"{e}; sampling with the static decoder, without a graph")

    def step(tok, t):
        tok_in.copy_(tok)
        torch.add(next_pos, t, out=pos_in)                                     # token t's position
        kv.slot.fill_(P + t)                                                   # ... and its column
        key_mask[:, P + t] = True
        return run()
    return step


class GraphCaptureError(RuntimeError):
    """A step could not be captured as a CUDA graph (sample's "auto" then decodes without one)."""


def cuda_graph(fn, warmup=3):
    """fn() captured once as a CUDA graph, as PyTorch's CUDA-graph notes prescribe: `warmup` calls on a side stream,
    then the capture. fn takes no arguments and reads and writes only tensors that stay where they are. Returns
    replay() -> fn's output tensor, rewritten in place by every replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            out = fn()
    except RuntimeError as e:
        raise GraphCaptureError(f"grpo.cuda_graph: the decode step could not be captured ({e})") from e

    def replay():
        graph.replay()
        return out
    return replay


def _chunk_logprobs(lm_head, hidden, ids):
    """log softmax(lm_head(hidden))[ids] for one chunk: hidden (n, T, H), ids (n, T) -> (n, T) float32."""
    logits = lm_head(hidden).float()                                       # (n, T, V)
    return torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def token_logprobs(model, prompt_inputs, completion_ids, mask, chunk_tokens=4096):
    """log pi_theta(o_t | q, o_<t) of every completion token by teacher forcing, with gradient: (N, T), 0 where
    mask is 0. sample()'s positions (prompt_positions, then next_pos[b] + t); the language model runs on N = B*G
    full sequences. Logits exist only at completion positions, `chunk_tokens` at a time, each chunk's lm_head +
    log-softmax checkpointed: backward holds one chunk of (tokens x V) float32 at most (V = 152k for Qwen)."""
    (B, P), (N, T) = prompt_inputs["input_ids"].shape, completion_ids.shape
    G = N // B
    pos, next_pos = prompt_positions(model, prompt_inputs)                 # (3, B, P), (B,)
    embeds = prompt_embeds(model, prompt_inputs).repeat_interleave(G, 0)   # (N, P, H)
    embeds = torch.cat([embeds, model.get_input_embeddings()(completion_ids)], 1)  # (N, P+T, H)
    steps = torch.arange(T, device=pos.device)
    comp_pos = (next_pos.repeat_interleave(G, 0)[:, None] + steps).unsqueeze(0).expand(3, N, T)  # (3, N, T)
    pos = torch.cat([pos.repeat_interleave(G, 1), comp_pos], 2)            # (3, N, P+T)
    attn = torch.cat([prompt_inputs["attention_mask"].repeat_interleave(G, 0),
                      torch.ones_like(completion_ids)], 1)                 # (N, P+T)
    hidden = model.model(inputs_embeds=embeds, attention_mask=attn, position_ids=pos,
                         use_cache=False).last_hidden_state               # (N, P+T, H)
    hidden = hidden[:, P - 1:P + T - 1]                                    # (N, T, H): state before token t
    rows = max(1, chunk_tokens // max(T, 1))
    chunk = _chunk_logprobs
    if torch.is_grad_enabled() and hidden.requires_grad:                   # recomputed in backward, chunk by chunk
        chunk = functools.partial(torch.utils.checkpoint.checkpoint, _chunk_logprobs, use_reentrant=False)
    out = [chunk(model.lm_head, h, ids) for h, ids in zip(hidden.split(rows), completion_ids.split(rows))]  # (n, T)
    return torch.where(mask.bool().to(hidden.device), torch.cat(out, 0), 0.0)  # (N, T)


# --- support: no paper content below (benchmarks of the sampler, the demo) ------------------------------------------

def bench(G=8, lengths=(64, 256), frames=16, size=56, repeats=5):
    """Tokens/s of sample() vs model.generate() on the tiny model, same settings (1 prompt, G completions,
    temperature 1, top-p 1, vision tokens suppressed, no EOS so both produce all G*T tokens), then one update's
    forward + backward in fp32 vs bf16 autocast (which precision trains faster here). Best of `repeats`."""
    import model as qwen
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        m, tok = qwen.load(qwen.build_tiny(d, qwen.demo_texts()), dtype=torch.float32, device="cpu")
    m.eval()
    video = np.random.default_rng(0).integers(0, 256, (frames, size, size, 3), dtype=np.uint8), np.arange(frames) / 2
    row = {"id": "bench", "question": "How far is the red cube?", "answer_type": "num", "answer": 1.0}
    inputs = qwen.make_inputs(tok, m.config, [row], [video], size * size, size * size)
    suppress = tok.convert_tokens_to_ids(qwen.VISION_TOKENS)
    print(f"tiny Qwen2.5-VL {qwen.count_params(m):,} params, {frames} frames {size}x{size}, prompt "
          f"{inputs['input_ids'].shape[1]} tokens, G={G}, torch threads {torch.get_num_threads()}")
    for T in lengths:
        times = [(_timed(lambda: sample(m, inputs, G, T, eos_ids=(), suppress_ids=suppress)),
                  _timed(lambda: generate_all(m, inputs, G, T, suppress, tok.pad_token_id))) for _ in range(repeats)]
        t_ours, t_gen = np.min(times, axis=0)                               # seconds, best of `repeats`
        print(f"T={T:4d}: sample {G * T / t_ours:8.0f} tok/s ({t_ours:.3f} s)   generate {G * T / t_gen:8.0f} tok/s "
              f"({t_gen:.3f} s)   ratio {t_gen / t_ours:.2f}x")
    ids, mask, _ = sample(m, inputs, G, 128, temperature=1.0, eos_ids=(), suppress_ids=suppress)

    def update(bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logp = token_logprobs(m, inputs, ids, mask)                      # (G, T)
        (-(logp * mask).sum()).backward()
        m.zero_grad(set_to_none=True)

    for name in ("fp32", "bf16"):
        best = min(_timed(lambda: update(name == "bf16")) for _ in range(repeats))
        print(f"update (token_logprobs forward + backward, {G} x 128 tokens) {name}: {best * 1000:.0f} ms")


def generate_all(model, inputs, G, T, suppress, pad_id):
    """model.generate as the benchmarks run it: G completions per prompt of exactly T tokens (min_new_tokens),
    temperature 1, no top-k / top-p, the ids `suppress` never sampled."""
    return model.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=T,
                          min_new_tokens=T, num_return_sequences=G, suppress_tokens=suppress, pad_token_id=pad_id)


def _timed(fn, cuda=False):
    """Seconds that fn() takes, with (cuda) the work it queued on the GPU."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def bench_rollout(a):
    """ms per decode step of sample()'s decoders and of model.generate, LoRA on and off, against the floor: the
    language model's weights read once per step at the bandwidth of a large copy measured in the same run.
    Random weights (model.random_model; LoRA's B random too, so that a wrong adapter path shows), no EOS; by
    default (cli's flags) the 7B shape in bf16 on CUDA, the tiny one in float32 on a CPU; then checks the decoders."""
    import transformers
    import model as qwen
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = qwen.best_dtype(device)
    t0 = time.perf_counter()
    tok = qwen.train_tokenizer(qwen.demo_texts())
    if a.shape == "7b":
        config, pixels = qwen.qwen25_vl_7b_config(tokenizer=tok), (16 * 28 * 28, qwen.TRAIN_MAX_PIXELS)
    else:
        config, pixels = qwen.tiny_config(tok), (qwen.TINY_MIN_PIXELS, qwen.TINY_MAX_PIXELS)
    model = qwen.random_model(config, device, dtype, a.lora_rank).eval()
    for mod in qwen.lora_modules(model):
        torch.nn.init.normal_(mod.lora_B, 0.0, 0.02)
    inputs = qwen.video_prompt(tok, config, a.frames, *pixels, device, dtype)
    eos, suppress = qwen.special_ids(tok)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{a.shape} shape, random weights, {qwen.count_params(model) / 1e6:,.1f}M params, LoRA r={a.lora_rank}, "
          f"{dtype}, {where}; G={a.G}, prompt {inputs['input_ids'].shape[1]} tokens ({a.frames} frames), "
          f"{a.new_tokens} new tokens; torch {torch.__version__}, transformers {transformers.__version__}; built in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    @torch.no_grad()
    def run(name, n):                          # n new tokens per sequence from `name` (a decoder or "generate")
        with autocast(device, dtype):
            if name == "generate":
                return generate_all(model, inputs, a.G, n, suppress, eos[0])
            return sample(model, inputs, a.G, n, 1.0, 1.0, eos_ids=(), suppress_ids=suppress, pad_id=eos[0],
                          generator=torch.Generator(device).manual_seed(0), decoder=name)

    # ms per step: (time for T tokens - time for 2) / (T - 2), after one untimed call (first calls pay one-time
    # costs); the prefill, the vision tower and a graph's capture are in both and cancel
    names, T, ms = a.decoders.split(","), a.new_tokens, {}
    for lora in ("on", "off"):
        for name in names + ["generate"]:
            with qwen.lora_disabled(model) if lora == "off" else contextlib.nullcontext():
                try:
                    run(name, 2)
                    short, full = _timed(lambda: run(name, 2), cuda), _timed(lambda: run(name, T), cuda)
                except RuntimeError as e:               # a graph that cannot be captured, out of memory: skipped
                    print(f"{name:9s} LoRA {lora:3s} failed, skipped: {type(e).__name__}: {e}", flush=True)
                    continue
            ms[name, lora] = (full - short) / (T - 2) * 1000
            print(f"{name:9s} LoRA {lora:3s} {ms[name, lora]:8.2f} ms/step   ({T} tokens {full:6.2f} s, 2 tokens "
                  f"{short:5.2f} s)", flush=True)
    # the floor: the language model's layers, norm and head (not the embedding table: one row per token), adapters in
    # the weights' dtype (lora_sampling), read at the speed of one large copy (each byte read and written once)
    lm, size = model.model.language_model, model.lm_head.weight.element_size()
    table = {id(w) for w in lm.embed_tokens.parameters()}
    params = list(lm.named_parameters()) + list(model.lm_head.named_parameters())
    adapters = sum(w.numel() * size for k, w in params if ".lora_" in k)
    weights = sum(w.numel() * w.element_size() for k, w in params if ".lora_" not in k and id(w) not in table)
    src = torch.ones((2 * 1024 ** 3 if cuda else 256 * 1024 ** 2) // 4, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.nbytes / min(_timed(lambda: dst.copy_(src), cuda) for _ in range(5))
    floor = {"on": (weights + adapters) / bandwidth * 1000, "off": weights / bandwidth * 1000}
    print(f"floor: {weights / 1e6:,.1f} MB of language-model weights (+ {adapters / 1e6:,.1f} MB of adapters in "
          f"{dtype}) read once per step at {bandwidth / 1e9:,.0f} GB/s (a large copy): {floor['on']:.2f} ms/step "
          f"with LoRA, {floor['off']:.2f} without")
    fast = next((ms[d, "on"] for d in ("graph", "static") if (d, "on") in ms), float("nan"))
    gen = ms.get(("generate", "on"), float("nan"))
    print(f"rollout on one {'GPU' if cuda else 'CPU'} ({'7B' if a.shape == '7b' else 'tiny'} shape, LoRA "
          f"r={a.lora_rank}, G={a.G}): sample {fast:.1f} ms/step, generate {gen:.1f} ms/step, floor "
          f"{floor['on']:.2f} ms/step ({time.strftime('%Y-%m-%d')}, {where})", flush=True)
    # check: each fast decoder's largest gap between its log-probs and token_logprobs' on its own n tokens, and how
    # long its tokens stay plain's from the same seed (rounding may part them after a while, a wrong step at once)
    n, checked = 16, [d for d in names if (d, "on") in ms]
    ref, _, ref_logp = run("plain", n) if "plain" in checked else (None, None, None)
    for name in [d for d in checked if d != "plain"]:
        try:
            ids, mask, logp = run(name, n)                                          # (N, n)
            with torch.no_grad(), autocast(device, dtype):
                err = float((logp - token_logprobs(model, inputs, ids, mask).float()).abs().max())
        except RuntimeError as e:                       # reported, not raised
            print(f"check {name} failed: {type(e).__name__}: {e}", flush=True)
            continue
        line = f"check {name}: max |logp - token_logprobs| {err:.3g}"
        if ref is not None:
            agree = (ids == ref).long().cumprod(1).sum(1)                           # (N,) tokens before a difference
            gap = torch.where(agree[:, None] == n, logp - ref_logp, 0.0).abs().max()
            line += (f"; the same {n} tokens as plain in {int((agree == n).sum())}/{len(agree)} sequences (mean "
                     f"{float(agree.float().mean()):.1f} before a difference), max |logp - plain's| there "
                     f"{float(gap):.3g}")
        print(line, flush=True)


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


def main(argv=None):
    import data                                                        # torch-free: its SubcommandParser only
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python grpo.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", title="commands (none: the loss worked by hand)",
                           parser_class=data.SubcommandParser)
    sub.add_parser("bench", help="tokens/s of sample() vs model.generate(), an update in fp32 vs bf16 (tiny model)")
    r = sub.add_parser("bench_rollout", help=bench_rollout.__doc__.split(":")[0])
    r.add_argument("--shape", default="7b" if cuda else "tiny", choices=["7b", "tiny"])
    for flag, default in (("--G", 8), ("--frames", 16), ("--new_tokens", 128 if cuda else 64),
                          ("--lora_rank", 64 if cuda else 8)):
        r.add_argument(flag, type=int, default=default)
    r.add_argument("--decoders", default="plain,static,graph" if cuda else "plain,static",
                   help="sample() decoders to time, comma-separated (model.generate is always timed)")
    args = p.parse_args(argv)
    {None: lambda _: demo(), "bench": lambda _: bench(), "bench_rollout": bench_rollout}[args.command](args)


if __name__ == "__main__":
    main()
