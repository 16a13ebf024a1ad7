"""Ultralytics YOLOv8n trained from scratch on a COCO export, the baseline of bench_detection.py
(boxes) and, with `--task segment` (YOLOv8n-seg), of bench_instance_segmentation.py (masks).

Runs inside its own venv (`make bench-yolo-env`), not the project's:

    bench/.venv-yolo/bin/python bench/yolov8n_baseline.py \\
        --train-json bench/out/detection_coco/train.json \\
        --test-json bench/out/detection_coco/test.json \\
        --out bench/out/detection_yolov8n --minutes 10 --imgsz 128 --seed 0

It converts the COCO files to the YOLO layout (OUT/yolo/images|labels/{train,test}, one
`class cx cy w h` line per box, normalised), trains YOLO("yolov8n.yaml") from random weights
for a time budget (Ultralytics' `time=`, which also fits the learning-rate schedule to the
epochs that fit; counted by default in CPU seconds / threads, see CpuClock), detects on the
test images as Ultralytics does for its COCO scores (its validator: conf 0.001, NMS IoU 0.7,
multi-label, here at most 100 boxes) and writes:

    OUT/detections.json          COCO results: image_id / category_id of test.json, [x, y, w, h]
    OUT/detections_predict.json  the same from model.predict (one class per box)
    OUT/baseline.json            wall and CPU seconds, epochs, threads, versions, network attempts

With `--task segment` the labels are polygons (`class x1 y1 x2 y2 ...`, normalised): each
COCO mask (RLE or polygons) is drawn at 4x, traced with cv2.findContours (outer outlines and
holes), and its pieces joined into one polygon with Ultralytics' own merge_multi_segment (as
its COCO converter does); detections.json then also holds each object's RLE mask of the
original image size (Ultralytics' validator), and detections_predict.json is not written.

Scoring is left to the caller (common.metrics.coco_detection in the project's venv), so both
detectors are scored by the same code. Nothing is downloaded: no pretrained weights, no AMP
check model, no plots, a local stand-in for the Arial.ttf that Ultralytics fetches when it
checks a dataset, YOLO_OFFLINE set, and a socket guard that refuses and records every
connection to another host (baseline.json lists them; none in our runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path

NETWORK_ATTEMPTS: list[str] = []


def guard_network() -> None:
    """Refuse (and record) every connection or name lookup except to this machine.

    The benchmark must not depend on what Ultralytics would fetch when online; a refused
    attempt shows up in baseline.json instead of silently changing the run.
    """
    local = {"localhost", "127.0.0.1", "::1", "", None}

    def record(what):
        # The Ultralytics callers say which feature wanted the network
        frames = [f for f in traceback.extract_stack()[:-2] if "/ultralytics/" in f.filename]
        chain = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                            for f in reversed(frames[-3:]))
        NETWORK_ATTEMPTS.append(f"{what} ({chain})" if chain else what)
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in local:
            record(f"lookup {host}")
            raise socket.gaierror(socket.EAI_NONAME, "network disabled by yolov8n_baseline.py")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in local:
            record(f"connect {address}")
            raise OSError("network disabled by yolov8n_baseline.py")
        return real_connect(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuClock:
    """Stands in for the `time` module of Ultralytics' trainer: time() is CPU seconds / threads.

    Ultralytics' `time=` budget (when to stop, how many epochs to plan) then counts the CPU time
    the training gets, so a machine shared with other jobs stretches the wall time instead of
    cutting the budget; on an idle machine the two clocks agree.
    """

    def __init__(self, threads: int):
        self.threads = threads

    def time(self) -> float:
        return cpu_seconds() / self.threads

    def __getattr__(self, name):
        return getattr(time, name)


def image_path(annotations: Path, file_name: str) -> Path:
    """An image of a COCO file: relative to the JSON's folder, or in its images/ sibling."""
    for path in (annotations.parent / file_name, annotations.parent / "images" / file_name):
        if path.exists():
            return path
    raise SystemExit(f"error: {file_name} of {annotations} is neither beside it nor in images/")


def rle_to_mask(rle: dict):
    """A COCO RLE (compressed string or list of counts) as an (H, W) uint8 array; pycocotools'
    rleFrString + decode, written out because this venv has no pycocotools."""
    import numpy as np

    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, str):
        text, counts, p = counts, [], 0
        while p < len(text):
            x, k, more = 0, 0, True
            while more:
                c = ord(text[p]) - 48
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                p, k = p + 1, k + 1
                if not more and c & 0x10:
                    x |= -1 << (5 * k)
            if len(counts) > 2:
                x += counts[-2]
            counts.append(x)
    flat = np.zeros(height * width, np.uint8)
    position = 0
    for k, run in enumerate(counts):
        flat[position: position + run] = k % 2
        position += run
    return flat.reshape(width, height).T  # COCO runs go down the columns


def mask_polygon(segmentation, width: int, height: int) -> list[float]:
    """One polygon (x1, y1, x2, y2, ... normalised) for a COCO segmentation (RLE or polygons)."""
    import cv2
    import numpy as np
    from ultralytics.data.converter import merge_multi_segment

    if isinstance(segmentation, dict):
        up = 4  # contours through pixel centres of a 4x mask: within 1/8 pixel of the edges
        mask = rle_to_mask(segmentation).repeat(up, 0).repeat(up, 1)
        contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        pieces = [(c.reshape(-1, 2) + 0.5) / up for c in contours if len(c) >= 3]
    else:
        pieces = [np.array(p, float).reshape(-1, 2) for p in segmentation if len(p) >= 6]
    if not pieces:
        return []
    if len(pieces) > 1:
        pieces = merge_multi_segment([p.reshape(-1).tolist() for p in pieces])
    points = np.concatenate(pieces).reshape(-1, 2) / [width, height]
    return np.clip(points, 0, 1).reshape(-1).tolist()


def coco_to_yolo(annotations: Path, root: Path, split: str, category_ids: list[int],
                 segments: bool = False) -> dict:
    """Link the images into root/images/split and write root/labels/split/NAME.txt: boxes, or
    with `segments` polygons.

    YOLO class k is the k-th category id in sorted order. Returns {image path: COCO image id}.
    """
    coco = json.loads(annotations.read_text())
    klass = {cid: k for k, cid in enumerate(category_ids)}
    boxes: dict[int, list[str]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        if ann.get("iscrowd"):
            continue
        boxes[ann["image_id"]].append(ann)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    ids = {}
    for image in coco["images"]:
        source = image_path(annotations, image["file_name"]).resolve()
        # One flat folder per split: COCO file names may hold subfolders
        name = f"{image['id']:07d}{source.suffix}"
        target = root / "images" / split / name
        if not target.exists():
            try:
                target.symlink_to(source)
            except OSError:  # file systems without symlinks
                shutil.copyfile(source, target)
        width, height = image["width"], image["height"]
        lines = []
        for ann in boxes[image["id"]]:
            x, y, w, h = ann["bbox"]
            if w <= 0 or h <= 0:
                continue
            if segments:
                polygon = mask_polygon(ann["segmentation"], width, height)
                if len(polygon) >= 6:
                    lines.append(f"{klass[ann['category_id']]} "
                                 + " ".join(f"{v:.6f}" for v in polygon))
                continue
            lines.append(f"{klass[ann['category_id']]} {(x + w / 2) / width:.6f} "
                         f"{(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}")
        (root / "labels" / split / f"{Path(name).stem}.txt").write_text(
            "".join(line + "\n" for line in lines))
        ids[str(target)] = image["id"]
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-json", type=Path, required=True)
    parser.add_argument("--test-json", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, required=True,
                        help="training budget (Ultralytics time=), on the --clock")
    parser.add_argument("--imgsz", type=int, default=128, help="training/inference size (x32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="what --minutes counts: cpu = CPU seconds / threads (a fair share on "
                             "a busy machine), wall = wall-clock time (Ultralytics' own)")
    parser.add_argument("--task", choices=["detect", "segment"], default="detect",
                        help="detect: YOLOv8n on boxes | segment: YOLOv8n-seg on polygons")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch CPU threads (default: every core, as TensorFlow uses; "
                             "Ultralytics alone would take cores - 1)")
    args = parser.parse_args()

    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    out = args.out.resolve()
    for stale in ("yolo", "train", "val"):  # an old run or label cache would mix with this one
        shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    # Set before torch and ultralytics are imported: `import ultralytics` sets OMP_NUM_THREADS=1
    # when it is unset, and keeps its settings file in the user's home otherwise.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    # Idle OpenMP threads sleep instead of spinning. With the default policy, when another job
    # holds a core, torch's second thread spins away its share of that core and every parallel
    # region then waits for it: 6.6 s/iteration against 0.62 s with PASSIVE (2 threads, batch
    # 16, 128 px, beside a TensorFlow training); on an idle machine PASSIVE measured 0.64 s.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["YOLO_CONFIG_DIR"] = str(out / "ultralytics_config")
    os.environ["YOLO_OFFLINE"] = "1"  # no online checks (DNS lookups, pip update check)
    os.environ["YOLO_AUTOINSTALL"] = "0"  # never pip-install a missing requirement
    guard_network()

    import torch
    import ultralytics
    from ultralytics import YOLO, settings

    # No analytics, no experiment-tracker callbacks, and every folder it would write under OUT
    # (its defaults are ./weights and ./runs of the working directory)
    wanted = {"sync": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False,
              "neptune": False, "raytune": False, "tensorboard": False, "wandb": False,
              "vscode_msg": False, "openvino_msg": False, "datasets_dir": str(out / "datasets"),
              "weights_dir": str(out / "weights"), "runs_dir": str(out / "runs")}
    settings.update({k: v for k, v in wanted.items() if k in settings})
    # select_device() sets torch's threads to NUM_THREADS = cores - 1 (one thread on a 2-core
    # machine); TensorFlow uses every core, so give both detectors the same
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = args.threads
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        from ultralytics.engine import trainer as trainer_module

        trainer_module.time = CpuClock(args.threads)
    # Checking a dataset always looks for Arial.ttf (for plots) and downloads it when it is
    # missing; plots are off, so any TrueType font where it looks stops that download
    import matplotlib
    from ultralytics.utils import USER_CONFIG_DIR

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not (USER_CONFIG_DIR / "Arial.ttf").exists():
        shutil.copyfile(font, USER_CONFIG_DIR / "Arial.ttf")

    categories = sorted(c["id"] for c in json.loads(args.train_json.read_text())["categories"])
    names = {c["id"]: c["name"] for c in json.loads(args.train_json.read_text())["categories"]}
    test_categories = sorted(c["id"] for c in json.loads(args.test_json.read_text())["categories"])
    if test_categories != categories:
        raise SystemExit(f"error: train categories {categories} != test {test_categories}")
    root = out / "yolo"
    segment = args.task == "segment"
    train_ids = coco_to_yolo(args.train_json.resolve(), root, "train", categories, segment)
    test_ids = coco_to_yolo(args.test_json.resolve(), root, "test", categories, segment)
    data_yaml = out / "data.yaml"
    # JSON is YAML; absolute paths, so Ultralytics' datasets_dir setting plays no part
    data_yaml.write_text(json.dumps({
        "path": str(root), "train": "images/train", "val": "images/test",
        "names": {k: names[cid] for k, cid in enumerate(categories)}}, indent=2) + "\n")
    prepared = time.perf_counter()

    # optimizer=auto picks by the planned iterations, images / 64 * epochs: MuSGD above 10,000,
    # else AdamW with lr0 = 0.01 / (4 + classes), momentum 0.9 and no bias warm-up. With time=,
    # epochs=1000 is only a placeholder that Ultralytics refits after the first epoch, yet auto
    # counts it: 1200 images made it MuSGD, whose Newton-Schulz steps took 8.6 of the 8.7 CPU
    # seconds per iteration here (AdamW: 0.6). A budget of minutes is far below 10,000
    # iterations, so this is auto's own choice for a run of that length, set explicitly.
    optimizer = {"optimizer": "AdamW", "lr0": round(0.002 * 5 / (4 + len(categories)), 6),
                 "momentum": 0.9, "warmup_bias_lr": 0.0}
    architecture = "yolov8n-seg.yaml" if segment else "yolov8n.yaml"
    model = YOLO(architecture)  # architecture only: random weights
    iterations = []  # CPU seconds at the end of each training iteration
    model.add_callback("on_train_batch_end", lambda trainer: iterations.append(cpu_seconds()))
    model.train(data=str(data_yaml), imgsz=args.imgsz, batch=args.batch, epochs=1000,
                time=args.minutes / 60, pretrained=False, device="cpu", workers=0,
                amp=False, plots=False, val=False, cache="disk", seed=args.seed,
                deterministic=True, project=str(out), name="train", exist_ok=True,
                verbose=False, **optimizer)
    trainer = model.trainer
    trained = time.perf_counter()
    # last.pt (the EMA weights at the end), not best.pt: with val=False nothing was selected,
    # and selecting on the test images would flatter the baseline
    last = Path(trainer.last)
    model = YOLO(str(last))

    # The detections scored: Ultralytics' validator with save_json, i.e. how Ultralytics scores
    # YOLO on COCO (NMS keeps every class above conf for a box: multi-label), capped at COCO's
    # 100 boxes per image. Its image_id is the file stem (our COCO image id, see coco_to_yolo)
    # and its category_id is class + 1.
    val = model.val(data=str(data_yaml), split="val", imgsz=args.imgsz, batch=args.batch,
                    conf=0.001, iou=0.7, max_det=100, device="cpu", plots=False,
                    save_json=True, project=str(out), name="val", exist_ok=True, verbose=False)
    detections, known = [], set(test_ids.values())
    for d in json.loads((Path(val.save_dir) / "predictions.json").read_text()):
        if d["image_id"] not in known:
            raise SystemExit(f"error: Ultralytics named an image {d['image_id']!r}")
        detections.append({"image_id": d["image_id"],
                           "category_id": categories[d["category_id"] - 1],
                           "bbox": d["bbox"], "score": d["score"]})
        if segment:  # an RLE of the original image's size
            detections[-1]["segmentation"] = d["segmentation"]
    (out / "detections.json").write_text(json.dumps(detections))

    # What a user of model.predict gets with the same thresholds: one class per box
    single = []
    paths = sorted(test_ids)
    predicted = [] if segment else model.predict(paths, imgsz=args.imgsz, conf=0.001, iou=0.7,
                                                 max_det=100, device="cpu", stream=True,
                                                 verbose=False)
    for result in predicted:
        image_id = test_ids[str(Path(result.path))]
        xyxy = result.boxes.xyxy.tolist()
        for (x1, y1, x2, y2), k, score in zip(xyxy, result.boxes.cls.tolist(),
                                               result.boxes.conf.tolist()):
            single.append({"image_id": image_id, "category_id": categories[int(k)],
                           "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3),
                                    round(y2 - y1, 3)],
                           "score": round(score, 5)})
    if not segment:
        (out / "detections_predict.json").write_text(json.dumps(single))
    end = time.perf_counter()

    record = {
        "model": f"{architecture} (from scratch)", "task": args.task,
        "imgsz": args.imgsz, "batch": args.batch, "seed": args.seed,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "optimizer": optimizer,
        "train_iterations": len(iterations),
        # wall, including the trainer's setup (dataset scan and cache, model build)
        "train_seconds_per_iteration": round((trained - prepared) / max(len(iterations), 1), 3),
        "budget_minutes": args.minutes, "clock": args.clock,
        "epochs_done": int(trainer.epoch) + 1,
        "epochs_planned": int(trainer.epochs),
        "train_images": len(train_ids),
        "test_images": len(paths), "detections": len(detections),
        "detections_predict": len(single),
        # Ultralytics' own mAP of these detections (its matching, not pycocotools')
        "ultralytics_val": {"map": round(float(val.box.map), 4),
                            "map_50": round(float(val.box.map50), 4),
                            **({"mask_map": round(float(val.seg.map), 4),
                                "mask_map_50": round(float(val.seg.map50), 4)} if segment else {})},
        "seconds": round(end - start_wall, 1),
        "train_seconds": round(trained - prepared, 1),
        "cpu_seconds": round(cpu_seconds() - start_cpu, 1),
        # from the 2nd iteration on (the 1st builds oneDNN kernels)
        "train_cpu_seconds_per_iteration": round(
            (iterations[-1] - iterations[0]) / (len(iterations) - 1), 3)
        if len(iterations) > 1 else None,
        "network_attempts": NETWORK_ATTEMPTS,
        "versions": {"ultralytics": ultralytics.__version__, "torch": torch.__version__,
                     "python": sys.version.split()[0]},
    }
    (out / "baseline.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
