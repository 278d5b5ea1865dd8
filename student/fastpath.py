"""The fast inference path: post-processing on the network's device, in fixed-shape steps.

``FastPredictor`` gives :class:`student.predict.Predictor`'s results (to float tolerance) for robots and
benchmarks. A first device step takes the letterboxed uint8 batch through the network and returns, per image:

- each joint's 256 first local maxima in ``find_peaks``' order (score, then raster order: the elliptic dilation
  as row-wise max pools, one integer key per pixel for the order) with their 3x3 sub-pixel centres, and how many
  maxima there were;
- the depth after the paper's refinement (35 Sobel steps) or unrefined;
- each caption slot's nearest vocabulary word and its cosine similarity;

about 0.1 MB plus the depth map (0.26 MB at 256 pixels) instead of the 44 maps (11.5 MB). The host filters
plateaus (``keep_apart``: at most 20 peaks per joint) and sends the kept peaks back; a second step samples the
PAFs between every pair of them along each limb (``paf_scores``), and the host groups people greedily
(``postprocess.group_with_support``). Every shape is fixed, so both steps compile (``torch.compile``) and run as
captured CUDA graphs. When a joint has more maxima than the candidates and fewer than 20 peaks come out of them,
that frame's pose is post-processed on the host from the maps instead (exact, slower; counted in
``FastPredictor.fallbacks``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from shards.geometry import Letterbox
from shards.taxonomy import CHANNELS, JOINTS, LIMBS
from shards.vocab import DEFAULT_DECODE_THRESHOLD, NEAR_ZERO_MEAN_SQUARE, Vocabulary
from student.postprocess import (DEPTH_SCALE, MAX_PEAKS, PAF_SAMPLES, PAF_TOLERANCE, PAPER_ALPHA, PAPER_FAR,
                                 PAPER_ITERATIONS, PEAK_RADIUS, find_peaks, group_people, group_with_support,
                                 keep_apart)
from student.predict import Prediction, Predictor

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16}
CANDIDATES = 256  # local maxima per joint the device step keeps, in find_peaks' order


class DevicePost(torch.nn.Module):
    """The post-processing of :class:`Predictor` that runs on the device, with fixed output shapes.

    Args:
        peak_threshold: minimum joint score (0..1), as ``find_peaks``.
        candidates: local maxima kept per joint.
        refine: ``paper`` (``refine_depth_paper``) or ``none``.
        vocab: vocabulary for the caption slots (None or empty: no words).
        radius: suppression radius of ``find_peaks``.
    """

    def __init__(self, peak_threshold: float = 0.5, candidates: int = CANDIDATES, refine: str = "paper",
                 vocab: Vocabulary | None = None, radius: int = PEAK_RADIUS) -> None:
        import cv2

        super().__init__()
        if refine not in ("paper", "none"):
            raise ValueError(f"the fast path refines depth with the paper's rule or not at all, not {refine!r}")
        self.threshold = float(peak_threshold)
        self.candidates = int(candidates)
        self.refine = refine
        element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        self.half_widths = tuple(int(row.sum()) // 2 for row in element)
        for row, half in zip(element, self.half_widths):  # each row's ones are centred and contiguous
            assert row[radius - half:radius + half + 1].all() and row.sum() == 2 * half + 1, element
        self.register_buffer("child", torch.tensor([limb.child for limb in LIMBS]), persistent=False)
        self.register_buffer("parent", torch.tensor([limb.parent for limb in LIMBS]), persistent=False)
        t = (torch.arange(PAF_SAMPLES, dtype=torch.float64) + 0.5) / PAF_SAMPLES
        self.register_buffer("t", t.float(), persistent=False)
        signs = torch.tensor([float(limb.sign) for limb in LIMBS], dtype=torch.float64)
        self.register_buffer("expected", (signs[:, None] * (2.0 * t - 1.0)).float(), persistent=False)  # (L, T)
        table = None
        if vocab is not None and len(vocab):
            v = torch.from_numpy(np.asarray(vocab.vectors, np.float32))
            table = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.register_buffer("table", table, persistent=False)

    def forward(self, maps: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Joint candidates, depth and words of a batch.

        Args:
            maps: (B, 44, S, S) student maps in [-1, 1].
            tokens: (B, 8, 300) token outputs.
            valid: (B, S, S) bool, the image content of each letterbox.

        Returns:
            ``peak_score`` (B, J, K) and ``peak_pixel`` (B, J, K): each joint's first K local maxima in
            ``find_peaks``' order (score descending, then raster order; score -1 past the last), ``peak_xy``
            (B, J, K, 2) their sub-pixel centres, ``peak_count`` (B, J) how many maxima there were; ``depth``
            (B, S, S); with a vocabulary ``word_id`` (B, 8), ``word_sim`` (B, 8) and ``slot_filled`` (B, 8).
        """
        maps = maps.float()
        h, w = maps.shape[-2:]
        score = (maps[:, CHANNELS["joints"].slice] + 1.0) * 0.5
        inside = valid[:, None]
        score = torch.where(inside, score, torch.zeros((), dtype=score.dtype, device=score.device))
        local = ((score >= self._dilate(score)) & (score >= self.threshold) & inside).flatten(2)
        # one int64 key per pixel orders like find_peaks: a non-negative float's bits order as the float, and
        # the raster index (reversed) breaks ties, so the top K are exactly its first K
        bits = max(1, (h * w - 1).bit_length())
        last = h * w - 1
        rank = last - torch.arange(h * w, device=score.device)
        key = (score.flatten(2).contiguous().view(torch.int32).to(torch.int64) << bits) | rank
        key = torch.where(local, key, torch.full((), -1, dtype=torch.int64, device=key.device))
        top = key.topk(min(self.candidates, h * w), dim=-1).values
        pixel = last - (top & ((1 << bits) - 1))
        found = top >= 0
        pixel = torch.where(found, pixel, torch.zeros((), dtype=pixel.dtype, device=pixel.device))
        peak = torch.where(found, (top >> bits).to(torch.int32).view(torch.float32),
                           torch.full((), -1.0, device=top.device))
        out = {"peak_score": peak, "peak_pixel": pixel, "peak_xy": self._centres(score, pixel),
               "peak_count": local.sum(-1), "depth": self._depth(maps, valid)}
        if self.table is not None:
            t = tokens.float()
            filled = (t * t).mean(-1) > NEAR_ZERO_MEAN_SQUARE
            unit = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            sim, word = (unit @ self.table.T).max(-1)
            out.update(word_id=word, word_sim=sim, slot_filled=filled)
        return out

    def support(self, maps: torch.Tensor, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``paf_scores`` of every child -> parent pair of peaks of every limb.

        Args:
            maps: (B, 44, S, S) student maps (the PAFs are read).
            xy: (B, J, P, 2) each joint's peaks (continuous coordinates; rows past a joint's last peak are ignored
                by the caller).

        Returns:
            (B, L, P, P) mean score and (B, L, P, P) uint8 number of agreeing samples of ``PAF_SAMPLES``.
        """
        pafs = maps[:, CHANNELS["pafs"].slice].float()
        b, limbs, h, w = pafs.shape
        k = xy.shape[2]
        xy = xy.float()
        child = xy[:, self.child][:, :, :, None, None, :]  # (B, L, P, 1, 1, 2)
        parent = xy[:, self.parent][:, :, None, :, None, :]  # (B, L, 1, P, 1, 2)
        pts = child + self.t[:, None] * (parent - child)  # (B, L, P, P, T, 2)
        # Python scalars, not a tensor made from a list: that would be a blocking copy, not allowed in a CUDA graph
        grid = torch.stack([pts[..., 0] * (2.0 / w), pts[..., 1] * (2.0 / h)], dim=-1) - 1.0
        grid = grid.reshape(b * limbs, k, k * len(self.t), 2)
        # pixel centres at i + 0.5 (align_corners=False); "border" clamps to [0, S - 1] as _bilinear does
        values = F.grid_sample(pafs.reshape(b * limbs, 1, h, w), grid, mode="bilinear", padding_mode="border",
                               align_corners=False).view(b, limbs, k, k, len(self.t))
        err = (values - self.expected[None, :, None, None, :]).abs()
        return (1.0 - err / 2.0).mean(-1), (err <= PAF_TOLERANCE).sum(-1).to(torch.uint8)

    def _dilate(self, score: torch.Tensor) -> torch.Tensor:
        """``cv2.dilate`` with the elliptic element (border ignored): the max over each element row, shifted."""
        r = len(self.half_widths) // 2
        h = score.shape[-2]
        padded = F.pad(score, (0, 0, r, r), value=float("-inf"))
        out = None
        for dy, half in enumerate(self.half_widths):
            row = padded[..., dy:dy + h, :]
            if half:
                row = F.max_pool2d(row, (1, 2 * half + 1), stride=1, padding=(0, half))
            out = row if out is None else torch.maximum(out, row)
        return out

    def _centres(self, score: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
        """``postprocess._centroid`` of each candidate: the 3x3 score-weighted centre (window clipped at the edges),
        in float64 where the device has it."""
        b, j, h, w = score.shape
        dtype = torch.float32 if score.device.type == "mps" else torch.float64
        y, x = pixel // w, pixel % w  # (B, J, K)
        off = torch.arange(-1, 2, device=score.device)
        yy = y[..., None, None] + off[:, None]  # (B, J, K, 3, 1)
        xx = x[..., None, None] + off[None, :]  # (B, J, K, 1, 3)
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        index = yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)
        patch = score.flatten(2).gather(2, index.flatten(2)).view(index.shape).to(dtype)
        zero, inf = (torch.full((), v, dtype=dtype, device=patch.device) for v in (0.0, float("inf")))
        lowest = torch.where(inside, patch, inf).amin((-2, -1), keepdim=True)
        weights = torch.where(inside, patch - lowest, zero)
        total = weights.sum((-2, -1))
        cx = (weights * xx.to(dtype)).sum((-2, -1)) / total
        cy = (weights * yy.to(dtype)).sum((-2, -1)) / total
        cx = torch.where(total > 0, cx, x.to(dtype)) + 0.5
        cy = torch.where(total > 0, cy, y.to(dtype)) + 0.5
        return torch.stack([cx, cy], dim=-1)

    def _depth(self, maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Depth in [0, 1] after ``refine_depth_paper`` (or as predicted with ``refine="none"``)."""
        original = (maps[:, CHANNELS["depth"].start] + 1.0) * 0.5
        if self.refine == "none":
            return original
        scale, alpha = DEPTH_SCALE, PAPER_ALPHA
        mask = (original >= PAPER_FAR) & valid
        normals = maps[:, CHANNELS["normals"].slice]
        d = original * scale
        for _ in range(PAPER_ITERATIONS):
            gx, gy = _sobel(d)
            m = torch.sqrt(gx * gx + gy * gy + 1.0)
            step = alpha * ((normals[:, 0] - gx / m) * gx + (normals[:, 1] - gy / m) * gy + (normals[:, 2] - 1.0 / m))
            d = torch.where(mask, d + step, d)
        return torch.where(mask, (d / scale).clamp(0.0, 1.0), original)


def _sobel(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's 3x3 Sobel x and y derivatives of (B, H, W) ``d`` with replicated borders, in float32 adds (a
    convolution could run as TF32 on a GPU)."""
    p = F.pad(d[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    h, w = d.shape[-2:]
    dx = p[:, :, 2:] - p[:, :, :w]  # (B, H + 2, W)
    dy = p[:, 2:, :] - p[:, :h, :]  # (B, H, W + 2)
    return (dx[:, :h] + 2.0 * dx[:, 1:h + 1] + dx[:, 2:]), (dy[:, :, :w] + 2.0 * dy[:, :, 1:w + 1] + dy[:, :, 2:])


def host_peaks(score: np.ndarray, pixel: np.ndarray, xy: np.ndarray, count: np.ndarray, width: int,
               radius: int = PEAK_RADIUS, max_peaks: int = MAX_PEAKS) -> list[np.ndarray] | None:
    """``find_peaks``' result from one image's device candidates, or None when they do not decide it.

    Args:
        score, pixel: (J, K) the candidates in ``find_peaks``' order (``DevicePost.forward``).
        xy: (J, K, 2) their centres.
        count: (J,) number of local maxima of each joint.
        width: map width.

    Returns:
        Per joint the (P, 3) peaks (x, y, score); None when a joint had more maxima than candidates and fewer than
        ``max_peaks`` peaks came out of them (``find_peaks`` would go on to the maxima left out).
    """
    peaks = []
    for j in range(score.shape[0]):
        n = int(min(count[j], score.shape[1]))
        p = pixel[j, :n]
        kept = keep_apart(p % width, p // width, radius, max_peaks)
        if count[j] > n and len(kept) < max_peaks:
            return None
        peaks.append(np.column_stack([xy[j, kept].astype(np.float64), score[j, kept].astype(np.float64)])
                     .reshape(-1, 3))
    return peaks


class _Captured(NamedTuple):
    """The two captured steps of one batch size, with their static inputs (device, and pinned host copies) and
    outputs."""

    first: Any  # torch.cuda.CUDAGraph of FastPredictor._step
    host: torch.Tensor  # (B, S, S, 3) uint8, pinned
    nhwc: torch.Tensor
    valid: torch.Tensor
    outputs: dict[str, torch.Tensor]
    second: Any  # torch.cuda.CUDAGraph of DevicePost.support
    xy_host: torch.Tensor  # (B, J, P, 2) float32, pinned
    xy: torch.Tensor
    support: tuple[torch.Tensor, torch.Tensor]


class FastPredictor(Predictor):
    """:class:`Predictor` with its post-processing on the model's device (``DevicePost``) in fixed-shape steps.

    Args (besides Predictor's; ``refine`` is ``paper`` or ``none``):
        amp: ``none`` (FP32) or ``bf16`` (autocast).
        channels_last: run the network in channels-last memory format (converts ``model`` in place).
        compile: ``torch.compile`` the steps (network and post-processing; minutes for the paper network).
        cuda_graph: capture the steps as CUDA graphs per batch size and replay them (CUDA only).
        keep_maps: copy the 44 maps back into each Prediction (panels and ``--save-maps`` need them).
        candidates: local maxima kept per joint on the device.
    """

    def __init__(self, model: torch.nn.Module, image_size: int, vocab: Vocabulary | None = None,
                 device: str = "cpu", refine: str = "paper", peak_threshold: float = 0.5,
                 word_threshold: float = DEFAULT_DECODE_THRESHOLD, *, amp: str = "none",
                 channels_last: bool = False, compile: bool = False, cuda_graph: bool = False,
                 keep_maps: bool = True, candidates: int = CANDIDATES) -> None:
        super().__init__(model, image_size, vocab, device, refine, peak_threshold, word_threshold)
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
        self.device_type = torch.device(device).type
        if cuda_graph and self.device_type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device!r}")
        self.amp = AMP_DTYPES[amp]
        self.channels_last = channels_last
        self.cuda_graph = cuda_graph
        self.keep_maps = keep_maps
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.post = DevicePost(peak_threshold, candidates, refine, vocab).to(device)
        # fullgraph: a break (a host sync, a data-dependent shape) is an error, as it would be for graph capture
        compiled = (lambda f: torch.compile(f, dynamic=False, fullgraph=True)) if compile else (lambda f: f)
        self.step, self.support_step = compiled(self._step), compiled(self.post.support)
        self.fallbacks = 0  # frames whose pose was post-processed on the host
        self._graphs: dict[int, _Captured] = {}
        self._valid: dict[tuple[Letterbox, ...], torch.Tensor] = {}

    @property
    def peak_threshold(self) -> float:
        return self._peak_threshold

    @peak_threshold.setter
    def peak_threshold(self, value: float) -> None:  # the device step and the host fallback use the same one
        self._peak_threshold = float(value)
        if hasattr(self, "post"):
            self.post.threshold = float(value)
            self._graphs.clear()  # captured with the old threshold

    def _step(self, nhwc: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network, joint candidates, depth and words of a (B, S, S, 3) uint8 batch: the first captured graph."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = nhwc.permute(0, 3, 1, 2).contiguous(memory_format=fmt)  # NHWC memory is channels-last already
        # a captured graph must not reuse autocast's cached casts of the weights (torch.cuda.graph's rule)
        with torch.autocast(self.device_type, dtype=self.amp or torch.float32, enabled=self.amp is not None,
                            cache_enabled=not self.cuda_graph):
            out = self.model(images)
        maps = out["maps"].float()
        result = self.post(maps, out["tokens"], valid)
        result.update(maps=maps, tokens=out["tokens"].float())
        if "multihot" in out:
            result["multihot"] = out["multihot"].float()
        return result

    def _valid_masks(self, boxes: list[Letterbox]) -> torch.Tensor:
        """(B, S, S) bool on the device, kept for the boxes of the last frames (a video's are all the same)."""
        key = tuple(boxes)
        if key not in self._valid:
            if len(self._valid) >= 16:
                self._valid.clear()
            masks = np.stack([box.valid_mask() for box in boxes])
            self._valid[key] = torch.from_numpy(masks).to(self.device)
        return self._valid[key]

    def _graph(self, batch: int) -> _Captured:
        """The captured steps for ``batch`` images."""
        if batch not in self._graphs:
            with torch.cuda.device(self.device):  # the graphs, their stream and memory on the model's GPU
                nhwc = torch.zeros((batch, self.size, self.size, 3), dtype=torch.uint8, device=self.device)
                valid = torch.ones((batch, self.size, self.size), dtype=torch.bool, device=self.device)
                host = torch.zeros((batch, self.size, self.size, 3), dtype=torch.uint8).pin_memory()
                xy_host = torch.zeros((batch, len(JOINTS), MAX_PEAKS, 2)).pin_memory()
                xy = xy_host.to(self.device)
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):  # warm-up: cuDNN's choices, the compiler, autocast
                        self.support_step(self.step(nhwc, valid)["maps"], xy)
                torch.cuda.current_stream().wait_stream(stream)
                first, second = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
                with torch.cuda.graph(first):
                    outputs = self.step(nhwc, valid)
                with torch.cuda.graph(second):  # reads the first graph's maps, which stay where they are
                    support = self.support_step(outputs["maps"], xy)
            self._graphs[batch] = _Captured(first, host, nhwc, valid, outputs, second, xy_host, xy, support)
        return self._graphs[batch]

    def _run(self, boxed: np.ndarray, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """The first step's device outputs for a (B, S, S, 3) uint8 batch. With a graph they are its static
        outputs: read them (``.cpu()`` waits for the replay) before the next call overwrites them."""
        nhwc = torch.from_numpy(boxed)
        if not self.cuda_graph:
            return self.step(nhwc.to(self.device), valid)
        g = self._graph(len(boxed))
        with torch.cuda.device(self.device):
            g.host.copy_(nhwc)
            g.nhwc.copy_(g.host, non_blocking=True)
            g.valid.copy_(valid)
            g.first.replay()
        return g.outputs

    def _run_support(self, maps: torch.Tensor, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The second step on the host: (B, L, P, P) limb scores and agreeing samples for peaks ``xy``
        (B, J, P, 2); ``maps`` are the first step's."""
        if not self.cuda_graph:
            score, agree = self.support_step(maps, torch.from_numpy(xy).to(self.device))
        else:
            g = self._graph(len(xy))
            with torch.cuda.device(self.device):
                g.xy_host.copy_(torch.from_numpy(xy))
                g.xy.copy_(g.xy_host, non_blocking=True)
                g.second.replay()
            score, agree = g.support
        return score.cpu().numpy(), agree.cpu().numpy()

    @torch.no_grad()
    def predict_batch(self, images: list[np.ndarray]) -> list[Prediction]:
        """Predict a list of (h, w, 3) uint8 RGB images of any sizes."""
        boxes, boxed = self._letterbox(images)
        out = self._run(boxed, self._valid_masks(boxes))
        host = {k: out[k].cpu().numpy() for k in out if k != "maps" or self.keep_maps}
        found = [host_peaks(host["peak_score"][i], host["peak_pixel"][i], host["peak_xy"][i],
                            host["peak_count"][i], self.size) for i in range(len(boxes))]
        xy = np.zeros((len(boxes), len(JOINTS), MAX_PEAKS, 2), np.float32)
        for i, peaks in enumerate(found):
            for j, p in enumerate(peaks or []):
                xy[i, j, :len(p)] = p[:, :2]
        limb_score, limb_agree = self._run_support(out["maps"], xy)
        results = []
        for i, (box, image, peaks) in enumerate(zip(boxes, boxed, found)):
            maps = host["maps"][i] if self.keep_maps else None
            if peaks is None:  # more maxima than candidates: this frame's pose on the host, from its maps
                self.fallbacks += 1
                pose = maps if maps is not None else out["maps"][i].cpu().numpy()
                peaks = find_peaks(pose[CHANNELS["joints"].slice], threshold=self.peak_threshold,
                                   valid=box.valid_mask())
                people = group_people(peaks, pose[CHANNELS["pafs"].slice])
            else:
                def support(li: int, i: int = i, peaks: list[np.ndarray] = peaks) -> tuple[np.ndarray, np.ndarray]:
                    c, p = len(peaks[LIMBS[li].child]), len(peaks[LIMBS[li].parent])
                    return (limb_score[i, li, :c, :p].astype(np.float64),
                            limb_agree[i, li, :c, :p].astype(np.float64) / PAF_SAMPLES)

                people = group_with_support(peaks, support, self.size)
            words = None
            if self.vocab is not None:
                words = [None] * len(host["tokens"][i]) if "word_id" not in host else [
                    (self.vocab.words[int(w)], float(s)) if filled else None
                    for w, s, filled in zip(host["word_id"][i], host["word_sim"][i], host["slot_filled"][i])]
            hot = host["multihot"][i] if "multihot" in host else None
            results.append(Prediction(image, box, maps, host["depth"][i], people, words, host["tokens"][i],
                                      self._labels(hot), self.word_threshold))
        return results
