"""Qwen2.5-VL, offline: the tiny model, video preprocessing, prompts and LoRA written by hand; memory estimates.
(Sampling and log-probabilities, the policy's use, are grpo.py's.)

Paper: Video-STR (arXiv 2510.10976) trains Qwen2.5-VL-7B-Instruct with GRPO (Sec. 4) on 16 frames (32 at
inference) of at most 128*28*28 pixels each, as Video-R1 / SpaceR; the reasoning inside <think> writes an
inter-object relation graph (graph.py), the answer goes inside <answer>.
How this differs: the CPU default is build_tiny's RANDOM Qwen2.5-VL (about 0.57M parameters, a byte-level BPE
tokenizer trained on the data's text), taught to see by train.py. It is saved and loaded (load) exactly like a
real local checkpoint, so the code path is the same for the 7B. preprocess_video is Qwen2.5-VL's video processor
in torch alone (the official one needs torchvision), with second_per_grid_ts from the TRUE frame times (Video-R1
and verl drop it, and M-RoPE's time axis collapses).

Run: `python model.py [--out DIR]` builds a demo tiny model into DIR (default: a temporary folder) and prints its
size and memory_table (the 7B on one 80 GB GPU); `python model.py --golden` remakes the golden fixture of the
preprocessing parity test.
Everything is offline (HF_HUB_OFFLINE=1 is set here; transformers' Hub kernels are off: use_kernels=False).
"""
import argparse
import contextlib
import functools
import json
import math
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: no hub retries

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration)

import graph

# Qwen's special tokens (the real ids are 151643..151656; here they come first in the small vocabulary).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
REASONING_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]  # added tokens (not special: decode keeps them)
VIDEO_PAD, IMAGE_PAD = "<|video_pad|>", "<|image_pad|>"
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", IMAGE_PAD, VIDEO_PAD]  # never sampled (grpo.sample)
# Qwen2's pre-tokenizer regex splits \p{N} alone (every digit its own token). The tiny tokenizer keeps a written
# number ("5.1", "21") in one piece instead, so BPE gives each frequent number one token: a graph block is ~40 %
# shorter and a coordinate is one choice, not three (a tiny-recipe choice; a real checkpoint keeps its tokenizer).
PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+(?:\.\p{N}+)?"
                     r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_MAX_PIXELS = 128 * 28 * 28       # paper / Video-R1 training budget per frame
TINY_MIN_PIXELS = TINY_MAX_PIXELS = 56 * 56  # tiny CPU default: every frame becomes 56x56 (2x2 merged tokens)
# Qwen2.5-VL's chat template, reduced to what this repo uses (text + one video per user turn; the default system
# message). The one source of the prompt layout: build_prompt renders it, and the tiny tokenizer carries it.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Default tiny size (~0.6M parameters with a ~900-token vocabulary; one step costs little more at twice the width).
# rope_theta: Qwen's 1e6. Every position pair below ~150 tokens apart then keeps some slowly turning channels, so the
# answer tokens can find the video tokens by content. A small theta (10) turns every channel by > 0.1 rad per
# position: text 150 tokens after the video sees the video at scrambled angles and the tiny model never learned to
# read it (colour names stayed at chance, ln 4, after 700 warm-up steps: RESULTS.md, "What was tried to make the
# tiny model read the video"). Where an object sits in the frame is the vision tower's job instead (the bonnet
# stripe of data.py gives it a fixed reference).
TINY = dict(vocab_size=1024, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=192, rope_theta=1e6, max_position_embeddings=4096,
            vision_hidden_size=64, vision_depth=2, vision_num_heads=4, vision_intermediate_size=192,
            window_size=112, tokens_per_second=2, patch_size=14)


# --- tokenizer ------------------------------------------------------------------------------------------------------

def train_tokenizer(texts, vocab_size=TINY["vocab_size"]):
    """Byte-level BPE trained on `texts` (pre-tokenizer: PRETOKENIZE_REGEX) + Qwen special tokens.
    decode(encode(s)) == s for any string: all 256 bytes are in the initial alphabet, no normaliser."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, clean_up_tokenization_spaces=False,
                                   additional_special_tokens=SPECIAL_TOKENS[1:], model_max_length=32768)
    fast.add_tokens(REASONING_TOKENS)
    fast.padding_side = "left"
    fast.chat_template = CHAT_TEMPLATE
    return fast


# --- config / build -------------------------------------------------------------------------------------------------

def tiny_config(tokenizer, **overrides):
    """A shrunken Qwen2_5_VLConfig (sizes: TINY + overrides) whose special ids are those of `tokenizer`."""
    unknown = set(overrides) - set(TINY)
    if unknown:
        raise ValueError(f"model.tiny_config: unknown size override(s) {sorted(unknown)}; known: {sorted(TINY)}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return vl_config({**TINY, **overrides, "vocab_size": len(tokenizer)}, ids, pad_token_id=ids["<|endoftext|>"])


def vl_config(s, ids, **text):
    """Qwen2_5_VLConfig from sizes `s` (TINY's keys), {special token: id} and more text-config fields `text`. The
    vision tower's output width is the text hidden size."""
    half = s["hidden_size"] // s["num_attention_heads"] // 2    # a head's rotary frequencies, split (t, h, w)
    t, h = half // 4, (half - half // 4) // 2                    # like Qwen's mrope_section [16, 24, 24] of 64
    text.update({k: s[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "num_key_value_heads", "max_position_embeddings")},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], rope_parameters={
                    "rope_type": "default", "rope_theta": s["rope_theta"], "mrope_section": [t, h, half - t - h]})
    depth = s["vision_depth"]
    vision = dict(depth=depth, hidden_size=s["vision_hidden_size"], num_heads=s["vision_num_heads"],
                  intermediate_size=s["vision_intermediate_size"], out_hidden_size=s["hidden_size"],
                  window_size=s["window_size"], tokens_per_second=s["tokens_per_second"], patch_size=s["patch_size"],
                  fullatt_block_indexes=[depth - 1] if depth < 8 else list(range(7, depth, 8)))
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids[IMAGE_PAD],
                            video_token_id=ids[VIDEO_PAD], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def new_model(config):
    """A random Qwen2.5-VL of `config` (default device and dtype) with transformers' Hub kernels off, as in load."""
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.use_kernels = False                                            # no Hub code in the training path: see load
    return model


def build_tiny(out_dir, texts, seed=0, **overrides):
    """Train the tokenizer on `texts`, build a random tiny Qwen2.5-VL, save both to out_dir. Returns out_dir."""
    tokenizer = train_tokenizer(texts, overrides.pop("vocab_size", TINY["vocab_size"]))
    torch.manual_seed(seed)
    model = new_model(tiny_config(tokenizer, **overrides))
    im_end, eot = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model.generation_config = GenerationConfig(eos_token_id=[im_end, eot], pad_token_id=eot, bos_token_id=eot,
                                               do_sample=False)
    model.save_pretrained(out_dir)                                       # makes the folder
    tokenizer.save_pretrained(out_dir)
    return out_dir


def best_dtype(device):
    """bf16 on a GPU that supports it, else float32 (bf16 is slower than fp32 on a CPU: `python grpo.py bench`)."""
    cuda = torch.device(device).type == "cuda"
    return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32


def load(path, dtype=None, device=None):
    """(model, tokenizer) from a local folder, tiny or real (e.g. a local copy of Qwen2.5-VL-7B-Instruct)."""
    if not path or not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"model.load: no checkpoint folder at {path!r} (config.json + *.safetensors + "
                                "tokenizer). Pass --model PATH to a local folder (`python train.py` builds "
                                "tiny_model/; a real Qwen2.5-VL-7B-Instruct must be copied there: no download).")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or best_dtype(device)
    # use_kernels=False: else transformers >= 5 runs Hub-downloaded kernels in training (offline: a crash at .train())
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                               use_kernels=False)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"
    return model.to(device), tokenizer


def count_params(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --- video ----------------------------------------------------------------------------------------------------------

def smart_resize(height, width, factor=28, min_pixels=TINY_MIN_PIXELS, max_pixels=TRAIN_MAX_PIXELS):
    """(h, w) multiples of `factor`, h*w within [min_pixels, max_pixels], aspect ratio kept (Qwen2-VL)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"model.smart_resize: aspect ratio of {height}x{width} is over 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def sampled_fps(times):
    """Frame rate of the sampled frames from their times alone, (F - 1) / (t_last - t_first), for callers that
    have no Clip.sample_fps (Qwen's F / M x video_fps, data.Clip). The two differ for round(linspace) sampling:
    16 of 100 frames at 30 fps give 0.44 s per grid here and Qwen's 0.4167 there."""
    times = np.asarray(times, dtype=np.float64)
    return float((len(times) - 1) / (times[-1] - times[0])) if len(times) > 1 and times[-1] > times[0] else None


def preprocess_video(frames, times, min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS, patch_size=14,
                     temporal_patch_size=2, merge_size=2, fps=None):
    """Qwen2VLVideoProcessor by hand. frames uint8 (F,H,W,3), times (F,) seconds, fps the sampled frame rate in
    Qwen's convention (data.Clip.sample_fps; None: sampled_fps(times)); second_per_grid_ts = temporal_patch_size
    / fps, as the official processor and qwen-vl-utils compute it.
    Returns {"pixel_values_videos": (t*h*w, 3*tp*p*p) float32, "video_grid_thw": (1, 3) long,
             "second_per_grid_ts": (1,) float32, "fps": float} with (t, h, w) the grid in patches."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"model.preprocess_video: frames must be uint8 (F,H,W,3), got {frames.dtype} {frames.shape}")
    n_frames, height, width, _ = frames.shape
    rh, rw = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)   # (F, 3, H, W) uint8, CPU
    if (rh, rw) != (height, width):
        # as torchvision does on CPU: torch's native uint8 -> uint8 bicubic with antialias (PIL-like fixed point,
        # bit-exact with the official processor; a float resize + round differs by up to 5 uint8 steps)
        x = F.interpolate(x.contiguous(), size=(rh, rw), mode="bicubic", align_corners=False, antialias=True)
    x = x.float()                                                             # (F, 3, rh, rw)
    mean, std = (torch.tensor(c).view(1, 3, 1, 1) * 255.0 for c in (CLIP_MEAN, CLIP_STD))
    x = (x - mean) / std                            # x/255 rescale and CLIP normalisation, fused as upstream
    if pad := -n_frames % temporal_patch_size:     # repeat the last frame
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)], 0)
    t, h, w = x.shape[0] // temporal_patch_size, rh // patch_size, rw // patch_size
    m, p, tp = merge_size, patch_size, temporal_patch_size
    x = x.view(t, tp, 3, h // m, m, p, w // m, m, p)              # (t, tp, C, h/m, m, p, w/m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)                     # (t, h/m, w/m, m, m, C, tp, p, p): official order
    pixel_values = x.reshape(t * h * w, 3 * tp * p * p)          # (t*h*w, 1176) merge groups contiguous
    fps = fps or sampled_fps(times)
    spg = temporal_patch_size / fps if fps else 1.0   # one frame: the time interval never multiplies anything
    return {"pixel_values_videos": pixel_values, "video_grid_thw": torch.tensor([[t, h, w]]),
            "second_per_grid_ts": torch.tensor([spg], dtype=torch.float32), "fps": fps}


def rope_positions(config, input_ids, mm_token_type_ids, attention_mask, video_grid_thw, second_per_grid_ts):
    """Qwen2.5-VL's 3-D M-RoPE position ids (t, h, w) of left-padded prompts, as Qwen's reference code (and
    transformers 4.49-4.50, vLLM) computes them:
      text token:  the same index on all three axes, continuing from max(all earlier positions) + 1;
      video grid k, row i, column j (merged), starting at s:  (s + floor(k * second_per_grid * tokens_per_second),
                   s + i, s + j)  -> the temporal axis follows the true frame times (2 positions per second).
    transformers 5.24's get_rope_index restarts the text after a video at s + max(h, w) instead of max + 1, so
    the question overlaps the video's temporal positions; a real checkpoint was trained with max + 1. transformers
    5.2 also continues at max + 1 but casts the seconds per grid to an integer before multiplying (0.5 s per grid
    gives 0, 1, 2, 2, 2 ...).
    Returns pos (3, B, P) long (0 on padding) and next_pos (B,) = max + 1, where the completion starts."""
    merge, tps = config.vision_config.spatial_merge_size, config.vision_config.tokens_per_second
    pos = torch.zeros(3, *input_ids.shape, dtype=torch.long, device=input_ids.device)      # (3, B, P)
    n_video = 0
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool()
        kinds, counts = torch.unique_consecutive(mm_token_type_ids[b][keep], return_counts=True)  # runs of one type
        chunks, start = [], 0
        for kind, n in zip(kinds.tolist(), counts.tolist()):
            if kind == 0:                                                       # text run
                chunks.append(torch.arange(n).view(1, -1).expand(3, -1) + start)
            else:                                                               # one video
                t, h, w = (int(x) for x in video_grid_thw[n_video])
                h, w = h // merge, w // merge
                if n != t * h * w:
                    raise ValueError(f"model.rope_positions: row {b} has {n} video tokens, grid needs {t * h * w}")
                tt = (torch.arange(t) * second_per_grid_ts[n_video].float().cpu() * tps).long()  # as Qwen: float32
                grid = torch.stack(torch.meshgrid(tt, torch.arange(h), torch.arange(w), indexing="ij"))
                chunks.append(grid.reshape(3, -1) + start)                      # (3, t*h*w)
                n_video += 1
            start = int(chunks[-1].max()) + 1
        pos[:, b, keep] = torch.cat(chunks, 1).to(pos.device)                   # (3, real tokens)
    return pos, pos.amax((0, 2)) + 1                                            # next_pos (B,)


# --- prompt ---------------------------------------------------------------------------------------------------------

THINK_INSTRUCTION = {   # by row["think"] (data.with_think; rewards.VARIANTS): what <think> is asked to hold
    "graph": ("Think in <think> </think>, first writing for {frames} a graph <graph t=FRAME> name (x,y,z); ... | "
              "name-name d=DIST a=ANGLE; ... </graph> (centres in metres in the camera frame: x right, y down, "
              "z forward; d in metres, a in degrees). "),
    "nodes": ("Think in <think> </think>, first writing for {frames} the objects <graph t=FRAME> name (x,y,z); "
              "... </graph> (centres in metres in the camera frame: x right, y down, z forward). "),
    "free": "Think in <think> </think>. ",
}
ANSWER_FORMAT = {"mc": "the option's letter", "num": "a number", "iou": "[start, end] in seconds",
                 "box": "[x1, y1, x2, y2]"}


def build_prompt(row):
    """Chat-template text for one dataset row: system, user (video, question, options, instruction), assistant.
    The instruction asks for what row["think"] says (THINK_INSTRUCTION; "graph" when absent), and states how objects
    are named (graph.NAME_RULE) where the row's graphs or options name one of several of a category ("car 2"; no
    synthetic row does)."""
    kind = row.get("answer_type")
    if kind not in ("mc", "num", "iou"):
        raise ValueError(f"model.build_prompt: row {row.get('id')!r} field answer_type={kind!r} not mc/num/iou")
    if kind == "iou" and isinstance(row.get("answer"), (list, tuple)) and len(row["answer"]) == 4:
        kind = "box"
    window = row.get("time_window")
    text = "From {:.1f} s to {:.1f} s. ".format(*window) if window else ""
    text += row["question"].strip()
    if row.get("options"):
        text += "\n" + "\n".join(f"({chr(ord('A') + i)}) {opt}" for i, opt in enumerate(row["options"]))
    frames = [g["frame"] for g in row.get("graphs") or []]     # the key frames the graph reward checks
    which = "frames " + ", ".join(f"t={f}" for f in frames) if frames else "a few key frames"
    think = row.get("think") or "graph"
    if think not in THINK_INSTRUCTION:
        raise ValueError(f"model.build_prompt: row {row.get('id')!r} field think={think!r} not one of "
                         f"{sorted(THINK_INSTRUCTION)}")
    names = [n["category"] for g in row.get("graphs") or [] for n in g["nodes"]]
    names += [part for opt in row.get("options") or [] for part in str(opt).split(", ")]
    rule = graph.NAME_RULE + " " if any(graph.category_of(n) != n for n in names) else ""   # rows of real video
    text += (f"\n{THINK_INSTRUCTION[think].format(frames=which)}{rule}"
             f"Then answer in <answer> </answer> with only {ANSWER_FORMAT[kind]}.")
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    return chat_template().render(messages=messages, add_generation_prompt=True)


@functools.lru_cache(maxsize=1)
def chat_template():
    """CHAT_TEMPLATE compiled once with jinja2 (installed with torch), as apply_chat_template renders it."""
    import jinja2
    return jinja2.Environment().from_string(CHAT_TEMPLATE)


def prompt_problem(tokenizer, row, max_tokens):
    """Why a row's prompt is too long to ask (over max_tokens text tokens of build_prompt; the video's tokens not
    counted, its placeholder counts 1), or None. train.py and eval.py skip such rows (--max_prompt_tokens) instead
    of running out of memory on them: a 1 MB question is ~400k tokens."""
    n = len(tokenizer(build_prompt(row), add_special_tokens=False)["input_ids"])
    return f"prompt of {n} tokens exceeds --max_prompt_tokens {max_tokens}" if n > max_tokens else None


def make_inputs(tokenizer, config, rows, videos, min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS):
    """Model inputs for B prompts (one video each), left-padded. videos: list of (frames (F,H,W,3), times (F,)).
    A video may be a data.Clip: its sample_fps (Qwen's convention) then sets second_per_grid_ts.
    Returns input_ids (B,P), attention_mask (B,P), mm_token_type_ids (B,P) (2 on video tokens: without it
    transformers silently uses 1-D positions), pixel_values_videos (sum of t*h*w, 1176), video_grid_thw (B,3)
    and second_per_grid_ts (B,)."""
    vc = config.vision_config
    video_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    if video_id != config.video_token_id:
        raise ValueError(f"model.make_inputs: tokenizer {VIDEO_PAD} id {video_id} != config {config.video_token_id}")
    seqs, vs = [], []
    for row, video in zip(rows, videos, strict=True):
        frames, times = video[:2]
        vs.append(preprocess_video(frames, times, min_pixels, max_pixels, vc.patch_size, vc.temporal_patch_size,
                                   vc.spatial_merge_size, getattr(video, "sample_fps", None)))
        n_video = int(vs[-1]["video_grid_thw"].prod()) // vc.spatial_merge_size ** 2    # merged tokens
        ids = tokenizer(build_prompt(row), add_special_tokens=False)["input_ids"]
        at = ids.index(video_id)
        seqs.append(ids[:at] + [video_id] * n_video + ids[at + 1:])               # expand <|video_pad|>
    width = max(len(s) for s in seqs)
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(s)) + s for s in seqs])  # (B, P) left padding
    attention_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    mm_token_type_ids = (input_ids == video_id).int() * 2                        # (B, P) text 0, video 2
    keys = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm_token_type_ids,
            **{k: torch.cat([v[k] for v in vs]) for k in keys}}


def to_device(inputs, device, dtype):
    """make_inputs' tensors on the model's device; the pixels in its dtype. second_per_grid_ts stays float32: in
    bf16 about 4 % of frame rates lose a temporal position (1.2 fps: 2 / 1.2 s per grid rounds down)."""
    return {k: v.to(device, dtype) if v.is_floating_point() and k != "second_per_grid_ts" else v.to(device)
            for k, v in inputs.items()}


def special_ids(tokenizer):
    """(eos ids, ids never sampled): <|im_end|> / <|endoftext|> end a turn; the vision placeholders must never be
    generated (a random tiny model does sample them, and re-scoring such a sequence breaks)."""
    vocab = tokenizer.get_vocab()
    eos = [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
    return eos, [vocab[t] for t in VISION_TOKENS if t in vocab]


def decode_completions(tokenizer, ids, mask):
    """Completion ids (N, T) / mask (N, T) -> (texts without the closing EOS, token counts with it)."""
    eos, _ = special_ids(tokenizer)
    lengths = mask.sum(1).long().tolist()
    bodies = [seq[:n] for seq, n in zip(ids.tolist(), lengths)]
    texts = [tokenizer.decode(b[:-1] if b and b[-1] in eos else b, skip_special_tokens=False) for b in bodies]
    return texts, lengths


def demo_texts():
    """A small corpus for the tiny tokenizer: reference completions in data.py's row format + prompts."""
    rows = [{"id": "d0", "question": "Which object is closest to the red cube?", "answer_type": "mc", "answer": "B",
             "options": ["blue ball", "green cone", "yellow cylinder", "red cube"], "time_window": None},
            {"id": "d1", "question": "How far apart are the blue ball and the green cone, in metres?",
             "answer_type": "num", "answer": 2.4, "options": None, "time_window": None},
            {"id": "d2", "question": "When does the yellow cylinder move?", "answer_type": "iou",
             "answer": [1.0, 2.5], "options": None, "time_window": [0.0, 8.0]}]
    completions = [
        "<think><graph t=0> red cube (1.2,0.4,5.1); blue ball (-0.8,0.4,6.0) | red cube-blue ball d=2.2 a=21 "
        "</graph> <graph t=31> red cube (0.9,0.4,4.7); blue ball (-1.1,0.4,5.6) | red cube-blue ball d=2.2 a=24 "
        "</graph> The blue ball is nearest to the red cube. </think><answer>B</answer>",
        "<think><graph t=3> blue ball (0.5,0.3,3.9); green cone (-1.7,0.3,4.8) | blue ball-green cone d=2.4 a=34 "
        "</graph> The distance stays near 2.4 metres. </think><answer>2.4</answer>",
        "<think><graph t=12> yellow cylinder (0.0,0.5,7.2); green cone (2.1,0.5,6.6) | yellow cylinder-green cone "
        "d=2.2 a=17 </graph> It moves between 1.0 s and 2.5 s. </think><answer>[1.0, 2.5]</answer>",
        "<think><graph t=7> green cone (-0.3,0.2,2.8); red cube (1.6,0.6,3.3); yellow cylinder (0.4,0.1,9.0) | "
        "green cone-red cube d=2.0 a=38; green cone-yellow cylinder d=6.3 a=9; red cube-yellow cylinder d=5.8 a=25 "
        "</graph> </think><answer>C</answer>",
    ]
    return [build_prompt(r) for r in rows] + completions


# --- training setup -------------------------------------------------------------------------------------------------

def set_checkpointing(model, on=True):
    """Activation (gradient) checkpointing: `activation_checkpointing_enable` in transformers 5 (verified on
    5.24), the older `gradient_checkpointing_enable` otherwise. Non-reentrant torch.utils.checkpoint."""
    verb = "enable" if on else "disable"
    fn = getattr(model, f"activation_checkpointing_{verb}", None) or getattr(model, f"gradient_checkpointing_{verb}")
    fn(*([{"use_reentrant": False}] if on else []))
    return model


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) * B A dropout(x)  (Hu et al. 2021). A: (r, in) Kaiming, B: (out, r) zeros,
    so a fresh adapter leaves the output unchanged. Adapters are float32 whatever the base dtype."""

    def __init__(self, base: nn.Linear, rank, alpha, dropout=0.0):
        super().__init__()
        self.base, self.rank, self.scale = base, rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        self.sampling = None          # (A, (alpha / r) B) in the base dtype inside lora_sampling, else None

    def forward(self, x):
        y = self.base(x)
        if not self.enabled:
            return y
        if self.sampling is not None:                                  # no casts, no dropout, no gradient
            A, scaled_B = self.sampling
            a = F.linear(x, A).flatten(0, -2)                          # (n, r)
            return torch.addmm(y.flatten(0, -2), a, scaled_B.t()).view_as(y)  # y + a (alpha/r) B^T, one kernel
        a = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.t()   # (..., r)
        return y + (a @ self.lora_B.t() * self.scale).to(y.dtype)     # (..., out)


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model, rank, alpha=None, dropout=0.0, targets=LORA_TARGETS):
    """Wrap the language model's attention and MLP projections with LoRA and freeze every base weight; rank 0 is a
    no-op (full fine-tuning)."""
    if rank <= 0:
        return model
    alpha = 2 * rank if alpha is None else alpha
    model.requires_grad_(False)
    lm = model.model.language_model
    for name, module in list(lm.named_modules()):
        parent, _, leaf = name.rpartition(".")
        if leaf in targets and isinstance(module, nn.Linear):
            setattr(lm.get_submodule(parent), leaf, LoRALinear(module, rank, alpha, dropout))
    return model


def lora_modules(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def lora_disabled(model):
    """Inside this block the model is the base model (adapters off): the KL reference pi_ref, no copy."""
    mods = [m for m in lora_modules(model) if m.enabled]
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m in mods:
            m.enabled = True


@contextlib.contextmanager
def lora_sampling(model):
    """Inside this block every adapter computes (alpha/r) B A x from copies in its base weight's dtype, made once
    on entry: A and (alpha/r) B. The plain forward casts x and both float32 matrices on every call (under bf16
    autocast, to the same bf16 values: alpha = 2r makes the scale a power of two, exact). For sampling only: the
    copies carry no gradient and skip dropout. The float32 adapters are never written; the copies go on exit."""
    mods = lora_modules(model)
    for m in mods:
        dtype = m.base.weight.dtype
        m.sampling = (m.lora_A.detach().to(dtype), (m.lora_B.detach() * m.scale).to(dtype))  # (r, in), (out, r)
    try:
        yield model
    finally:
        for m in mods:
            m.sampling = None


@torch.no_grad()
def merge_lora(model):
    """W <- W + (alpha/r) B A for every adapter, and put the plain nn.Linear back (for save_pretrained)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            w = module.base.weight
            w += (module.lora_B @ module.lora_A * module.scale).to(w.dtype)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, module.base)
    return model


def lora_state_dict(model):
    """Only the adapter tensors, {name: tensor} (safetensors.torch.save_file-able)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".lora_" in k}


# --- support: no paper content below (memory estimate, the 7B's shapes, golden fixture) ---------------
def qwen25_vl_7b_config(layers=28, vision_layers=32, tokenizer=None):
    """Qwen2.5-VL-7B-Instruct's published config.json, written out by hand (nothing is downloaded).

    layers / vision_layers < 28 / 32 keep every width and cut the depth (the 7B-shaped check on a CPU); a
    tokenizer (e.g. the tiny one) supplies the special-token ids instead of Qwen's 151643.. (vocabulary kept)."""
    ids = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
           "<|vision_end|>": 151653, IMAGE_PAD: 151655, VIDEO_PAD: 151656}
    ids.update({t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS} if tokenizer is not None else {})
    sizes = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers,
                 num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rope_theta=1e6,
                 vision_hidden_size=1280, vision_depth=vision_layers, vision_intermediate_size=3420,
                 vision_num_heads=16, window_size=112, tokens_per_second=2, patch_size=14)
    return vl_config(sizes, ids, rms_norm_eps=1e-6)      # mrope_section [16, 24, 24]; full attention in 7, 15, 23, 31


def param_counts(config):
    """(total, vision, lm_per_layer_linear_shapes) of a config, counted on the meta device (no memory)."""
    with torch.device("meta"):
        m = new_model(config)
    total, vision = count_params(m), count_params(m.model.visual)
    shapes = [(mod.in_features, mod.out_features) for name, mod in m.model.language_model.named_modules()
              if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS]
    return total, vision, shapes


def estimate_memory(config, lora_rank, batch, seq_len, dtype=torch.bfloat16, vision_patches=0,
                    completion_len=None, freeze_vision_tower=False, shards=1):
    """Training memory in GiB for `batch` sequences of `seq_len` tokens (rough, per GPU; `shards` > 1: per rank of
    FSDP2, see below):
    weights    P * b                  (b = bytes of dtype; LoRA adapters in fp32 on top)
    grads      trainable * b          (LoRA: fp32 adapters, 4 bytes)
    optimizer  AdamW m, v in fp32 (8 bytes / trainable) + an fp32 master copy (4) when weights are not fp32
    reference  P * b for full fine-tuning (a frozen copy for the KL); 0 with LoRA (adapters switched off)
    activations per token per decoder layer ~ b * (6 H + 4 kv + 4 I) saved for backward (SDPA keeps no
               T x T scores); with checkpointing only the layer input (b * H) plus one layer being recomputed.
               The vision tower likewise over `vision_patches` patches (one pass per prompt).
    logits     one chunk (one sequence of completion_len tokens) x V x (b + 4 + 4): bf16 logits, fp32 copy and
               log-softmax, as grpo.token_logprobs computes them chunk by chunk under checkpointing.
    shards     FSDP2 (torch.distributed.fsdp.fully_shard per decoder layer over `shards` ranks): weights, grads,
               optimizer state and the reference copy are split evenly; each rank holds on top two unsharded
               decoder layers in b bytes (the one computing and the one prefetched), the `gathered` entry.
               Activations and logits are per rank and do not shrink (each rank has its own `batch`)."""
    b = torch.finfo(dtype).bits // 8
    tc, vc = config.text_config, config.vision_config
    total, vision, shapes = param_counts(config)
    if lora_rank > 0:
        trainable = sum(lora_rank * (i + o) for i, o in shapes)
        weights = total * b + trainable * 4
        grads, optimizer, reference = trainable * 4, trainable * 8, 0
    else:
        trainable = total - (vision if freeze_vision_tower else 0)
        weights, grads, reference = total * b, trainable * b, total * b
        optimizer = trainable * (8 + (4 if b < 4 else 0))
    H, I, L = tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers
    kv = tc.num_key_value_heads * H // tc.num_attention_heads
    tokens = batch * seq_len
    per_tok_layer = b * (6 * H + 4 * kv + 4 * I)
    v_per_patch_layer = b * (6 * vc.hidden_size + 4 * vc.intermediate_size)
    act_full = tokens * L * per_tok_layer + vision_patches * vc.depth * v_per_patch_layer
    act_ckpt = (tokens * (L * b * H + per_tok_layer)
                + vision_patches * (vc.depth * b * vc.hidden_size + v_per_patch_layer))
    logits = (completion_len or seq_len) * tc.vocab_size * (b + 8)
    weights, grads, optimizer, reference = (x / shards for x in (weights, grads, optimizer, reference))
    gathered = 2 * b * sum(i * o for i, o in shapes) / L if shards > 1 else 0
    fixed = weights + grads + optimizer + reference + logits + gathered
    nbytes = {"weights": weights, "grads": grads, "optimizer": optimizer, "reference": reference,
              "gathered": gathered, "activations_no_ckpt": act_full, "activations_ckpt": act_ckpt, "logits": logits,
              "total_no_ckpt": fixed + act_full, "total_ckpt": fixed + act_ckpt}
    return {"params": total, "trainable": trainable, **{k: v / 1024 ** 3 for k, v in nbytes.items()}}


def memory_table(config=None, G=8, prompt_len=1174, completion_len=768, vision_patches=4096, gpu_gib=80.0,
                 lora_ranks=(0, 64)):
    """Text table: full fine-tuning vs LoRA for one GRPO step (G sequences of prompt + completion tokens).
    Defaults: 16 frames at 128*28*28 -> grid (8, 16, 32)-ish = 4096 patches = 1024 video tokens + ~150 text."""
    config = config or qwen25_vl_7b_config()
    rows = [("full FT" if r == 0 else f"LoRA r={r}", estimate_memory(config, r, G, prompt_len + completion_len,
             torch.bfloat16, vision_patches, completion_len)) for r in lora_ranks]
    keys = ["weights", "grads", "optimizer", "reference", "activations_no_ckpt", "activations_ckpt", "logits",
            "total_no_ckpt", "total_ckpt"]
    lines = [f"Qwen2.5-VL-7B-Instruct ({rows[0][1]['params'] / 1e9:.2f}B params), bf16, AdamW, one GPU of "
             f"{gpu_gib:.0f} GiB, G={G} x ({prompt_len} prompt + {completion_len}) tokens, {vision_patches} patches",
             f"{'GiB':22s}" + "".join(f"{name:>14s}" for name, _ in rows)]
    lines += [f"{k:22s}" + "".join(f"{d[k]:14.1f}" for _, d in rows) for k in keys]
    lines.append(f"{'trainable params':22s}" + "".join(f"{d['trainable'] / 1e6:13.1f}M" for _, d in rows))
    lines.append(f"{'fits (with ckpt)':22s}" + "".join(f"{'yes' if d['total_ckpt'] < gpu_gib else 'no':>14s}"
                                                     for _, d in rows))
    return "\n".join(lines)


# --- random models of the 7B's shapes (train.py --preset shape7b, grpo.py bench_rollout) ----------------------------

def random_model(config, device, dtype, lora_rank, seed=0):
    """A randomly initialised Qwen2.5-VL of `config`, built directly on `device` in `dtype` (a 7B-shaped model never
    passes through the CPU or float32), with add_lora's adapters of rank lora_rank (alpha 2r; rank 0: none)."""
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = new_model(config)
    finally:
        torch.set_default_dtype(default)
    return add_lora(model, lora_rank, 2.0 * lora_rank)


def video_prompt(tok, config, frames, min_pixels, max_pixels, device, dtype):
    """make_inputs of one question with a random video of `frames` 224x448 frames resized to the pixel budget, on
    `device` (grpo.py bench_rollout's prompt: 16 frames at 128x28x28 give 1136 tokens)."""
    h, w = smart_resize(224, 448, min_pixels=min_pixels, max_pixels=max_pixels)
    video = np.random.default_rng(0).integers(0, 256, (frames, h, w, 3), dtype=np.uint8)
    row = {"id": "shape7b", "question": "How far is the red cube from the blue ball?", "answer_type": "num",
           "answer": 1.0}
    inputs = make_inputs(tok, config, [row], [(video, np.arange(frames) / 2.0)], min_pixels, max_pixels)
    return to_device(inputs, device, dtype)


# --- golden fixture -------------------------------------------------------------------------------------------------

GOLDEN_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "qwen_video_golden.npz")
GOLDEN_COMMAND = ("python -m venv VENV && VENV/bin/pip install torch==2.14.1 torchvision==0.29.1 "
                  "transformers==5.24.0 av numpy && VENV/bin/python model.py --golden")


def golden_videos():
    """Three small deterministic clips as (frames, times, source indices, video fps, frames in the video): two
    that need resizing (50x70 -> 56x56, 72x96 -> 28x56; odd and even F, every 2nd / 3rd frame), and 8 of 30
    frames at round(linspace(0, 29, 8)), where Qwen's sampled fps F / N x fps differs from (F - 1) / duration."""
    rng = np.random.default_rng(0)
    clips = []
    for n, h, w, fps, idx, total in ((5, 50, 70, 6.0, np.arange(5) * 2, 10), (6, 72, 96, 4.0, np.arange(6) * 3, 18),
                                     (8, 56, 56, 10.0, np.round(np.linspace(0, 29, 8)).astype(np.int64), 30)):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)           # (H, W, 3)
        frames = np.stack([base + 40 * k + rng.normal(0, 30, (h, w, 3)) for k in range(n)])  # (F, H, W, 3)
        clips.append((np.clip(frames, 0, 255).astype(np.uint8), idx / fps, idx, fps, total))
    return clips


def make_golden_fixture(out_path=GOLDEN_PATH):
    """Run the OFFICIAL Qwen2_5_VLProcessor (Qwen2VLVideoProcessor inside) on golden_videos() and save what it
    returns, for the parity test. Needs torchvision (a side environment: GOLDEN_COMMAND); not used otherwise."""
    import importlib.util
    if importlib.util.find_spec("torchvision") is None:
        raise RuntimeError(f"make_golden_fixture needs torchvision; make a side environment: {GOLDEN_COMMAND}")
    import torchvision
    import transformers
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    tok = train_tokenizer(demo_texts())
    rows = [{"id": "g0", "question": "Which object is closest to the red cube?", "answer_type": "mc",
             "options": ["blue ball", "green cone", "red cube"], "answer": "A"},
            {"id": "g1", "question": "How far is the cone?", "answer_type": "num", "answer": 3.0},
            {"id": "g2", "question": "When does the ball move?", "answer_type": "iou", "answer": [1.0, 2.0]}]
    clips = golden_videos()
    vp = Qwen2VLVideoProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS, cap_pixels_per_frame=False)
    proc = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok, video_processor=vp,
                               chat_template=CHAT_TEMPLATE)
    meta = [VideoMetadata(total_num_frames=total, fps=fps, frames_indices=idx.tolist())
            for _, _, idx, fps, total in clips]
    out = proc(text=[build_prompt(r) for r in rows], videos=[c[0] for c in clips], video_metadata=meta,
               padding=True, return_tensors="pt")
    info = (f"made by the official Qwen2_5_VLProcessor of transformers {transformers.__version__}, torch "
            f"{torch.__version__}, torchvision {torchvision.__version__}; command: {GOLDEN_COMMAND}")
    arrays = {**{f"{k}{i}": c[j] for i, c in enumerate(clips) for j, k in enumerate(("frames", "times"))},
              "sample_fps": np.array([len(idx) / total * fps for _, _, idx, fps, total in clips]),
              "min_pixels": np.array(TINY_MIN_PIXELS), "max_pixels": np.array(TINY_MAX_PIXELS),
              "rows_json": np.array(json.dumps(rows)), "tokenizer_json": np.array(tok.backend_tokenizer.to_str()),
              "info": np.array(info)}
    for k in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw",
              "second_per_grid_ts"):
        arrays[k] = torch.as_tensor(out[k]).numpy()
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    np.savez_compressed(out_path, **arrays)
    print(info, "\nwrote", out_path, {k: v.shape for k, v in arrays.items()})


# --- main -----------------------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(prog="python model.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", help="folder of the demo tiny model (default: a new temporary folder)")
    p.add_argument("--golden", action="store_true", help="remake the golden fixture of the preprocessing parity test")
    args = p.parse_args(argv)
    if args.golden:
        return make_golden_fixture()
    # a throw-away folder by default: train.py builds its own tiny_model/ with a tokenizer fitted to its data
    out_dir = build_tiny(args.out or tempfile.mkdtemp(prefix="tiny_model_"), demo_texts())
    model, tok = load(out_dir, dtype=torch.float32, device="cpu")
    print(f"tiny Qwen2.5-VL in {out_dir}/: {count_params(model):,} parameters "
          f"(vision {count_params(model.model.visual):,}), vocabulary {len(tok)} tokens")
    print(memory_table())


if __name__ == "__main__":
    main()
