"""Write a Scenes dataset as COCO JSON + PNG images, so that any COCO tool can use it.

The detection recipe trains and tests on `synthetic:scenes`, split with
`common.data.split_scenes`. This module writes that same data to disk, so that other
detectors (bench/, Ultralytics, Detectron2, MMDetection, torchvision, ...) train and test on
exactly the images and boxes the recipe used, and their numbers can sit beside the recipe's:

    python -m common.export_coco runs/scenes_coco --num-examples 1000 --image-size 64 --seed 0

gives the split that `python -m recipes.detection` makes with the same flags (same seed, size,
number of scenes and test fraction = same images in train and test):

    runs/scenes_coco/train.json   runs/scenes_coco/test.json   runs/scenes_coco/images/*.png

Each annotation has "bbox" [x, y, width, height] in pixels, "area" (mask pixels), "segmentation"
(compressed RLE of the visible part of the object) and "visible" (the share of the object left
visible by the shapes drawn over it, 0..1: not a COCO field, tools ignore it). The files load
back with `common.data.load("coco:runs/scenes_coco/train.json")`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from common.data import Scenes


def to_coco(scenes: Scenes, file_names: list[str] | None = None) -> dict:
    """A COCO dataset dict of `scenes`: image ids 1..N in order, category ids 1..K (label + 1).

    `file_names` (one per image) go into the image entries; default "00000.png", ...
    """
    from pycocotools import mask as mask_utils

    n = len(scenes.images)
    file_names = file_names or [f"{i:05d}.png" for i in range(n)]
    if len(file_names) != n:
        raise ValueError(f"{len(file_names)} file names for {n} images")
    images, annotations = [], []
    for i in range(n):
        height, width = scenes.images[i].shape[:2]
        images.append({"id": i + 1, "width": int(width), "height": int(height),
                       "file_name": file_names[i]})
        for k, (box, label) in enumerate(zip(scenes.boxes[i], scenes.labels[i])):
            x1, y1, x2, y2 = (float(v) for v in box)
            ann = {"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                   "iscrowd": 0}
            if scenes.masks is not None:
                mask = np.asfortranarray(scenes.masks[i][k].astype(np.uint8))
                rle = mask_utils.encode(mask)
                rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON
                # COCO's small/medium/large buckets go by this area: the object's pixels
                ann["area"] = float(scenes.masks[i][k].sum())
                ann["segmentation"] = rle
            if scenes.visible is not None:
                ann["visible"] = float(scenes.visible[i][k])
            annotations.append(ann)
    return {
        "info": {"description": f"{scenes.spec or 'scenes'}, written by common.export_coco"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(scenes.class_names)],
    }


def export(scenes: Scenes, out_dir: str | Path, split: str) -> Path:
    """Write OUT/images/{split}_00000.png, ... and OUT/{split}.json; returns the JSON's path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    file_names = [f"{split}_{i:05d}.png" for i in range(len(scenes.images))]
    for image, name in zip(scenes.images, file_names):
        pixels = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        Image.fromarray(pixels).save(out_dir / "images" / name)
    path = out_dir / f"{split}.json"
    path.write_text(json.dumps(to_coco(scenes, file_names)))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m common.export_coco",
        description="Write the detection recipe's synthetic:scenes train/test split as COCO JSON "
                    "+ PNG images (the same flags as the recipe give the same split).")
    parser.add_argument("out_dir", type=Path, help="folder for train.json, test.json, images/")
    parser.add_argument("--num-examples", type=int, default=1000,
                        help="scenes in all (the detection recipe's --num-scenes)")
    parser.add_argument("--image-size", type=int, default=64, help="pixels per side")
    parser.add_argument("--seed", type=int, default=0, help="generates the scenes and the split")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of test images")
    args = parser.parse_args(argv)
    if args.num_examples < 2:
        parser.error(f"--num-examples {args.num_examples}: train and test need one scene each")

    from common import UserError, data

    try:
        scenes = data.load("synthetic:scenes", seed=args.seed, image_size=args.image_size,
                           num_examples=args.num_examples)
        train, test = data.split_scenes(scenes, args.test_fraction, args.seed)
    except UserError as err:
        parser.exit(2, f"error: {err}\n")
    for split, part in (("train", train), ("test", test)):
        path = export(part, args.out_dir, split)
        objects = sum(len(b) for b in part.boxes)
        print(f"wrote {path}: {len(part.images)} images, {objects} objects, "
              f"{len(part.class_names)} classes")
    print(f"wrote {args.out_dir / 'images'}/{{train,test}}_NNNNN.png")


if __name__ == "__main__":
    main()
