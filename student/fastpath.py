"""The fast inference path: post-processing on the network's device, in one fixed-shape step.

``FastPredictor`` gives :class:`student.predict.Predictor`'s results (to float tolerance) for robots and
benchmarks. One device step takes the letterboxed uint8 batch and returns a few kilobytes per image:

- each joint's strongest local maxima (the ellipse dilation of ``find_peaks``, as row-wise max pools) with their
  3x3 sub-pixel centres, and how many maxima there were;
- the PAF support (``paf_scores``) of every pair of those candidates along each limb, by bilinear sampling;
- the depth after the paper's refinement (35 Sobel steps) or unrefined;
- each caption slot's nearest vocabulary word and its cosine similarity.

Every shape is fixed, so the step compiles (``torch.compile``) and runs as one captured CUDA graph. The host does
only what is sequential and small: the plateau filter over each joint's candidates and the greedy grouping of at
most 20 peaks per joint into people (``postprocess.group_with_support``). When a joint has more maxima than the
step kept and the kept ones do not decide its peaks, that frame's pose is post-processed on the host from the maps
instead (exact, slower; counted in ``FastPredictor.fallbacks``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shards.geometry import Letterbox
from shards.taxonomy import CHANNELS, LIMBS
from shards.vocab import DEFAULT_DECODE_THRESHOLD, NEAR_ZERO_MEAN_SQUARE, Vocabulary
from student.postprocess import PAPER_FAR, find_peaks, group_people, group_with_support, keep_apart
from student.predict import Prediction, Predictor

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16}
CANDIDATES = 64  # local maxima per joint the device step keeps (find_peaks keeps at most 20 after the plateau filter)
MAX_PEAKS = 20  # find_peaks' default
RADIUS = 4  # find_peaks' default suppression radius
PAF_SAMPLES = 10  # paf_scores' default


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
                 vocab: Vocabulary | None = None, radius: int = RADIUS) -> None:
        import cv2

        super().__init__()
        if refine not in ("paper", "none"):
            raise ValueError(f"the fast path refines depth with the paper's rule or not at all, not {refine!r}")
        self.threshold = float(peak_threshold)
        self.candidates = int(candidates)
        self.refine = refine
        element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        self.half_widths = tuple(int(row.sum()) // 2 for row in element)  # each row: centred, contiguous ones
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
        """Post-process a batch.

        Args:
            maps: (B, 44, S, S) student maps in [-1, 1].
            tokens: (B, 8, 300) token outputs.
            valid: (B, S, S) bool, the image content of each letterbox.

        Returns:
            ``peak_score`` (B, J, K) scores of each joint's strongest maxima (-1 past the last), ``peak_pixel``
            (B, J, K) their flat pixel index, ``peak_xy`` (B, J, K, 2) their sub-pixel centres, ``peak_count``
            (B, J) how many maxima there were; ``limb_score`` (B, L, K, K) and ``limb_agree`` (B, L, K, K, the
            number of agreeing samples) for each limb's child -> parent candidate pairs; ``depth`` (B, S, S);
            with a vocabulary ``word_id`` (B, 8), ``word_sim`` (B, 8) and ``slot_filled`` (B, 8).
        """
        maps = maps.float()
        h, w = maps.shape[-2:]
        score = (maps[:, CHANNELS["joints"].slice] + 1.0) * 0.5
        inside = valid[:, None]
        score = torch.where(inside, score, torch.zeros((), dtype=score.dtype, device=score.device))
        local = (score >= self._dilate(score)) & (score >= self.threshold) & inside
        flat = torch.where(local, score, torch.full((), -1.0, dtype=score.dtype, device=score.device)).flatten(2)
        top, pixel = flat.topk(min(self.candidates, h * w), dim=-1)  # sorted, strongest first
        xy = self._centres(score, pixel)
        limb_score, limb_agree = self._support(maps[:, CHANNELS["pafs"].slice], xy)
        out = {"peak_score": top, "peak_pixel": pixel, "peak_xy": xy, "peak_count": local.flatten(2).sum(-1),
               "limb_score": limb_score, "limb_agree": limb_agree,
               "depth": self._depth(maps, valid)}
        if self.table is not None:
            t = tokens.float()
            filled = (t * t).mean(-1) > NEAR_ZERO_MEAN_SQUARE
            unit = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            sim, word = (unit @ self.table.T).max(-1)
            out.update(word_id=word, word_sim=sim, slot_filled=filled)
        return out

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

    def _support(self, pafs: torch.Tensor, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``paf_scores`` of every child -> parent candidate pair of every limb: (B, L, K, K) mean score and number
        of agreeing samples."""
        b, limbs, h, w = pafs.shape
        k = xy.shape[2]
        xy = xy.float()
        child = xy[:, self.child][:, :, :, None, None, :]  # (B, L, K, 1, 1, 2)
        parent = xy[:, self.parent][:, :, None, :, None, :]  # (B, L, 1, K, 1, 2)
        pts = child + self.t[:, None] * (parent - child)  # (B, L, K, K, T, 2)
        # Python scalars, not a tensor made from a list: that would be a blocking copy, not allowed in a CUDA graph
        grid = torch.stack([pts[..., 0] * (2.0 / w), pts[..., 1] * (2.0 / h)], dim=-1) - 1.0
        grid = grid.reshape(b * limbs, k, k * len(self.t), 2)
        # pixel centres at i + 0.5 (align_corners=False); "border" clamps to [0, S - 1] as _bilinear does
        values = F.grid_sample(pafs.reshape(b * limbs, 1, h, w), grid, mode="bilinear", padding_mode="border",
                               align_corners=False).view(b, limbs, k, k, len(self.t))
        err = (values - self.expected[None, :, None, None, :]).abs()
        return (1.0 - err / 2.0).mean(-1), (err <= 0.5).sum(-1).to(torch.uint8)

    def _depth(self, maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Depth in [0, 1] after ``refine_depth_paper`` (or as predicted with ``refine="none"``)."""
        original = (maps[:, CHANNELS["depth"].start] + 1.0) * 0.5
        if self.refine == "none":
            return original
        scale, alpha = 240.0, 0.01
        mask = (original >= PAPER_FAR) & valid
        normals = maps[:, CHANNELS["normals"].slice]
        d = original * scale
        for _ in range(35):
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
               radius: int = RADIUS, max_peaks: int = MAX_PEAKS) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """``find_peaks``' result from one image's device candidates, or None when they do not decide it.

    Args:
        score, pixel: (J, K) candidate scores and flat pixel indices, strongest first.
        xy: (J, K, 2) candidate centres.
        count: (J,) number of local maxima of each joint.
        width: map width.

    Returns:
        Per joint the (P, 3) peaks (x, y, score) and the (P,) candidate indices they came from; None when a joint
        had more maxima than candidates and the kept ones may depend on those left out (ties at the cut, or fewer
        than ``max_peaks`` kept).
    """
    peaks, chosen = [], []
    for j in range(score.shape[0]):
        n = int(min(count[j], score.shape[1]))
        s, p = score[j, :n], pixel[j, :n]
        order = np.lexsort((p, -s))  # strongest first, raster order among equals (find_peaks' stable sort)
        kept = keep_apart(p[order] % width, p[order] // width, radius, max_peaks)
        if count[j] > n and not (len(kept) == max_peaks and s[order[kept[-1]]] > s[order[-1]]):
            return None
        idx = order[kept]
        peaks.append(np.column_stack([xy[j, idx].astype(np.float64), s[idx].astype(np.float64)]).reshape(-1, 3))
        chosen.append(idx)
    return peaks, chosen


class FastPredictor(Predictor):
    """:class:`Predictor` with its post-processing on the model's device (``DevicePost``), one fixed-shape step.

    Args (besides Predictor's; ``refine`` is ``paper`` or ``none``):
        amp: ``none`` (FP32, the paper's precision) or ``bf16`` (autocast).
        channels_last: run the network in channels-last memory format (converts ``model`` in place).
        compile: ``torch.compile`` the step (network and post-processing; minutes for the paper network).
        cuda_graph: capture the step as a CUDA graph per batch size and replay it (CUDA only).
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
        self.step = torch.compile(self._step, dynamic=False) if compile else self._step
        self.fallbacks = 0  # frames whose pose was post-processed on the host
        self._graphs: dict[int, tuple] = {}
        self._valid: dict[tuple[Letterbox, ...], torch.Tensor] = {}

    def _step(self, nhwc: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network and post-processing of a (B, S, S, 3) uint8 batch: everything a captured graph replays."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = nhwc.permute(0, 3, 1, 2).contiguous(memory_format=fmt)  # NHWC memory is channels-last already
        # a captured graph must not reuse autocast's cached casts of the weights (torch.cuda.graph's rule)
        with torch.autocast(self.device_type, dtype=self.amp or torch.float32, enabled=self.amp is not None,
                            cache_enabled=not self.cuda_graph):
            out = self.model(images)
        result = self.post(out["maps"], out["tokens"], valid)
        result.update(maps=out["maps"].float(), tokens=out["tokens"].float())
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

    def _graph(self, batch: int) -> tuple:
        """The captured step for ``batch`` images: (graph, pinned host input, device input, valid, outputs)."""
        if batch not in self._graphs:
            with torch.cuda.device(self.device):  # the graph, its stream and its memory on the model's GPU
                nhwc = torch.zeros((batch, self.size, self.size, 3), dtype=torch.uint8, device=self.device)
                valid = torch.ones((batch, self.size, self.size), dtype=torch.bool, device=self.device)
                host = torch.zeros((batch, self.size, self.size, 3), dtype=torch.uint8).pin_memory()
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):  # warm-up: cuDNN's choices, the compiler, autocast
                        self.step(nhwc, valid)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    outputs = self.step(nhwc, valid)
            self._graphs[batch] = (graph, host, nhwc, valid, outputs)
        return self._graphs[batch]

    def _run(self, boxed: np.ndarray, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step's device outputs for a (B, S, S, 3) uint8 batch. With a graph they are its static outputs:
        read them (``.cpu()`` waits for the replay) before the next call overwrites them and the pinned input."""
        nhwc = torch.from_numpy(boxed)
        if not self.cuda_graph:
            return self.step(nhwc.to(self.device), valid)
        graph, host, static_nhwc, static_valid, outputs = self._graph(len(boxed))
        with torch.cuda.device(self.device):
            host.copy_(nhwc)
            static_nhwc.copy_(host, non_blocking=True)
            static_valid.copy_(valid)
            graph.replay()
        return outputs

    @torch.no_grad()
    def predict_batch(self, images: list[np.ndarray]) -> list[Prediction]:
        """Predict a list of (h, w, 3) uint8 RGB images of any sizes."""
        boxes, boxed = self._letterbox(images)
        out = self._run(boxed, self._valid_masks(boxes))
        wanted = [k for k in out if k != "maps" or self.keep_maps]
        host = {k: out[k].cpu().numpy() for k in wanted}
        results = []
        for i, (box, image) in enumerate(zip(boxes, boxed)):
            found = host_peaks(host["peak_score"][i], host["peak_pixel"][i], host["peak_xy"][i],
                               host["peak_count"][i], self.size)
            maps = host["maps"][i] if self.keep_maps else None
            if found is None:  # more maxima than candidates: this frame's pose on the host, from its maps
                self.fallbacks += 1
                pose = maps if maps is not None else out["maps"][i].cpu().numpy()
                peaks = find_peaks(pose[CHANNELS["joints"].slice], threshold=self.peak_threshold,
                                   valid=box.valid_mask())
                people = group_people(peaks, pose[CHANNELS["pafs"].slice])
            else:
                peaks, chosen = found
                people = group_with_support(peaks, self._support(host, i, chosen), self.size)
            words = None
            if self.vocab is not None:
                words = [None] * len(host["tokens"][i]) if "word_id" not in host else [
                    (self.vocab.words[int(w)], float(s)) if filled else None
                    for w, s, filled in zip(host["word_id"][i], host["word_sim"][i], host["slot_filled"][i])]
            hot = host["multihot"][i] if "multihot" in host else None
            results.append(Prediction(image, box, maps, host["depth"][i], people, words, host["tokens"][i],
                                      self._labels(hot), self.word_threshold))
        return results

    @staticmethod
    def _support(host: dict[str, np.ndarray], i: int, chosen: list[np.ndarray]):
        """``support(li)`` for ``group_with_support`` from the device's candidate-pair tables of image ``i``."""
        def support(li: int) -> tuple[np.ndarray, np.ndarray]:
            limb = LIMBS[li]
            pairs = np.ix_(chosen[limb.child], chosen[limb.parent])
            return (host["limb_score"][i, li][pairs].astype(np.float64),
                    host["limb_agree"][i, li][pairs].astype(np.float64) / PAF_SAMPLES)

        return support
