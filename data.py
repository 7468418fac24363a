"""Video-STR's data: rows (load_rows: our JSONL format or Video-R1's), their clips (read_clip: PyAV frame sampling
by Qwen's rules), then a synthetic stand-in for the paper's STV-205k (arXiv 2510.10976 Sec. 3, not downloadable
here): rendered scenes whose questions, graphs and reference reasoning come from their exact geometry; and the
same rows from the paper's real sources (KITTI tracking, ScanNet, TAO), made by one generator over object tracks.

Run (each command's flags: `python data.py COMMAND --help`):
  python data.py                                   # a few clips in a temp folder, their questions and reasoning
  python data.py make --out data/synth --n 1500 --seed 0 [--max-objects 5] [--questions 4]
  python data.py bench                             # read_frames(16) vs decoding every frame of a 2-min video
  python data.py kitti ROOT --out DIR [--seqs 0000 0001] [--clip_seconds 4]    # KITTI tracking -> rows
  python data.py scannet SCANS --out DIR [--scenes scene0000_00]                # ScanNet's exports -> rows
  python data.py tao ANNOTATIONS.json --frames ROOT --out DIR                   # TAO -> rows without graphs

`--n` counts scenes (= videos), each with up to `--questions` rows of different tasks (the files: make_dataset);
`--n 2000` takes ~2 min and ~60 MB on 2 CPU cores. make's defaults are train.py's set (data/synth, SCENES, seed 0).

Letters in shape comments: F frames, H height, W width, N objects (or frames of a whole video), K points.
Time: `sec` is a time in seconds; `frame` (and `t` in a `<graph t=...>` block) is a source-frame index.

Row format (one JSON object per line; `video` relative to the JSONL's folder; `options` are texts, the letter
is the position; `answer`: letter for mc, float for num, [start, end] seconds for iou; `graphs` at the key
frames, camera-frame centres x right, y down, z forward in metres; `reasoning` the reference completion).
A full example row (scene 0 of seed 0; a static question: one key frame, the last; the graph's centres are the
scene's exact geometry in mm, the reasoning writes them to 0.1 m):
  {"id": "synth-000000-01", "video": "videos/000000.mp4",
   "question": "Which object is closest to the red cube at the end of the video?",
   "options": ["blue cube", "red ball", "yellow cone", "green ball"], "answer": "D",
   "answer_type": "mc", "task": "closest_object", "time_window": null,
   "graphs": [{"frame": 31, "nodes": [{"category": "red cube", "center": [-2.015, -0.194, 5.344]},
                                      {"category": "green ball", "center": [-0.583, 0.249, 4.229]},
                                      {"category": "blue cube", "center": [0.305, -0.28, 5.477]}]}],
   "reasoning": "<think><graph t=31> red cube (-2.0,-0.2,5.3); green ball (-0.6,0.2,4.2); blue cube
     (0.3,-0.3,5.5) | red cube-green ball d=1.9 a=14; red cube-blue cube d=2.3 a=24; green ball-blue cube d=1.6
     a=13 </graph> The green ball is closest, 1.9 m. </think><answer>D</answer>"}
  (one line in the file). num rows: "options": null, "answer": 2.4; iou rows: "answer": [1.0, 3.5].
"""
import argparse
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
import timeit
import warnings
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

import av
import numpy as np

import graph

CLIP_FRAMES, CLIP_FPS, CLIP_SIZE = 32, 8, 112   # default synthetic clip: 32 frames at 8 fps (4 s), 112 x 112
TRAIN_FRAMES = 16                               # frames the model is given in training (paper: 16 train, 32 test)
KEY_FRAMES = 2                                  # k key frames per scene (first, last); a row has the 1 or 2 it needs
SEEK_GAP = 12                                   # seek when a keyframe lets us skip more than this many frames
HFOV = math.radians(60.0)                       # horizontal field of view of the synthetic camera
CAM_HEIGHT, CAM_PITCH, MAX_YAW = 1.6, 0.30, 0.35  # metres, radians down, radians of yaw over a clip
MAX_ROLL = 45.0                                 # degrees: a rolled scene's camera turns up to this about its axis
LETTERS = "ABCDEFGHIJ"
SCENES = 1500                                   # scenes of the default synthetic set (data.py make, train.py)
MAX_PROMPT_TOKENS = 1024                        # rows with more prompt text tokens are skipped: train.py, eval.py


# --- loading rows ---------------------------------------------------------------------------------------------------

ANSWER_TYPES = ("mc", "num", "iou")
VIDEO_R1_TYPES = {"multiple choice": "mc", "numerical": "num", "regression": "num"}
ROW_DEFAULTS = {"options": None, "time_window": None, "graphs": None, "task": "unknown", "reasoning": None}


def _is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_text(x):
    return isinstance(x, str) and bool(x.strip())


def _is_graph(g):
    return (isinstance(g, dict) and isinstance(g.get("frame"), int) and g["frame"] >= 0
            and isinstance(g.get("nodes"), list) and all(
                isinstance(n, dict) and isinstance(n.get("category"), str) and isinstance(n.get("center"), list)
                and len(n["center"]) == 3 and all(map(_is_num, n["center"])) for n in g["nodes"]))


def _is_answer(r):
    a, kind = r["answer"], r["answer_type"]
    if kind == "mc":
        return isinstance(a, str) and len(a) == 1 and a in LETTERS[:len(r["options"])]
    if kind == "num":
        return _is_num(a)
    return (isinstance(a, list) and len(a) in (2, 4) and all(map(_is_num, a))
            and a[0] <= a[len(a) // 2] and a[1] <= a[-1])


ROW_CHECKS = (                          # (field, test of the row, what it must be): the first that fails is named
    ("video", lambda r: _is_text(r.get("video")), "a non-empty string"),
    ("question", lambda r: _is_text(r.get("question")), "a non-empty string"),
    ("answer_type", lambda r: r.get("answer_type") in ANSWER_TYPES, f"one of {ANSWER_TYPES}"),
    ("answer", lambda r: "answer" in r, "given"),
    ("options", lambda r: r["options"] in (None, []) if r["answer_type"] != "mc" else (
        isinstance(r["options"], list) and 2 <= len(r["options"]) <= len(LETTERS)
        and all(map(_is_text, r["options"]))),
     "a list of 2-10 non-empty option texts for mc, null for num / iou"),
    ("answer", _is_answer, "an option letter (mc), a finite number (num), [start, end] or [x1, y1, x2, y2] in "
                           "order (iou)"),
    ("time_window", lambda r: r["time_window"] is None or (isinstance(r["time_window"], list) and len(
        r["time_window"]) == 2 and all(map(_is_num, r["time_window"])) and r["time_window"][0] < r["time_window"][1]),
     "[start, end] seconds with start < end, or null"),
    ("graphs", lambda r: r["graphs"] is None or (isinstance(r["graphs"], list) and all(map(_is_graph, r["graphs"]))),
     "null or a list of {frame: int >= 0, nodes: [{category, center: [x, y, z]}]}"),
    *((f, lambda r, f=f: r.get(f) is None or isinstance(r[f], str), "a string or null")
      for f in ("task", "reasoning", "id")))


def validate_row(row, folder):
    """Our row format: fills the defaults, checks every field (ROW_CHECKS), makes `video` absolute. Returns it."""
    if not isinstance(row, dict):
        raise BadRow("row", "not a JSON object")
    for field, default in ROW_DEFAULTS.items():
        row.setdefault(field, default)
    for field, ok, what in ROW_CHECKS:
        if not ok(row):
            raise BadRow(field, f"must be {what}; got {row.get(field)!r:.60}")
    row["video"] = os.path.normpath(os.path.join(folder, os.path.expanduser(row["video"])))
    return row


def r1_extract(text):
    r"""Video-R1's extract_answer: the first <answer>\s*(.*?)\s*</answer>, stripped, or '' without one; found with
    str.find, which is linear where that regex rescans the rest of the text from every unclosed <answer>."""
    if not isinstance(text, str):
        return ""
    i = text.find("<answer>")
    j = text.find("</answer>", i + 8) if i >= 0 else -1
    return text[i + 8:j].strip() if j >= 0 else ""


def option_texts(options, where=None):
    """['A. chair', 'B. table'] or ['(A) chair', ...] or ['chair', ...] -> ['chair', 'table'] (letter = position;
    a prefix with another letter is a BadRow). Video-R1 rows here and the benchmark adapters of eval.py."""
    if not isinstance(options, (list, tuple)) or not options:
        raise BadRow("options", f"must be a non-empty list, got {options!r:.80}", where)
    out = []
    for k, opt in enumerate(options):
        m = OPTION_PREFIX_RE.match(str(opt))
        if m and m.group(1).upper() != chr(ord("A") + k):
            raise BadRow("options", f"option {k} is labelled {m.group(1)!r}, expected {chr(ord('A') + k)!r}", where)
        out.append(str(opt)[m.end():].strip() if m else str(opt).strip())
    return out


def from_video_r1(item):
    """Video-R1 item (problem, options ["A. ...", ...], problem_type, solution "<answer>B</answer>", path)
    -> our row. multiple choice -> mc (prefixes stripped), numerical / regression -> num; other types
    (OCR, free-form, ...) and image rows are bad rows."""
    if item.get("data_type", "video") != "video":
        raise BadRow("data_type", f"only video rows are supported, got {item.get('data_type')!r}")
    ptype = item.get("problem_type")
    if ptype not in VIDEO_R1_TYPES:
        raise BadRow("problem_type", f"unsupported {ptype!r} (supported: {', '.join(VIDEO_R1_TYPES)})")
    solution = str(item.get("solution", ""))
    at = VIDEO_R1_TYPES[ptype]
    ans = text = r1_extract(solution) or solution.strip()
    options = option_texts(item.get("options")) if at == "mc" else None   # "A. text" -> "text"
    if at == "mc":
        ans = ans.strip("().: ")[:1].upper()
    else:
        try:
            ans = float(ans.replace(",", ""))
        except ValueError:
            raise BadRow("solution", f"no number in {item.get('solution')!r}") from None
    if not isinstance(item.get("path"), str):
        raise BadRow("path", "missing video path")
    process = item.get("process")
    return {"id": str(item.get("problem_id", "")) or None, "video": item["path"], "question": item.get("problem"),
            "options": options, "answer": ans, "answer_type": at, "task": str(item.get("data_source") or ptype),
            "time_window": None, "graphs": None, "reasoning": f"{process.strip()}<answer>"
            f"{ans if at == 'mc' else text}</answer>" if isinstance(process, str) and process.strip() else None}


def load_rows(path, skip_bad=False, skipped=None):
    """Rows of a JSONL file in our format, or of a Video-R1 JSON / JSONL file, validated. Relative video paths
    resolve against the file's folder (made absolute); each row's `file_line` says where it came from ("FILE:LINE",
    or "FILE: item N" of a JSON list). A bad row raises BadRow (a ValueError) "FILE:LINE: field 'F': why"; with
    skip_bad=True it is skipped, the count is printed, and (FILE:LINE, why) is appended to `skipped` if given."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    records, unit = read_records(path)
    rows, bad = [], []
    for n, rec in records:
        where = f"{path}:{n}" if unit == "line" else f"{path}: item {n}"
        try:
            if isinstance(rec, BadRow):
                raise rec
            if isinstance(rec, dict) and "problem" in rec and "question" not in rec:
                rec = from_video_r1(rec)
            row = validate_row(rec, folder)
            row["id"] = row.get("id") or f"{os.path.basename(path)}:{n}"
            row["file_line"] = where                                      # for skip reports
            rows.append(row)
        except BadRow as e:
            if not skip_bad:
                raise e.at(where) from None
            bad.append((where, str(e.at(None))))
    if bad:
        print(f"load_rows: skipped {len(bad)} bad row(s) of {len(records)} in {path} (first: {': '.join(bad[0])})")
    if skipped is not None:
        skipped.extend(bad)
    return rows


def video_problem(path, window=None):
    """Why a row's video cannot be used, or None: the cheap checks (the file exists, is not empty, opens as a
    container with a video stream; a time_window [start, end] s overlaps the duration its header states). No
    frame is decoded: a file damaged inside is found when its clip is read (read_clip raises VideoError)."""
    try:
        container, vs = _open_video(path)
    except (FileNotFoundError, VideoError) as e:
        return str(e)
    with container:
        tb = float(vs.time_base or 0)
        start = (vs.start_time or 0) * tb
        end = (start + vs.duration * tb if vs.duration and tb else
               start + container.duration / av.time_base if container.duration else None)   # None: unknown
    if window and end is not None and (window[0] >= end or window[1] < start):
        return f"{path}: time_window {list(window)} s lies outside the video ({start:.2f} to {end:.2f} s)"
    return None


def clip_problem(read, row):
    """(read(row), None), or (None, why) when the row's video does not decode (VideoError / FileNotFoundError,
    naming the video): damage inside a file that the cheap checks at load time (check_videos) cannot see."""
    try:
        return read(row), None
    except (VideoError, FileNotFoundError) as e:
        return None, str(e)


def check_videos(rows):
    """(rows whose video passes video_problem, [(FILE:LINE, why)] of the others)."""
    keys = [(r["video"], tuple(r.get("time_window") or ())) for r in rows]
    why = {k: video_problem(*k) for k in set(keys)}                     # each (video, window) checked once
    return ([r for r, k in zip(rows, keys) if why[k] is None],
            [(r.get("file_line", r.get("id")), why[k]) for r, k in zip(rows, keys) if why[k] is not None])


# --- reading frames -------------------------------------------------------------------------------------------------

class VideoError(ValueError):
    """A video that cannot be read as asked; the message names the file and the cause."""


def frame_interval(times):
    """Mean source-frame interval in seconds, (t_last - t_first) / (N - 1): 1 / the video's average fps."""
    return (times[-1] - times[0]) / max(len(times) - 1, 1) or 1.0


def sample_indices(times, num_frames=16, fps=None, start=None, end=None, path="video"):
    """Qwen-style uniform sampling (qwen-vl-utils) over presentation times (N,) seconds: (idx (F,) into times, M).

    The window is the M frames with start - 1e-9 <= t <= end + 1e-9 (None: open), at least 2. F = num_frames,
    capped at floor(fps x window duration) when fps is given, clamped to M, rounded down to even (>= 2);
    idx = window[round(linspace(0, M-1, F))]."""
    times = np.asarray(times, dtype=np.float64)                          # (N,)
    lo, hi = -np.inf if start is None else float(start), np.inf if end is None else float(end)
    if lo > hi:
        raise VideoError(f"{path}: window start {lo} s is after end {hi} s")
    window = np.flatnonzero((times >= lo - 1e-9) & (times <= hi + 1e-9))  # (M,)
    if len(window) < 2:
        raise VideoError(f"{path}: {len(window)} frame(s) in the window [{start}, {end}] s of a "
                         f"{len(times)}-frame video; at least 2 are needed")
    n = int(num_frames)
    if fps is not None:
        duration = times[window[-1]] - times[window[0]] + frame_interval(times)   # VFR safe
        n = min(n, int(math.floor(float(fps) * duration + 1e-9)))
    n = max(2, min(n, len(window)) // 2 * 2)                             # even, at least 2
    return window[np.round(np.linspace(0, len(window) - 1, n)).astype(np.int64)], len(window)   # (F,), M


def _av_open(path):
    """av.open(path) whatever the encoding of its metadata: PyAV 18 fails on a Latin-1 title unless given
    metadata_errors="ignore"; PyAV 19 dropped that argument and decodes with surrogateescape, which never fails."""
    try:
        return av.open(path, metadata_errors="ignore")
    except TypeError:                                                    # PyAV >= 19: no such argument
        return av.open(path)


def _open_video(path):
    """av container and its first video stream, or a VideoError / FileNotFoundError naming the cause."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a folder, not a video file")
    if not os.path.isfile(path):                                         # a pipe or device could block forever
        raise VideoError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    try:
        container = _av_open(path)
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video (not a video, or truncated before its index): "
                         f"{e.strerror or e}") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoError(f"{path}: no video stream (streams: {', '.join(kinds)})")
    vs = container.streams.video[0]
    vs.thread_type = "AUTO"                                              # frame + slice threads
    return container, vs


def _packet_index(container, vs, path):
    """Demux every packet once (no decoding): pts (N,) int sorted, keyframe (N,) bool, truncated flag."""
    pts, key, truncated, dropped = [], [], False, 0
    try:
        for pkt in container.demux(vs):
            if pkt.size == 0 or pkt.is_discard:
                dropped += pkt.size > 0                                  # edit-list cuts count as present
                continue
            if pkt.is_corrupt:                                           # partial packet at a cut-off end
                truncated = True
                continue
            t = pkt.pts if pkt.pts is not None else pkt.dts
            if t is not None:
                pts.append(int(t))
                key.append(bool(pkt.is_keyframe))
    except av.error.FFmpegError:
        truncated = True                                                 # demuxer gave up: data ends early
    truncated = truncated or len(pts) + dropped < (vs.frames or 0)       # header promises more than is there
    if not pts:
        raise VideoError(f"{path}: video stream has zero frames" +
                         (f" readable (truncated: the header lists {vs.frames})" if truncated else ""))
    pts, key = np.array(pts, dtype=np.int64), np.array(key)
    order = np.argsort(pts, kind="stable")                               # decode order -> presentation order
    pts, key = pts[order], key[order]
    keep = np.concatenate([[True], np.diff(pts) > 0])                    # drop duplicate timestamps
    return pts[keep], key[keep], truncated


def _frames_from(container, vs, start_pts=None):
    """Decoded frames from a keyframe (seek) or the current position; skips packets that fail to decode."""
    if start_pts is not None:
        container.seek(int(start_pts), stream=vs, backward=True, any_frame=False)
    for pkt in container.demux(vs):
        if pkt.is_corrupt:
            continue
        try:
            yield from pkt.decode()                                      # size-0 packet at the end flushes
        except av.error.FFmpegError:
            continue                                                     # a damaged packet: its frame is lost


def _to_rgb(frame, path):
    """(H, W, 3) uint8 in display orientation: the display matrix's rotation applied, a mirror refused."""
    img = frame.to_ndarray(format="rgb24")                               # (H, W, 3)
    sd = frame.side_data.get("DISPLAYMATRIX")                            # by name: PyAV 18 and 19 (19's is a mapping)
    if sd is not None:
        m = np.frombuffer(bytes(sd), dtype=np.int32).astype(np.int64)    # 3x3, 16.16 fixed point
        if m[0] * m[4] - m[1] * m[3] < 0:                                # negative determinant: a mirror
            raise VideoError(f"{path}: mirrored display matrix (flip metadata) is not supported")
    rot = frame.rotation
    if rot:
        img = np.ascontiguousarray(np.rot90(img, k=int(round(rot / 90.0)) % 4))  # counter-clockwise
    return img


def _decode_at(container, vs, pts, key, want, path):
    """Frames at positions `want` (sorted, into pts): {position: (H, W, 3) uint8}; a frame that does not
    decode is missing. Seeks to the keyframe before a wanted frame when that skips more than SEEK_GAP frames,
    else decodes forward; a seek that lands past the frame retries once from the start. Bounded work."""
    pos_of = {int(p): i for i, p in enumerate(pts)}
    key_pos = np.flatnonzero(key)                                        # (K,) keyframe positions
    wanted, out, frames, cur, budget = set(want), {}, None, -1, 3 * len(pts) + 64
    for w in want:
        if w in out:
            continue
        before = key_pos[key_pos <= w]
        k = int(before[-1]) if len(before) else 0
        seek = frames is None or k - cur > SEEK_GAP or w <= cur
        for s in (k if seek else None, 0):                               # s: the keyframe position to seek to
            if s is not None:
                frames, cur, floor, first = _frames_from(container, vs, pts[s]), s - 1, s, None
            for fr in frames:                                            # decode until position >= w
                budget -= 1
                if budget < 0:
                    raise VideoError(f"{path}: decoder does not reach frame {w} (inconsistent timestamps)")
                i = pos_of.get(fr.pts if fr.pts is not None else fr.dts, -1)
                if i < floor:
                    continue                                             # before the seek point (open GOP)
                cur, first = i, i if first is None else first
                if i in wanted and i not in out:
                    out[i] = _to_rgb(fr, path)
                if i >= w:
                    break
            else:
                frames = None                                            # stream ended
            if w in out or k == 0 or first is None or first <= w or s == 0:
                break                                                    # else the seek overshot w: from 0 again
    return out


class Clip(NamedTuple):
    """A sampled clip. frames uint8 (F, H, W, 3); times (F,) seconds = pts x time_base (true presentation times,
    what graphs and answers use); indices (F,) source-frame positions in presentation order (`<graph t=...>`);
    sample_fps = F / M x video_fps, M the frames of the window and video_fps = 1 / frame_interval: Qwen's own
    convention for the sampled frame rate (qwen-vl-utils fetch_video; the official processor given the video's
    fps and frame count), from which model.preprocess_video takes second_per_grid_ts."""
    frames: np.ndarray
    times: np.ndarray
    indices: np.ndarray
    sample_fps: float


def read_clip(path, num_frames=16, fps=None, start=None, end=None):
    """Sample a Clip of a video (F and the window: sample_indices). The packets are indexed once (demux, no
    decoding) for every frame's true presentation time (variable frame rates are exact) and the keyframes, then
    only the sampled frames are decoded (_decode_at). Rotation metadata is applied (H, W as displayed); odd sizes
    are kept. Raises FileNotFoundError or VideoError (a ValueError) naming the file and the cause; a truncated file
    warns and returns the frames of its readable part (if at least 2), else raises."""
    container, vs = _open_video(path)
    try:
        pts, key, truncated = _packet_index(container, vs, path)
        tb, listed = float(vs.time_base), vs.frames or "?"                # PyAV 19 refuses vs.* once closed
        times = pts * tb                                                 # (N,) seconds, true presentation times
        idx, m = sample_indices(times, num_frames, fps, start, end, path)   # (F,), frames in the window
        got = _decode_at(container, vs, pts, key, sorted(set(idx.tolist())), path)
    finally:
        container.close()
    keep = [i for i in idx if i in got]
    if len(keep) < len(idx):
        truncated = True
        keep = keep[: len(keep) - len(keep) % 2]
    if truncated:
        if len(keep) < 2:
            raise VideoError(f"{path}: truncated or damaged, only {len(keep)} of the wanted frames decode")
        warnings.warn(f"{path}: truncated or damaged ({len(pts)} of {listed} frames readable); "
                      f"returning {len(keep)} frames of the readable part", stacklevel=2)
    shapes = {got[i].shape for i in keep}
    if len(shapes) > 1:
        raise VideoError(f"{path}: frame size changes inside the video {sorted(shapes)}")
    frames = np.stack([got[i] for i in keep])                           # (F, H, W, 3)
    keep = np.array(keep, dtype=np.int64)                               # (F,) source-frame indices
    sample_fps = len(keep) / m / frame_interval(times)                  # F / M x video_fps (qwen-vl-utils)
    return Clip(frames, times[keep], keep, float(sample_fps))


def read_frames(path, num_frames=16, fps=None, start=None, end=None):
    """(frames uint8 (F, H, W, 3), times (F,) seconds) of read_clip."""
    return read_clip(path, num_frames, fps, start, end)[:2]


def row_clip(row, num_frames):
    """read_clip of a row's video within its time_window (if any): the clip train.py and eval.py give the model."""
    start, end = row.get("time_window") or (None, None)
    return read_clip(row["video"], num_frames, start=start, end=end)


def write_video(path, frames, fps=CLIP_FPS, times=None, codec="libx264", gop=None, rotation=None,
                qp=23, preset="veryfast"):
    """Write frames ((F, H, W, 3) uint8, or an iterable of (H, W, 3)) to an mp4 (index at the front). times (F,)
    seconds give a variable frame rate; rotation (degrees counter-clockwise) writes a display matrix. libx264 needs
    even H and W (yuv420p); odd sizes are written as yuv444p. A constant quantiser qp, not crf: libx264's crf rate
    control gave different bytes for the same frames from run to run (PyAV 18.1), qp gives the same bytes."""
    frames = iter(frames)
    first = next(frames)                                                # (H, W, 3)
    H, W = np.shape(first)[:2]
    tb = Fraction(1, 1000) if times is not None else Fraction(1, int(fps))
    with av.open(os.fspath(path), "w", options={"movflags": "+faststart"}) as c:
        s = c.add_stream(codec, rate=int(fps))
        s.width, s.height = W, H
        s.pix_fmt = "yuv420p" if (H % 2 == 0 and W % 2 == 0) or codec != "libx264" else "yuv444p"
        s.codec_context.time_base = tb
        if gop:
            s.codec_context.gop_size = int(gop)
        if codec == "libx264":
            s.codec_context.options = {"qp": str(qp), "preset": preset, "threads": "1", **(
                {"x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"} if gop else {})}
        if rotation:
            s.set_display_rotation(rotation)
        for i, img in enumerate(itertools.chain([first], frames)):
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, dtype=np.uint8), format="rgb24")
            fr.pts = int(round(times[i] * 1000)) if times is not None else i
            fr.time_base = tb
            for pkt in s.encode(fr):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


# --- the synthetic world (to the support marker): scenes ---------------------------------------------------------

COLOURS = {"red": (215, 45, 40), "blue": (45, 85, 225), "green": (40, 165, 65), "yellow": (235, 200, 35)}
SHAPES = ("cube", "ball", "cone", "cylinder")
SIZES = np.round(np.arange(0.6, 1.21, 0.1), 1)      # widths of cubes and balls, metres (multiples of 0.1: exact)
SLIM = np.round(np.arange(0.5, 0.81, 0.1), 1)       # widths of cones and cylinders: slim and tall, so that at 56 px a
HEIGHTS = np.round(np.arange(1.0, 1.61, 0.1), 1)    # cylinder is not mistaken for a cube (silhouettes differ)
HOOD_TOP, STRIPE = 0.9, 0.05                        # the bonnet below 0.9 H; its centre stripe 0.05 W wide each side


def clip_end(scene):
    """Time of the last frame, (num_frames - 1) / fps: "the end of the video" in questions and motions."""
    return (scene["num_frames"] - 1) / scene["fps"]


def frame_times(scene):
    """(N,) presentation time of every frame of the clip, seconds."""
    return np.arange(scene["num_frames"]) / scene["fps"]


def object_center(obj, sec):
    """World centre (3,) at time sec, or (F, 3) at times sec (F,): ground position + velocity x time moved so
    far, z = height / 2. World frame: X right and Y forward as the camera starts, Z up, metres."""
    t0, t1 = obj["move"] or (0.0, 0.0)
    moved = np.clip(np.asarray(sec, dtype=np.float64), t0, t1) - t0      # seconds of motion before sec
    return np.stack([obj["pos"][0] + obj["vel"][0] * moved, obj["pos"][1] + obj["vel"][1] * moved,
                     np.full_like(moved, obj["height"] / 2.0)], axis=-1)


def present(obj, sec):
    return sec >= obj["appear"] - 1e-9


def camera_pose(scene, sec):
    """(R (3, 3), c (3,)): rows of R are the camera's x right, y down, z forward axes in world coordinates;
    c its centre. Yaw psi(sec) turns right for psi > 0, pitch looks down."""
    cam = scene["camera"]
    psi, th = cam["yaw_rate"] * sec, cam["pitch"]
    fwd = np.array([math.sin(psi) * math.cos(th), math.cos(psi) * math.cos(th), -math.sin(th)])
    right = np.array([math.cos(psi), -math.sin(psi), 0.0])
    down = np.cross(fwd, right)
    c = np.array([cam["pos"][0] + cam["vel"][0] * sec, cam["pos"][1] + cam["vel"][1] * sec, cam["height"]])
    R = np.stack([right, down, fwd])
    return offset_pose(R, c, cam["offset"]) if cam.get("offset") else (R, c)


def rz(phi):
    """Rotation by phi radians about a Z axis: the world's vertical (yaw, orbit) or, applied to the camera's own
    axes, its optical axis (roll; offset_pose)."""
    c, s = math.cos(phi), math.sin(phi)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def offset_pose(R, c, offset):
    """(R', c') of a camera pose turned by offset = {"axis", "deg", "pivot"} (eval.py's rotation stress test):
    yaw   R' = R Rz(phi), c' = c                         (turn about the vertical through the camera centre)
    roll  R' = Rz(-phi) R, c' = c                        (Rz of the camera's own axes: a turn about the optical
                                                         axis, so objects stay in view)
    orbit R' = R Rz(phi), c' = p + Rz(-phi)(c - p)       (carry the camera round pivot p: d_ij kept, a_ij not)"""
    phi = math.radians(offset["deg"])
    if offset["axis"] == "yaw":
        return R @ rz(phi), c
    if offset["axis"] == "roll":
        return rz(-phi) @ R, c
    if offset["axis"] == "orbit":
        p = np.asarray(offset["pivot"], dtype=np.float64)
        return R @ rz(phi), p + rz(-phi) @ (c - p)
    raise ValueError(f"rotation axis must be yaw, roll or orbit, got {offset['axis']!r}")


def to_camera(scene, p, sec):
    """World points p (..., 3) -> camera frame (..., 3) at time sec: x right, y down, z forward."""
    R, c = camera_pose(scene, sec)
    return (np.asarray(p, dtype=np.float64) - c) @ R.T


def project(scene, pc):
    """Camera-frame points (..., 3) -> pixel coordinates (..., 2) (u right, v down; pixel centres at +0.5)."""
    (H, W), f = scene["size"], scene["focal"]
    z = np.maximum(pc[..., 2], 1e-3)
    return np.stack([f * pc[..., 0] / z + W / 2.0, f * pc[..., 1] / z + H / 2.0], axis=-1)


def _new_object(rng, name, T):
    """An object of the given name with its size and (half the time) a motion interval, not yet placed:
    moving objects move for the whole clip [0, T] (T = time of the last frame) or >= 1 s on a 0.5 s grid."""
    shape = name.split()[1]
    boxy = shape in ("cube", "ball")
    w = float(rng.choice(SIZES if boxy else SLIM))
    o = {"name": name, "shape": shape, "colour": name.split()[0], "width": w,
         "height": w if boxy else float(rng.choice(HEIGHTS)),
         "pos": [0.0, 0.0], "yaw": round(float(rng.uniform(0, math.pi / 2)), 3), "vel": [0.0, 0.0],
         "move": None, "appear": 0.0}
    if rng.random() < 0.5:
        if rng.random() < 0.5:
            o["move"] = [0.0, T]
        else:
            t0 = float(rng.choice(np.arange(0.0, T - 1.0 + 1e-9, 0.5)))
            o["move"] = [t0, float(rng.choice(np.arange(t0 + 1.0, T + 1e-9, 0.5)))]
    return o


def _names(rng, n):
    """n unique "colour shape" names; colours distinct while n <= 4, else n distinct pairs of the 16."""
    if n <= len(COLOURS):
        return [f"{c} {rng.choice(SHAPES)}" for c in rng.permutation(list(COLOURS))[:n]]
    pairs = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    return [pairs[i] for i in rng.permutation(len(pairs))[:n]]


def _stagger(rng, objs, T):
    """Objects pop in one after the other: one at 0 s, the others at distinct times on a 0.5 s grid <= 2.5 s.
    A moving object starts moving at the earliest when it appears."""
    times = [0.0] + sorted(rng.choice(np.arange(0.5, 2.51, 0.5), len(objs) - 1, replace=False).tolist())
    for i, sec in zip(rng.permutation(len(objs)), times):
        o = objs[i]
        o["appear"] = float(sec)
        if o["move"] and o["move"][0] < sec:
            o["move"] = [float(sec), float(min(T, max(o["move"][1], sec + 1.0)))]


def _place(rng, o, scene, depth=(3.0, 7.0), margin=0.12):
    """Put o on the ground inside the view cone that all frames share (bearing within the half field of view
    minus half the clip's yaw and a margin, 3-7 m from the camera's mid-clip position); a moving object
    gets a speed of 0.4-1.0 m/s in a random heading."""
    T = clip_end(scene)
    cam = scene["camera"]
    yaw_total = cam["yaw_rate"] * T
    half = HFOV / 2 - abs(yaw_total) / 2 - margin                        # radians of usable bearing
    bearing = yaw_total / 2 + rng.uniform(-half, half)
    r = rng.uniform(*depth)
    mid = np.array(cam["pos"]) + np.array(cam["vel"]) * T / 2
    o["pos"] = [round(float(mid[0] + r * math.sin(bearing)), 3), round(float(mid[1] + r * math.cos(bearing)), 3)]
    if o["move"]:
        speed, heading = rng.uniform(0.4, 1.0), rng.uniform(0, 2 * math.pi)
        o["vel"] = [round(speed * math.cos(heading), 3), round(speed * math.sin(heading), 3)]


def _poses(scene):
    """Camera pose at every frame: R (F, 3, 3), c (F, 3)."""
    R, c = zip(*(camera_pose(scene, sec) for sec in frame_times(scene)))
    return np.array(R), np.array(c)


def _track(scene, o, poses):
    """World centres (F, 3), camera-frame centres (F, 3), pixel centres (F, 2), presence (F,) of o."""
    ts = frame_times(scene)                                              # (F,)
    cw = object_center(o, ts)                                            # (F, 3)
    pc = np.einsum("fij,fj->fi", poses[0], cw - poses[1])               # (F, 3)
    return cw, pc, project(scene, pc), present(o, ts)


def _fits(scene, o, others, poses=None):
    """At every frame where o is present: in front (z >= 1.5 m) and inside the image with a margin; against
    each other present object: footprints >= 0.3 m apart, and the image centres apart by >= 0.8 x the sum
    of the apparent radii (no object hidden behind another)."""
    H, W = scene["size"]
    poses = poses or _poses(scene)
    cw, pc, uv, live = _track(scene, o, poses)
    z, u, v, phi = pc[live, 2], uv[live, 0], uv[live, 1], _roll(scene)
    y0 = (math.sin(phi) * pc[live, 0] + math.cos(phi) * pc[live, 1]) / z   # ray slope y before the roll (_hood)
    v_hood = scene["focal"] * y0 + H / 2
    if (z < 1.5).any() or (u < 0.08 * W).any() or (u > 0.92 * W).any() or (v_hood > (HOOD_TOP - 0.05) * H).any() \
            or (phi and (v < 0.08 * H).any()):           # a rolled camera: the bonnet is drawn unrolled (_hood)
        return False
    for q in others:
        cw2, pc2, uv2, live2 = _track(scene, q, poses)
        both = live & live2
        gap = np.linalg.norm(cw[both, :2] - cw2[both, :2], axis=1) - (o["width"] + q["width"]) / 2
        r_px = scene["focal"] * (o["width"] / pc[both, 2] + q["width"] / pc2[both, 2]) / 2
        if (gap < 0.3).any() or (np.linalg.norm(uv[both] - uv2[both], axis=1) < 0.8 * r_px).any():
            return False
    return True


def scene_ok(scene):
    """Every object fits (see _fits) against the objects before it."""
    objs = scene["objects"]
    return all(_fits(scene, o, objs[:i]) for i, o in enumerate(objs))


def make_scene(rng, n_objects=(2, 3), size=CLIP_SIZE, num_frames=CLIP_FRAMES, fps=CLIP_FPS, stagger_p=0.3, roll=0.0):
    """A random scene (JSON-able dict) of n_objects = (min, max) objects, at least one moving; a camera 1.6 m
    high, pitched down, driving slowly and yawing by up to MAX_YAW rad over the clip, turned `roll` degrees about
    its optical axis (offset_pose; 0: level); with probability stagger_p the objects appear one after the other.
    Objects are placed one at a time (deterministic; a level scene draws the same numbers as before rolls)."""
    T = (num_frames - 1) / fps                                           # time of the last frame
    depth = (3.0, 7.0) if n_objects[1] <= 3 else (2.5, 9.0)
    for _ in range(200):
        n = int(rng.integers(n_objects[0], n_objects[1] + 1))
        objs = [_new_object(rng, name, T) for name in _names(rng, n)]
        if not any(o["move"] for o in objs):
            objs[int(rng.integers(n))]["move"] = [0.0, T]
        if n > 1 and rng.random() < stagger_p:
            _stagger(rng, objs, T)
        cam = {"height": CAM_HEIGHT, "pitch": round(float(rng.uniform(CAM_PITCH - 0.05, CAM_PITCH + 0.05)), 3),
               "pos": [0.0, 0.0],
               "vel": [round(float(rng.uniform(-0.2, 0.2)), 3), round(float(rng.uniform(0, 0.3)), 3)],
               "yaw_rate": round(float(rng.uniform(-MAX_YAW, MAX_YAW)) / T, 4)}
        if roll:
            cam["offset"] = {"axis": "roll", "deg": roll}
        scene = {"id": 0, "size": [size, size], "focal": round((size / 2.0) / math.tan(HFOV / 2.0), 3),
                 "fps": fps, "num_frames": num_frames, "camera": cam, "objects": []}
        poses = _poses(scene)
        for o in objs:
            for _ in range(60):
                _place(rng, o, scene, depth)
                if _fits(scene, o, scene["objects"], poses):
                    scene["objects"].append(o)
                    break
            else:
                break                                                    # no room: start a new scene
        if len(scene["objects"]) == n:
            return scene
    raise RuntimeError("make_scene: no valid scene in 200 tries (settings too tight)")


# --- rendering (numpy only) -----------------------------------------------------------------------------------------

SKY, GROUND, LINE, HAZE = (np.array(c, dtype=np.float64) for c in
                           ((170, 200, 235), (128, 124, 112), (78, 76, 70), (180, 185, 190)))


def _pack(rgb):
    """Colours (..., 3) in 0..255 -> one uint32 each (bytes R, G, B, 0 in memory): a 2D canvas is faster."""
    c = np.clip(np.asarray(rgb, dtype=np.float64), 0, 255).astype(np.uint32)
    return c[..., 0] | (c[..., 1] << 8) | (c[..., 2] << 16)


SHADOW = _pack(GROUND * 0.55)


@lru_cache(maxsize=256)
def _shade(colour, factor, add=0.0):
    """Packed colour of a named object colour, scaled and brightened."""
    return _pack(np.array(COLOURS[colour], dtype=np.float64) * factor + add)


@lru_cache(maxsize=16)
def _pixel_grid(H, W, focal):
    """Ray slopes of pixel centres: xs (W,) = x/z, ys (H,) = y/z in the camera frame."""
    return ((np.arange(W, dtype=np.float32) + 0.5 - W / 2) / focal,
            (np.arange(H, dtype=np.float32) + 0.5 - H / 2) / focal)


def _ground(scene, R, c):
    """Packed (H, W) canvas: sky above the horizon, below it the ground plane with a 1 m grid fading into
    haze. Per pixel: its ray d = x R[0] + y R[1] + R[2] meets the ground z = 0 at s = -c_z / d_z (= depth), so a
    rolled camera sees the horizon, grid and sky turned with it."""
    H, W = scene["size"]
    xs, ys = _pixel_grid(H, W, float(scene["focal"]))
    dz = (R[1, 2] * ys[:, None] + R[2, 2]) + R[0, 2] * xs[None, :]      # (H, W) world z of each pixel's ray
    ground = dz < -1e-3                                                  # (H, W) rays that meet the ground
    s = (-c[2] / np.where(ground, dz, -1.0)).astype(np.float32)          # (H, W) ray parameter to the ground
    gx = c[0] + s * (R[0, 0] * xs[None, :] + (R[1, 0] * ys[:, None] + R[2, 0]))   # (H, W) ground X
    gy = c[1] + s * (R[0, 1] * xs[None, :] + (R[1, 1] * ys[:, None] + R[2, 1]))   # (H, W) ground Y
    off = np.minimum(np.abs(gx - np.rint(gx)), np.abs(gy - np.rint(gy)))      # (H, W) metres to a line
    fade = np.clip(s / 30.0, 0.0, 1.0)[..., None]                        # (H, W, 1) haze
    base = GROUND * (1 - fade) + HAZE * fade                             # (H, W, 3)
    line = LINE + (base - LINE) * np.clip((s - 6.0) / 8.0, 0.0, 1.0)[..., None]   # the grid fades out far away
    img = np.where(off < 0.02 + 0.004 * s, _pack(line), _pack(base))     # (H, W) packed uint32
    return np.where(ground, img, _pack(SKY)).astype(np.uint32)


def _fill_edges(img, a, b, colour):
    """Paint the convex region outlined by the segments a -> b ((E, 2) pixels each) on a packed (H, W)
    canvas: each pixel row is filled between the leftmost and rightmost crossing of any segment (scanline).
    For a convex solid, passing every edge of its projected outline needs no convex hull."""
    H, W = img.shape
    lo_v, hi_v = np.minimum(a, b).min(0), np.maximum(a, b).max(0)       # (2,) bounding box (u, v)
    v0, v1 = max(int(lo_v[1]), 0), min(int(np.ceil(hi_v[1])), H)
    u0, u1 = max(int(lo_v[0]), 0), min(int(np.ceil(hi_v[0])), W)
    if v0 >= v1 or u0 >= u1:
        return
    v = np.arange(v0, v1, dtype=np.float64)[:, None] + 0.5               # (h, 1) row centres
    dv = b[:, 1] - a[:, 1]                                               # (E,)
    frac = (v - a[:, 1]) / np.where(dv == 0, 1e-12, dv)                  # (h, E) where the row cuts each edge
    ucut = a[:, 0] + frac * (b[:, 0] - a[:, 0])                          # (h, E)
    cuts = (frac >= 0) & (frac <= 1)
    lo = np.where(cuts, ucut, np.inf).min(1, keepdims=True)              # (h, 1)
    hi = np.where(cuts, ucut, -np.inf).max(1, keepdims=True)
    u = np.arange(u0, u1, dtype=np.float64) + 0.5                        # (w,)
    img[v0:v1, u0:u1][(u >= lo) & (u <= hi)] = colour


def _disk(img, centre, r, colour):
    """Paint a filled circle (pixel centre within r of centre) on a packed (H, W) canvas."""
    H, W = img.shape
    v0, v1 = max(int(centre[1] - r), 0), min(int(centre[1] + r) + 1, H)
    u0, u1 = max(int(centre[0] - r), 0), min(int(centre[0] + r) + 1, W)
    if v0 >= v1 or u0 >= u1:
        return
    v = np.arange(v0, v1)[:, None] + 0.5 - centre[1]                     # (h, 1)
    u = np.arange(u0, u1) + 0.5 - centre[0]                              # (w,)
    img[v0:v1, u0:u1][v * v + u * u <= r * r] = colour


def _ring(centre, radius, z, k=10, phase=0.0):
    """k points (k, 3) of a horizontal circle (or regular polygon) at height z around a world centre."""
    ang = np.arange(k) * (2 * np.pi / k) + phase                        # (k,)
    return np.column_stack([centre[0] + radius * np.cos(ang), centre[1] + radius * np.sin(ang), np.full(k, z)])


def _draw_object(img, scene, o, p, R, c):
    """Painter's step for one object at world centre p: shaded silhouette, then its lighter top."""
    w, h = o["width"] / 2, o["height"]
    proj = lambda pw: project(scene, (pw - c) @ R.T)                     # (K, 3) world -> (K, 2) pixels
    if o["shape"] == "ball":
        pc = (p - c) @ R.T
        uv, r = project(scene, pc), scene["focal"] * w / pc[2]
        _disk(img, uv, r, _shade(o["colour"], 0.8))
        cs, sn = math.cos(_roll(scene)), math.sin(_roll(scene))         # the light is up-left of the unrolled view
        _disk(img, uv - 0.3 * r * np.array([cs + sn, cs - sn]), 0.45 * r, _shade(o["colour"], 1.15, 30.0))
        return
    cube = o["shape"] == "cube"
    k, phase, rad = (4, o["yaw"], w * math.sqrt(2)) if cube else (10, 0.0, w)
    bottom = proj(_ring(p, rad, 0.0, k, phase))                          # (k, 2)
    if o["shape"] == "cone":
        apex = np.repeat(proj(np.array([[p[0], p[1], h]])), k, axis=0)  # (k, 2)
        _fill_edges(img, np.vstack([bottom, bottom]), np.vstack([np.roll(bottom, -1, 0), apex]),
                    _shade(o["colour"], 0.9))
        return
    top = proj(_ring(p, rad, h, k, phase))                               # (k, 2)
    edges_a = np.vstack([bottom, top, bottom])                           # bottom, top and vertical edges
    edges_b = np.vstack([np.roll(bottom, -1, 0), np.roll(top, -1, 0), top])
    _fill_edges(img, edges_a, edges_b, _shade(o["colour"], 0.75))
    _fill_edges(img, top, np.roll(top, -1, 0), _shade(o["colour"], 1.0))


def render(scene, sec):
    """Frame at time sec: (H, W, 3) uint8. Ground and sky, contact shadows, then objects far to near."""
    R, c = camera_pose(scene, sec)
    img = _ground(scene, R, c)                                           # (H, W) packed uint32
    live = [o for o in scene["objects"] if present(o, sec)]
    centres = np.array([object_center(o, sec) for o in live]).reshape(-1, 3)    # (N, 3) world
    for o, p in zip(live, centres):
        ring = project(scene, (_ring(p, o["width"] * 0.6, 0.0, 8) - c) @ R.T)   # (8, 2) a convex polygon
        _fill_edges(img, ring, np.roll(ring, -1, 0), SHADOW)
    depth = (centres - c) @ R[2]                                         # (N,) camera z
    for i in np.argsort(-depth, kind="stable"):
        _draw_object(img, scene, live[i], centres[i], R, c)
    _hood(scene, img)
    return img.view(np.uint8).reshape(*img.shape, 4)[..., :3]          # (H, W, 3): drop the 4th byte (a view)


def _roll(scene):
    """The camera's roll offset in radians (eval.py's stress test), 0 without one."""
    off = scene["camera"].get("offset") or {}
    return math.radians(off["deg"]) if off.get("axis") == "roll" else 0.0


def _hood(scene, img):
    """The vehicle's bonnet at the bottom of every frame, with a bright centre stripe, as dash-cam footage shows it.
    It is fixed to the camera rig, so it marks the image's centre column: the vision tower's attention knows only
    relative positions (2D RoPE), and "left of the stripe" is a relative position. Under a roll offset of the camera
    (eval.py's stress test) the rig's picture turns with the camera, so the bonnet is drawn in the unrolled frame."""
    H, W = img.shape
    xs, ys = _pixel_grid(H, W, float(scene["focal"]))                    # (W,), (H,) ray slopes x/z, y/z
    phi = _roll(scene)
    x0 = math.cos(phi) * xs[None, :] - math.sin(phi) * ys[:, None]      # (H, W) ray slopes before the roll
    y0 = math.sin(phi) * xs[None, :] + math.cos(phi) * ys[:, None]
    f = float(scene["focal"])
    bonnet = y0 > (HOOD_TOP - 0.5) * H / f                               # (H, W)
    img[bonnet] = _pack((62, 62, 68))
    img[bonnet & (np.abs(x0) < STRIPE * W / f)] = _pack((250, 140, 20))


def render_clip(scene):
    """All frames of the clip: (F, H, W, 3) uint8."""
    return np.stack([render(scene, sec) for sec in frame_times(scene)])


# --- questions, graphs, reasoning: one generator over object tracks ------------------------------------------------
# The q_* tasks read one interface, a Footage of Tracks: the synthetic world makes it from a scene's exact geometry
# (synthetic_footage), each converter of real video (kitti_clips, scannet_clips, tao_clips) from its annotations.

DIRECTIONS = ("left and nearer", "left and farther", "right and nearer", "right and farther")
MOTIONS = ("left", "right", "toward the camera", "away from the camera")
WHEN = ("at the start of the video", "at the end of the video")    # WHEN[frame > 0]: a key frame is the first or last
APPEAR_GAP = 0.5            # s between first appearances that appearance_order needs (the synthetic grid's step)


class Track(NamedTuple):
    """One object of a clip, all that a q_* task reads of it. F: the clip's frames."""
    name: str                  # unique in the clip: questions and graphs use it ("red cube"; "car 2": track_names)
    category: str              # what it is ("red cube", "car")
    present: np.ndarray        # (F,) bool: annotated (KITTI, TAO), in view (ScanNet), appeared (synthetic)
    cam: object                # (F, 3) centre in each frame's camera frame, metres, NaN where absent; None: no 3D
    size: object = None        # (width, height, length) metres, or None
    world: object = None       # (F, 3) centre in the world frame (Z up), metres, NaN where absent; None without poses
    move: object = None        # (start, end) s of its motion, None: still (no poses: the whole clip, it may move)
    path: float = 0.0          # metres it travels over the clip
    vel: object = None         # (3,) world velocity while it moves, m/s (motion_direction reads its direction)


class Footage(NamedTuple):
    """A clip's objects and camera: the question generator's one input (make_questions)."""
    id: str                    # its rows are ID-00, ID-01, ...
    video: str                 # the clip's file, relative to the rows' folder
    times: np.ndarray          # (F,) seconds of each frame
    tracks: list               # [Track], in a fixed order
    poses: object              # (R (F, 3, 3), c (F, 3)) per frame (as camera_pose: p_cam = R (p - c)), or None
    tasks: tuple               # the tasks the source supports (TRACK_TASKS' names): the others are not asked
    vocabulary: tuple = ()     # names a distractor option may take where the clip has too few objects


def synthetic_footage(scene):
    """A rendered scene as a Footage: every frame's exact centres (to_camera of object_center, as render draws them),
    its motions (path = speed x seconds moved) and camera poses; present once an object has appeared."""
    secs, T = [f / scene["fps"] for f in range(scene["num_frames"])], clip_end(scene)
    tracks = []
    for o in scene["objects"]:
        live = np.array([present(o, sec) for sec in secs])[:, None]                   # (F, 1)
        world = np.array([object_center(o, sec) for sec in secs])                       # (F, 3)
        cam = np.array([to_camera(scene, p, sec) for p, sec in zip(world, secs)])       # (F, 3)
        path = float(np.hypot(*o["vel"])) * (min(T, o["move"][1]) - o["move"][0]) if o["move"] else 0.0
        tracks.append(Track(o["name"], o["name"], live[:, 0], np.where(live, cam, np.nan), (o["width"], o["height"],
                            o["width"]), np.where(live, world, np.nan), o["move"] and tuple(o["move"]), path,
                            np.array([*o["vel"], 0.0])))
    return Footage(f"synth-{scene['id']:06d}", f"videos/{scene['id']:06d}.mp4", np.array(secs), tracks, _poses(scene),
                   tuple(TASKS), tuple(f"{c} {s}" for c in COLOURS for s in SHAPES))


def key_frames(times, k=KEY_FRAMES, train_frames=TRAIN_FRAMES):
    """k source-frame indices among the frames the model is given (train_frames sampled from a clip's frame times (F,)
    as read_frames does): for k = 2 (the default) the first and the last frame of the clip, which every uniform
    sampling keeps, so a run with another `--frames` still sees the rows' key frames."""
    given = sample_indices(times, min(train_frames, len(times)))[0]                   # (16,)
    return [int(given[i]) for i in np.round(np.linspace(0, len(given) - 1, k)).astype(int)]


def graph_at(w, frame):
    """graph.Graph of the objects present at a frame of Footage w: camera-frame centres (x right, y down, z forward)
    in metres to the millimetre, left to right. The text form prints them to 0.1 m and derives the edges from these
    exact centres, so a written d_ij is the true distance rounded, the same number an abs_distance answer gives."""
    nodes = [graph.Node(t.name, tuple(round(float(x), 3) + 0.0 for x in t.cam[frame])) for t in _live(w, frame)]
    return graph.Graph(int(frame), sorted(nodes, key=lambda n: n.center[0]))


def _num(question, value, sentence, frames, digits=1):
    """A num question: what a q_* function returns (make_questions turns it into a row)."""
    return dict(question=question, options=None, answer=value, answer_type="num", text=graph.fmt_num(value, digits),
                sentence=sentence, frames=frames)


def _choice(rng, question, correct, distractors, sentence, frames, k=4):
    """An mc question: the correct text at a uniformly random position among min(k, 1 + len) options."""
    n = min(k, 1 + len(distractors))
    pos = int(rng.integers(n))
    others = [distractors[i] for i in rng.permutation(len(distractors))[: n - 1]]
    return dict(question=question, options=others[:pos] + [correct] + others[pos:], answer=LETTERS[pos],
                answer_type="mc", text=LETTERS[pos], sentence=sentence, frames=frames)


def _interval(question, start, end, sentence, frames):
    """An iou question: [start, end] seconds, one decimal (the sentence ends with 'from S s to E s.')."""
    s, e = (round(float(x), 1) for x in (start, end))
    return dict(question=question + " Answer [start, end] in seconds.", options=None, answer=[s, e],
                answer_type="iou", text=f"[{graph.fmt_num(s)}, {graph.fmt_num(e)}]",
                sentence=f"{sentence} from {graph.fmt_num(s)} s to {graph.fmt_num(e)} s.", frames=frames)


def _live(w, frame):
    """The tracks present at a frame, in the clip's order."""
    return [t for t in w.tracks if t.present[frame]]


def _dist(w, a, b, frame):
    """d_ab in metres at a frame from graph_at's centres: the d_ij its edge writes (the answer agrees with it)."""
    centres = {n.category: n.center for n in graph_at(w, frame).nodes}
    return float(graph.edge_features([centres[a.name], centres[b.name]])[0][0, 1])


def q_object_count(w, rng, keys):
    n = len(w.tracks)
    return _num("How many objects appear in the video?", float(n), f"I count {n} objects.", keys[-1:], 0)


def q_abs_distance(w, rng, keys):
    frames = [f for f in keys if len(_live(w, f)) >= 2]
    if not frames:
        return None
    f = frames[int(rng.integers(len(frames)))]
    live = _live(w, f)
    a, b = [live[i] for i in rng.permutation(len(live))[:2]]
    d = round(_dist(w, a, b, f), 1)
    when = f" {WHEN[f > 0]}" if a.move or b.move else ""
    return {**_num(f"What is the distance between the {a.name} and the {b.name}{when}, in metres (centre to "
                   f"centre)?", d, f"The {a.name} and the {b.name} are {graph.fmt_num(d)} m apart.", [f]),
            "asked": (a.name, b.name)}


def q_closest_object(w, rng, keys):
    """Needs >= 3 present objects and a clear winner (0.3 m ahead of the runner-up); 4 options, padded with names of
    the source's vocabulary that are not in the clip."""
    for f in [keys[i] for i in rng.permutation(len(keys))]:
        live = _live(w, f)
        for x in [live[i] for i in rng.permutation(len(live))] if len(live) >= 3 else []:
            others = sorted((_dist(w, x, o, f), o.name) for o in live if o is not x)
            if others[1][0] - others[0][0] >= 0.3:
                taken = {t.name for t in w.tracks} | {t.category for t in w.tracks}
                pad = [v for v in w.vocabulary if v not in taken]
                pad = [pad[i] for i in rng.permutation(len(pad))[: max(0, 4 - len(others))]]
                when = f" {WHEN[f > 0]}" if any(o.move for o in live) else ""
                return _choice(rng, f"Which object is closest to the {x.name}{when}?", others[0][1],
                               [n for _, n in others[1:]] + pad,
                               f"The {others[0][1]} is closest, {graph.fmt_num(others[0][0])} m.", [f])
    return None


def q_relative_direction(w, rng, keys):
    """B relative to A in the camera frame of a key frame: left/right (x) and nearer/farther (z), each
    component at least 0.4 m so the answer is unambiguous."""
    for f in [keys[i] for i in rng.permutation(len(keys))]:
        live = _live(w, f)
        for i, j in [(i, j) for i in rng.permutation(len(live)) for j in rng.permutation(len(live)) if i != j]:
            a, b = live[i], live[j]
            dx, _, dz = b.cam[f] - a.cam[f]
            if abs(dx) >= 0.4 and abs(dz) >= 0.4:
                ans = f"{'left' if dx < 0 else 'right'} and {'nearer' if dz < 0 else 'farther'}"
                return _choice(rng, f"Seen from the camera {WHEN[f > 0]}, where is the {b.name} relative "
                               f"to the {a.name}?", ans, [d for d in DIRECTIONS if d != ans],
                               f"The {b.name} is {ans}.", [f])
    return None


def q_object_size(w, rng, keys):
    sized = [t for t in w.tracks if t.size is not None and round(t.size[1], 1) > 0]
    if not sized:
        return None
    o = sized[int(rng.integers(len(sized)))]
    h = round(o.size[1], 1)
    return _num(f"How tall is the {o.name}, in metres?", h, f"The {o.name} is {graph.fmt_num(h)} m tall.", keys[-1:])


def _movers(w, rng, from_start=False):
    """Moving objects (seen in the world frame) in random order; from_start: only those present in the first and
    the last frame."""
    objs = [t for t in w.tracks if t.move and t.vel is not None and (t.present[[0, -1]].all() or not from_start)]
    return [objs[i] for i in rng.permutation(len(objs))]


def q_displacement(w, rng, keys):
    """Straight-line displacement between the first and last frame (>= 0.5 m: MRA needs gt > 0)."""
    for o in _movers(w, rng, from_start=True):
        d = round(float(np.linalg.norm(o.world[-1] - o.world[0])), 1)
        if d >= 0.5:
            return _num(f"How far is the {o.name} at the end of the video from where it was at the start, in "
                        f"metres?", d, f"The {o.name} moved {graph.fmt_num(d)} m.", keys)
    return None


def q_average_speed(w, rng, keys):
    """Path length over [0, T] / T, T = time of the last frame; two decimals (speeds are small)."""
    T = float(w.times[-1])
    for o in _movers(w, rng, from_start=True):
        v = round(o.path / T, 2)
        if v >= 0.1:
            return _num(f"What is the average speed of the {o.name} over the whole video, in metres per "
                        f"second?", v, f"It covers {graph.fmt_num(o.path)} m in {graph.fmt_num(T)} s.", keys, 2)
    return None


def q_motion_direction(w, rng, keys):
    """Direction of the motion in the camera's horizontal axes at the first frame; the dominant component
    must be at least twice the other."""
    R = w.poses[0][0]
    right, fwd = R[0], np.array([R[2][0], R[2][1], 0.0]) / np.hypot(R[2][0], R[2][1])
    for o in _movers(w, rng):
        step = np.array([o.vel[0], o.vel[1], 0.0])
        x, z = float(step @ right), float(step @ fwd)
        if max(abs(x), abs(z)) >= 2 * min(abs(x), abs(z)):
            ans = (MOTIONS[0] if x < 0 else MOTIONS[1]) if abs(x) > abs(z) else (MOTIONS[2] if z < 0 else MOTIONS[3])
            return _choice(rng, f"Seen from the camera, in which direction does the {o.name} move?", ans,
                           [m for m in MOTIONS if m != ans], f"The {o.name} moves {ans}.", keys)
    return None


def q_appearance_order(w, rng, keys):
    """Clips whose objects appear one after the other, APPEAR_GAP apart; options are orders (the right one + up to 3
    others)."""
    first = [float(w.times[np.argmax(t.present)]) for t in w.tracks]          # s when each is first present
    objs, times = [w.tracks[k] for k in np.argsort(first, kind="stable")], sorted(first)
    if len(objs) < 2 or min(np.diff(times)) < APPEAR_GAP - 1e-9:
        return None
    right = [o.name for o in objs]
    wrong = set()
    while len(wrong) < min(3, math.factorial(len(objs)) - 1):
        perm = [right[i] for i in rng.permutation(len(right))]
        if perm != right:
            wrong.add(", ".join(perm))
    return _choice(rng, "In which order do the objects first appear in the video?", ", ".join(right), sorted(wrong),
                   "They appear at " + ", ".join(f"{graph.fmt_num(sec)} s" for sec in times) + ".", keys)


def q_when_moving(w, rng, keys):
    for o in _movers(w, rng):
        return _interval(f"During which interval is the {o.name} moving?", *o.move, f"The {o.name} moves", keys)
    return None


def q_in_view(w, rng, keys):
    """An object that is not in view for the whole clip: from the first to the last frame it is present in."""
    for o in [w.tracks[i] for i in rng.permutation(len(w.tracks))]:
        seen = w.times[np.flatnonzero(o.present)]
        if round(seen[0], 1) > 0 or round(seen[-1], 1) < round(w.times[-1], 1):
            return _interval(f"During which interval is the {o.name} in view?", seen[0], seen[-1],
                             f"The {o.name} is in view", keys)
    return None


TASK_GROUPS = {"static spatial": ("object_count", "abs_distance", "closest_object", "relative_direction",
                                  "object_size"),
               "motion": ("displacement", "average_speed", "motion_direction"),
               "temporal": ("appearance_order", "when_moving")}    # the paper's groups (Table 2 reports them)
TASKS = {t: globals()[f"q_{t}"] for group in TASK_GROUPS.values() for t in group}   # task -> its q_ function above
TRACK_TASKS = {**TASKS, "in_view": q_in_view}   # and a task of real video, where objects also leave the view
TASK_WEIGHTS = {"closest_object": 4.0, "appearance_order": 4.0, "motion_direction": 1.5, "displacement": 1.3}


LAYOUTS = ("plain", "asked_last", "options")    # the reference reasoning's layout (reasoning_text); a set holds one
OPTIONS_MARK = "The options:"                   # layout "options": where the restated options begin


def reasoning_text(graphs, sentence, answer_text, asked=(), layout="plain", options=()):
    """'<think>' + graph blocks + one sentence + '</think><answer>..</answer>': the reference completion. Layout
    "plain" writes each block's edges pair by pair (i < j, nodes left to right); "asked_last" writes the edges
    that touch more of the question's `asked` objects later (the asked pair's edge last, just before the sentence
    that restates it), so that a small model can find the answer's number by position, not by a lookup of names.
    "options" is plain, and where the sentence names the right option (closest object, the directions) restates the
    options name first, then the named one: "The options: red cone (A); blue ball (B). The answer is blue ball (B)."
    The prompt's "(B) blue ball" puts the letter before the name, so finding it from the name is a lookup backwards;
    restated, the letter is the token that followed the same name before (an induction copy). Measured on a warm-up
    of tiny_base/ (RESULTS.md "Restating the options"), the tiny model did not learn to write the restatement."""
    if layout == "asked_last":
        touches = lambda g, e: sum(g.nodes[k].category in asked for k in (e.i, e.j))
        graphs = [graph.Graph(g.frame, g.nodes, sorted(graph.derive_edges(g.nodes), key=lambda e: touches(g, e)))
                  for g in graphs]
    blocks = " ".join(graph.to_text(g) for g in graphs)
    named = options[LETTERS.index(answer_text)] if options and answer_text in LETTERS[:len(options)] else None
    if layout == "options" and named and named in sentence:
        listed = "; ".join(f"{o} ({letter})" for letter, o in zip(LETTERS, options))
        sentence += f" {OPTIONS_MARK} {listed}. The answer is {named} ({answer_text})."
    return f"<think>{blocks} {sentence} </think><answer>{answer_text}</answer>"


GRAPH_BLOCK_RE = re.compile(r"<graph t=\d+>[^<]*</graph>\s*")
EDGE_PART_RE = re.compile(r"\s*\|[^<]*(?=</graph>)")


def with_think(row, think):
    """The row as a variant asks and answers it (rewards.VARIANTS): row["think"] tells model.build_prompt what to
    ask for, and the reference reasoning keeps its graph blocks ("graph"), their nodes alone ("nodes": the edge
    half after '|' removed) or no block ("free": the sentence and answer stay)."""
    text = row.get("reasoning")
    if text and think == "nodes":
        text = EDGE_PART_RE.sub(" ", text)
    elif text and think == "free":
        text = GRAPH_BLOCK_RE.sub("", text)
    return {**row, "think": think, "reasoning": text}


def make_questions(source, rng, tasks=None, k=KEY_FRAMES, layout="plain"):
    """One row per task that applies to a clip (the row format above): source is a Footage, or a synthetic scene
    (synthetic_footage). Its tasks (default: those the source supports) go in a random order that puts tasks which
    apply to few clips first more often (TASK_WEIGHTS: keeping the first rows of each scene gives a balanced task
    mix); ids and video path come from the Footage. Each row carries the graphs of the key frames its question needs
    (one frame for a question about one instant, the first and last for a motion; none without 3D), and its
    reference reasoning writes exactly those graphs, in the `layout` of reasoning_text."""
    w = source if isinstance(source, Footage) else synthetic_footage(source)
    keys = key_frames(w.times, k)
    graphs = {f: graph_at(w, f) for f in keys} if w.tracks and w.tracks[0].cam is not None else None
    rows, names = [], list(tasks or w.tasks)
    order = np.argsort(-rng.random(len(names)) ** (1.0 / np.array([TASK_WEIGHTS.get(n, 1.0) for n in names])))
    for name in [names[i] for i in order]:                               # weighted sampling without replacement
        q = TRACK_TASKS[name](w, rng, keys)
        if q is None:
            continue
        needed = [graphs[f] for f in q["frames"]] if graphs else []
        rows.append({"id": f"{w.id}-{len(rows):02d}", "video": w.video,
                     "question": q["question"], "options": q["options"], "answer": q["answer"],
                     "answer_type": q["answer_type"], "task": name, "time_window": None,
                     "graphs": [g.to_dict() for g in needed] if graphs else None,
                     "reasoning": reasoning_text(needed, q["sentence"], q["text"], q.get("asked", ()), layout,
                                                 q["options"] or ())})
    return rows


# --- the dataset on disk --------------------------------------------------------------------------------------------

def split_of(n, seed, fractions=(0.8, 0.1, 0.1)):
    """Scene index -> "train" / "val" / "test": a seeded permutation cut at the fractions (split by scene)."""
    order = np.random.default_rng([seed, 999]).permutation(n)
    cuts = np.round(np.cumsum(fractions)[:-1] * n).astype(int)
    names = np.empty(n, dtype=object)
    names[order] = np.repeat(["train", "val", "test"], np.diff([0, *cuts, n]))
    return names


def make_scene_files(job):
    """Scene i of a data set: render it, write videos/NNNNNN.mp4, return (scene, rows, first-clip frames or None).
    A pure function of (out_dir, i, seed, ...) so that make_dataset can hand scenes to worker processes."""
    out_dir, i, seed, questions, n_objects, size, num_frames, fps, roll_share, (min_roll, max_roll), layout = job
    rolls = np.random.default_rng([seed, i, 1])                          # a stream of its own: level scenes unchanged
    roll = round(roll_between(rolls, min_roll, max_roll), 1) if rolls.random() < roll_share else 0.0
    rng = np.random.default_rng([seed, i])
    scene = make_scene(rng, n_objects, size, num_frames, fps, roll=roll)
    scene["id"] = i
    rows = make_questions(scene, rng, layout=layout)[:questions]
    clip = render_clip(scene)                                            # (F, H, W, 3)
    write_video(os.path.join(out_dir, "videos", f"{i:06d}.mp4"), clip, fps)
    return scene, rows, clip if i < 4 else None


def roll_between(rng, lo, hi):
    """A roll of lo..hi degrees either way: u ~ U(-hi, hi) moved to sign(u) (lo + |u| (hi - lo) / hi); lo = 0 is u
    itself, so the sets rendered before --min-roll existed keep their rolls."""
    u = float(rng.uniform(-hi, hi))
    return math.copysign(lo + abs(u) * (hi - lo) / hi, u) if lo else u


def make_dataset(out_dir, n, seed=0, questions=4, n_objects=(2, 3), size=CLIP_SIZE, num_frames=CLIP_FRAMES,
                 fps=CLIP_FPS, sheet=True, log=print, workers=None, roll_share=0.0, max_roll=MAX_ROLL,
                 layout="plain", min_roll=0.0):
    """Write n scenes: videos/NNNNNN.mp4, up to `questions` rows per scene (distinct tasks) into train/val/test.jsonl
    (split by scene, split_of), scenes.jsonl (the scene parameters), contact_sheet.png, then dataset.json (n, seed,
    the other settings, the row counts; train.ensure_data checks it). Scene i uses rng = default_rng([seed, i]): the
    files are byte-identical for a seed, however many worker processes render (default: one per CPU core, at most
    4). A share `roll_share` of the scenes has its camera rolled by min_roll to max_roll degrees either way
    (make_scene, roll_between; from default_rng([seed, i, 1])). `make` and train.ensure_data write it through
    replace_folder: whole or absent."""
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    splits, counts, t_start, shown = split_of(n, seed), {"train": 0, "val": 0, "test": 0}, time.time(), []
    rolls = (min_roll, max_roll)
    jobs = [(out_dir, i, seed, questions, n_objects, size, num_frames, fps, roll_share, rolls, layout)
            for i in range(n)]
    workers = workers or min(4, os.cpu_count() or 1)
    with contextlib.ExitStack() as stack:
        files = {s: stack.enter_context(open(os.path.join(out_dir, f"{s}.jsonl"), "w")) for s in counts}
        scenes_file = stack.enter_context(open(os.path.join(out_dir, "scenes.jsonl"), "w"))
        pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers)) if workers > 1 else None
        results = pool.imap(make_scene_files, jobs, chunksize=8) if pool else map(make_scene_files, jobs)
        for i, (scene, rows, clip) in enumerate(results):
            scenes_file.write(json.dumps(scene) + "\n")
            for r in rows:
                files[splits[i]].write(json.dumps(r) + "\n")
            counts[splits[i]] += len(rows)
            if clip is not None:
                shown.append((clip, rows))
            if log and (i + 1 == n or (i + 1) % max(1, n // 20) == 0):
                el = time.time() - t_start
                log(f"\rscenes {i + 1}/{n}  rows {sum(counts.values())}  {el:.0f}s elapsed, "
                    f"~{el / (i + 1) * (n - i - 1):.0f}s left", end="" if i + 1 < n else "\n", flush=True)
    if sheet:
        contact_sheet(shown, os.path.join(out_dir, "contact_sheet.png"))
    write_file(os.path.join(out_dir, "dataset.json"), json.dumps(      # the last file: the set is finished
        {"scenes": n, "seed": seed, "questions": questions, "objects": list(n_objects), "size": size,
         "frames": num_frames, "fps": fps, "roll_share": roll_share, "max_roll": max_roll, "layout": layout,
         **({"min_roll": min_roll} if min_roll else {}),
         "rows": counts}))
    return counts


def contact_sheet(shown, path, n_frames=4):
    """A PNG: one row per clip (n_frames evenly spaced frames), its first two questions and answers below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(shown), n_frames, figsize=(2.2 * n_frames, 3.0 * len(shown)), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.97, bottom=0.08, wspace=0.05, hspace=0.6)
    for r, (clip, rows) in enumerate(shown):
        for c, i in enumerate(np.round(np.linspace(0, len(clip) - 1, n_frames)).astype(int)):
            axes[r, c].imshow(clip[i])
            axes[r, c].set_title(f"frame {i}", fontsize=8)
            axes[r, c].axis("off")
        lines = []
        for row in rows[:2]:
            opts = "  ".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(row["options"] or []))
            lines += textwrap.wrap(f"Q: {row['question']}  {opts}  ->  {row['answer']}", 110)
        axes[r, 0].text(0, -0.06, "\n".join(lines), transform=axes[r, 0].transAxes, fontsize=7, va="top")
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- real video: KITTI tracking, ScanNet, TAO (the paper's sources, Sec. 3) through the same generator ------------
# A reader turns a data set, as its download unpacks, into Footage clips; write_converted makes their rows.

KITTI_FPS, SCANNET_FPS, TAO_FPS = 10, 30, 30   # KITTI tracking's frame rate, ScanNet's sensor's, TAO's frame_index's
SCANNET_FRAMES = 64                            # frames of a ScanNet walk-through clip at the most (evenly spaced)
MOVING, MIN_MOVE = 0.3, 0.3                    # m/s: a faster step moves; m: a motion that carries an object less is
NEAR = 0.1                                     # jitter. m: how far in front of the camera a centre in view must be
STATIC_TASKS = (*TASK_GROUPS["static spatial"], "appearance_order")   # what one camera frame's positions support
KITTI_TYPES = ("car", "van", "truck", "pedestrian", "person sitting", "cyclist", "tram")   # distractor names
SCANNET_TYPES = ("chair", "table", "sofa", "bed", "desk", "cabinet", "bookshelf", "toilet", "sink", "bathtub")
PLY_TYPES = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4", "float": "f4",
             "double": "f8"}                   # numpy's names of PLY's property types


def track_names(categories, first, u):
    """Unique names by a rule a model can read from the pixels (graph.NAME_RULE, the prompt's words): one object of a
    category in the clip is called by it ("truck"); several are numbered by the frame they first appear in (`first`),
    those of one frame from left to right (`u`: the image column there, or what grows with it): "car 1", "car 2"."""
    names = list(categories)
    for cat in set(categories):
        same = [i for i, c in enumerate(categories) if c == cat]
        for k, i in enumerate(sorted(same, key=lambda i: (first[i], u[i])), 1):
            names[i] = f"{cat} {k}" if len(same) > 1 else cat
    return names


def _category(label):
    """A source's label as a category: lower case, '(...)', a trailing number and all but letters, digits and '-'
    dropped ("Person_sitting" -> "person sitting", "car_(automobile)" -> "car")."""
    words = re.sub(r"[^a-z0-9-]+", " ", re.sub(r"\(.*?\)", " ", str(label).lower())).split()
    return " ".join(words[:-1] if len(words) > 1 and words[-1].isdigit() else words)


def track_motion(world, times):
    """(move, path, vel) of a world track (F, 3), NaN where absent: move = (start, end) s from the first to the last
    step faster than MOVING (horizontal), None when that span carries it less than MIN_MOVE; path = metres of all
    its steps; vel = the span's displacement / its duration, m/s (None without a move)."""
    step = np.linalg.norm(np.diff(world[:, :2], axis=0), axis=1)                # (F-1,) m, NaN across an absence
    fast, path = np.flatnonzero(step > MOVING * np.diff(times)), float(np.nansum(step))
    a, b = (fast[0], fast[-1] + 1) if len(fast) else (0, 0)
    if not np.hypot(*(world[b, :2] - world[a, :2])) >= MIN_MOVE:               # also no fast step: (a, b) = (0, 0)
        return None, path, None
    return (float(times[a]), float(times[b])), path, (world[b] - world[a]) / (times[b] - times[a])


def tracks_3d(categories, cam, sizes, times, poses):
    """Tracks of camera-frame centres cam (N, F, 3), NaN where absent: named by track_names (left to right by x / z,
    which grows with the image column), put in the world by the camera poses (R (F, 3, 3), c (F, 3)) and their
    motion found (track_motion); without poses any object may move (move: the whole clip)."""
    present = ~np.isnan(cam[..., 0])                                              # (N, F)
    first = present.argmax(1)
    names = track_names(categories, first, [cam[i, f, 0] / cam[i, f, 2] for i, f in enumerate(first)])
    out = []
    for i, name in enumerate(names):
        world = None if poses is None else np.einsum("fji,fj->fi", poses[0], cam[i]) + poses[1]   # R^T p + c
        move, path, vel = track_motion(world, times) if poses else ((0.0, float(times[-1])), 0.0, None)
        out.append(Track(name, categories[i], present[i], cam[i], sizes[i], world, move, path, vel))
    return out


def read_table(path, columns=None, text=()):
    """[(line number, values)] of a text file of whitespace-separated columns, blank lines skipped: floats, but the
    columns in `text` stay words. Another number of columns than `columns` (None: any) or a word where a number
    belongs is a BadRow naming FILE:LINE."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:          # a missing file: OSError naming it
        for n, words in ((n, line.split()) for n, line in enumerate(fh, 1)):
            if words and columns and len(words) != columns:
                raise BadRow(None, f"{len(words)} columns, expected {columns}", f"{path}:{n}")
            try:
                out += [(n, [x if k in text else float(x) for k, x in enumerate(words)])] if words else []
            except ValueError:
                raise BadRow(None, f"a word where a number belongs: {' '.join(words)!r:.90}", f"{path}:{n}") from None
    return out


def _matrix(path, shape):
    """The numbers of a text file as a matrix of `shape` (a BadRow naming the file when they are not)."""
    m = np.array([v for _, v in read_table(path)], dtype=object)
    if m.shape != shape:
        raise BadRow(None, f"not a {shape[0]}x{shape[1]} matrix", path)
    return m.astype(np.float64)


def _frames(folder, ext):
    """(numbers, paths) of a folder's NUMBER.ext images in number order (KITTI's 000000.png, ScanNet's 0.jpg)."""
    names = sorted((f for f in os.listdir(folder) if f.endswith(ext) and f[:-len(ext)].isdigit()),
                   key=lambda f: int(f[:-len(ext)]))
    if not names:
        raise FileNotFoundError(f"{folder}: no NUMBER{ext} frames in it")
    return [int(f[:-len(ext)]) for f in names], [os.path.join(folder, f) for f in names]


def read_image(path):
    """(H, W, 3) uint8 of a PNG or JPEG file, decoded by PyAV; a VideoError naming the file if it does not read."""
    try:
        with av.open(path) as c:
            return next(c.decode(video=0)).to_ndarray(format="rgb24")
    except (av.error.FFmpegError, StopIteration) as e:
        raise VideoError(f"{path}: not a readable image ({e})") from None


def _json(path):
    """A JSON file's content; a BadRow naming the file when it is not JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRow(None, f"not valid JSON ({e})", path) from None


def _records(doc, key, fields, path):
    """doc[key], a list of objects holding `fields`; else a BadRow naming FILE, KEY, the item and the field."""
    items = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise BadRow(key, "missing or not a list", path)
    for n, item in enumerate(items):
        for f in fields:
            if not isinstance(item, dict) or f not in item:
                raise BadRow(f, "missing", f"{path}: {key} item {n}")
    return items


def read_calib(path, keys):
    """{KEY: numbers} of a KITTI calib file ("P2: 12 numbers", "R_rect 9 numbers", ...), each of `keys` ({KEY: how
    many numbers}) checked; P2 as (3, 4) and t2, camera 2's offset from the reference camera (P2 = K [I | t2])."""
    calib = {v[0].rstrip(":"): np.array(v[1:]) for _, v in read_table(path, None, text=(0,))}
    for key, size in keys.items():
        if calib.get(key, np.zeros(0)).size != size:
            raise BadRow(key, f"missing or not {size} numbers", path)
    calib["P2"] = calib["P2"].reshape(3, 4)
    calib["t2"] = np.linalg.solve(calib["P2"][:, :3], calib["P2"][:, 3])
    return calib


def kitti_labels(path, n, t2):
    """{track id: (category, (w, h, l) m, {frame: centre (3,) in camera 2})} of a label_02 file (kitti_clips)."""
    tracks = {}
    for line, v in read_table(path, 17, text=(2,)):
        if v[1] < 0 or v[2] == "DontCare":
            continue
        if not (0 <= v[0] < n and v[0] == int(v[0]) and np.isfinite([v[1], *v[10:16]]).all()):
            raise BadRow(None, f"frame {v[0]:g}, track {v[1]:g}, box {v[10:16]}: the sequence has frames 0 to "
                               f"{n - 1} (frames and labels disagree); ids, boxes must be finite", f"{path}:{line}")
        h, wd, ln, x, y, z = v[10:16]
        at = tracks.setdefault(int(v[1]), (_category(v[2]), (wd, h, ln), {}))[2]
        at[int(v[0])] = np.array([x, y - h / 2, z]) + t2                        # the box centre in camera 2
    return tracks


def _rz_ry_rx(yaw, pitch, roll):
    """Rz(yaw) Ry(pitch) Rx(roll), (F, 3, 3), of angles (F,) in radians: the orientation in KITTI's oxts."""
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (np.cos, np.sin))
    return np.stack([np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1),
                     np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1),
                     np.stack([-sp, cp * sr, cp * cr], -1)], -2)


def kitti_poses(path, calib, n):
    """Camera-2 poses (R (F, 3, 3), c (F, 3)) from a sequence's oxts lines (30 numbers: lat, lon in degrees, alt in
    metres, roll, pitch, yaw in radians, ...): the IMU's pose by the Mercator projection of KITTI's devkit (world x
    east, y north, z up, metres from the first frame), then camera 2 <- IMU = [I | t2] R_rect Tr_velo_cam Tr_imu_velo
    (calib), p = M x + b."""
    ox = np.array([v for _, v in read_table(path, 30)]).reshape(-1, 30)
    if len(ox) != n:
        raise BadRow(None, f"{len(ox)} lines for the sequence's {n} frames (frames and oxts disagree)", path)
    lat, lon = np.radians(ox[:, 0]), np.radians(ox[:, 1])
    r = 6378137.0 * math.cos(lat[0])                                             # earth radius x the Mercator scale
    t = np.stack([r * lon, r * np.log(np.tan(np.pi / 4 + lat / 2)), ox[:, 2]], -1)   # (F, 3) IMU positions
    Rw = _rz_ry_rx(*ox[:, [5, 4, 3]].T)                                          # (F, 3, 3) IMU -> world
    rect, velo, imu = (calib[k].reshape(3, -1) for k in ("R_rect", "Tr_velo_cam", "Tr_imu_velo"))
    M = rect @ velo[:, :3] @ imu[:, :3]
    b = rect @ (velo[:, :3] @ imu[:, 3] + velo[:, 3]) + calib["t2"]
    return np.einsum("ij,fkj->fik", M, Rw), t - t[0] - Rw @ np.linalg.solve(M, b)   # R = M Rw^T, c: where p = 0


def kitti_clips(root, seqs=None, clip_seconds=4.0):
    """KITTI tracking as its download unpacks -> ([(sequence, Footage, frame paths)] of its clips of clip_seconds,
    clips skipped for a non-finite pose). Reads ROOT/training/image_02/SSSS/NNNNNN.png (camera 2, 10 fps),
    label_02/SSSS.txt (17 columns: frame, track id, type, truncated, occluded, alpha, 2D box l t r b, h w l, x y z,
    rotation_y; DontCare, track id -1, dropped), calib/SSSS.txt and, when present, oxts/SSSS.txt. The graphs are in
    camera 2's frame, whose images the video shows: a label's x y z is the bottom centre of its 3D box in the
    rectified reference camera, so the box centre is (x, y - h/2, z) there and (x, y - h/2, z) + t2 in camera 2
    (P2 = K [I | t2]). With oxts (the world frame: kitti_poses) every task; without, those a camera frame supports."""
    base = os.path.join(root, "training")
    seqs = seqs or sorted(f[:-4] for f in os.listdir(os.path.join(base, "label_02")) if f.endswith(".txt"))
    clips, skipped, L = [], 0, max(2, round(clip_seconds * KITTI_FPS))
    for seq in seqs:
        numbers, paths = _frames(os.path.join(base, "image_02", seq), ".png")
        n, oxts = len(paths), os.path.join(base, "oxts", f"{seq}.txt")
        if numbers != list(range(n)):
            raise BadRow(None, f"frames are not numbered 000000 to {n - 1:06d}", os.path.join(base, "image_02", seq))
        need = {"P2": 12, **({"R_rect": 9, "Tr_velo_cam": 12, "Tr_imu_velo": 12} if os.path.isfile(oxts) else {})}
        calib = read_calib(os.path.join(base, "calib", f"{seq}.txt"), need)
        tracks = kitti_labels(os.path.join(base, "label_02", f"{seq}.txt"), n, calib["t2"])
        poses = kitti_poses(oxts, calib, n) if os.path.isfile(oxts) else None
        for s in range(0, max(n - L, 0) + 1, L):
            e = min(s + L, n)
            ids = sorted(k for k, (_, _, at) in tracks.items() if any(s <= f < e for f in at))
            p = poses and (poses[0][s:e], poses[1][s:e])                        # the clip's poses, or None
            if p and not (np.isfinite(p[0]).all() and np.isfinite(p[1]).all()):
                skipped += 1
                continue
            cam = np.reshape([[tracks[k][2].get(f, [np.nan] * 3) for f in range(s, e)] for k in ids], (-1, e - s, 3))
            times = np.arange(e - s) / KITTI_FPS
            tr = tracks_3d([tracks[k][0] for k in ids], cam, [tracks[k][1] for k in ids], times, p)
            clips += [(seq, Footage(f"kitti-{seq}-{s:06d}", f"videos/kitti-{seq}-{s:06d}.mp4", times, tr, p, tuple(
                TRACK_TASKS) if p else (*STATIC_TASKS, "in_view"), KITTI_TYPES), paths[s:e])] if ids else []
    return clips, skipped


def read_ply_xyz(path):
    """Vertex positions (V, 3) of a binary little-endian PLY whose first element is its vertices (ScanNet's meshes);
    anything else is a BadRow naming the file."""
    with open(path, "rb") as fh:
        header = []
        while header[-1:] != [["end_header"]] and len(header) < 100:
            header.append(fh.readline().decode("latin-1").split())
        body = fh.read()
    elements = [h for h in header if h[:1] == ["element"]]
    if ["format", "binary_little_endian", "1.0"] not in header or not elements or elements[0][1:2] != ["vertex"]:
        raise BadRow(None, "not a binary little-endian PLY that lists its vertices first", path)
    props = list(itertools.takewhile(lambda h: h[:1] == ["property"], header[header.index(elements[0]) + 1:]))
    if not all(h[1:2] and h[1] in PLY_TYPES for h in props) or not {"x", "y", "z"} <= {h[-1] for h in props}:
        raise BadRow(None, f"vertex properties {[' '.join(h[1:]) for h in props]} are not numbers with x, y, z", path)
    dtype, count = np.dtype([(h[2], "<" + PLY_TYPES[h[1]]) for h in props]), int(elements[0][2])
    if len(body) < count * dtype.itemsize:
        raise BadRow(None, f"cut off: {len(body)} bytes for {count} vertices", path)
    v = np.frombuffer(body, dtype, count)
    return np.stack([v["x"], v["y"], v["z"]], -1).astype(np.float64)


def scannet_objects(folder, scene):
    """(categories, centres (N, 3), sizes (N, 3) as width x, height z, length y) of a scan's instances in its world
    frame (z up): the box of each instance's vertices (its aggregation's segments, their vertices by the segs file);
    walls, floors and ceilings left out."""
    xyz = read_ply_xyz(os.path.join(folder, f"{scene}_vh_clean_2.ply"))         # (V, 3) metres
    segs_path = os.path.join(folder, f"{scene}_vh_clean_2.0.010000.segs.json")
    seg = _json(segs_path)
    seg = np.asarray(seg.get("segIndices") if isinstance(seg, dict) else None)   # (V,) segment of each vertex
    if seg.ndim != 1 or len(seg) != len(xyz):
        raise BadRow("segIndices", f"must give a segment for each of the PLY's {len(xyz)} vertices", segs_path)
    agg_path, cats, lo, hi = os.path.join(folder, f"{scene}.aggregation.json"), [], [], []
    for g in _records(_json(agg_path), "segGroups", ("label", "segments"), agg_path):
        pts = xyz[np.isin(seg, g["segments"])]
        if len(pts) and _category(g["label"]) not in ("wall", "floor", "ceiling"):
            cats, lo, hi = cats + [_category(g["label"])], lo + [pts.min(0)], hi + [pts.max(0)]
    lo, hi = np.reshape(lo, (-1, 3)), np.reshape(hi, (-1, 3))
    return cats, (lo + hi) / 2, (hi - lo)[:, [0, 2, 1]]


def scannet_clips(scans, scenes=None):
    """ScanNet scenes as its exporter writes them beside the scans -> ([(scene, Footage, frame paths)]: one
    walk-through clip a scene, up to SCANNET_FRAMES frames evenly spaced, at their times (N / 30 s), frames skipped
    for a non-finite pose (tracking lost: -inf)). Reads SCANS/SCENE/color/N.jpg, pose/N.txt (camera to world, 4x4),
    intrinsic/intrinsic_color.txt, SCENE_vh_clean_2.ply, SCENE.aggregation.json, SCENE_vh_clean_2.0.010000.segs.json.
    Objects (scannet_objects) are moved into each frame's camera (x right, y down, z forward: the graphs' frame) by
    the inverse pose; a frame's graph lists those whose centre lies in its image, NEAR or more in front (no depth
    test: an object behind a wall counts as in view). Static spatial and appearance-order tasks."""
    scenes = scenes or sorted(d for d in os.listdir(scans) if os.path.isdir(os.path.join(scans, d)))
    clips, skipped = [], 0
    for scene in scenes:
        d = os.path.join(scans, scene)
        cats, centres, sizes = scannet_objects(d, scene)
        numbers, paths = _frames(os.path.join(d, "color"), ".jpg")
        poses = [_matrix(os.path.join(d, "pose", f"{k}.txt"), (4, 4)) for k in numbers]   # camera -> world
        K = _matrix(os.path.join(d, "intrinsic", "intrinsic_color.txt"), (4, 4))
        good = [i for i, m in enumerate(poses) if np.isfinite(m).all()]
        skipped += len(poses) - len(good)
        if len(good) < 2:
            continue
        pick = [good[i] for i in np.unique(np.round(np.linspace(0, len(good) - 1, SCANNET_FRAMES)).astype(int))]
        R, c = np.array([poses[i][:3, :3].T for i in pick]), np.array([poses[i][:3, 3] for i in pick])  # world->cam
        cam = np.einsum("fij,nfj->nfi", R, centres[:, None] - c[None]).reshape(len(cats), len(pick), 3)   # (N, F, 3)
        H, W = read_image(paths[pick[0]]).shape[:2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = (K[k, k] * cam[..., k] / cam[..., 2] + K[k, 2] for k in (0, 1))   # (N, F) pixels
        seen = (cam[..., 2] >= NEAR) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        cam[~seen], keep, times = np.nan, seen.any(1), (np.array(numbers)[pick] - numbers[pick[0]]) / SCANNET_FPS
        tr = tracks_3d([k for k, s in zip(cats, keep) if s], cam[keep], sizes[keep], times, (R, c))
        clips += [(scene, Footage(f"scannet-{scene}", f"videos/scannet-{scene}.mp4", times, tr, (R, c), STATIC_TASKS,
                                  SCANNET_TYPES), [paths[i] for i in pick])] if tr else []
    return clips, skipped


def tao_clips(annotations, frames):
    """TAO's annotation file -> ([(video id, Footage, frame paths)]: one clip per video of its annotated frames
    (FRAMES/file_name, about one a second) at their times (frame_index / 30 s), 0). TAO has no 3D: temporal tasks
    only (appearance order, when an object is in view) and rows without graphs; a box's centre (x + w/2) orders the
    objects of one category that first appear together (track_names)."""
    doc, path = _json(annotations), annotations
    images = {im["id"]: im for im in _records(doc, "images", ("id", "video_id", "file_name", "frame_index"), path)}
    cats = {c["id"]: _category(c["name"]) for c in _records(doc, "categories", ("id", "name"), path)}
    tracks, boxes, clips = _records(doc, "tracks", ("id", "category_id", "video_id"), path), {}, []
    for n, a in enumerate(_records(doc, "annotations", ("image_id", "track_id", "bbox"), path)):
        if a["image_id"] not in images or not (isinstance(a["bbox"], list) and len(a["bbox"]) == 4):
            raise BadRow("image_id", f"{a['image_id']!r} is no image of the file, or bbox {a['bbox']!r} is not "
                                     f"[x, y, w, h] (frames and labels disagree)", f"{path}: annotations item {n}")
        boxes.setdefault(a["track_id"], {})[a["image_id"]] = a["bbox"]
    for n, t in enumerate(tracks):
        if t["category_id"] not in cats:
            raise BadRow("category_id", f"{t['category_id']!r} is no category", f"{path}: tracks item {n}")
    for v in _records(doc, "videos", ("id",), path):
        ims = sorted((im for im in images.values() if im["video_id"] == v["id"]), key=lambda im: im["frame_index"])
        ts = [t for t in tracks if t["video_id"] == v["id"] and t["id"] in boxes]
        present = np.array([[im["id"] in boxes[t["id"]] for im in ims] for t in ts]).reshape(len(ts), len(ims))
        first = present.argmax(1)
        x = [boxes[t["id"]][ims[f]["id"]][0] + boxes[t["id"]][ims[f]["id"]][2] / 2 for t, f in zip(ts, first)]
        names = track_names([cats[t["category_id"]] for t in ts], first, x)
        times = (np.array([im["frame_index"] for im in ims], dtype=np.float64) - ims[0]["frame_index"]) / TAO_FPS
        w = Footage(f"tao-{v['id']}", f"videos/tao-{v['id']}.mp4", times, [Track(nm, cats[t["category_id"]], p, None)
                    for nm, t, p in zip(names, ts, present)], None, ("appearance_order", "in_view"))
        clips += [(v["id"], w, [os.path.join(frames, im["file_name"]) for im in ims])] if len(ims) >= 2 and ts else []
    return clips, 0


def write_converted(out, source, clips, skipped=0):
    """Write clips [(group, Footage, frame paths)] into folder `out`: videos/, the rows of each clip's tasks into
    train/val/test.jsonl (split_of the groups: sequences, scenes, videos), then converted.json, returned: the source,
    counts of clips, rows and tasks, the tasks supported, `skipped` (frames or clips with a non-finite pose)."""
    missing = next((p for _, _, paths in clips for p in paths if not os.path.isfile(p)), None)
    if missing:
        raise FileNotFoundError(f"{missing}: no such frame (frames and labels disagree)")
    groups = sorted({str(g) for g, _, _ in clips})
    split, files, made = dict(zip(groups, split_of(len(groups), 0))), {"train": [], "val": [], "test": []}, {}
    os.makedirs(os.path.join(out, "videos"))
    for i, (group, w, paths) in enumerate(clips):
        rows = make_questions(w, np.random.default_rng([0, i]))
        write_video(os.path.join(out, w.video), (read_image(p) for p in paths), round(1 / frame_interval(w.times)),
                    w.times)
        files[split[str(group)]] += rows
        for r in rows:
            made[r["task"]] = made.get(r["task"], 0) + 1
    for s, rows in files.items():
        write_file(os.path.join(out, f"{s}.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    summary = {"source": source, "clips": len(clips), "rows": {s: len(r) for s, r in files.items()}, "tasks": made,
               "supported": sorted({t for _, w, _ in clips for t in w.tasks}), "skipped": skipped}
    write_file(os.path.join(out, "converted.json"), json.dumps(summary))
    return summary


# --- support: no paper content below (files written atomically and read tolerantly, bench, command line) --------

def write_file(path, content):
    """Write text (str) or bytes through a temporary file in the same folder (made if missing), flushed to disk,
    then a rename: a kill or a full disk at any moment leaves the old file or the new one, never a part of one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(content if isinstance(content, bytes) else content.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:                       # leave no temporary file behind, whatever stopped the write
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def replace_folder(path, write):
    """write(tmp) fills a temporary folder .tmp-NAME beside `path`, which then replaces `path` (discard); returns
    write's result. A kill at any moment leaves the old folder or the new one whole, never a half-built one; an
    exception in write removes the temporary folder."""
    path = os.path.normpath(path)
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        out = write(tmp)
    except BaseException:                       # a failed write leaves no half-built folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        discard(path)
    os.replace(tmp, path)
    return out


def discard(path):
    """Rename a folder to .old-NAME (atomic), then delete it: a kill in between leaves a .old-* folder for
    train.clean_leftovers, never a half-deleted checkpoint or export under its real name."""
    old = os.path.join(os.path.dirname(path), f".old-{os.path.basename(path)}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    shutil.rmtree(old)


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser (add_subparsers' parser_class) that refuses an unknown flag with its own usage."""
    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return namespace, extra


OPTION_PREFIX_RE = re.compile(r"^\s*\(?([A-Za-z])[.):]\s+")    # "A. ", "(A) ", "A) ", "A: "


class BadRow(ValueError):
    """Bad input (a file, a row, a field), in data.py and eval.py alike: the message names where ("FILE:LINE",
    "FILE: item N", "FILE row K"), the field and why."""

    def __init__(self, field, why, where=None):
        super().__init__(": ".join(s for s in (where, field and f"field '{field}'", why) if s))
        self.field, self.why, self.where = field, why, where

    def at(self, where, hint=""):
        """The same error placed at `where` (a reader knows the line, a validator does not), `hint` appended."""
        return BadRow(self.field, self.why + hint, where)


def read_records(path):
    """(records, unit) of a JSON list (unit "item") or a JSONL file (unit "line", blank lines skipped); records are
    (N, parsed object), N counted from 1. A line that is not JSON is (N, a BadRow naming FILE:N, "cut off" when it
    is the last line and has no line end), for the caller to skip or raise; a JSON list that does not parse raises.
    The one reader of rows (load_rows, eval.load_benchmark) and of run logs (read_jsonl)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    if not path.endswith(".jsonl") and text.lstrip().startswith("["):
        try:
            return list(enumerate(json.loads(text), 1)), "item"
        except json.JSONDecodeError as e:
            raise BadRow(None, f"not valid JSON ({e.msg})", f"{path}:{e.lineno}") from None
    lines, out = text.split("\n"), []
    for n, line in enumerate(lines, 1):
        try:
            if line.strip():
                out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            cut = " (cut off: no line end)" if n == len(lines) else ""
            out.append((n, BadRow("json", f"not valid JSON ({e.msg}){cut}", f"{path}:{n}")))
    return out, "line"


def read_jsonl(path):
    """The JSON objects of a file appended to line by line (metrics.jsonl, samples.jsonl); [] when it does not
    exist. A line that is not a JSON object (the cut-off last line of a killed write, a damaged one) is dropped
    with a warning naming FILE:LINE, so a resume never stops on it."""
    out = []
    for n, rec in read_records(path)[0] if os.path.exists(path) else []:
        if isinstance(rec, dict):
            out.append(rec)
        else:
            why = rec if isinstance(rec, BadRow) else f"{path}:{n}: not a JSON object"
            warnings.warn(f"{why}; dropped", stacklevel=2)
    return out


def _bench_video(path, seconds=120, fps=30, size=(360, 640), gop=30):
    """A long test video (made once, cached): a textured panorama panning by 2 px per frame."""
    if not os.path.exists(path):
        H, W = size
        coarse = np.random.default_rng(0).integers(0, 256, (H // 8 + 1, (W + 2 * fps * seconds) // 8 + 2, 3),
                                                   dtype=np.uint8)
        pano = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:H]               # (H, W', 3) blocky texture
        write_video(path + ".part.mp4", (pano[:, 2 * i: 2 * i + W] for i in range(fps * seconds)), fps, gop=gop,
                    qp=28, preset="ultrafast")                           # frames made lazily: (H, W, 3) each
        os.replace(path + ".part.mp4", path)
    return path


def decode_all(path, num_frames=16):
    """Baseline: decode every frame in order (threaded), keep the uniformly sampled ones."""
    with av.open(path) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        frames = [f for f in c.decode(vs)]
        idx = np.round(np.linspace(0, len(frames) - 1, num_frames)).astype(int)
        return np.stack([frames[i].to_ndarray(format="rgb24") for i in idx])


def bench(folder=None):
    """Time read_frames(16) vs decoding every frame, on a 2-minute 640x360 30 fps video with keyframes every
    1 s (a typical GOP) and every 10 s (a long GOP); also the synthetic renderer per frame."""
    folder = folder or os.path.join(tempfile.gettempdir(), "videostr_bench")
    os.makedirs(folder, exist_ok=True)
    def timed(fn, *args, **kwargs):                                     # (fn's result, seconds it took)
        t = time.time()
        return fn(*args, **kwargs), time.time() - t

    for gop in (30, 300):
        path, made = timed(_bench_video, os.path.join(folder, f"pan_120s_640x360_gop{gop}.mp4"), gop=gop)
        (frames, times), t_read = timed(read_frames, path, 16)
        ref, t_all = timed(decode_all, path, 16)
        same = np.array_equal(frames, ref)
        print(f"GOP {gop:3d} ({os.path.getsize(path) / 1e6:.1f} MB{', made in %.0f s' % made if made > 1 else ''}): "
              f"read_frames(16) {t_read:.3f} s | decode all 3600 frames {t_all:.3f} s | "
              f"{t_all / t_read:.1f}x faster | same frames: {same} | times {times[0]:.2f}..{times[-1]:.2f} s")
    scene = make_scene(np.random.default_rng(0))
    best = min(timeit.repeat(lambda: render_clip(scene), number=1, repeat=10))   # least disturbed run
    print(f"render: {best / scene['num_frames'] * 1000:.2f} ms per {scene['size'][1]}x{scene['size'][0]} frame "
          f"({len(scene['objects'])} objects, best of 10 clips)")


def demo():
    """A few scenes into a temp folder: their questions and reference reasoning, and one video read back."""
    out = tempfile.mkdtemp(prefix="videostr_demo_")
    make_dataset(out, 3, seed=0, sheet=True, log=None)
    rows = load_rows(os.path.join(out, "train.jsonl")) + load_rows(os.path.join(out, "val.jsonl"))
    for r in rows[:6]:
        opts = "  " + " ".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(r["options"])) if r["options"] else ""
        print(f"[{r['task']}] {r['question']}{opts}\n  answer {r['answer']}\n  {r['reasoning']}\n")
    frames, times = read_frames(rows[0]["video"], 16)
    print(f"read_frames({os.path.basename(rows[0]['video'])}, 16): frames {frames.shape} {frames.dtype}, "
          f"times {np.round(times, 3).tolist()}")
    print(f"files in {out} (contact_sheet.png shows the clips). Usage:" + __doc__.split("Run")[1].split("`--n`")[0])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python data.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", title="commands (none: the demo)", parser_class=SubcommandParser)
    make = sub.add_parser("make", help="render a synthetic data set (make_dataset)")
    make.add_argument("--out", default="data/synth", help="the folder (replaced whole when it holds a set)")
    for flag, default, what in (("--n", SCENES, "scenes (= videos)"), ("--seed", 0, "scene i: rng([seed, i])"),
                                ("--questions", 4, "rows per scene"), ("--min-objects", 2, "objects per scene, at "
                                 "least"), ("--max-objects", 3, "objects per scene, at most")):
        make.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")
    make.add_argument("--roll-share", type=float, default=0.0, help="share of scenes with a rolled camera (def. 0)")
    make.add_argument("--min-roll", type=float, default=0.0, help="their roll at least, +-degrees (default 0)")
    make.add_argument("--max-roll", type=float, default=MAX_ROLL, help=f"their roll, +-degrees (default {MAX_ROLL})")
    make.add_argument("--layout", choices=LAYOUTS, default="plain", help="of the reasoning (reasoning_text)")
    sub.add_parser("bench", help="read_frames(16) vs decoding every frame of a 2-min video; the renderer")
    readers = {"kitti": (kitti_clips, "root", "the unpacked KITTI tracking download (ROOT/training/...)"),
               "scannet": (scannet_clips, "scans", "the folder of ScanNet's scene folders (SCANS/sceneXXXX_XX/...)"),
               "tao": (tao_clips, "annotations", "TAO's annotation JSON file")}
    for name, (read, arg, what) in readers.items():
        c = sub.add_parser(name, help=f"real video to rows ({read.__name__})",
                           description=" ".join(read.__doc__.split()))
        c.add_argument(arg, help=what)
        c.add_argument("--out", required=True, help="the folder of rows and videos, written whole or left absent")
    sub.choices["kitti"].add_argument("--seqs", nargs="+", help="sequences, e.g. 0000 0001 (default: all labelled)")
    sub.choices["kitti"].add_argument("--clip_seconds", type=float, default=4.0, help="clip length (default 4.0)")
    sub.choices["scannet"].add_argument("--scenes", nargs="+", help="scenes, e.g. scene0000_00 (default: all)")
    sub.choices["tao"].add_argument("--frames", required=True, help="the folder the images' file_name starts in")
    args = p.parse_args(argv)
    if args.command in readers:
        return convert(args, readers[args.command][0])
    if args.command != "make":
        return bench() if args.command else demo()
    if not (1 <= args.min_objects <= args.max_objects and 0 <= args.min_roll <= args.max_roll):
        make.error(f"need 1 <= --min-objects <= --max-objects and 0 <= --min-roll <= --max-roll, got objects "
                   f"{args.min_objects}..{args.max_objects}, roll {args.min_roll:g}..{args.max_roll:g}")
    refuse_taken(args.out, "scenes.jsonl", "make")
    t = time.time()
    counts = replace_folder(args.out, lambda tmp: make_dataset(tmp, args.n, args.seed, args.questions,
                                                               (args.min_objects, args.max_objects),
                                                               roll_share=args.roll_share, max_roll=args.max_roll,
                                                               layout=args.layout, min_roll=args.min_roll))
    print(f"rows {counts} in {time.time() - t:.0f} s -> {args.out}")


def refuse_taken(out, marker, command):
    """Exit when `out` holds something that `command` did not write (no `marker` file in it): replace_folder would
    delete it."""
    if os.path.exists(out) and (os.path.isfile(out) or os.listdir(out)) and not os.path.isfile(
            os.path.join(out, marker)):
        sys.exit(f"data.py {command}: {out} exists and holds no data set (no {marker}): pick another --out")


def convert(args, read):
    """data.py kitti | scannet | tao: read(the command's arguments but --out) written by write_converted through
    replace_folder (a failed run leaves --out absent, or as it was); bad input exits naming the file (and line)."""
    refuse_taken(args.out, "converted.json", args.command)
    given = {k: v for k, v in vars(args).items() if k not in ("command", "out")}
    try:
        s = replace_folder(args.out, lambda tmp: write_converted(tmp, args.command, *read(**given)))
    except (BadRow, OSError, VideoError) as e:           # bad input, a missing file or folder (named), a full disk
        sys.exit(f"data.py {args.command}: {e}")
    unmade, unsupported = set(s["supported"]) - set(s["tasks"]), set(TRACK_TASKS) - set(s["supported"])
    print(f"data.py {args.command}: {s['clips']} clips, rows {s['rows']} -> {args.out}\n  tasks made: {s['tasks']}; "
          f"none fits: {sorted(unmade)}; not supported: {sorted(unsupported)}\n  skipped for a non-finite pose: "
          f"{s['skipped']} {'frames' if args.command == 'scannet' else 'clips'}")


if __name__ == "__main__":
    main()
