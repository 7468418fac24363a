"""Video-STR training: GRPO with the graph reward (paper Sec. 4), after an optional supervised warm-up, on one
device or N ranks under torchrun.

What one GRPO step does (DeepSeekMath's GRPO, as the paper uses it; run_grpo):
  1. B prompts (video + question); grpo.sample draws G completions each, no grad       -> N = B*G sequences
  2. rewards.total_reward scores each: R = R_format + R_ans + R_graph + R_l, weighted (--variant: the graph term)
  3. grpo.group_advantages: A_i = (r_i - mean(r)) / (std(r) + eps) within each prompt's group
  4. reference log-probs: the start policy (LoRA adapters switched off, or a frozen copy for full fine-tuning)
  5. grpo.policy_loss: the surrogate minus beta * k3 KL, clipped only when mu > 1 (mu = 1: grpo.py's docstring)
  6. clip the gradient norm, AdamW, cosine schedule with warm-up.
The default run is GRPO alone from tiny_base/, a tiny Qwen2.5-VL that already sees (as the paper's pretrained
Qwen2.5-VL does), which `--preset base` made: phase 0 (run_vision) and the supervised warm-up (run_warmup).
`--grpo_steps 0` after a warm-up is the paper's SFT baseline. Differences from the paper: synthetic data
(data.py) and a tiny base made here from random weights; the rest is the paper's recipe with smaller numbers
(`--preset paper`: the 7B).

Run: `python train.py` (about 11 min on 2 CPU cores); `--resume` after an interruption; `--preset` picks PRESETS;
`torchrun --nproc_per_node N train.py ...` runs N data-parallel ranks. Outputs go to runs/NAME/ (README.md, "What
train.py logs"); a kill at any instant leaves a run that --resume finishes. Below the "support" marker: what the
paper does not describe.
Letters: B prompts, G completions per prompt, N = B*G, n rows of a GRPO micro-batch, T completion, P prompt tokens.
"""
import argparse
import contextlib
import copy
import functools
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub: a missing local folder fails in seconds, not minutes

import numpy as np
import torch
import transformers

import data
import eval as ev
import grpo
import model as qwen
import rewards


@dataclasses.dataclass
class Config:
    # run
    preset: str = "tiny"            # tiny (GRPO from the shipped tiny base, CPU, minutes) | base (remake that base: 2
                                    # CPU cores, < 2 h) | scratch (phase 0, warm-up and GRPO from random weights in
                                    # minutes: stays blind) | paper (7B from --model, one GPU) | shape7b (one GRPO
                                    # step of paper on a random 7B-shaped model: time, memory)
    name: str = "default"           # outputs go to OUT/NAME
    out: str = "runs"               # folder of all runs
    seed: int = 0                   # seeds data order, sampling and init of new weights
    device: str = "auto"            # auto (cuda if present) | cpu | cuda
    dtype: str = "auto"             # auto (model.best_dtype: bf16 on a GPU that has it, else fp32) | bf16 | fp32
    threads: int = 1                # torch CPU threads (1 degrades gracefully beside other work; 2 ~10 % faster idle)
    resume: bool = False            # continue runs/NAME from its last checkpoint; only RESUMABLE flags may differ
    variant: str = "graph"          # graph (Video-STR) | none (no graph asked, written or rewarded: the paper's w/o
                                    # graph) | coords (centres only, R_graph = 2 R_n) | answer_only (graphs written,
                                    # R_graph dropped): rewards.VARIANTS
    # data
    frames: int = data.TRAIN_FRAMES  # frames per video (paper: 16 for training)
    max_prompt_tokens: int = data.MAX_PROMPT_TOKENS  # skip rows whose prompt has more text tokens (video not counted)
    data_scenes: int = data.SCENES  # scenes of the synthetic set (4 questions each; data.py make's --n)
    data: str = "data/synth"        # folder with train.jsonl / val.jsonl / test.jsonl, or a .jsonl; a synthetic set
                                    # (data.py make) is made when missing, its dataset.json checked (ensure_data)
    scene_seed: int = -1            # seed of the rendered scenes (-1: --seed); the base preset renders its own
    roll_share: float = 0.0         # share of the rendered scenes whose camera is rolled about its optical axis (up
                                    # to data.MAX_ROLL degrees), so that a base's vision tower sees rolled footage
    layout: str = "plain"           # the rendered rows' reference reasoning: plain | asked_last | options
                                    # (data.reasoning_text)
    min_pixels: int = qwen.TINY_MIN_PIXELS  # lower per-frame pixel budget of Qwen2.5-VL's smart_resize (tiny: 56x56)
    max_pixels: int = qwen.TINY_MAX_PIXELS  # upper pixel budget per frame (paper: 128x28x28)
    # model
    model: str = "tiny_base"        # local folder of a Qwen2.5-VL checkpoint (tiny_base: shipped; built here
                                    # when phase 0 will teach it to see)
    tiny_width: int = 64            # a new tiny model's language-model width, a multiple of 32 (heads of 16, MLP 3x)
    lora_rank: int = 0              # 0 = full fine-tuning
    lora_alpha: float = 16.0        # LoRA scale alpha / rank
    lora_dropout: float = 0.0       # dropout on the LoRA input (0: none)
    fsdp: bool = False              # under torchrun, full fine-tuning: shard weights, grads, AdamW state (FSDP2)
    freeze_vision: bool = True      # keep the vision tower fixed in the warm-up and GRPO (it learned in phase 0)
    grad_ckpt: bool = False         # gradient checkpointing in the warm-up and GRPO (on for the paper preset)
    shape_layers: int = 28          # --preset shape7b: decoder layers of a random model of the 7B's widths (7B: 28)
    shape_vision_blocks: int = 32   # --preset shape7b: vision blocks of that model (7B: 32)
    # phase 0: the vision tower learns to see (tiny model only; a real checkpoint already sees)
    vision_steps: int = 0           # supervised steps on the rows' ground-truth graphs (0: skipped, the base sees)
    vision_batch: int = 16          # videos per step (per rank under torchrun)
    vision_lr: float = 3e-3         # phase 0 learning rate (vision tower and its head)
    # supervised warm-up
    sft_steps: int = 0              # teacher-forced steps on the reference reasoning first (the base had its own)
    sft_batch: int = 8              # rows per warm-up step (per rank under torchrun)
    sft_lr: float = 3e-3            # warm-up learning rate
    sft_answer_weight: float = 1.0  # warm-up loss weight of the tokens after the last graph block (the step from the
                                    # graph to the answer: a few tokens beside ~60 of graph)
    sft_grpo_rows: bool = False     # the warm-up draws the rows a GRPO run of this seed would, in its order (B =
                                    # --sft_batch): the SFT arm of the toy Table 1 (eval.py generalization)
    # GRPO
    grpo_steps: int = 300           # GRPO steps (after the warm-up, if any)
    batch: int = 4                  # B prompts per GRPO step (per rank under torchrun)
    micro_batch: int = 4            # GRPO prompts per forward/backward (gradient accumulation over B / micro_batch)
    G: int = 8                      # completions per prompt (paper: 8)
    max_new_tokens: int = 180       # completion budget T (the synthetic reference reasoning is 50-170 tokens)
    temperature: float = 1.0        # sampling temperature (paper / Video-R1: 1.0)
    top_p: float = 1.0              # nucleus sampling mass (1.0: off)
    decoder: str = "auto"           # auto (a CUDA graph on a GPU, else plain) | plain | static | graph (grpo.sample)
    lr: float = 5e-5                # GRPO learning rate (paper: 1e-6 for the 7B; tiny: 5e-5 chosen on val over 2e-4)
    lr_warmup: int = 10             # learning rate: linear warm-up steps of each phase, then cosine to 10 %
    weight_decay: float = 0.0       # AdamW weight decay
    beta: float = 0.04              # KL weight (paper: 0.04); 0 skips the reference model
    clip_eps: float = 0.2           # PPO clip range [1 - clip_eps, 1 + clip_eps_high]; acts only when mu > 1
    clip_eps_high: float = 0.2      # upper clip bound 1 + clip_eps_high (DAPO clip-higher: 0.28)
    agg: str = "seq"                # loss aggregation: seq (GRPO) | token (DAPO) | const (Dr. GRPO)
    scale_adv: bool = True          # divide advantages by the group std (False: Dr. GRPO)
    mu: int = 1                     # inner epochs per batch of samples (1: on-policy)
    grad_clip: float = 1.0          # clip the gradient norm to this before each update
    # rewards (weights of R_format, R_ans, R_graph, R_l, and the length window)
    w_format: float = 1.0           # weight of R_format
    w_answer: float = 1.0           # weight of R_ans
    w_graph: float = 1.0            # weight of R_graph (the variant's graph term: --variant sets which)
    w_length: float = 1.0           # weight of R_l
    len_lo: int = 40                # R_l window's lower end in tokens (paper: 320 of 768; tiny reasoning is shorter)
    len_hi: int = 170               # upper end of the R_l window in tokens (paper: 512)
    len_bonus: float = 0.2          # R_l when the answer is correct and the length in the window (paper: 0.2)
    # logging, evaluation, checkpoints
    eval_every: int = 100           # held-out evaluation every N warm-up / GRPO steps (phase 0 reports every 100)
    eval_n: int = 96                # val questions per evaluation during training
    test_n: int = 300               # test questions of the final before/after table
    ckpt_every: int = 100           # checkpoint (for --resume) every N warm-up / GRPO steps (phase 0 has none)
    keep_ckpts: int = 2             # newest checkpoints kept
    sample_every: int = 25          # write a few completions to samples.jsonl every N GRPO steps
    plot_every: int = 25            # redraw curves.png every N GRPO steps
    paired_every: int = 5           # every N GRPO steps also sample pi_ref (the start) on the step's prompts with the
                                    # step's sampling noise: the paired training answer of curves.png (0: off; full
                                    # fine-tuning with --beta 0 keeps a frozen copy of the start for it)


ADAM_BETAS = (0.9, 0.99)       # AdamW (beta1, beta2) of every phase
BASE_SCENE_SEED = 1000         # the base preset's scenes: default_rng([1000, i]); other runs use --seed (0, 1, 2..)

PRESETS = {
    "tiny": {},
    # The earlier default (RESULTS.md "From scratch in 13 minutes"): it stays blind, kept to show why the base exists.
    "scratch": dict(name="scratch", model="tiny_model", vision_steps=700, sft_steps=1300, grpo_steps=130,
                    eval_every=500, lr=2e-4),
    "paper": dict(model="", data="", frames=data.TRAIN_FRAMES, min_pixels=16 * 28 * 28,
                  max_pixels=qwen.TRAIN_MAX_PIXELS, vision_steps=0, freeze_vision=False, lora_rank=64,
                  lora_alpha=128.0, grad_ckpt=True, sft_steps=0, grpo_steps=1000, batch=1, micro_batch=1,
                  max_new_tokens=768, lr=1e-6, len_lo=rewards.LEN_LO, len_hi=rewards.LEN_HI, eval_every=100,
                  eval_n=200, ckpt_every=100, threads=8),   # G, temperature, beta, len_bonus: Config's defaults
    # The tiny base that sees (RESULTS.md "Remaking the base"; `torchrun --standalone --nproc_per_node 2`, batches
    # per rank): phase 0 and the warm-up on fresh scenes, each seen about twice; GRPO from it meets unseen scenes.
    # This is the recipe of tiny_base/ (commit bf5efd4). A remake at width 128 with the asked_last layout, rolled
    # scenes and the answer weighted was measured and not shipped (RESULTS.md "The remake against the targets").
    "base": dict(name="base", data="data/base", model="base_init", scene_seed=BASE_SCENE_SEED, data_scenes=20000,
                 vision_steps=5000, vision_batch=8, sft_steps=9000, sft_batch=8, grpo_steps=0, eval_every=1500,
                 eval_n=200, ckpt_every=500),
}
# --preset shape7b (RESULTS.md "A 7B-shaped check on a CPU"): on a CPU, the widths kept and the depth and sizes cut.
ON_CPU = dict(shape_layers=2, shape_vision_blocks=2, frames=4, min_pixels=56 * 56, max_pixels=16 * 28 * 28, G=2,
              max_new_tokens=16, threads=2)
PRESETS["shape7b"] = dict(PRESETS["paper"], name="shape7b", dtype="bf16",
                          **({} if torch.cuda.is_available() else ON_CPU))


def run(cfg, run_dir, device, dtype):
    """Data and model (made on first use, by rank 0 first), usable rows, each unfinished phase, the test table."""
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    main_first(ensure_data, cfg)
    found = {s: load_split(cfg, s) for s in ("train", "val", "test")}
    main_first(ensure_model, cfg, found["train"][0])
    tok = transformers.AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
    rows = {}
    for split, (good, bad) in found.items():
        rows[split], too_long = split_by(good, lambda row: qwen.prompt_problem(tok, row, cfg.max_prompt_tokens))
        report_skipped(run_dir, f"{split} rows", bad + too_long)
    train_rows, val_rows, test_rows = rows["train"], rows["val"], rows["test"]
    if not train_rows:
        raise SystemExit(f"no usable training rows in {cfg.data} (see {run_dir}/skipped.json)")
    step = checkpoint_step(run_dir)
    if is_main():
        print(f"run {run_dir} | {device} {dtype} | {len(train_rows)} train / {len(val_rows)} val / {len(test_rows)} "
              f"test rows | config in {run_dir}/config.json" + (f" | {world()} ranks" * (world() > 1)))
        drop_metrics_after(run_dir, step)
    total = cfg.sft_steps + cfg.grpo_steps
    r = Run(cfg, run_dir, device, dtype, train_rows, val_rows[:cfg.eval_n], test_rows[:cfg.test_n])
    if cfg.vision_steps > 0 and not os.path.isdir(os.path.join(run_dir, "vision")):
        run_vision(r)
    if cfg.sft_steps > 0 and (step < cfg.sft_steps or not os.path.isdir(os.path.join(run_dir, "warmup"))):
        step = run_warmup(r, step)
    if cfg.grpo_steps > 0 and (step < total or not os.path.isdir(os.path.join(run_dir, "final"))):
        step = run_grpo(r, step)
    final_report(r)
    if cfg.preset == "base" and is_main():
        write_card(cfg, run_dir)
    if is_main():
        print(f"done: {step} steps in {(time.time() - t0) / 60:.1f} min; outputs in {run_dir}/")


def run_vision(r):
    """Phase 0 (tiny model only): the vision tower and a VisionHead learn which objects a key frame shows and where
    (the rows' ground-truth graphs). A random tiny model's language model cannot pull an untrained visual signal
    through (RESULTS.md, "What was tried to make the tiny model read the video"); a real Qwen2.5-VL already sees.
    Exports runs/NAME/vision/."""
    cfg, run_dir = r.cfg, r.dir
    mdl, tok = qwen.load(cfg.model, dtype=torch.float32, device=r.device)
    clips, held = key_frame_clips(r.train_rows), drop_unreadable(cfg, key_frame_clips(r.val_rows)[:64])[0]
    categories = sorted({n["category"] for c in clips for nodes in c["frames"].values() for n in nodes})
    if not clips:
        raise SystemExit("phase 0 needs rows with ground-truth `graphs`; use --vision_steps 0 for data without")
    head = VisionHead(mdl.config.text_config.hidden_size, categories).to(r.device)
    params = list(mdl.model.visual.parameters()) + list(head.parameters())
    sync_params(params)                                # every rank starts from rank 0's head (as DDP does)
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=cfg.weight_decay, betas=ADAM_BETAS)
    mdl.train()
    for step in range(cfg.vision_steps):
        set_lr(opt, lr_at(step, cfg.vision_steps, cfg.vision_lr, cfg.lr_warmup))
        t0 = time.time()
        batch, _ = step_rows(cfg, run_dir, clips, step, cfg.vision_batch, cfg.seed + 2, "phase 0 steps")
        if not batch:
            continue
        loss = vision_loss(*vision_step(r, mdl, tok, head, batch))
        with stop_if_nonfinite(cfg, run_dir, "vision", step + 1):
            check_finite(loss, "the vision loss")
            loss.backward()
            clipped_update(opt, params, cfg.grad_clip)
        if held and ((step + 1) % 100 == 0 or step + 1 == cfg.vision_steps):
            with torch.no_grad():
                rep = vision_report(*vision_step(r, mdl, tok, head, held))
            log(run_dir, {"phase": "vision", "step": step + 1, "loss": loss.item(), **rep},
                f"vision step {step + 1:5d}/{cfg.vision_steps} loss {loss.item():.3f} | held-out: "
                f"{vision_summary(rep)} | {time.time() - t0:.2f}s")
    export(mdl, tok, os.path.join(run_dir, "vision"))


def run_warmup(r, step):
    """Supervised warm-up on the reference reasoning, steps [step, sft_steps); exports runs/NAME/warmup. Unreadable
    rows are skipped (step_rows); a non-finite loss or gradient stops the run, not updated (stop_if_nonfinite)."""
    cfg, run_dir = r.cfg, r.dir
    forget_test_results(run_dir, "after warm-up")
    mdl, tok, _, opt, step = open_phase(r, start_folder(cfg, run_dir), cfg.sft_lr, step, 0, cfg.sft_steps, "warm-up")
    usable = [row for row in r.train_rows if row.get("reasoning")]
    if not usable or (cfg.sft_grpo_rows and len(usable) < len(r.train_rows)):
        raise SystemExit("the warm-up needs rows with a reference `reasoning` (--sft_grpo_rows: every row); use "
                         "--sft_steps 0 for data without")
    order_seed = cfg.seed + 1 if cfg.sft_grpo_rows else cfg.seed                # run_grpo's order, or its own
    while step < cfg.sft_steps:
        set_lr(opt, lr_at(step, cfg.sft_steps, cfg.sft_lr, cfg.lr_warmup))
        t0 = time.time()
        rows, bad = step_rows(cfg, run_dir, usable, step, cfg.sft_batch, order_seed, "warm-up steps")
        with stop_if_nonfinite(cfg, run_dir, "sft", step + 1):
            out = sft_step(r, mdl, tok, rows, opt) if rows else None
        step += 1
        dt, lr = time.time() - t0, opt.param_groups[0]["lr"]
        if out is None:
            log(run_dir, {"phase": "sft", "step": step, "skipped": len(bad)},
                f"sft  step {step:5d}/{cfg.sft_steps} no readable row in the batch: no update")
        else:
            log(run_dir, {"phase": "sft", "step": step, "lr": lr, "seconds": dt, **out,
                          **({"skipped": len(bad)} if bad else {})},
                f"sft  step {step:5d}/{cfg.sft_steps} loss {out['loss']:.4f} grad {out['grad_norm']:.2f} lr {lr:.1e}"
                f" | {dt:.2f}s {out['tokens'] / dt:.0f} tok/s" + (f" | {len(bad)} row(s) skipped" if bad else ""))
        if checkpoint_and_eval(r, step, cfg.sft_steps, mdl, tok, opt, "warm-up"):
            plot_curves(run_dir)
    export(mdl, tok, os.path.join(run_dir, "warmup"))
    return step


def sft_step(r, mdl, tok, rows, opt):
    """One teacher-forced step: loss = -sum_t w_t log pi(y_t | x, y_<t) / sum_t 1 over the reference completion's
    tokens, w_t = --sft_answer_weight after the last graph block, else 1 (answer_weights; 1 everywhere: the mean)."""
    mdl.train()
    inputs = prompt_batch(r, tok, mdl, rows)
    texts = [row["reasoning"] for row in rows]
    ids, mask = completion_tensors(tok, texts, r.device)                             # (B, T)
    with grpo.autocast(r.device, r.dtype):
        logp = grpo.token_logprobs(mdl, inputs, ids, mask)                          # (B, T)
    loss = -(logp * answer_weights(tok, texts, mask, r.cfg.sft_answer_weight)).sum() / dist_norm(mask.sum())
    check_finite(loss, "the loss")
    loss.backward()
    grad_norm = clipped_update(opt, trainable(mdl), r.cfg.grad_clip)
    return all_mean({"loss": loss.item(), "grad_norm": grad_norm, "tokens": int(mask.sum())}, sums=("tokens",))


def run_grpo(r, step):
    """GRPO steps [step, sft_steps + grpo_steps) from the warm-up policy (one step: rollout, then grpo_update);
    exports runs/NAME/final. Unreadable rows and non-finite values are handled as in run_warmup."""
    cfg, run_dir = r.cfg, r.dir
    forget_test_results(run_dir, "after GRPO", "wrong video")
    start = os.path.join(run_dir, "warmup") if cfg.sft_steps > 0 else start_folder(cfg, run_dir)
    total = cfg.sft_steps + cfg.grpo_steps
    mdl, tok, ref_mdl, opt, step = open_phase(r, start, cfg.lr, step, cfg.sft_steps, total, "grpo", ref=True)
    while step < total:
        # `step` counts both phases (warm-up steps, then GRPO steps: metrics.jsonl's x axis); k is the GRPO index.
        # The sampling seed uses the global step, so a resumed run redraws exactly the same completions.
        k = step - cfg.sft_steps
        set_lr(opt, lr_at(k, cfg.grpo_steps, cfg.lr, cfg.lr_warmup))
        rows, bad = step_rows(cfg, run_dir, r.train_rows, k, cfg.batch, cfg.seed + 1, "GRPO steps")
        seed = cfg.seed * 1_000_003 + step + rank() * 2 ** 40
        if rows:
            ro = rollout(r, mdl, tok, rows, torch.Generator(r.device).manual_seed(seed))
            paired = paired_answer(r, mdl, ref_mdl, tok, ro, seed) if cfg.paired_every and k % cfg.paired_every == 0 \
                else None
            t0 = time.time()
            with stop_if_nonfinite(cfg, run_dir, "grpo", step + 1):
                stats = grpo_update(r, mdl, ref_mdl, tok, ro, opt)
            t_update = time.time() - t0
            logged, stats = gather_rollout(ro), all_mean(stats)   # every rank's samples and statistics, for the log
            if paired is not None:
                stats["paired_answer"] = gather(paired)
        step += 1
        if not rows:
            log(run_dir, {"phase": "grpo", "step": step, "skipped": len(bad)},
                f"grpo step {k + 1:4d}/{cfg.grpo_steps} (step {step}) no readable row: no update")
        else:
            log_grpo_step(cfg, run_dir, step, logged, {**stats, **({"skipped": len(bad)} if bad else {})}, t_update,
                          opt.param_groups[0]["lr"])
            if (k + 1) % cfg.sample_every == 0 or k == 0:
                write_samples(run_dir, step, logged, cfg.G)
        checkpoint_and_eval(r, step, total, mdl, tok, opt, "grpo")
        if (k + 1) % cfg.plot_every == 0:
            plot_curves(run_dir)
    export(mdl, tok, os.path.join(run_dir, "final"))
    return step


@dataclasses.dataclass
class Rollout:
    """One GRPO step's samples, what the update and the log need (N = B*G completions, T tokens)."""
    rows: list                  # the B prompts' dataset rows
    inputs: dict | None         # their model inputs                  (inputs, ids, mask, old_logp: None once
    ids: torch.Tensor | None    # (N, T) completion tokens              gathered from the ranks for the log)
    mask: torch.Tensor | None   # (N, T) 1 up to and with the EOS
    old_logp: torch.Tensor | None  # (N, T) log pi_old at sampling time
    reward: torch.Tensor        # (N,) R_i
    adv: torch.Tensor           # (N,) A_i
    parts: list                 # N dicts of reward parts
    texts: list                 # N completions
    lengths: list               # N token counts
    t_sample: float             # seconds sampling
    t_score: float              # seconds scoring


def rollout(r, mdl, tok, rows, generator):
    """Sample G completions per prompt (no grad), score them, group advantages: a Rollout for the update."""
    cfg, eos, suppress = r.cfg, *qwen.special_ids(tok)
    inputs = prompt_batch(r, tok, mdl, rows)
    t0 = time.time()
    with grpo.autocast(r.device, r.dtype):                                              # sample: eval, no grad
        ids, mask, old_logp = grpo.sample(mdl, inputs, cfg.G, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                          eos_ids=eos, suppress_ids=suppress, generator=generator,
                                          decoder=cfg.decoder)                                    # (N, T) each
    t1 = time.time()
    texts, lengths = qwen.decode_completions(tok, ids, mask)                             # N strings, N counts
    reward, parts = score(cfg, texts, lengths, rows, cfg.G)                              # (N,), N dicts
    adv = grpo.group_advantages(reward, cfg.G, scale=cfg.scale_adv)                      # (N,)
    return Rollout(rows, inputs, ids, mask.float(), old_logp.float(), reward, adv.to(r.device), parts, texts,
                   lengths, t_sample=t1 - t0, t_score=time.time() - t1)


def paired_answer(r, mdl, ref_mdl, tok, ro, seed):
    """Per prompt (B,), the policy's mean answer part minus pi_ref's (the model GRPO started from), pi_ref sampled on
    the same prompts with the same sampling noise (a generator seeded as the step's): whether GRPO improves the
    answer, apart from which prompts a step happened to draw. Costs one more rollout (no update)."""
    with pi_ref(mdl, ref_mdl) as ref:
        base = rollout(r, ref, tok, ro.rows, torch.Generator(r.device).manual_seed(seed))
    per_prompt = lambda parts: np.array([p["answer"] for p in parts]).reshape(-1, r.cfg.G).mean(1)    # (B,)
    return (per_prompt(ro.parts) - per_prompt(base.parts)).tolist()


def pi_ref(mdl, ref_mdl):
    """The reference policy as a context: the frozen copy (full fine-tuning), else the policy with its LoRA
    adapters switched off (the base weights, no second copy)."""
    return contextlib.nullcontext(ref_mdl) if ref_mdl is not None else qwen.lora_disabled(mdl)


def score(cfg, texts, lengths, rows, G):
    """R_i (N,) and its named parts for N = B*G completions (row i // G for completion i)."""
    weights = {"format": cfg.w_format, "answer": cfg.w_answer, "graph": cfg.w_graph, "length": cfg.w_length}
    scored = [rewards.total_reward(text, n_tok, rows[i // G], weights, cfg.len_lo, cfg.len_hi, cfg.len_bonus,
                                   cfg.variant) for i, (text, n_tok) in enumerate(zip(texts, lengths))]
    return torch.tensor([total for total, _ in scored]), [part for _, part in scored]


def grpo_update(r, mdl, ref_mdl, tok, ro, opt):
    """mu epochs of the clipped GRPO loss over one rollout, gradients accumulated over micro-batches of prompts,
    each loss weighted by its share of the batch aggregate (sequences for "seq" / "const", tokens for "token"), so
    the accumulated gradient equals that of one big batch."""
    cfg, device, dtype = r.cfg, r.device, r.dtype
    B, G = len(ro.rows), cfg.G                         # n = (hi - lo) * G rows of one micro-batch [lo, hi)
    chunks = [(lo, min(B, lo + cfg.micro_batch)) for lo in range(0, B, cfg.micro_batch)]   # prompt ranges
    inputs = [ro.inputs if (lo, hi) == (0, B) else prompt_batch(r, tok, mdl, ro.rows[lo:hi])
              for lo, hi in chunks]                    # model inputs of each micro-batch's prompts
    micro = [{k: getattr(ro, k)[lo * G:hi * G] for k in ("ids", "mask", "old_logp", "adv")}
             for lo, hi in chunks]                     # ids, mask, old_logp (n, T); adv (n,)
    ref_logp = [None] * len(chunks)
    if cfg.beta > 0:                                   # pi_ref log-probs, once per rollout: (n, T) per chunk
        with torch.no_grad(), grpo.autocast(device, dtype), pi_ref(mdl, ref_mdl) as ref:
            ref_logp = [grpo.token_logprobs(ref, x, m["ids"], m["mask"]).float() for x, m in zip(inputs, micro)]
    n_tok_all = dist_norm(ro.mask.sum())               # scalar: tokens of all ranks / ranks
    stats_all = []
    for _ in range(cfg.mu):
        mdl.train()
        for (lo, hi), x, m, ref_lp in zip(chunks, inputs, micro, ref_logp):
            with grpo.autocast(device, dtype):
                logp = grpo.token_logprobs(mdl, x, m["ids"], m["mask"]).float()                # (n, T)
            loss, stats = grpo.policy_loss(logp, m["old_logp"] if cfg.mu > 1 else None, ref_lp, m["adv"],
                                           m["mask"], cfg.clip_eps, cfg.clip_eps_high, cfg.beta, cfg.agg,
                                           const_len=cfg.max_new_tokens)
            check_finite(loss, "the GRPO loss")
            share = m["mask"].sum() / n_tok_all if cfg.agg == "token" else (hi - lo) / B   # scalar weight
            (loss * share).backward()
            stats_all.append(stats)
        grad_norm = clipped_update(opt, trainable(mdl), cfg.grad_clip)
    return {**{k: sum(s[k] for s in stats_all) / len(stats_all) for k in stats_all[0]}, "grad_norm": grad_norm}


def final_report(r):
    """The table on the test split (results.md, results.json): blind baseline; the final model asked about another
    test scene's clip (wrong video) and about a blank clip; after warm-up (or the base GRPO starts from); after GRPO;
    the paired differences final - start and final - blind; every metric overall, by answer type and by task."""
    cfg, run_dir, test_rows = r.cfg, r.dir, r.test_rows
    states = [("after warm-up", os.path.join(run_dir, "warmup")) if cfg.sft_steps > 0 else
              ("base", start_folder(cfg, run_dir)),
              ("after GRPO", os.path.join(run_dir, "final"))]
    states = [(tag, path) for tag, path in states if os.path.isdir(path)]
    final = states[-1][0]
    results = {"blind": blind_baseline(r.train_rows, test_rows)}
    controls = [("wrong video", wrong_videos(test_rows, cfg.seed)),
                ("blank clip", main_first(blank_videos, run_dir, test_rows))]
    for tag, path in states:
        runs = [(tag, None)] + (controls if tag == final else [])
        for t, _ in runs:
            found = read_json(results_cache(run_dir, t), "evaluating again")
            results[t] = found if isinstance(found, list) else None
        if any(results[t] is None for t, _ in runs):
            mdl, tok = qwen.load(path, dtype=r.dtype, device=r.device)
            for t, swap in runs:
                if results[t] is None:        # written atomically: a kill leaves no half file to trip a resume
                    results[t] = evaluate(r, mdl, tok, test_rows, swap)
                    write_json(results_cache(run_dir, t), results[t])
    columns = {t: results[t] for t in ["blind", "wrong video", "blank clip"] + [t for t, _ in states]}
    diffs = ([(final, states[0][0])] if len(states) > 1 else []) + [(final, "blind")]
    tasks = sorted({row["task"] for row in test_rows})
    tasks = tuple(f"answer: {t}" for t in tasks) + tuple(f"follows_graph: {t}" for t in tasks if t in ev.GRAPH_TASKS)
    table, stats = comparison_table(columns, diffs, TABLE_KEYS + tasks)
    header = (f"test split: {len(test_rows)} questions, seed {cfg.seed}, {time.strftime('%Y-%m-%d')}; scored with "
              f"the training reward's parts (rewards.py: answer inside the tags, one exact letter), greedy, "
              f"{cfg.frames} frames, at most {cfg.max_new_tokens} new tokens. eval.py scores with each benchmark's "
              f"own rule and its own settings (32 frames by default), so its numbers differ from these.")
    if not is_main():                                  # rank 0 writes the table (write_json's barrier: met here)
        return barrier()
    table += paired_line(cfg, run_dir)
    data.write_file(os.path.join(run_dir, "results.md"), header + "\n\n" + table + "\n")
    write_json(os.path.join(run_dir, "results.json"), {"header": header, "stats": stats})
    print("\n" + header + "\n" + table)
    plot_curves(run_dir)


# --- support: no paper content below (setup, checkpoints and resume, held-out tables, logging, data parallelism) ---


@dataclasses.dataclass
class Run:
    """What the phases of one run share: settings, folder runs/NAME, device, number type, and the usable rows."""
    cfg: Config
    dir: str
    device: torch.device
    dtype: torch.dtype
    train_rows: list
    val_rows: list              # the first --eval_n usable val rows (held-out evaluations during training)
    test_rows: list             # the first --test_n usable test rows (the final table)


RESUMABLE = ("lr", "sft_lr", "vision_lr", "sft_steps", "grpo_steps", "eval_every", "ckpt_every", "keep_ckpts",
             "threads", "plot_every", "sample_every", "paired_every")   # what --resume may change; nothing else
POSITIVE = ("frames", "sft_batch", "batch", "micro_batch", "G", "max_new_tokens", "eval_every", "eval_n",
            "ckpt_every", "keep_ckpts", "sample_every", "plot_every", "threads", "max_prompt_tokens", "vision_batch")


def field_help():
    """{field: its comment in Config's source, with the comment-only lines it wraps onto}: the flag's --help."""
    import inspect
    found = re.findall(r"^    (\w+): [^#\n]*#(.*(?:\n {5,}#.*)*)", inspect.getsource(Config), re.M)
    return {name: " ".join(re.sub(r"\n +#", " ", comment).split()) for name, comment in found}


def parse_config(argv=None):
    """Config defaults <- preset <- command-line flags (one flag per field, its --help the field's comment)."""
    p = argparse.ArgumentParser(prog="python train.py", description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [--FIELD VALUE ...]: one flag per Config field (--help lists them)")
    helps = field_help()
    for f in dataclasses.fields(Config):
        kind = {"action": argparse.BooleanOptionalAction} if f.type is bool else {"type": type(f.default)}
        p.add_argument(f"--{f.name}", **kind, default=argparse.SUPPRESS,
                       help=f"{helps[f.name]} (default {f.default!r})".replace("%", "%%"))
    given = vars(p.parse_args(argv))
    preset = given.get("preset", Config.preset)
    if preset not in PRESETS:
        p.error(f"--preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = Config(**{**PRESETS[preset], **given})
    if cfg.resume:   # the saved config wins, so a resumed run is the same run
        cfg = resumed_config(cfg, given, p.error)
    if cfg.preset != "shape7b" and (not cfg.model or not cfg.data):
        p.error("--preset paper needs --model PATH (a local Qwen2.5-VL folder) and --data FOLDER_OR_JSONL")
    bad = [f"--{k} {getattr(cfg, k)}" for k in POSITIVE if getattr(cfg, k) < 1]
    if bad:
        p.error(f"these must be at least 1: {', '.join(bad)}")
    if cfg.tiny_width < 32 or cfg.tiny_width % 32:
        p.error(f"--tiny_width must be a positive multiple of 32 (heads of 16, half as many KV heads), got "
                f"{cfg.tiny_width}")
    for flag, value, choices in (("variant", cfg.variant, rewards.VARIANTS), ("layout", cfg.layout, data.LAYOUTS)):
        if value not in choices:
            p.error(f"--{flag} must be one of {', '.join(choices)}, got {value!r}")
    return cfg


def resumed_config(cfg, given, error):
    """The saved config of runs/NAME with the RESUMABLE flags given applied; error() (it exits) on a missing run,
    on another flag changed, or on step counts that end before the last checkpoint or change a finished warm-up."""
    run_dir = os.path.join(cfg.out, cfg.name)
    path = os.path.join(run_dir, "config.json")
    saved = read_json(path, "--resume cannot continue the run")
    if not isinstance(saved, dict):
        error(f"--resume: there is no run {run_dir} ({path} missing or unreadable); leave out --resume to start it")
    saved = {k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(Config)}}
    changed = {k: v for k, v in given.items() if k not in ("resume", "name", "out") and saved.get(k) != v}
    refused = [k for k in changed if k not in RESUMABLE]
    if refused:
        error("--resume continues a run with its saved settings; "
              + ", ".join(f"--{k} (saved {saved.get(k)!r}, given {changed[k]!r})" for k in refused)
              + f" cannot change on resume (allowed: {', '.join('--' + k for k in RESUMABLE)}); "
              "start another run with --name NEW to change them")
    new = Config(**{**saved, **changed, "resume": True, "name": cfg.name, "out": cfg.out})
    at = checkpoint_step(run_dir)
    if new.sft_steps + new.grpo_steps < at:
        error(f"--resume: the run is at step {at} (its last checkpoint); --sft_steps {new.sft_steps} + "
              f"--grpo_steps {new.grpo_steps} would end before it")
    if new.sft_steps != saved.get("sft_steps", new.sft_steps) and (
            at > saved["sft_steps"] or new.sft_steps < at or os.path.isdir(os.path.join(run_dir, "warmup"))):
        error(f"--resume: --sft_steps can change only while the warm-up runs and not below its checkpoint (the "
              f"run is at step {at}, warm-up {saved['sft_steps']} steps)")
    if changed:
        print("resuming with " + ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in changed.items()))
    return new


def pick_device(cfg):
    """(device, dtype) of --device and --dtype: auto is CUDA when present, and model.best_dtype for it."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    return device, qwen.best_dtype(device) if cfg.dtype == "auto" else dtypes[cfg.dtype]


def lr_at(step, total, peak, warmup):
    """Linear warm-up for `warmup` steps, then cosine decay from peak to 10 % of peak at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def batch_indices(n_rows, step, batch, seed):
    """Rows of a step: a fresh permutation every epoch, a pure function of the step (so resuming is exact)."""
    out = []
    while len(out) < batch:
        epoch, pos = divmod(step * batch + len(out), n_rows)
        perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
        out.extend(perm[pos:pos + batch - len(out)].tolist())
    return out


def ensure_data(cfg):
    """The synthetic set is made on first use, whole or not at all (data.replace_folder); one that make_dataset
    wrote (scenes.jsonl) must be finished (dataset.json, its last file) and be the scenes this run asks for
    (--data_scenes, the scene seed). A user's folder or JSONL file must already exist."""
    seed, made = scene_seed(cfg), os.path.join(cfg.data, "dataset.json")
    info = read_json(made, "treated as missing") if os.path.isfile(made) else None
    extra = (f" --roll-share {cfg.roll_share}" if cfg.roll_share else "") + (
        f" --layout {cfg.layout}" if cfg.layout != "plain" else "")
    remake = f"remake it with `python data.py make --out {cfg.data} --n {cfg.data_scenes} --seed {seed}{extra}`"
    if info is None and os.path.exists(os.path.join(cfg.data, "scenes.jsonl")):
        raise SystemExit(f"{cfg.data} is an unfinished synthetic set (no dataset.json: its making stopped); {remake}")
    asks = (cfg.data_scenes, seed, cfg.roll_share, cfg.layout)
    held = info and (info.get("scenes"), info.get("seed"), info.get("roll_share", 0.0), info.get("layout", "plain"))
    if held and held != asks:
        raise SystemExit(f"{cfg.data} holds {held[0]} scenes of seed {held[1]} (rolled share {held[2]}, layout "
                         f"{held[3]}), this run asks for {asks[0]} of seed {seed} (rolled share {asks[2]}, layout "
                         f"{asks[3]}; set --data_scenes, --scene_seed, --roll_share, --layout), or {remake}")
    if info is not None or os.path.exists(os.path.join(cfg.data, "train.jsonl")) or os.path.isfile(cfg.data):
        return
    if cfg.preset == "paper":
        raise SystemExit(f"no data at {cfg.data!r}: pass --data with train.jsonl / val.jsonl / test.jsonl")
    print(f"making the synthetic data set in {cfg.data} ({cfg.data_scenes} scenes, scene seed {seed}) ...")
    data.replace_folder(cfg.data, lambda tmp: data.make_dataset(tmp, cfg.data_scenes, seed=seed,
                                                                roll_share=cfg.roll_share, layout=cfg.layout))


def scene_seed(cfg):
    """The seed of the synthetic scenes: scene i is rendered from default_rng([scene_seed, i])."""
    return cfg.scene_seed if cfg.scene_seed >= 0 else cfg.seed


def load_split(cfg, split):
    """(valid rows of a split with readable videos, as --variant asks them; [(FILE:LINE, why)] of the others)."""
    path = cfg.data if os.path.isfile(cfg.data) else os.path.join(cfg.data, f"{split}.jsonl")
    skipped = []
    rows, bad_videos = data.check_videos(data.load_rows(path, skip_bad=True, skipped=skipped))
    think = rewards.VARIANTS[cfg.variant][0]             # what the variant's prompt asks for and its reasoning holds
    return [data.with_think(r, think) for r in rows], skipped + bad_videos


def split_by(rows, problem):
    """(rows for which problem(row) is None, [(FILE:LINE, why)] of the others, why = problem(row))."""
    whys = [problem(r) for r in rows]
    return ([r for r, why in zip(rows, whys) if why is None],
            [(r.get("file_line", r.get("id", r.get("video"))), why) for r, why in zip(rows, whys) if why is not None])


def report_skipped(run_dir, where, bad):
    """Print how many rows `where` (a split, or a phase's steps) skipped, the first few as FILE:LINE: why;
    runs/NAME/skipped.json keeps every such row once, {where: {FILE:LINE: why}}, through resumes."""
    if not bad:
        return
    print(f"{where}: skipped {len(bad)} row(s): " + "; ".join(f"{w}: {y}" for w, y in bad[:3])
          + (" ..." if len(bad) > 3 else "") + f" (listed in {run_dir}/skipped.json)", flush=True)
    path = os.path.join(run_dir, "skipped.json")
    known = read_json(path, "starting it again")
    known = known if isinstance(known, dict) else {}
    for w, why in bad:
        known.setdefault(where, {}).setdefault(w, why)
    if is_main():                             # not write_json: one rank alone may meet a bad row (no barrier)
        data.write_file(path, json.dumps(known, indent=1))


def ensure_model(cfg, train_rows):
    """A random tiny model (and its tokenizer, trained on this data's text) is built on first use by a run whose
    phase 0 teaches it to see (--preset base or scratch); any other run starts from an existing --model."""
    if os.path.exists(os.path.join(cfg.model, "config.json")):
        return
    if cfg.preset == "paper" or cfg.vision_steps == 0:
        raise SystemExit(f"no model at {cfg.model!r}: pass --model with a local Qwen2.5-VL folder (tiny_base/ is in "
                         f"the repo: `git checkout tiny_base` restores it; README.md's \"Other runs\" remakes it)")
    texts = [qwen.build_prompt(r) + (r.get("reasoning") or "") for r in train_rows]
    print(f"building the tiny Qwen2.5-VL in {cfg.model} ...")
    w = cfg.tiny_width
    data.replace_folder(cfg.model, lambda tmp: qwen.build_tiny(tmp, texts, seed=cfg.seed, hidden_size=w,
                                                               intermediate_size=3 * w, num_attention_heads=w // 16,
                                                               num_key_value_heads=max(1, w // 32)))


@functools.lru_cache(maxsize=4096)
def load_video(video, num_frames, window=()):
    """data.row_clip of one (video, time_window tuple), kept for the next 4096 clips (a 56x56 tiny run's 1500
    scenes fit; the base's 20,000 are decoded again when met again: 16 frames of 112x112 are 0.6 MB)."""
    return data.row_clip({"video": video, "time_window": window}, num_frames)


def drop_unreadable(cfg, rows):
    """(rows whose clip reads, now in load_video's cache; [(FILE:LINE, why)] of the others)."""
    return split_by(rows, lambda row: clip_or_why(cfg, row)[1])


def clip_of(cfg, row):
    return load_video(row["video"], cfg.frames, tuple(row.get("time_window") or ()))


def clip_or_why(cfg, row):
    """(clip_of the row, None), or (None, why) when its video cannot be read (data.clip_problem)."""
    return data.clip_problem(functools.partial(clip_of, cfg), row)


def prompt_batch(r, tok, mdl, rows):
    """Tokenised prompts with their videos for B rows, on the device (model.make_inputs)."""
    inputs = qwen.make_inputs(tok, mdl.config, rows, [clip_of(r.cfg, row) for row in rows], r.cfg.min_pixels,
                              r.cfg.max_pixels)
    return qwen.to_device(inputs, r.device, r.dtype)


def completion_tensors(tok, texts, device):
    """Reference completions -> ids (N, T) ending in <|im_end|>, mask (N, T), right-padded."""
    eos, _ = qwen.special_ids(tok)
    seqs = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"] + [eos[0]]) for t in texts]
    ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=eos[0])            # (N, T)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(s)) for s in seqs], batch_first=True)  # (N, T)
    return ids.to(device), mask.to(device)


def answer_weights(tok, texts, mask, weight):
    """mask (N, T) with `weight` on the tokens after each text's last </graph> (all 1 when weight is 1 or a text
    has no graph block)."""
    if weight == 1:
        return mask
    out = mask.clone()
    for n, text in enumerate(texts):
        cut = text.rfind("</graph>")
        if cut >= 0:
            head = len(tok(text[:cut + len("</graph>")], add_special_tokens=False)["input_ids"])
            out[n, head:] *= weight
    return out


def start_folder(cfg, run_dir):
    """The policy the warm-up (or GRPO, without a warm-up) starts from: phase 0's export, else --model."""
    return os.path.join(run_dir, "vision") if cfg.vision_steps > 0 else cfg.model


def log_grpo_step(cfg, run_dir, step, ro, stats, t_update, lr):
    """A GRPO step's line and record: reward parts, accuracy by answer type, KL, clipping, length, seconds."""
    parts, G = ro.parts, cfg.G
    mean = {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}
    types = [ro.rows[i // G]["answer_type"] for i in range(len(parts))]
    acc = {f"acc_{t}": float(np.mean([p["answer"] for p, ty in zip(parts, types) if ty == t]))
           for t in ("mc", "num", "iou") if t in types}
    zero_var = float(grpo.flat_groups(ro.reward, G).float().mean())
    n_tok = sum(ro.lengths)                    # = mask.sum(): the mask is 1 up to and with the EOS
    rec = {"phase": "grpo", "step": step, "reward": float(ro.reward.mean()),
           **{f"r_{k}": v for k, v in mean.items()}, **acc, **stats, "length": n_tok / len(parts),
           "zero_var": zero_var, "t_sample": ro.t_sample, "t_score": ro.t_score, "t_update": t_update,
           "tok_per_s": n_tok / max(ro.t_sample, 1e-9), "lr": lr}
    log(run_dir, rec,
        f"grpo step {step - cfg.sft_steps:4d}/{cfg.grpo_steps} (step {step}) | R {rec['reward']:.3f} (fmt "
        f"{mean['format']:.2f} ans {mean['answer']:.2f} graph {mean['graph']:.2f} len {mean['length']:.2f}) | "
        + " ".join(f"{k} {v:.2f}" for k, v in acc.items())
        + f" | kl {stats['kl']:.4f} clip {stats['clip_frac']:.3f} tokens {rec['length']:.0f} zero_var {zero_var:.2f}"
        f" | s sample {ro.t_sample:.1f} score {ro.t_score:.2f} update {t_update:.1f} | {rec['tok_per_s']:.0f} tok/s"
        + (f" | paired ans {np.mean(stats['paired_answer']):+.3f}" if "paired_answer" in stats else ""))


def write_samples(run_dir, step, ro, G, n=4):
    """A few completions with their rewards, to read (samples.jsonl)."""
    if not is_main():
        return
    with open(os.path.join(run_dir, "samples.jsonl"), "a") as fh:
        for i in range(min(n, len(ro.texts))):
            row = ro.rows[i // G]
            fh.write(json.dumps({"step": step, "question": row["question"], "answer": row["answer"],
                                 "completion": ro.texts[i], "reward": float(ro.reward[i]),
                                 "parts": ro.parts[i], "advantage": float(ro.adv[i])}) + "\n")


def open_phase(r, path, lr, step, first, end, tag, ref=False):
    """(mdl, tok, ref_mdl, opt, step) of a phase: the policy from folder `path`, its frozen reference copy when `ref`
    and full fine-tuning need one, AdamW; restored from the newest checkpoint when it lies past `first` (the phase's
    first step), redoing a held-out evaluation whose line a kill lost. Full fine-tuning keeps fp32 master weights
    (a 1e-6 step is lost in bf16) under bf16 autocast; with LoRA the frozen base is in `dtype`, the adapters fp32."""
    cfg, run_dir = r.cfg, r.dir
    mdl, tok = qwen.load(path, dtype=torch.float32 if cfg.lora_rank == 0 else r.dtype, device=r.device)
    mdl.config.video_str_variant = cfg.variant         # saved with the exports: eval.py asks as this variant asks
    if cfg.freeze_vision:
        mdl.model.visual.requires_grad_(False)         # the vision tower (patch embedding, blocks, merger)
    if cfg.lora_rank > 0:
        qwen.add_lora(mdl, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
    if cfg.grad_ckpt:
        qwen.set_checkpointing(mdl, True)
    ref_mdl = None
    if ref and (cfg.beta > 0 or cfg.paired_every) and cfg.lora_rank == 0:   # full fine-tuning: a frozen copy
        ref_mdl = copy.deepcopy(mdl).eval().requires_grad_(False)
    fsdp_shard(cfg, mdl), fsdp_shard(cfg, ref_mdl)
    sync_params(trainable(mdl))                        # every rank starts from rank 0's weights (as DDP does)
    opt = torch.optim.AdamW(trainable(mdl), lr=lr, weight_decay=cfg.weight_decay, betas=ADAM_BETAS)
    if checkpoint_step(run_dir) > first:
        step = restore_checkpoint(latest_checkpoint(run_dir), mdl, opt)
        if eval_due(cfg, step, end) and not eval_logged(run_dir, step):              # its line was lost to a kill
            log_held_out(r, mdl, tok, step, tag)
    return mdl, tok, ref_mdl, opt, step


def step_rows(cfg, run_dir, rows, k, batch, seed, where):
    """(this rank's readable rows of step k of a phase, [(FILE:LINE, why)] of its unreadable ones, reported): the
    global batch of batch x ranks rows is batch_indices', each rank takes its block (shard)."""
    rows, bad = drop_unreadable(cfg, [rows[i] for i in shard(batch_indices(len(rows), k, batch * world(), seed))])
    report_skipped(run_dir, where, bad)
    return rows, bad


def checkpoint_and_eval(r, step, end, mdl, tok, opt, tag):
    """After a step: a checkpoint (every ckpt_every steps, at `end`), then a held-out evaluation if due (True)."""
    if step % r.cfg.ckpt_every == 0 or step == end:
        save_checkpoint(r.dir, step, mdl, opt, r.cfg.keep_ckpts)
    if eval_due(r.cfg, step, end):
        log_held_out(r, mdl, tok, step, tag)
        return True
    return False


def eval_due(cfg, step, end):
    """A held-out evaluation follows the checkpoint of this step (every eval_every steps and at a phase's end)."""
    return step > 0 and (step % cfg.eval_every == 0 or step == end)


def trainable(mdl):
    return [p for p in mdl.parameters() if p.requires_grad]


class NonFinite(FloatingPointError):
    """A non-finite loss, gradient norm or weight: the step stops before its update is applied (stop_if_nonfinite)."""


def check_finite(loss, what):
    if not torch.isfinite(loss):
        raise NonFinite(f"{what} is {loss.item()} (update not applied)")


def weights_finite(params):
    """True when every weight is finite (one reduction per tensor, one sync)."""
    params = list(params)
    return not params or bool(torch.stack([torch.isfinite(p.detach()).all() for p in params]).all())


def clipped_update(opt, params, grad_clip):
    """Average the gradients over the ranks (average_grads), clip their norm, opt.step(), zero them; returns the norm
    before clipping. NonFinite: a non-finite norm (before the update) or weights made non-finite by it."""
    average_grads(params)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    if not math.isfinite(grad_norm):
        raise NonFinite(f"the gradient norm is {grad_norm} (update not applied)")
    opt.step()
    opt.zero_grad(set_to_none=True)
    if not weights_finite(params):
        raise NonFinite("the update made weights non-finite (nothing saved)")
    return grad_norm


def set_lr(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr


@contextlib.contextmanager
def stop_if_nonfinite(cfg, run_dir, phase, step):
    """A NonFinite loss or gradient inside the block (nothing updated) stops the run, saying what is safe on disk
    and the command that resumes it with a ten times lower learning rate of that phase."""
    try:
        yield
    except NonFinite as err:
        flag = {"vision": "vision_lr", "sft": "sft_lr", "grpo": "lr"}[phase]
        ckpt = latest_checkpoint(run_dir) if phase != "vision" else None
        safe = (f"the last checkpoint, {os.path.basename(ckpt)}, holds finite weights" if ckpt else
                "no checkpoint of this phase yet: it starts again")
        raise SystemExit(f"{phase} step {step}: {err}; the run stopped ({safe}). Resume with a lower learning rate: "
                         f"python train.py --out {cfg.out} --name {cfg.name} --resume --{flag} "
                         f"{getattr(cfg, flag) / 10:g}") from None


def wrong_videos(rows, seed=0):
    """The wrong-video control: a fixed derangement of the rows' videos (scene k gets the video of scene k+1 of a
    seeded shuffle), so every question is asked about another scene's clip. Returns {video: other video}."""
    videos = sorted({r["video"] for r in rows})
    order = [videos[i] for i in np.random.default_rng([seed, 7]).permutation(len(videos))]
    return {v: order[(k + 1) % len(order)] for k, v in enumerate(order)} if len(order) > 1 else {}


def blank_videos(run_dir, rows):
    """The blank-clip control: {video: runs/NAME/blank.mp4}, a mid-grey clip as long as the longest time window
    (at least the synthetic clip's 4 s), so every question is asked about a video that shows nothing."""
    path = os.path.join(run_dir, "blank.mp4")
    windows = [r["time_window"][1] + 1 for r in rows if r.get("time_window")]
    seconds = max([data.CLIP_FRAMES / data.CLIP_FPS] + windows)
    frames = np.full((int(np.ceil(seconds * data.CLIP_FPS)), data.CLIP_SIZE, data.CLIP_SIZE, 3), 128, np.uint8)
    if not os.path.exists(path):
        data.replace_folder(path, lambda tmp: data.write_video(tmp, frames, data.CLIP_FPS))
    return {r["video"]: path for r in rows}


def evaluate(r, mdl, tok, rows, swap=None, batch=16):
    """Greedy completions (eval.complete) on held-out rows, scored with the training reward's parts; swap
    (wrong_videos) asks each question about another scene's clip. Rows whose clip cannot be read are left out."""
    cfg = r.cfg
    mdl.eval()
    rows = rows if grpo.is_fsdp(mdl) else shard(rows)       # this rank's block of the questions (all in one process)
    if swap:                                                # a prompt never names its video: swapping it is enough
        rows = [{**row, "video": swap.get(row["video"], row["video"])} for row in rows]
    with grpo.autocast(r.device, r.dtype):
        texts, lengths, _ = ev.complete(mdl, tok, rows, functools.partial(clip_or_why, cfg), batch,
                                        cfg.max_new_tokens, cfg.min_pixels, cfg.max_pixels)
    asked = [i for i, text in enumerate(texts) if text is not None]
    _, parts = score(cfg, [texts[i] for i in asked], [lengths[i] for i in asked], [rows[i] for i in asked], 1)
    results = [{**part, **ev.follows(texts[i], rows[i]), "id": rows[i]["id"], "task": rows[i]["task"],
                "answer_type": rows[i]["answer_type"], "tokens": lengths[i], "text": texts[i]}
               for i, part in zip(asked, parts)]
    return results if grpo.is_fsdp(mdl) else gather(results)


def mean_parts(results):
    """Means of the held-out parts, answer reward per answer type (mc accuracy, num MRA, iou IoU)."""
    out = {k: float(np.mean(metric_values(results, k))) if results else float("nan")
           for k in ("answer", "graph", "graph_node", "graph_edge", "format", "tokens")}
    out["n"] = len(results)
    out.update({k: float(np.mean(v)) for k in ("answer_mc", "answer_num", "answer_iou", "follows_graph",
                                               "follows_sentence") if (v := metric_values(results, k))})
    return out


def blind_baseline(train_rows, test_rows):
    """Answers without the video: the majority letter (mc), the training mean (num) or mean interval (iou) per
    task. Scored like the model, this is the bar the warm-up must clear to show it uses the video."""
    results, by_task = [], {}
    for r in train_rows:
        by_task.setdefault(r["task"], []).append(r["answer"])
    for row in test_rows:
        same = by_task.get(row["task"], [])
        if row["answer_type"] == "mc":
            guess = max(set(same), key=same.count) if same else "A"
        elif row["answer_type"] == "num":
            guess = f"{np.mean(same):.2f}" if same else "0"
        else:
            guess = "[" + ", ".join(f"{x:.2f}" for x in np.mean(same, axis=0)) + "]" if same else "[0, 0]"
        results.append({"answer": rewards.answer_reward(guess, row["answer"], row["answer_type"]),
                        "answer_type": row["answer_type"], "task": row["task"]})
    return results


def metric_values(results, key):
    """Per-question values of one metric: a reward part, "answer_mc" = R_ans of the mc questions only, or
    "METRIC: TASK" = METRIC of that task's questions (e.g. "answer: closest_object")."""
    if key.startswith("answer_") and key[len("answer_"):] in ("mc", "num", "iou"):
        return [r["answer"] for r in results if r["answer_type"] == key[len("answer_"):]]
    key, _, task = key.partition(": ")
    return [r[key] for r in results if key in r and (not task or r.get("task") == task)]


TABLE_KEYS = ("answer", "answer_mc", "answer_num", "answer_iou", "graph", "graph_node", "graph_edge", "format",
              "follows_graph", "follows_sentence")       # follows_*: does the answer follow the reasoning (eval.py)


def comparison_table(columns, diffs, keys=TABLE_KEYS):
    """(markdown, stats): one column per model state, mean [95 % bootstrap CI] over the same held-out questions,
    then one column per (a, b) in diffs: the paired difference a - b question by question, with its interval."""
    stats = {name: {k: ev.mean_ci(metric_values(res, k)) for k in keys} for name, res in columns.items()}
    for a, b in diffs:
        stats[f"{a} - {b}"] = {}
        for k in keys:
            va, vb = metric_values(columns[a], k), metric_values(columns[b], k)
            paired = va and len(va) == len(vb)
            stats[f"{a} - {b}"][k] = ev.mean_ci([y - x for x, y in zip(vb, va)]) if paired else None
    names = list(stats)
    lines = ["| held-out metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(ev.fmt_ci(stats[n][k], signed=n not in columns) for n in names) + " |")
    return "\n".join(lines), stats


CKPT_FILES = ("trainable.safetensors", "state.pt")


def save_checkpoint(run_dir, step, mdl, opt, keep):
    """ckpt-STEP/ (replace_folder): trainable weights (safetensors), optimizer, RNG. The last `keep` are kept.
    Non-finite weights are refused (NonFinite): every kept checkpoint holds finite weights."""
    from safetensors.torch import save_file
    rngs = gather([torch.get_rng_state()])            # every rank's RNG, in rank order; rank 0 writes
    weights, opt_state = checkpoint_state(mdl, opt)   # FSDP2: gathered from every rank
    if not is_main():
        return
    if not weights_finite(weights.values()):
        raise NonFinite("non-finite weights (checkpoint not written)")

    def write(tmp):
        os.makedirs(tmp)
        save_file(weights, os.path.join(tmp, "trainable.safetensors"))
        torch.save({"optimizer": opt_state, "torch_rng": torch.get_rng_state(), "step": step,
                    **({"rank_rng": rngs} if world() > 1 else {})}, os.path.join(tmp, "state.pt"))
    data.replace_folder(os.path.join(run_dir, f"ckpt-{step:07d}"), write)
    prune_checkpoints(run_dir, keep)


def prune_checkpoints(run_dir, keep):
    """Delete all but the newest `keep` checkpoints (also at start: a kill may have stopped a pruning)."""
    for old in sorted(d for d in os.listdir(run_dir) if d.startswith("ckpt-"))[:-keep]:
        data.discard(os.path.join(run_dir, old))


def clean_leftovers(run_dir):
    """Remove what a kill left half-written: .tmp-* and .old-* folders, *.tmpPID files (and older *.tmp folders)."""
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if re.fullmatch(r"\.(tmp|old)-.*|.*\.tmp\d*", name):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def latest_checkpoint(run_dir):
    """The newest complete ckpt-STEP folder (both files present), or None."""
    found = sorted(d for d in os.listdir(run_dir) if d.startswith("ckpt-")) if os.path.isdir(run_dir) else []
    found = [d for d in found if all(os.path.isfile(os.path.join(run_dir, d, f)) for f in CKPT_FILES)]
    return os.path.join(run_dir, found[-1]) if found else None


def checkpoint_step(run_dir):
    """The step of the newest complete checkpoint (0 without one)."""
    ckpt = latest_checkpoint(run_dir)
    return int(ckpt.rsplit("-", 1)[1]) if ckpt else 0


def restore_checkpoint(path, mdl, opt):
    """Weights, optimizer and RNG from ckpt-STEP/ (weights_only loading); returns the step to continue from."""
    from safetensors.torch import load_file
    weights = load_file(os.path.join(path, "trainable.safetensors"))
    own = {n for n, p in mdl.named_parameters() if p.requires_grad}
    if set(weights) != own:
        raise RuntimeError(f"{path}: {len(set(weights) ^ own)} weight names differ from this model's trainable "
                           f"parameters; was it made with other --lora_rank / --freeze_vision settings?")
    state = torch.load(os.path.join(path, "state.pt"), weights_only=True)
    load_checkpoint_state(mdl, opt, weights, state["optimizer"])
    torch.set_rng_state(rank_rng(state, path))
    return int(state["step"])


def export(mdl, tok, path):
    """A Hugging Face folder (LoRA merged) for model.load / eval.py (replace_folder); refuses non-finite weights."""
    state = None                                       # save_pretrained reads the model itself ...
    if grpo.is_fsdp(mdl):                              # ... but under FSDP2 the whole model is gathered on rank 0
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        state = get_model_state_dict(mdl, options=full_state_options(cpu_offload=True))
    if not is_main():                                  # rank 0 writes; the others wait until it is there
        return barrier()
    if not weights_finite(state.values() if state is not None else mdl.parameters()):
        raise NonFinite(f"non-finite weights ({path} not written)")
    qwen.merge_lora(mdl)

    def write(tmp):
        mdl.save_pretrained(tmp, state_dict=state)
        tok.save_pretrained(tmp)
    data.replace_folder(path, write)
    barrier()


def log(run_dir, record, line):
    """One print line per step and the same numbers appended to metrics.jsonl."""
    if not is_main():
        return
    print(line, flush=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as fh:
        fh.write(json.dumps(record) + "\n")


def drop_metrics_after(run_dir, step):
    """On resume, drop the metrics.jsonl and samples.jsonl lines of steps after the checkpoint (and phase 0's when
    its export is missing): those steps run again. A line cut off by a kill is dropped too (data.read_jsonl)."""
    vision_done = os.path.isdir(os.path.join(run_dir, "vision"))
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            keep = [r for r in data.read_jsonl(path)
                    if (vision_done if r.get("phase") == "vision" else r.get("step", 0) <= step)]
            data.write_file(path, "".join(json.dumps(r) + "\n" for r in keep))


def eval_logged(run_dir, step):
    return any(r.get("phase") == "eval" and r.get("step") == step
               for r in data.read_jsonl(os.path.join(run_dir, "metrics.jsonl")))


def plot_curves(run_dir):
    """curves.png from metrics.jsonl: phase 0, warm-up loss, GRPO rewards, held-out answers and controls, GRPO."""
    if not is_main():
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = data.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    needs = {"vision": "names", "sft": "loss", "grpo": "reward", "eval": "answer"}     # steps with numbers
    by = {p: [r for r in recs if r.get("phase") == p and k in r] for p, k in needs.items()}
    steps = [r["step"] for r in by["grpo"]]
    fig, ax = plt.subplots(2, 4, figsize=(21, 8))
    vis = ax[0, 0]
    for key, label in (("err_x", "|x error| m"), ("err_z", "|z error| m"), ("names", "objects named (recall)")):
        vis.plot([r["step"] for r in by["vision"]], [r[key] for r in by["vision"]], "o-", label=label)
    for key, c in (("blind_x", "C0"), ("blind_z", "C1")):
        if by["vision"]:
            vis.axhline(by["vision"][-1][key], color=c, ls=":", label=f"{key.replace('_', ' ')} (mean centre)")
    vis.set_title("phase 0: the vision tower learns to see (held-out key frames)")
    ax[0, 1].semilogy([r["step"] for r in by["sft"]], [r["loss"] for r in by["sft"]], "C1", label="warm-up loss")
    ax[0, 1].set_title("warm-up: cross-entropy per reference token (log)")
    for key in ("reward", "r_format", "r_answer", "r_graph", "r_length"):   # per-step means are noisy (B*G samples)
        v = np.array([r[key] for r in by["grpo"]], dtype=np.float64)
        line, = ax[0, 2].plot(steps, [v[max(0, i - 9):i + 1].mean() for i in range(len(v))],
                              label=f"{key} (mean of 10 steps)")
        ax[0, 2].plot(steps, v, color=line.get_color(), alpha=0.15)
    ax[0, 2].set_title("GRPO: training reward and its parts")
    for key, label in (("answer", "answer, own video"), ("answer_wrong_video", "answer, another scene's video"),
                       ("answer_blind", "answer, blind baseline"), ("graph_node", "graph node R_n"),
                       ("graph_edge", "graph edge R_e")):
        pts = [(r["step"], r[key]) for r in by["eval"] if key in r]
        if pts:
            ax[1, 0].plot(*zip(*pts), "--" if key == "answer_blind" else "o-", label=label)
    if by["sft"]:
        ax[1, 0].axvline(by["sft"][-1]["step"], color="gray", ls=":", label="end of warm-up")
    ax[1, 0].set_title("held-out (greedy, val split): does the model read the video?")
    for key in ("kl", "clip_frac", "zero_var"):
        ax[1, 1].plot(steps, [r[key] for r in by["grpo"]], label=key)
    ax[1, 1].set_title("GRPO diagnostics: KL (k3), clipped tokens, zero-variance groups")
    ax[1, 2].plot(steps, [r["length"] for r in by["grpo"]], color="C0", label="GRPO completion tokens")
    ax[1, 2].set_title("GRPO completion length")
    windows = paired_windows(by["grpo"])
    if windows:
        x, mean, lo, hi = (np.array(v) for v in zip(*[(step, *stat) for step, stat in windows]))
        ax[0, 3].errorbar(x, mean, yerr=[mean - lo, hi - mean],
                          fmt="o-", capsize=3, label=f"answer, policy - pi_ref, {PAIRED_WINDOW} steps (95 % CI)")
        ax[0, 3].axhline(0.0, color="gray", ls=":")
    ax[0, 3].set_title("GRPO: paired training answer (same prompts, same noise)")
    for key, label in (("follows_graph", "answer = what its own graph implies"),
                       ("follows_sentence", "letter = the option its sentence names")):
        pts = [(r["step"], r[key]) for r in by["eval"] if key in r]
        if pts:
            ax[1, 3].plot(*zip(*pts), "o-", label=label)
    ax[1, 3].set_title("held-out: does the answer follow the reasoning?")
    for a in ax.flat:
        if not any(len(line.get_xdata()) for line in a.get_lines()):   # e.g. phase 0 in a run from the base
            a.text(0.5, 0.5, "not in this run", ha="center", va="center", transform=a.transAxes, color="gray")
            a.set_xticks([]), a.set_yticks([])
            continue
        a.set_xlabel("step (phase 0 counts its own)" if a is vis else "step")
        a.legend(fontsize=7, loc="upper left")
        a.grid(alpha=0.3)
    fig.tight_layout()
    ev.save_png(fig, os.path.join(run_dir, "curves.png"))


def paired_line(cfg, run_dir):
    """The paired training answer (paired_answer) pooled over the last sixth of the GRPO steps, as a line ('' if
    the run has none)."""
    first = cfg.sft_steps + cfg.grpo_steps - cfg.grpo_steps // 6
    recs = [rec for rec in data.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
            if rec.get("phase") == "grpo" and rec["step"] > first and "paired_answer" in rec]
    diffs = [d for rec in recs for d in rec["paired_answer"]]
    return (f"\n\npaired training answer (policy - pi_ref on the same prompts and sampling noise), GRPO steps "
            f"{first - cfg.sft_steps + 1}-{cfg.grpo_steps}, {len(diffs)} prompts: "
            f"{ev.fmt_ci(ev.mean_ci(diffs), signed=True)}"
            if diffs else "")


PAIRED_WINDOW = 25                  # GRPO steps pooled per point of the paired curve


def paired_windows(grpo_recs):
    """[(last step, mean_ci of the per-prompt paired answer differences)] per window of PAIRED_WINDOW GRPO steps."""
    pooled = {}
    for rec in grpo_recs:
        if "paired_answer" in rec:
            pooled.setdefault((rec["step"] - 1) // PAIRED_WINDOW, []).append(rec)
    return [(recs[-1]["step"], ev.mean_ci([d for rec in recs for d in rec["paired_answer"]]))
            for _, recs in sorted(pooled.items())]


# --- data parallelism --------------------------------------------------------------------------------------------
# `torchrun --nproc_per_node N train.py ...` (README "Past one GPU"): each rank takes its block of every global batch
# (shard), loss normalisers are global (dist_norm), gradients are averaged before clipping (average_grads), rank 0
# alone writes files; --fsdp shards full fine-tuning with FSDP2. Without torchrun every helper below is a no-op.


def launched_by_torchrun():
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def dist_on():
    """A process group is up (torch builds without torch.distributed never have one)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def dist_setup(device):
    """This rank's device, after joining torchrun's process group (nccl on cuda:LOCAL_RANK, gloo on CPU). More ranks
    than GPUs stop with one line (else rank N fails in CUDA with 'invalid device ordinal')."""
    if not launched_by_torchrun() or dist_on():
        return device
    if device.type == "cuda":
        ranks, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])), torch.cuda.device_count()
        if ranks > gpus:
            raise SystemExit(f"torchrun started {ranks} ranks on this machine, which has {gpus} GPU(s): one rank per "
                             f"GPU, so use --nproc_per_node {gpus} (or --device cpu for {ranks} CPU ranks)")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def world():
    return torch.distributed.get_world_size() if dist_on() else 1


def rank():
    return torch.distributed.get_rank() if dist_on() else 0


def is_main():
    """Rank 0 (or the only process): the one that prints and writes files."""
    return rank() == 0


def barrier():
    if world() > 1:
        torch.distributed.barrier()


def main_first(fn, *args):
    """fn(*args) on rank 0 first, then on the others (the data set or the tiny model is made once)."""
    if not is_main():
        barrier()
    out = fn(*args)
    if is_main():
        barrier()
    return out


def shard(items):
    """This rank's contiguous block of a list (the whole list in one process); the blocks in rank order give the
    list back (gather), so a global batch of N x B indices gives rank r its items r*B .. r*B+B-1."""
    n, w, r = len(items), world(), rank()
    return items[r * n // w:(r + 1) * n // w]


def gather(items):
    """Every rank's list, concatenated in rank order (picklable items; the list itself in one process)."""
    if world() == 1:
        return items
    parts = [None] * world()
    torch.distributed.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def all_mean(stats, sums=()):
    """A dict of numbers averaged over the ranks (the keys in `sums` summed instead); the dict in one process."""
    if world() == 1:
        return stats
    every = gather([stats])
    return {k: (sum if k in sums else np.mean)([s[k] for s in every]) for k in stats}


def dist_norm(x):
    """A loss normaliser made global: (sum over ranks of x) / ranks. A rank's sum divided by it, its gradient then
    averaged over the ranks (average_grads), gives one process's sum_all / x_all. x itself in one process."""
    if world() == 1:
        return x
    x = x.detach().clone()
    torch.distributed.all_reduce(x)
    return x / world()


def average_grads(params, bucket=2 ** 25):
    """Each gradient replaced by its mean over the ranks (all-reduce of flat buckets of up to `bucket` values, as
    DDP does), before clipping, so every rank takes the same step. A missing gradient counts as zeros."""
    if world() == 1:
        return
    groups, size = [], bucket
    for p in params:
        if grpo.is_sharded(p):                              # FSDP2 has reduce-scattered (averaged) its own
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if size >= bucket:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += p.numel()
    for group in groups:
        flat = torch.cat([q.grad.reshape(-1).float() for q in group])          # (size,)
        torch.distributed.all_reduce(flat)
        flat /= world()
        for q, g in zip(group, flat.split([q.numel() for q in group])):
            q.grad.copy_(g.view_as(q.grad))


def sync_params(params):
    """Every rank takes rank 0's values of these parameters (a no-op in one process)."""
    if world() == 1:
        return
    with torch.no_grad():
        for p in params:
            if not grpo.is_sharded(p):                      # FSDP2 shards were cut from identical loaded weights
                torch.distributed.broadcast(p.data, 0)


def gather_rollout(ro):
    """What log_grpo_step and write_samples read of a Rollout (rows, texts, parts, lengths, reward, adv), from
    every rank in rank order, and the slowest rank's seconds; ro itself in one process."""
    if world() == 1:
        return ro
    mine = {"rows": ro.rows, "texts": ro.texts, "parts": ro.parts, "lengths": ro.lengths,
            "reward": ro.reward.tolist(), "adv": ro.adv.tolist()}
    every = gather([(mine, ro.t_sample, ro.t_score)])
    out = {k: [x for e, _, _ in every for x in e[k]] for k in mine}
    return Rollout(**{**out, "reward": torch.tensor(out["reward"]), "adv": torch.tensor(out["adv"])}, inputs=None,
                   ids=None, mask=None, old_logp=None, t_sample=max(e[1] for e in every),
                   t_score=max(e[2] for e in every))


def rank_rng(state, path):
    """This rank's torch RNG state from a checkpoint's state.pt. A checkpoint made with another number of ranks is
    refused: its data position (step x global batch) would not match."""
    saved = state.get("rank_rng", [state["torch_rng"]])
    if len(saved) != world():
        raise SystemExit(f"{path} was made by {len(saved)} rank(s), this run has {world()}: resume it with "
                         + ("python train.py --resume" if len(saved) == 1 else
                            f"torchrun --nproc_per_node {len(saved)} train.py --resume"))
    return saved[rank()]


def fsdp_shard(cfg, mdl):
    """With --fsdp under torchrun: FSDP2's fully_shard on each decoder layer, the final norm, the embeddings, lm_head,
    each vision block and the tower (own units: grpo.py calls these separately). Returns mdl (None stays None)."""
    if mdl is None or not cfg.fsdp or world() == 1:
        return mdl
    if cfg.lora_rank > 0:
        raise SystemExit("--fsdp shards full fine-tuning (--lora_rank 0); a LoRA run keeps one copy per rank")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(next(mdl.parameters()).device.type, (world(),))
    lm, vis = mdl.model.language_model, mdl.model.visual
    for unit in [*lm.layers, lm.norm, lm.embed_tokens, mdl.lm_head, *vis.blocks, vis]:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)   # each unit is its own root: reshard explicitly
    loose = [n for n, p in mdl.named_parameters() if not grpo.is_sharded(p)]
    if loose:
        raise RuntimeError(f"fsdp_shard: parameters left outside every FSDP2 unit: {loose[:5]}")
    return mdl


def full_state_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def checkpoint_state(mdl, opt):
    """(trainable weights {name: full CPU tensor}, optimizer state); FSDP2 gathers both (call on every rank)."""
    weights = {n: (p.detach().full_tensor() if grpo.is_sharded(p) else p.detach()).to("cpu").contiguous()
               for n, p in mdl.named_parameters() if p.requires_grad}
    if not grpo.is_fsdp(mdl):
        return weights, opt.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return weights, get_optimizer_state_dict(mdl, opt, options=full_state_options(cpu_offload=True))


def load_checkpoint_state(mdl, opt, weights, opt_state):
    """checkpoint_state's pair back into the model and the optimizer (FSDP2: each rank keeps its shard)."""
    if not grpo.is_fsdp(mdl):
        mdl.load_state_dict(weights, strict=False)
        return opt.load_state_dict(opt_state)
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    set_model_state_dict(mdl, weights, options=full_state_options(strict=False))
    set_optimizer_state_dict(mdl, opt, opt_state, options=full_state_options())


def log_held_out(r, mdl, tok, step, tag):
    """Quick held-out evaluation on the val rows, printed and logged with phase "eval": the reward parts with each
    question's own video, and the answer reward with another scene's video (the wrong-video control)."""
    t0, rows = time.time(), r.val_rows
    summary = mean_parts(evaluate(r, mdl, tok, rows))
    wrong = mean_parts(evaluate(r, mdl, tok, rows, swap=wrong_videos(rows, r.cfg.seed)))
    summary["answer_wrong_video"] = wrong["answer"]
    summary["answer_blind"] = float(np.mean([b["answer"] for b in blind_baseline(r.train_rows, rows)]))
    log(r.dir, {"phase": "eval", "step": step, "tag": tag, **summary},
        f"eval {tag:>10s} step {step:5d} | answer {summary['answer']:.3f} (wrong video {wrong['answer']:.3f}) "
        f"node {summary['graph_node']:.3f} edge {summary['graph_edge']:.3f} format {summary['format']:.3f} | "
        + " ".join(f"{k} {summary[k]:.3f}" for k in ("answer_mc", "answer_num", "answer_iou") if k in summary)
        + f" | {time.time() - t0:.0f}s")


class VisionHead(torch.nn.Module):
    """Phase 0's throw-away read-out of the video tokens of one temporal slice: for each object category c, an
    attention query pools the tokens (a_c = softmax_n(q_c . f_n), p_c = sum_n a_cn f_n) and a linear map gives
    (is c in the frame?, its camera-frame centre x, y, z). The category list comes from the training graphs."""

    def __init__(self, hidden, categories):
        super().__init__()
        self.categories = list(categories)
        C = len(self.categories)
        self.query = torch.nn.Linear(hidden, C)                              # q_c
        self.weight = torch.nn.Parameter(torch.randn(C, 4, hidden) * hidden ** -0.5)
        self.bias = torch.nn.Parameter(torch.zeros(C, 4))

    def forward(self, f):
        """f (n, H) tokens of one slice -> (C, 4): presence logit and centre (x, y, z) per category."""
        f = f / f.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()             # (n, H) RMS-normalised, as the LLM
        a = torch.softmax(self.query(f), dim=0)                              # (n, C)
        pooled = a.t() @ f                                                   # (C, H)
        return (self.weight * pooled[:, None, :]).sum(-1) + self.bias        # (C, 4)


def graph_targets(items, categories):
    """Ground truth of phase 0 per (video, key frame): (C, 4) = (present 0/1, x, y, z) for each category."""
    out = torch.zeros(len(items), len(categories), 4)                        # (K, C, 4)
    for k, nodes in enumerate(items):
        for n in nodes:
            if n["category"] in categories:
                out[k, categories.index(n["category"])] = torch.tensor([1.0, *n["center"]])
    return out


def key_frame_clips(rows):
    """Phase 0's rows: one per clip (video, time window) of the rows, sorted, with "frames": {source frame: nodes}
    from the ground-truth graphs of all its rows."""
    frames = {}
    for r in rows:
        for g in r.get("graphs") or []:
            frames.setdefault((r["video"], tuple(r.get("time_window") or ())), {})[g["frame"]] = g["nodes"]
    return [{"video": v, "time_window": list(w) or None, "question": "", "answer_type": "num", "answer": 0.0,
             "frames": f} for (v, w), f in sorted(frames.items())]


def vision_step(r, mdl, tok, head, rows):
    """Video tokens of B readable clips (key_frame_clips) -> VisionHead at the slice of each key frame (its index
    among the sampled frames // temporal_patch_size) -> (predictions, targets), each (K, C, 4) over K key frames."""
    inputs = prompt_batch(r, tok, mdl, rows)
    feats = mdl.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"],
                                         return_dict=True).pooler_output       # B x (t*h*w/4, H)
    tp = mdl.config.vision_config.temporal_patch_size
    preds, nodes = [], []
    for row, f, grid in zip(rows, feats, inputs["video_grid_thw"]):
        idx = clip_of(r.cfg, row).indices                                    # (F,)
        f = f.view(int(grid[0]), -1, f.shape[-1])                             # (t, tokens per slice, H)
        for frame, frame_nodes in row["frames"].items():
            k = int(np.abs(idx - frame).argmin()) // tp                       # the slice holding that frame
            preds.append(head(f[k]))
            nodes.append(frame_nodes)
    return torch.stack(preds), graph_targets(nodes, head.categories).to(r.device)


def vision_loss(pred, target, presence_weight=4.0):
    """4 x BCE(presence) over every category + smooth L1 of the centres of the objects present (metres), each a
    mean over the global batch (dist_norm: under torchrun, over every rank's key frames)."""
    present = target[..., 0].bool()                                          # (K, C)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(pred[..., 0], target[..., 0], reduction="sum")
    l1 = torch.nn.functional.smooth_l1_loss(pred[..., 1:][present], target[..., 1:][present], reduction="sum")
    n_bce, n_l1 = torch.tensor(float(present.numel())), 3.0 * present.sum().float().clamp(min=1)
    return presence_weight * bce / dist_norm(n_bce) + l1 / dist_norm(n_l1)


def vision_report(pred, target):
    """Held-out read-out quality: share of the true objects among the top-k categories (k = true count), and the
    mean |error| of x, y, z (metres) of the present objects, against predicting the mean centre (blind)."""
    present = target[..., 0].bool()
    k = present.sum(-1)
    top = pred[..., 0].argsort(-1, descending=True)
    recall = float(np.mean([present[i][top[i, :k[i]]].float().mean().item() for i in range(len(k)) if k[i]]))
    err = (pred[..., 1:] - target[..., 1:]).abs()[present].mean(0)
    blind = (target[..., 1:][present] - target[..., 1:][present].mean(0)).abs().mean(0)
    return {"names": recall, **{f"err_{a}": float(e) for a, e in zip("xyz", err)},
            **{f"blind_{a}": float(e) for a, e in zip("xyz", blind)}}


def vision_summary(rep):
    """vision_report's numbers in words (phase 0's line, the model card)."""
    return ("names found {names:.2f}, |error| x {err_x:.2f} y {err_y:.2f} z {err_z:.2f} m (blind {blind_x:.2f} "
            "{blind_y:.2f} {blind_z:.2f})").format(**rep)


def results_cache(run_dir, tag):
    """The file holding the final test evaluation of one model state ("after GRPO", "wrong video", ...)."""
    return os.path.join(run_dir, "test_" + tag.replace(" ", "_").replace("-", "") + ".json")


def forget_test_results(run_dir, *tags):
    """A phase that (re)trains a state makes its cached test results stale (e.g. --grpo_steps raised on resume)."""
    for tag in tags:
        with contextlib.suppress(FileNotFoundError):
            os.remove(results_cache(run_dir, tag))


def write_card(cfg, run_dir):
    """CARD.md beside the base's weights (runs/NAME/warmup, shipped as tiny_base/): the command, commit, seeds and
    wall time that made it, its held-out table (results.md), the scaling table and its weights' sha256."""
    folder = os.path.join(run_dir, "warmup")
    started = read_json(os.path.join(run_dir, "started.json"), "the wall time is unknown") or {}
    hours = (time.time() - started["time"]) / 3600 if "time" in started else float("nan")
    ranks = f"torchrun --standalone --nproc_per_node {world()} " if world() > 1 else "python "
    info = read_json(os.path.join(cfg.data, "dataset.json"), "the card does not name the scenes' seed") or {}
    made = (f"scenes default_rng([{info['seed']}, i]) for i < {info['scenes']} (80/10/10 by scene)" if info else
            "not made by data.make_dataset (no dataset.json)")
    from safetensors import safe_open
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as weights:
        params = sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
    with open(os.path.join(run_dir, "results.md")) as fh:
        table = fh.read()
    card = "\n".join([
        f"# The tiny Qwen2.5-VL base that sees ({cfg.name})", "",
        f"A {params / 1e6:.2f}M-parameter Qwen2.5-VL built from a config and trained from random weights by this "
        "repo on its synthetic scenes: phase 0 (the vision tower learns which objects a key frame shows and where) "
        "and the supervised warm-up on the reference reasoning (graph blocks, a sentence, the answer). No GRPO: "
        "`python train.py` fine-tunes it with GRPO on scenes it never saw.", "",
        f"- command: `{ranks}{' '.join(['train.py'] + sys.argv[1:])}` ({world()} rank(s) x {cfg.threads} thread(s))",
        f"- commit: {git_commit()}",
        f"- seed {cfg.seed}; data {cfg.data}: {made}; phase 0 {cfg.vision_steps} steps x "
        f"{cfg.vision_batch * world()} clips, warm-up {cfg.sft_steps} steps x {cfg.sft_batch * world()} rows "
        f"(answer tokens weighted {cfg.sft_answer_weight}); language-model width {cfg.tiny_width}; reasoning layout "
        f"{info.get('layout', 'plain')}; rolled cameras in {info.get('roll_share', 0.0):.0%} of the scenes",
        f"- wall time {hours:.2f} h (from the run's first start: {started.get('date', '?')}; includes any pause "
        f"before a --resume), finished {time.strftime('%Y-%m-%d %H:%M')}",
        f"- weights: model.safetensors sha256 {sha256(os.path.join(folder, 'model.safetensors'))}", "",
        "## Held-out table (the base's test split: scenes it never trained on)", "", table.strip(), "",
        "`wrong video`: each question asked about another test scene's clip; `blank clip`: about a mid-grey clip; "
        "`blind`: no video (majority letter, training mean)." , "",
        f"## Scaling table (val split, {cfg.eval_n} questions, greedy; every {cfg.eval_every} warm-up steps)", "",
        scaling_table(run_dir, cfg.sft_batch * world()), ""])
    data.write_file(os.path.join(folder, "CARD.md"), card)
    print(f"\nmodel card: {folder}/CARD.md (ship it: cp -r {folder}/. tiny_base/)")


def scaling_table(run_dir, rows_per_step):
    """Markdown rows of the held-out evaluations along the warm-up, from metrics.jsonl, after phase 0's last."""
    lines = ["| warm-up step | rows seen | node R_n | edge R_e | answer | wrong video | blind |", "|---" * 7 + "|"]
    records = data.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    for r in records:
        if r.get("phase") == "eval" and r.get("tag") == "warm-up":
            lines.append(f"| {r['step']} | {r['step'] * rows_per_step} | {r['graph_node']:.3f} | "
                         f"{r['graph_edge']:.3f} | {r['answer']:.3f} | {r['answer_wrong_video']:.3f} | "
                         f"{r['answer_blind']:.3f} |")
    vision = [r for r in records if r.get("phase") == "vision"]
    if vision:
        lines.append(f"\nphase 0, step {vision[-1]['step']} (held-out key frames): {vision_summary(vision[-1])}")
    return "\n".join(lines)


def sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def card_sha256(folder):
    """The weights' sha256 that folder/CARD.md states (write_card), or None: compare it with sha256 of the file."""
    with open(os.path.join(folder, "CARD.md")) as fh:
        found = re.search(r"model\.safetensors sha256 ([0-9a-f]{64})", fh.read())
    return found.group(1) if found else None


def git_commit():
    """HEAD of the checkout this file is in, marked when the tracked files differ from it; "unknown" without git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=here).returncode != 0
    except OSError:
        return "unknown"
    return (head.stdout.strip() or "unknown") + (" + uncommitted changes" if dirty else "")


def read_json(path, redo):
    """A JSON file's content, or None when missing or unreadable (a kill, an old version: printed with `redo`)."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        print(f"{path}: unreadable ({e}); {redo}")
        return None


def write_json(path, obj, indent=None):
    """JSON written atomically (data.write_file). Collective under torchrun: rank 0 writes, every rank waits."""
    if not is_main():                                  # rank 0 writes; the others wait, then read it
        return barrier()
    data.write_file(path, json.dumps(obj, indent=indent))
    barrier()


def run_lock(run_dir):
    """Hold runs/NAME/run.lock (it keeps the last PID) while the run works: a second process on the run stops naming
    the holder's PID. The lock is the kernel's (flock), so a killed run never leaves it stuck; where flock is
    missing, a PID in the file that is no longer alive is stale."""
    path = os.path.join(run_dir, "run.lock")
    fh = open(path, "a+")
    fh.seek(0)
    holder = fh.read().strip()
    try:
        import fcntl
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = False
    except BlockingIOError:
        held = True
    except (ImportError, OSError):            # no flock here: the PID in the file decides
        held = holder.isdigit() and int(holder) != os.getpid() and pid_alive(int(holder))
    if held:
        fh.close()
        raise SystemExit(f"{run_dir} is in use by process {holder or '?'} ({path}): wait for it to end, or stop "
                         f"it; a lock left by a killed run is taken over by itself")
    fh.truncate(0)
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return contextlib.closing(fh)             # closing the file releases the lock


def pid_alive(pid):
    try:
        with contextlib.suppress(PermissionError):       # alive, another user's
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def shape7b(cfg, device, dtype):
    """--preset shape7b: one GRPO step of the paper preset (this file's rollout and grpo_update) on a RANDOMLY
    initialised model with Qwen2.5-VL-7B's shapes (--shape_layers, --shape_vision_blocks cut the depth) and a clip of
    random pixels: seconds and peak memory per stage, then estimate_memory for this shape and the full model. Random
    text scores ~0 (gradient ~0), but the work (reference log-probs, forward, checkpointed backward) is the same."""
    import resource
    import tempfile

    def stage(name, seconds):
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak, where = torch.cuda.max_memory_allocated() / 2 ** 30, "peak GPU memory allocated in this stage"
            torch.cuda.reset_peak_memory_stats()
        else:   # ru_maxrss is in KiB on Linux
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
            where = "peak RSS of the process so far"
        print(f"{name:40s} {seconds:8.2f} s   {peak:7.2f} GiB ({where})", flush=True)

    t0 = time.time()
    tok = qwen.train_tokenizer(qwen.demo_texts())
    config = qwen.qwen25_vl_7b_config(cfg.shape_layers, cfg.shape_vision_blocks, tok)
    mdl = qwen.random_model(config, device, dtype, 0)
    qwen.add_lora(mdl, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
    qwen.set_checkpointing(mdl, cfg.grad_ckpt)
    opt = torch.optim.AdamW(trainable(mdl), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=ADAM_BETAS)
    print(f"Qwen2.5-VL-7B shapes, random weights: {cfg.shape_layers}/28 decoder layers, {cfg.shape_vision_blocks}/32 "
          f"vision blocks, {qwen.count_params(mdl) / 1e9:.2f}B params ({qwen.count_params(mdl, True) / 1e6:.1f}M "
          f"LoRA r={cfg.lora_rank}), {device} {dtype}, G={cfg.G}, {cfg.frames} frames at <= {cfg.max_pixels} px, "
          f"{cfg.max_new_tokens} new tokens")
    stage("build", time.time() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        video = os.path.join(tmp, "noise.mp4")           # random pixels, 224x448, as a real clip is read
        data.write_video(video, np.random.default_rng(0).integers(0, 256, (cfg.frames * 2, 224, 448, 3), np.uint8))
        row = {"id": "shape7b", "video": video, "question": "How far is the red cube from the blue ball?",
               "answer_type": "num", "answer": 1.0}
        r = Run(cfg, tmp, device, dtype, [row], [], [])
        with torch.no_grad(), grpo.autocast(device, dtype):
            decoder = grpo.rollout_decoder(mdl, cfg.decoder)   # auto's choice (a failed capture warns, then static)
        generator = torch.Generator(device).manual_seed(0)
        ro = rollout(r, mdl, tok, [row], generator)
        stage(f"sample {cfg.G} x {ro.ids.shape[1]} tokens ({decoder})", ro.t_sample)
        stage("score", ro.t_score)
        t0 = time.time()
        stats = grpo_update(r, mdl, None, tok, ro, opt)
        t_update = time.time() - t0
        stage("update (pi_ref, loss, backward, AdamW)", t_update)
    P, patches = ro.inputs["input_ids"].shape[1], ro.inputs["pixel_values_videos"].shape[0]
    print(f"one GRPO step {ro.t_sample + ro.t_score + t_update:.1f} s (reward {ro.reward.mean():.2f}, kl "
          f"{stats['kl']:.2e}, LoRA grad norm {stats['grad_norm']:.2e}); prompt {P} tokens, {patches} patches")
    shapes = (("this shape", cfg.shape_layers, cfg.shape_vision_blocks), ("Qwen2.5-VL-7B (28 + 32)", 28, 32))
    for name, L, V in shapes:
        est = qwen.estimate_memory(qwen.qwen25_vl_7b_config(L, V), cfg.lora_rank, cfg.G, P + ro.ids.shape[1],
                                   torch.bfloat16, patches, ro.ids.shape[1])
        print(f"estimate_memory at this run's sizes, {name}: {est['total_ckpt']:.1f} GiB with checkpointing (weights "
              f"{est['weights']:.1f}, optimizer {est['optimizer']:.2f}, activations {est['activations_ckpt']:.1f}, "
              f"logits chunk {est['logits']:.1f})")


def main(argv=None):
    cfg = parse_config(argv)
    torch.set_num_threads(cfg.threads)
    transformers.utils.logging.disable_progress_bar()
    device, dtype = pick_device(cfg)
    device = dist_setup(device)                      # torchrun: join the ranks (a no-op without torchrun)
    if cfg.preset == "shape7b":
        return shape7b(cfg, device, dtype)
    run_dir = os.path.join(cfg.out, cfg.name)
    if not cfg.resume and os.path.isdir(run_dir) and set(os.listdir(run_dir)) - {"run.lock"}:
        raise SystemExit(f"{run_dir} exists: --resume continues it, --name OTHER starts a new run")
    barrier()                                        # every rank has looked before rank 0 writes
    os.makedirs(run_dir, exist_ok=True)
    with run_lock(run_dir) if is_main() else contextlib.nullcontext():
        if is_main():
            clean_leftovers(run_dir)
            prune_checkpoints(run_dir, cfg.keep_ckpts)
        write_json(os.path.join(run_dir, "config.json"), dataclasses.asdict(cfg), indent=1)
        started = os.path.join(run_dir, "started.json")          # kept on --resume: the model card's wall time
        if is_main() and not os.path.exists(started):
            data.write_file(started, json.dumps({"time": time.time(), "date": time.strftime("%Y-%m-%d %H:%M")}))
        try:
            run(cfg, run_dir, device, dtype)
        except NonFinite as e:                    # a save or export refused (the steps stop earlier, with advice)
            raise SystemExit(f"train.py: {e}; resume with --resume and a lower learning rate") from None
    if dist_on():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    if launched_by_torchrun():              # torchrun's @record: a rank's error reaches torchrun's summary
        from torch.distributed.elastic.multiprocessing.errors import record
        main = record(main)
    main()
