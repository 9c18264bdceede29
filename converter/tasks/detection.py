"""The detection task: SSD detectors exported with the TFLite_Detection_PostProcess op.

A Keras detector is recognised by its sidecar (`model.keras` -> `model.detector.json`, see
converter/tasks/detector_config.py), which carries the input size and normalization, class names, anchors
and NMS settings. Accuracy is COCO mAP@0.5 of the converted model against the float model on
validation images with ground-truth boxes; the drop is in fraction units (0.01 = 1 mAP point).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agent.bundle.manifest import ColorOrder, Decoder, OutputRole
from agent.geometry.letterbox import resize_image
from agent.runtime import LoadedModel, TensorInfo
from converter.data import Dataset, Normalization
from converter.evaluation import Detections, Matches, map50_interval, map_of, match
from converter.tasks import ssd
from converter.tasks.base import AccuracyReport, FloatFn, Task
from converter.tasks.detection_folder import DatasetError, read_folder
from converter.tasks.detector_config import DetectorConfig, SidecarError, has_sidecar, read_sidecar
from firmware_profiles import IODtype

logger = logging.getLogger(__name__)

_BATCH = 16


@dataclass(frozen=True)
class BoxLabels:
    """Ground truth of a Dataset: per image, (n, 4) corner boxes in [0, 1] and class indices."""

    boxes: list[np.ndarray]
    classes: list[np.ndarray]


class DetectionTask(Task):
    name: ClassVar[str] = "detection"
    decoder: ClassVar[Decoder] = Decoder.SSD_POSTPROCESS

    def __init__(self, cfg: DetectorConfig | None = None, source: Any = None) -> None:
        self._cfg = cfg
        self._doc: dict[str, Any] = {}
        self.source = source  # a converter.loading.SourceModel; its path locates the sidecar

    @property
    def cfg(self) -> DetectorConfig:
        if self._cfg is None:
            path = getattr(self.source, "source", None)
            if path is None:
                raise SidecarError(
                    "the detection task needs the detector sidecar (MODEL.detector.json next to the .keras file)"
                )
            self._cfg, self._doc = read_sidecar(Path(path))
        return self._cfg

    def protected_layers(self, model: Any) -> list[str]:
        """The heads' 1x1 output convolutions: the anchor count depends on their width."""
        return [
            layer.name
            for layer in model.layers
            if re.fullmatch(r"head\d+_(box|cls)_out", layer.name)
        ]

    @staticmethod
    def applies_to(model_path: str | Path) -> bool:
        """True when the model file has a detector sidecar next to it."""
        return has_sidecar(Path(model_path))

    @classmethod
    def from_model_path(cls, model_path: str | Path) -> DetectionTask:
        task = cls()
        task._cfg, task._doc = read_sidecar(Path(model_path))
        return task

    # What the pipeline takes from the sidecar for the manifest: labels and the input normalization.
    @property
    def labels(self) -> list[str]:
        return list(self.cfg.classes)

    def normalization(self) -> Normalization:
        return Normalization([self.cfg.mean], [self.cfg.std], ColorOrder(self.cfg.color_order))

    def export_saved_model(self, model: Any, out_dir: Path) -> None:
        ssd.export_saved_model(model, self.cfg, Path(out_dir))

    def output_dtype(self, profile_dtype: IODtype) -> IODtype:
        return IODtype.FLOAT32  # the post-processing op's outputs are float32

    def configure_converter(self, converter: Any) -> None:
        ssd.configure_converter(converter)

    def output_roles(self, outputs: Sequence[TensorInfo]) -> list[OutputRole]:
        return ssd.output_roles(outputs)

    def output_order(self, model_bytes: bytes) -> list[int]:
        """Boxes, classes, scores, count: the order tools that read outputs by position expect."""
        roles = ssd.roles_from_op(model_bytes)
        return [roles[r] for r in ssd.ROLES]

    def _matches(
        self, float_fn: FloatFn, quant: LoadedModel, data: Dataset
    ) -> tuple[Matches, Matches]:
        """Float's and the converted model's detections matched against the ground truth."""
        labels = data.labels
        if not isinstance(labels, BoxLabels):
            raise DatasetError(
                "detection accuracy needs ground-truth boxes: give the validation data as a COCO-style "
                "folder (annotations.json + images, e.g. from `edgegap zoo make-dataset --split val`)"
            )
        float_dets: list[Detections] = []
        for i in range(0, len(data.x), _BATCH):
            float_dets += self._float_detections(float_fn(data.x[i : i + _BATCH]))
        roles = dict(
            zip(self.output_roles(quant.outputs), (o.index for o in quant.outputs), strict=True)
        )
        quant_dets = ssd.run_postprocessed(quant, data.x, roles)
        fm = match(labels.boxes, labels.classes, float_dets, self.cfg.num_classes)
        return fm, match(labels.boxes, labels.classes, quant_dets, self.cfg.num_classes)

    def divergence(self, float_fn: FloatFn, quant: LoadedModel, data: Dataset) -> float:
        """The mAP@0.5 drop, without accuracy()'s bootstrap interval: the float fallback asks
        for it once for every layer it measures."""
        fm, qm = self._matches(float_fn, quant, data)
        return map_of(fm).map50 - map_of(qm).map50

    def accuracy(self, float_fn: FloatFn, quant: LoadedModel, data: Dataset) -> AccuracyReport:
        fm, qm = self._matches(float_fn, quant, data)
        f, q = map_of(fm), map_of(qm)
        return AccuracyReport(
            metric="map50",
            float_value=f.map50,
            quant_value=q.map50,
            drop=f.map50 - q.map50,
            detail={
                "map50_95_float": f.map50_95,
                "map50_95_quant": q.map50_95,
                "images": len(data.x),
                "samples": len(data.x),
                "ci95": map50_interval(fm, qm),
                "source": data.source,
            },  # fmt: skip
        )

    def _float_detections(
        self, outputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]
    ) -> list[Detections]:
        """Float outputs are either the Keras model's raw (box encodings, class logits), decoded
        as the op decodes them, or the post-processed outputs (a mapping by signature key, or a
        sequence in the op's order: boxes, classes, scores, count)."""
        if isinstance(outputs, Mapping):
            outputs = [np.asarray(outputs[k]) for k in ssd.OUTPUT_KEYS]
        outs = [np.asarray(o) for o in outputs]
        a, c = self.cfg.anchors.count, self.cfg.num_classes
        if len(outs) == 2 and outs[0].shape[1:] == (a, 4) and outs[1].shape[1:] == (a, c):
            return ssd.detections_from_raw(outs[0], outs[1], self.cfg)
        if len(outs) == 4 and outs[0].ndim == 3 and outs[0].shape[-1] == 4:
            boxes, classes, scores, count = outs
            count = count.reshape(len(boxes), -1)[:, 0]
            return [
                Detections(b[: int(n)], s[: int(n)], np.rint(k[: int(n)]).astype(np.int32))
                for b, k, s, n in zip(boxes, classes, scores, count, strict=True)
            ]
        raise ValueError(
            f"float outputs with shapes {[o.shape for o in outs]} are neither raw SSD nor post-processed"
        )

    def manifest_extra(self) -> dict[str, Any]:
        doc = self.cfg.to_dict()
        return {
            "postprocess_op": ssd.POSTPROCESS_OP,
            "output_roles": [r.value for r in ssd.ROLES],
            "num_classes": self.cfg.num_classes,
            "background_class": False,
            "anchors": doc["anchors"],
            "num_anchors": doc["num_anchors"],
            "box_coder": doc["box_coder"],
            "nms": doc["nms"],
        }

    def validation_data(self, path: str | Path | None, limit: int = 1000) -> Dataset:
        """Ground-truth data for the accuracy gate: a COCO-style folder, or, for a detector trained
        on the generated dataset (the sidecar says so), its validation split."""
        if path is not None:
            return self.dataset(Path(path), count=limit)
        from converter.zoo.detection_data import DATASET_ID  # the reference detector's own data

        self.cfg  # noqa: B018 - reads the sidecar (and its training record) if not read yet
        training = self._doc.get("training", {})
        if training.get("dataset") != DATASET_ID:
            raise DatasetError(
                "detection accuracy needs ground-truth boxes: pass --validation a COCO-style folder "
                "(annotations.json + images)"
            )
        seed = int(training.get("seed", 0))
        return self.dataset(None, split="val", count=min(limit, 300), seed=seed)

    def dataset(
        self, data_dir: Path | None = None, split: str = "val", count: int = 200, seed: int = 0
    ) -> Dataset:
        """Validation (or calibration) data with ground truth: a COCO-style folder, or images of
        the generated dataset's split when no folder is given."""
        size = (self.cfg.input_size, self.cfg.input_size)
        if data_dir is None:
            from converter.zoo.detection_data import generate  # the reference detector's own data

            samples = list(generate(split, count, seed=seed, size=self.cfg.input_size))
            images = [s.image for s in samples]
            boxes, classes = [s.boxes for s in samples], [s.classes for s in samples]
            source = f"generated {split} split, seed {seed}, {count} images"
        else:
            folder = read_folder(Path(data_dir))
            index = class_index(folder.labels, self.labels)
            n = min(count, len(folder)) if count > 0 else len(folder)
            images = [resize_image(folder.image(i), size)[0] for i in range(n)]
            boxes = folder.boxes[:n]
            classes = [index[c] for c in folder.classes[:n]]
            source = str(data_dir)
        x = (np.stack(images).astype(np.float32) - self.cfg.mean) / self.cfg.std
        return Dataset(x=x, labels=BoxLabels(list(boxes), list(classes)), source=source)


def class_index(data_labels: Sequence[str], model_labels: Sequence[str]) -> np.ndarray:
    """Map a dataset's class indices to the model's, by name."""
    missing = [n for n in data_labels if n not in model_labels]
    if missing:
        raise DatasetError(
            f"the data has classes the model does not know: {', '.join(missing)} (model: {', '.join(model_labels)})"
        )
    return np.array([list(model_labels).index(n) for n in data_labels], np.int32)
