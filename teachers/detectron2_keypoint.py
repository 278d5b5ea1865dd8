"""Pose teacher: detectron2's Keypoint R-CNN (model-zoo config), batched, as COCO-17 persons in original pixels.

Checkpoints and configs load safely through ``teachers.detectron2_common`` (shared with the panoptic teacher).
"""

from __future__ import annotations

from typing import Any, Sequence

from teachers.base import TeacherError, TeacherInput, TeacherSpec, joints_in_image
from teachers.detectron2_common import Detectron2Teacher, save_random
from teachers.loading import integer, non_negative, unit_interval

DEFAULT_CONFIG = "COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x.yaml"
#: The model-zoo weights of DEFAULT_CONFIG (downloaded and cached by detectron2's PathManager).
DEFAULT_CHECKPOINT = ("https://dl.fbaipublicfiles.com/detectron2/COCO-Keypoints/"
                      "keypoint_rcnn_R_101_FPN_3x/138363331/model_final_997cc7.pkl")
#: detectron2 places a joint at a pixel's centre (index + 0.5); COCO annotations, the ground-truth teacher and
#: detectron2's own COCO export use the pixel index: subtracted from x and y, as that export does.
PIXEL_CENTRE = 0.5


class KeypointRCNNTeacher(Detectron2Teacher):
    """Detectron2 Keypoint R-CNN: each image's persons, best first, with 17 COCO joints and their box.

    Args:
        checkpoint, config_file, opts, min_size, max_size, device, dtype, batch_size: see ``Detectron2Teacher``.
        score_threshold: persons whose detection score is above it are kept. It is set as the model's
            ``ROI_HEADS.SCORE_THRESH_TEST`` (whatever the config says): with one class the NMS and the top
            ``TEST.DETECTIONS_PER_IMAGE`` then keep the same persons as a filter after the model would, and the
            keypoint head runs on those alone.
        keypoint_threshold: a joint is written (v = 2) where its score reaches it, else v = 0 and x = y = 0 (0.05,
            the threshold of detectron2's Visualizer). detectron2's joint score is the heatmap's softmax at its peak,
            but read off the bicubic upsampling while normalised over the 56x56 heatmap, so it can pass 1: any
            number >= 0 is taken.
        max_persons: at most this many persons per image, the best scored.
    """

    name = "detectron2-keypoint-rcnn"
    spec = TeacherSpec(
        task="pose",
        description="Detectron2 Keypoint R-CNN (model zoo COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x)",
        input_size="detectron2's own test resize: shorter side -> min_size, longer at most max_size (the config's "
                   "800 / 1333), padded to a multiple of 32, BGR, the config's pixel mean/std",
        outputs={"persons": "list of {keypoints (17, 3) float32 x, y, v (COCO-17, v 2 or 0); bbox [x, y, w, h]; "
                            "score (detection, 0..1); keypoint_scores (17 floats >= 0)}, best first",
                 "crowd": "[] (a model finds no crowd regions)"},
        units="original pixels (COCO pixel indices)",
        extra="detectron2",
    )

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, config_file: str = DEFAULT_CONFIG,
                 opts: Sequence[str] = (), min_size: int | None = None, max_size: int | None = None,
                 score_threshold: float = 0.5, keypoint_threshold: float = 0.05, max_persons: int = 20,
                 device: str = "cpu", dtype: str = "float32", batch_size: int = 4) -> None:
        self.score_threshold = unit_interval("score_threshold", score_threshold)
        self.keypoint_threshold = non_negative("keypoint_threshold", keypoint_threshold)
        self.max_persons = integer("max_persons", max_persons, 1)
        super().__init__(checkpoint=checkpoint, config_file=config_file,
                         opts=(*opts, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", repr(self.score_threshold)),
                         min_size=min_size, max_size=max_size, device=device, dtype=dtype, batch_size=batch_size)
        self._identity.update(score_threshold=self.score_threshold, keypoint_threshold=self.keypoint_threshold,
                              max_persons=self.max_persons, pixel_centre=PIXEL_CENTRE)

    def check_config(self, cfg: Any, config: str) -> None:
        m = cfg.MODEL
        has = (m.META_ARCHITECTURE, m.KEYPOINT_ON, m.ROI_HEADS.NUM_CLASSES, m.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS)
        if has != ("GeneralizedRCNN", True, 1, 17):
            raise TeacherError(f"teacher {self.name!r}: config {config!r} is not a COCO person keypoint model (needs a "
                               "GeneralizedRCNN with KEYPOINT_ON, 1 class and 17 keypoints; has a {}, KEYPOINT_ON {}, "
                               "{} classes and {} keypoints)".format(*has))

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        """As detectron2's own inference (``DefaultPredictor`` and the model's ``forward``) on the input of
        ``batches``; the steps run here one by one so that the keypoint heatmaps are decoded in float32 (under half
        precision detectron2 would write the coordinates in float16, 0.5 px steps at 1000 px)."""
        import torch
        from detectron2.modeling.postprocessing import detector_postprocess
        from detectron2.modeling.roi_heads.keypoint_head import keypoint_rcnn_inference

        m, heads = self.model, self.model.roi_heads
        outs: list[dict[str, Any]] = [{}] * len(inputs)
        with torch.inference_mode(), self.autocast():
            for indices, images in self.batches(inputs):
                features = m.backbone(images.tensor)
                proposals, _ = m.proposal_generator(images, features, None)
                # box head: scores above SCORE_THRESH_TEST, NMS, the best DETECTIONS_PER_IMAGE, in descending score
                detections = heads._forward_box(features, proposals)
                pooled = heads.keypoint_pooler([features[f] for f in heads.keypoint_in_features],
                                               [d.pred_boxes for d in detections])
                keypoint_rcnn_inference(heads.keypoint_head.layers(pooled).float(), detections)  # (R, 17, 56, 56)
                for i, det in zip(indices, detections):
                    h, w = inputs[i].image.shape[:2]
                    outs[i] = self._persons(detector_postprocess(det, h, w)[:self.max_persons], h, w)
        return outs

    def _persons(self, det: Any, h: int, w: int) -> dict[str, Any]:
        """detectron2's instances at the original size as the pose contract's persons (joints kept in the image)."""
        import numpy as np

        boxes = det.pred_boxes.tensor.float().cpu().numpy()  # (N, 4) x0, y0, x1, y1, clipped
        found = det.pred_keypoints.float().cpu().numpy()  # (N, 17, 3) x, y, score
        scores = found[:, :, 2]  # (N, 17)
        inside, xy = joints_in_image(found[:, :, :2] - PIXEL_CENTRE, h, w)
        seen = (inside & (scores >= self.keypoint_threshold))[:, :, None]
        keypoints = np.concatenate([np.where(seen, xy, 0), 2 * seen], axis=2).astype(np.float32)
        return {"persons": [{"keypoints": k, "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                             "score": s, "keypoint_scores": p.tolist()}
                            for k, (x0, y0, x1, y1), s, p in zip(keypoints, boxes, det.scores.tolist(), scores)],
                "crowd": []}


def save_tiny_checkpoint(out_dir: str, seed: int = 0) -> str:
    """Save a tiny random Keypoint R-CNN (the model-zoo config with ResNet-18 and narrow heads) as a folder.

    Writes ``config.yaml`` and ``model_final.pth`` (a ``{"model": state_dict}``, as detectron2 saves);
    returns the folder, a valid ``checkpoint=``.
    """
    return save_random(out_dir, DEFAULT_CONFIG, [
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(16, 16)",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
        "TEST.DETECTIONS_PER_IMAGE", "8", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"], seed)
