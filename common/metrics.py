"""Metrics with names shared by every recipe (lower_snake_case): classification, COCO
detection (pycocotools) and semantic segmentation."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm


def classification(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """test_accuracy, balanced_accuracy and macro_f1 of integer predictions."""
    labels = list(range(num_classes))
    with warnings.catch_warnings():  # predictions of classes absent from the test set are
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")  # errors
        balanced = skm.balanced_accuracy_score(y_true, y_pred)
    return {
        "test_accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro",
                                       zero_division=0)),
    }


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return skm.recall_score(y_true, y_pred, labels=list(range(num_classes)), average=None,
                            zero_division=0)


def coco_detection(gt: dict, detections: list[dict],
                   ignore: set[int] | None = None, iou_type: str = "bbox") -> dict:
    """COCO box (or mask) metrics (pycocotools COCOeval) of `detections` on `gt`.

    iou_type "bbox" matches boxes; "segm" matches masks: then every detection also carries
    "segmentation" (a COCO RLE of the image's size) and every annotation of `gt` one too.

    gt: a COCO dataset dict (as `common.export_coco.to_coco` makes). detections: one dict per
    box, {"image_id", "category_id", "bbox": [x, y, width, height] pixels, "score"}; at most
    100 per image count (COCO's maxDets). ignore: annotation ids that count neither as found
    nor as missed (they become crowd regions, so detections on them are not false positives
    either): scoring one subset of the objects at a time, e.g. the heavily occluded ones.

    Returns map (AP averaged over IoU 0.5:0.95), map_50, map_75, ar_100, map_small,
    map_medium, map_large (None where that area range has no ground truth: COCO's ranges are
    absolute pixels, under 32x32 is small), recall_50 (recall at IoU 0.5, mean over the
    classes that have ground truth) and per_class {name: AP, None without ground truth}.
    No detections at all score 0.0 wherever there is ground truth to find.
    """
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = copy.deepcopy(gt)  # COCO() indexes and COCOeval annotates the dict it is given
    ignore = ignore or set()
    for ann in dataset["annotations"]:
        if ann["id"] in ignore:
            ann["iscrowd"] = 1
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if detections:  # loadRes writes ids and areas into the dicts: give it copies
            coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        else:  # loadRes([]) raises IndexError; an empty result set scores 0 the same way
            coco_dt = COCO()
            coco_dt.dataset = {"images": dataset["images"], "annotations": [],
                               "categories": copy.deepcopy(dataset["categories"])}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [None if s < 0 else float(s) for s in ev.stats]  # -1: no ground truth in range
    metrics = {name: stats[i] for name, i in (("map", 0), ("map_50", 1), ("map_75", 2),
                                               ("ar_100", 8), ("map_small", 3),
                                               ("map_medium", 4), ("map_large", 5))}
    # recall [IoU thresholds, classes, area ranges, maxDets]: IoU 0.5, all areas, 100 boxes
    recall = ev.eval["recall"][0, :, 0, -1]
    metrics["recall_50"] = float(recall[recall > -1].mean()) if (recall > -1).any() else None
    # precision [IoU thresholds, recall levels, classes, area ranges, maxDets]
    precision = ev.eval["precision"][:, :, :, 0, -1]
    names = [coco_gt.cats[c]["name"] for c in ev.params.catIds]
    metrics["per_class"] = {}
    for k, name in enumerate(names):
        p = precision[:, :, k]
        metrics["per_class"][name] = float(p[p > -1].mean()) if (p > -1).any() else None
    return metrics


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int,
              ignore_index: int | None = None) -> np.ndarray:
    """(num_classes, num_classes) pixel counts, rows = true class, columns = predicted;
    pixels labelled `ignore_index` are left out. Add the matrices of several batches."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    keep = y_true != ignore_index if ignore_index is not None else slice(None)
    y_true, y_pred = y_true[keep].astype(np.int64), y_pred[keep].astype(np.int64)
    if y_true.size and (y_true.max() >= num_classes or y_true.min() < 0):
        raise ValueError(f"class ids {y_true.min()}..{y_true.max()} outside 0..{num_classes - 1}")
    return np.bincount(y_true * num_classes + y_pred,
                       minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation(matrix: np.ndarray, class_names: list[str]) -> dict:
    """Semantic segmentation scores of a confusion matrix (see `confusion`); class 0 is the
    background. IoU = TP / (TP + FP + FN) per class; means run over the classes that occur
    (in the ground truth or the predictions), so a class absent from both does not count.

    Returns mean_iou, foreground_mean_iou (without class 0), pixel_accuracy,
    mean_class_accuracy and iou {class name: IoU, None when the class never occurs}.
    """
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    truth = matrix.sum(1)
    recall = np.where(truth > 0, tp / np.maximum(truth, 1), np.nan)

    def mean(values):
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else None

    return {
        "mean_iou": mean(iou),
        "foreground_mean_iou": mean(iou[1:]),
        "pixel_accuracy": float(tp.sum() / max(matrix.sum(), 1)),
        "mean_class_accuracy": mean(recall),
        "iou": {name: None if np.isnan(v) else float(v) for name, v in zip(class_names, iou)},
    }
