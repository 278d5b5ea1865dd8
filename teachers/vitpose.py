"""Pose teacher: top-down ViTPose through transformers, an RT-DETR person detector giving it its boxes."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import numpy as np

from shards.taxonomy import JOINTS, PANOPTIC_CLASSES
from teachers.base import Teacher, TeacherError, TeacherInput, TeacherSpec, expand_home, joints_in_image
from teachers.loading import (checkpoint_identity, from_pretrained_strict, hub_revision, integer, is_local,
                              load_or_fail, quiet_transformers, torch_dtype, unit_interval)
from teachers.preprocess import check_image

DEFAULT_CHECKPOINT = "usyd-community/vitpose-base-simple"
DEFAULT_DETECTOR = "PekingU/rtdetr_r50vd_coco_o365"
NUM_JOINTS = 17
#: The pose model runs a call's crops in chunks of this many per image of ``batch_size``: a 256x192 crop has about
#: an eighth of the pixels of a 640x640 detector input, so a chunk costs about what the detector's batch does.
CROPS_PER_IMAGE = 8
#: The image processor settings of the published checkpoints (their preprocessor_config.json, transformers' defaults),
#: for a checkpoint without that file (a hub id: nothing is downloaded for them).
POSE_PREPROCESS = {"size": {"height": 256, "width": 192}, "do_rescale": True, "rescale_factor": 1 / 255,
                   "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
DETECTOR_PREPROCESS = {"size": {"height": 640, "width": 640}, "do_resize": True, "resample": 2, "do_rescale": True,
                       "rescale_factor": 1 / 255, "do_normalize": False, "do_pad": False}


class ViTPoseTeacher(Teacher):
    """Top-down 2D human pose: RT-DETR finds the people, ViTPose predicts the 17 COCO joints in each one's box.

    Both halves follow transformers' own inference (its ViTPose documentation): the detector's input is the image
    resized to 640x640 (aspect not kept, bilinear) and rescaled by 1/255 (``RTDetrImageProcessor``), its boxes those of
    ``post_process_object_detection`` (sigmoid scores, top-k over queries x classes) labelled "person"; each box,
    clipped to the image, is widened to the crop's 3:4 aspect and padded 1.25x (``box_to_center_and_scale``), warped
    to a 256x192 crop (bilinear) and normalised with ImageNet mean/std, as ``VitPoseImageProcessor`` does but on the
    device and without rounding the crop to uint8 (``_crops``); the joints are the heatmap maxima refined by DARK
    mapped back to the image (``post_process_pose_estimation``). Both image processors are built from the checkpoint
    folder's ``preprocessor_config.json`` when it has one, else from ``POSE_PREPROCESS`` / ``DETECTOR_PREPROCESS``.
    No flip test (mmpose's ViTPose also averages the heatmaps of the mirrored crop; transformers does not).

    Args:
        checkpoint: hub id or local ``save_pretrained`` folder of a ``VitPoseForPoseEstimation`` with 17 COCO joints;
            or a local bundle folder holding ``pose/`` and ``detector/`` (as ``save_tiny_checkpoint`` writes), whose
            ``detector/`` is then the detector unless ``detector`` names another than the default.
        detector: hub id or local folder of an ``RTDetrForObjectDetection`` with a class named "person".
        revision, detector_revision: hub revisions to load (and fingerprint) of the pose model and the detector.
        score_threshold: a person is kept when its detection score exceeds this (transformers' post-process keeps
            ``score > threshold``); 0.5 keeps fewer false people than the 0.3 of transformers' ViTPose example.
        keypoint_threshold: a joint is visible (v = 2) when its heatmap maximum reaches this (and is positive), else
            v = 0 and x = y = 0; 0.3 is mmpose's ``kpt_thr`` default.
        max_persons: at most this many people per image, the highest detection scores first.
        device, dtype, batch_size: see ``Teacher``; the call's crops run in chunks of ``CROPS_PER_IMAGE x batch_size``.
    """

    name = "vitpose"
    spec = TeacherSpec(
        task="pose",
        description="ViTPose-B simple (transformers VitPoseForPoseEstimation, usyd-community/vitpose-base-simple) on "
                    "the people of an RT-DETR R50 detector (RTDetrForObjectDetection, PekingU/rtdetr_r50vd_coco_o365)",
        input_size="detector: 640x640 (aspect not kept), bilinear, / 255; pose: each person box widened to 3:4, "
                   "padded 1.25x, warped to 256x192 (bilinear), ImageNet mean/std",
        outputs={"persons": "list of {keypoints float32 (17, 3) x, y, v (COCO order, v 2 or 0); bbox [x, y, w, h]; "
                            "score (detection); keypoint_scores (17 floats)}, by descending score",
                 "crowd": "[] (a model finds no crowd regions)"},
        units="pixels of the original image",
    )

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, detector: str = DEFAULT_DETECTOR,
                 revision: str | None = None, detector_revision: str | None = None, score_threshold: float = 0.5,
                 keypoint_threshold: float = 0.3, max_persons: int = 20, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 8) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        self.score_threshold = unit_interval("score_threshold", score_threshold)
        self.keypoint_threshold = unit_interval("keypoint_threshold", keypoint_threshold)
        self.max_persons = integer("max_persons", max_persons, 1)
        from transformers import (RTDetrForObjectDetection, RTDetrImageProcessor, VitPoseForPoseEstimation,
                                  VitPoseImageProcessor)

        self.checkpoint = self.resolve_checkpoint(checkpoint)
        self.pose_checkpoint, self.detector = _bundle(self.name, self.checkpoint, expand_home(detector))
        self.model = from_pretrained_strict(VitPoseForPoseEstimation, self.name, self.pose_checkpoint, revision)
        if self.model.config.num_labels != NUM_JOINTS:
            raise TeacherError(f"teacher {self.name!r}: checkpoint {self.pose_checkpoint!r} predicts "
                               f"{self.model.config.num_labels} joints, not the {NUM_JOINTS} COCO joints")
        _check_joint_order(self.name, self.pose_checkpoint, self.model.config.id2label)
        self.detector_model = from_pretrained_strict(RTDetrForObjectDetection, self.name, self.detector,
                                                     detector_revision)
        self.person = _person_label(self.name, self.detector, self.detector_model.config.id2label)
        self.pose_processor = _processor(VitPoseImageProcessor, self.name, self.pose_checkpoint, POSE_PREPROCESS)
        self.detector_processor = _processor(RTDetrImageProcessor, self.name, self.detector, DETECTOR_PREPROCESS)
        self.crop = crop = (int(self.pose_processor.size["height"]), int(self.pose_processor.size["width"]))
        takes = tuple(np.broadcast_to(self.model.config.backbone_config.image_size, 2).tolist())
        if crop != takes:
            raise TeacherError(f"teacher {self.name!r}: checkpoint {self.pose_checkpoint!r} takes {takes} crops but "
                               f"its image processor makes {crop}")
        self.experts = getattr(self.model.config.backbone_config, "num_experts", 1) > 1  # ViTPose++: COCO is 0
        for model in (self.model, self.detector_model):
            model.to(device=device, dtype=torch_dtype(dtype)).eval()
        size = self.detector_processor.size
        self._identity = {"pose": checkpoint_identity(self.pose_checkpoint, hub_revision(self.model, revision)),
                          "detector": checkpoint_identity(self.detector,
                                                          hub_revision(self.detector_model, detector_revision)),
                          "crop": list(crop), "detector_size": [size["height"], size["width"]],
                          "score_threshold": self.score_threshold, "keypoint_threshold": self.keypoint_threshold,
                          "max_persons": self.max_persons}

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        """The call's images through the detector as one batch, then all their people's crops through the pose
        model; each image is resized and each crop warped on its own, so an image's output does not depend on the
        others of the call."""
        images = []
        for inp in inputs:
            check_image(inp.image)  # read-only arrays (Ray's object store) are copied: torch wants writable ones
            images.append(inp.image if inp.image.flags.writeable else inp.image.copy())
        detections = self._detect(images)
        poses = self._pose(images, [boxes for boxes, _ in detections])
        out = []
        for image, (boxes, scores), (joints, joint_scores) in zip(images, detections, poses):
            h, w = image.shape[:2]
            persons = []
            for box, score, xy, conf in zip(boxes, scores, joints, joint_scores):
                # joints in pixel-centre coordinates (the warp's), as COCO's pixel indices
                inside, xy = joints_in_image(xy, h, w)
                seen = inside & (conf >= self.keypoint_threshold) & (conf > 0)  # no positive heatmap value: no place
                keypoints = np.zeros((NUM_JOINTS, 3), np.float32)
                keypoints[seen] = np.c_[xy[seen], np.full(seen.sum(), 2.0)]
                persons.append({"keypoints": keypoints, "bbox": [float(v) for v in box], "score": float(score),
                                "keypoint_scores": [float(s) for s in conf]})
            out.append({"persons": persons, "crowd": []})
        return out

    def _detect(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image the kept people: boxes (N, 4) [x, y, w, h] clipped to the image, scores (N,), by descending
        score. Boxes of no area once clipped are no people."""
        import torch

        pixels = self.detector_processor(images=images, return_tensors="pt", input_data_format="channels_last")
        with torch.inference_mode():
            out = self.detector_model(pixel_values=pixels["pixel_values"].to(self.device, torch_dtype(self.dtype)))
        found = self.detector_processor.post_process_object_detection(
            SimpleNamespace(logits=out.logits.float(), pred_boxes=out.pred_boxes.float()),
            threshold=self.score_threshold, target_sizes=[im.shape[:2] for im in images],
            use_focal_loss=self.detector_model.config.use_focal_loss)
        people = []
        for image, res in zip(images, found):
            h, w = image.shape[:2]
            keep = (res["labels"] == self.person).cpu().numpy()
            xyxy = np.clip(res["boxes"].cpu().numpy()[keep], 0, [w, h, w, h])  # (N, 4)
            boxes = np.c_[xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]].astype(np.float32)
            scores = res["scores"].cpu().numpy()[keep]
            sized = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
            best = np.argsort(-scores[sized], kind="stable")[:self.max_persons]  # (not sorted without focal loss)
            people.append((boxes[sized][best], scores[sized][best]))
        return people

    def _pose(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image the joints (N, 17, 2) in original pixels and their heatmap maxima (N, 17) of its boxes."""
        import torch

        out = [(np.zeros((0, NUM_JOINTS, 2), np.float32), np.zeros((0, NUM_JOINTS), np.float32)) for _ in images]
        idx = [i for i, b in enumerate(boxes) if len(b)]
        if not idx:
            return out
        with torch.inference_mode():
            crops = torch.cat([self._crops(images[i], boxes[i]) for i in idx])  # (n, 3, 256, 192)
            chunk, heatmaps = CROPS_PER_IMAGE * self.batch_size, []
            for s in range(0, len(crops), chunk):
                x = crops[s:s + chunk].to(torch_dtype(self.dtype))
                extra = {"dataset_index": torch.zeros(len(x), dtype=torch.long, device=self.device)} \
                    if self.experts else {}
                heatmaps.append(self.model(pixel_values=x, **extra).heatmaps.float().cpu())  # (n, 17, 64, 48)
        found = self.pose_processor.post_process_pose_estimation(SimpleNamespace(heatmaps=torch.cat(heatmaps)),
                                                                 boxes=[boxes[i] for i in idx])
        for i, people in zip(idx, found):
            out[i] = (np.stack([p["keypoints"].numpy() for p in people]).astype(np.float32),
                      np.stack([p["scores"].numpy() for p in people]).astype(np.float32))
        return out

    def _crops(self, image: np.ndarray, boxes: np.ndarray) -> Any:
        """The normalised (N, 3, h, w) crops of one image's [x, y, w, h] boxes, as ``VitPoseImageProcessor`` warps
        them (its ``box_to_center_and_scale`` and ``get_warp_matrix`` at rotation 0: crop pixel u samples the image
        at x = cx - sw / 2 + u sw / (w - 1); bilinear; 0 where x or y falls outside the image's pixel centres) but
        kept in floats: the processor rounds the crop to uint8, which turns a detector box moving by 1e-5 pixel (a
        different batch) into a whole grey level here and there, and the joints by a tenth of a pixel."""
        import torch
        import torch.nn.functional as F
        from transformers.models.vitpose.image_processing_vitpose import box_to_center_and_scale

        h, w = self.crop
        height, width = image.shape[:2]
        geometry = [box_to_center_and_scale(box, image_width=w, image_height=h) for box in boxes]
        center = torch.tensor(np.array([c for c, _ in geometry]), device=self.device)  # (N, 2) x, y
        size = torch.tensor(np.array([s for _, s in geometry]) * 200.0, device=self.device)  # (N, 2) padded box
        start = center - size / 2
        xs = start[:, :1] + torch.arange(w, device=self.device) * size[:, :1] / (w - 1)  # (N, w)
        ys = start[:, 1:] + torch.arange(h, device=self.device) * size[:, 1:] / (h - 1)  # (N, h)
        grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), -1)  # (N, h, w, 2) pixels
        extent = torch.tensor([width - 1, height - 1], device=self.device)
        inside = ((grid >= 0) & (grid <= extent)).all(-1)  # (N, h, w)
        grid = (2 * grid + 1) / (extent + 1) - 1  # pixel centres in grid_sample's align_corners=False units
        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
        crops = F.grid_sample(x, grid.reshape(1, -1, w, 2), mode="bilinear", align_corners=False)  # (1, 3, N h, w)
        crops = crops.view(3, len(boxes), h, w).transpose(0, 1) * inside[:, None]
        p = self.pose_processor
        scale = p.rescale_factor if p.do_rescale else 1.0
        mean, std = (p.image_mean, p.image_std) if p.do_normalize else ((0.0,) * 3, (1.0,) * 3)
        mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        return (crops * scale - mean) / std


def _bundle(teacher: str, checkpoint: str, detector: str) -> tuple[str, str]:
    """The (pose, detector) checkpoints: a local folder without config.json but with ``pose/`` or ``detector/`` is
    a bundle of both; its ``detector/`` serves unless ``detector`` names another than the default."""
    if not (isinstance(checkpoint, str) and os.path.isdir(checkpoint)) \
            or os.path.isfile(os.path.join(checkpoint, "config.json")):
        return checkpoint, detector
    pose, det = os.path.join(checkpoint, "pose"), os.path.join(checkpoint, "detector")
    if not (os.path.isdir(pose) or os.path.isdir(det)):
        return checkpoint, detector  # an ordinary folder: loading says what it lacks
    if not os.path.isdir(pose):
        raise TeacherError(f"teacher {teacher!r}: bundle {checkpoint!r} has no pose/ folder")
    if detector != DEFAULT_DETECTOR:
        return pose, detector
    if not os.path.isdir(det):
        raise TeacherError(f"teacher {teacher!r}: bundle {checkpoint!r} has no detector/ folder; add it or pass "
                           "detector=")
    return pose, det


def _person_label(teacher: str, detector: str, id2label: dict[int, str] | None) -> int:
    """The detector's class id named "person" (any case); TeacherError when it has none."""
    ids = sorted(int(i) for i, name in (id2label or {}).items() if str(name).strip().lower() == "person")
    if not ids:
        names = ", ".join(str(n) for _, n in sorted((id2label or {}).items())[:5])
        raise TeacherError(f"teacher {teacher!r}: detector {detector!r} has no class named 'person' "
                           f"(its classes: {names or 'none'}{', ...' if len(id2label or {}) > 5 else ''})")
    return ids[0]


def _joint_key(name: str) -> str:
    """A joint name reduced for comparison: ``L_Eye``, ``left_eye`` and ``LeftEye`` -> ``lefteye``."""
    key = "".join(ch for ch in str(name).lower() if ch.isalnum() or ch == "_")
    for short, long in (("l_", "left_"), ("r_", "right_")):
        if key.startswith(short):
            key = long + key[len(short):]
    return key.replace("_", "")


def _check_joint_order(teacher: str, checkpoint: str, id2label: dict[int, str] | None) -> None:
    """TeacherError when the model names its 17 joints otherwise than COCO's order (a Human3.6M or MPII head would
    put its joints on the wrong channels of the store); default names (``LABEL_3``) say nothing and pass."""
    names = {int(i): str(n) for i, n in (id2label or {}).items()}
    if not names or all(n.startswith("LABEL_") for n in names.values()):
        return
    differ = [j for j, joint in enumerate(JOINTS) if _joint_key(names.get(j, "")) != _joint_key(joint)]
    if differ:
        j = differ[0]
        raise TeacherError(f"teacher {teacher!r}: checkpoint {checkpoint!r} names its joints otherwise than COCO's "
                           f"order ({len(differ)} of {NUM_JOINTS} differ; joint {j} is {names.get(j)!r}, not "
                           f"{JOINTS[j]!r})")


def _processor(cls: Any, teacher: str, checkpoint: str, defaults: dict[str, Any]) -> Any:
    """``cls`` from a local checkpoint folder's ``preprocessor_config.json``, else with ``defaults``: never a
    download."""
    if is_local(checkpoint) and os.path.isfile(os.path.join(checkpoint, "preprocessor_config.json")):
        with quiet_transformers():
            return load_or_fail(teacher, checkpoint, lambda: cls.from_pretrained(checkpoint, local_files_only=True,
                                                                                 trust_remote_code=False))
    return cls(**defaults)


def save_random_checkpoint(out_dir: str, backbone: Any, detector: dict[str, Any], seed: int = 0,
                           person_bias: float = 0.0) -> str:
    """Save a bundle with random weights: a ViTPose on ``backbone`` (a ``VitPoseBackboneConfig``) naming COCO's 17
    joints (``pose/``) and an RT-DETR of the ``detector`` config fields with the COCO-80 classes, person first
    (``detector/``), each with ``save_pretrained`` and its image processor config; ``person_bias`` is added to the
    person logit of the detector's class heads. Returns the bundle folder, a valid ``checkpoint=``."""
    import torch
    from transformers import (RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, VitPoseConfig,
                              VitPoseForPoseEstimation, VitPoseImageProcessor)

    pose = os.path.join(out_dir, "pose")
    names = dict(enumerate(JOINTS))  # COCO's order, named as the published checkpoints name it
    torch.manual_seed(seed)
    config = VitPoseConfig(backbone_config=backbone, num_labels=NUM_JOINTS, id2label=names,
                           label2id={v: k for k, v in names.items()})
    VitPoseForPoseEstimation(config).eval().save_pretrained(pose)
    VitPoseImageProcessor().save_pretrained(pose)
    names = dict(enumerate(c.name for c in PANOPTIC_CLASSES if c.isthing))  # COCO-80, person first
    config = RTDetrConfig(**detector, id2label=names, label2id={v: k for k, v in names.items()})
    torch.manual_seed(seed)
    model = RTDetrForObjectDetection(config).eval()
    if person_bias:
        with torch.no_grad():
            for layer in model.model.decoder.class_embed:
                layer.bias[0] += person_bias
    path = os.path.join(out_dir, "detector")
    model.save_pretrained(path)
    RTDetrImageProcessor().save_pretrained(path)
    return str(out_dir)


def save_tiny_checkpoint(out_dir: str, seed: int = 0) -> str:
    """Save a bundle of a tiny random ViTPose and RT-DETR (``save_random_checkpoint``); returns the bundle folder."""
    from transformers import RTDetrResNetConfig, VitPoseBackboneConfig

    backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                     image_size=[256, 192], patch_size=[16, 16], out_indices=[2])
    resnet = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                layer_type="basic", out_indices=[2, 3, 4])
    detector = dict(backbone_config=resnet, encoder_in_channels=[16, 32, 64], encoder_hidden_dim=16,
                    encoder_ffn_dim=32, encoder_attention_heads=2, d_model=16, decoder_in_channels=[16] * 3,
                    decoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2, num_queries=30, num_denoising=0,
                    initializer_range=0.3)  # the default 0.01 makes every query alike
    # people likelier than the other classes, so that most test images have some
    return save_random_checkpoint(out_dir, backbone, detector, seed, person_bias=1.0)
