"""Panoptic teacher: detectron2's Panoptic FPN (model-zoo config), batched, as contiguous 0..132 class maps.

Checkpoints and configs load safely through ``teachers.detectron2_common`` (shared with the keypoint teacher).
"""

from __future__ import annotations

from typing import Any, Sequence

from teachers.base import TeacherError, TeacherInput, TeacherSpec
from teachers.detectron2_common import FOLDER_CONFIG, FOLDER_WEIGHTS, Detectron2Teacher, read_weights, save_random
from teachers.panoptic_ids import PANOPTIC_OUTPUTS, contiguous_from_detectron2

__all__ = ["DEFAULT_CHECKPOINT", "DEFAULT_CONFIG", "FOLDER_CONFIG", "FOLDER_WEIGHTS", "PanopticFPNTeacher",
           "read_weights", "save_tiny_checkpoint"]

DEFAULT_CONFIG = "COCO-PanopticSegmentation/panoptic_fpn_R_101_3x.yaml"
#: The model-zoo weights of DEFAULT_CONFIG (downloaded and cached by detectron2's PathManager).
DEFAULT_CHECKPOINT = ("https://dl.fbaipublicfiles.com/detectron2/COCO-PanopticSegmentation/"
                      "panoptic_fpn_R_101_3x/139514519/model_final_cafdb1.pkl")


class PanopticFPNTeacher(Detectron2Teacher):
    """Detectron2 Panoptic FPN; each image's panoptic segments painted with their contiguous class.

    Args: see ``Detectron2Teacher`` (checkpoint, config_file, opts, min_size, max_size, device, dtype, batch_size).
    """

    name = "detectron2-panoptic-fpn"
    spec = TeacherSpec(
        task="panoptic",
        description="Detectron2 Panoptic FPN (model zoo COCO-PanopticSegmentation/panoptic_fpn_R_101_3x)",
        input_size="detectron2's own test resize: shorter side -> min_size, longer at most max_size (the config's "
                   "800 / 1333), padded to a multiple of 32, BGR, the config's pixel mean/std",
        outputs=PANOPTIC_OUTPUTS,
        units="class id",
        extra="detectron2",
    )

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, config_file: str = DEFAULT_CONFIG,
                 opts: Sequence[str] = (), min_size: int | None = None, max_size: int | None = None,
                 device: str = "cpu", dtype: str = "float32", batch_size: int = 4) -> None:
        super().__init__(checkpoint=checkpoint, config_file=config_file, opts=opts, min_size=min_size,
                         max_size=max_size, device=device, dtype=dtype, batch_size=batch_size)

    def check_config(self, cfg: Any, config: str) -> None:
        if (cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES) != (80, 54):
            raise TeacherError(f"teacher {self.name!r}: config {config!r} is not a COCO panoptic model (needs 80 "
                               f"thing and 54 stuff classes, has {cfg.MODEL.ROI_HEADS.NUM_CLASSES} and "
                               f"{cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES})")

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        """As detectron2's own inference (``DefaultPredictor`` and the model's ``forward``) on the input of
        ``batches``; the steps of the model's forward run here one by one so that half precision is cast back
        before the post-processing."""
        import torch
        from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
        from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess

        m = self.model
        outs: list[dict[str, Any]] = [{}] * len(inputs)
        with torch.inference_mode(), self.autocast():
            for indices, images in self.batches(inputs):
                features = m.backbone(images.tensor)
                sem_segs, _ = m.sem_seg_head(features, None)
                proposals, _ = m.proposal_generator(images, features, None)
                detections, _ = m.roi_heads(images, features, proposals, None)
                for i, shape, sem, det in zip(indices, images.image_sizes, sem_segs, detections):
                    h, w = inputs[i].image.shape[:2]
                    sem = sem_seg_postprocess(sem.float(), shape, h, w)
                    det = detector_postprocess(det, h, w)
                    seg, info = combine_semantic_and_instance_outputs(
                        det, sem.argmax(dim=0), m.combine_overlap_thresh, m.combine_stuff_area_thresh,
                        m.combine_instances_score_thresh)
                    outs[i] = {"classes": contiguous_from_detectron2(seg, info)}
        return outs


def save_tiny_checkpoint(out_dir: str, seed: int = 0) -> str:
    """Save a tiny random Panoptic FPN (the model-zoo config with ResNet-18 and narrow heads) as a folder.

    Writes ``config.yaml`` and ``model_final.pth`` (a ``{"model": state_dict}``, as detectron2 saves);
    returns the folder, a valid ``checkpoint=``.
    """
    return save_random(out_dir, DEFAULT_CONFIG, [
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
        # few detections, all of them painted (random scores never pass the 0.5 default)
        "TEST.DETECTIONS_PER_IMAGE", "8", "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"], seed)
