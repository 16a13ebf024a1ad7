"""The same CNN and schedule in native PyTorch: `torch.nn`, a `DataLoader`, a plain loop.

    python -m recipes.frameworks.torch_train --data OUT/data.npz --out OUT/torch_native \
        --epochs 6 --batch-size 64 --seeds 0 1 2

Started by recipes/frameworks in a process of its own. What a PyTorch user would write: images
channels-first (N, C, H, W), PyTorch's default initialisation, `torch.optim.Adam`, a training
loop by hand. Reads the same arrays as the Keras runs and writes OUT/record.json with the same
keys; deployment: TorchScript, `torch.export` (.pt2) and ONNX run with onnxruntime.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from recipes.frameworks.measure import (
    EpochClock,
    first_line,
    latency_ms,
    peak_memory_mb,
    run_flags,
    seed_record,
    size_kb,
    throughput,
)


# ---- model and training code: begin (counted in model_lines)
class ReferenceCNN(nn.Module):
    """The collection's reference CNN, layer for layer (channels first)."""

    def __init__(self, channels, height, width, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        flat = 128 * (height // 8) * (width // 8)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(flat, 128), nn.ReLU(),
                                  nn.Linear(128, num_classes))

    def forward(self, images):  # raw [0, 255] pixels in, logits out
        return self.head(self.features(images / 255))


def train(x, y, num_classes, epochs, batch_size, seed, on_epoch_end=None, compile=False):
    torch.manual_seed(seed)
    model = ReferenceCNN(*x.shape[1:], num_classes)
    step_model = torch.compile(model) if compile else model
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                        batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for images, labels in loader:
            optimizer.zero_grad()
            logits = step_model(images)
            loss = loss_fn(logits, labels)
            loss.backward()
            optimizer.step()
            total += len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            loss_sum += loss.item() * len(labels)
        if on_epoch_end:
            on_epoch_end(epoch, {"loss": loss_sum / total, "accuracy": correct / total})
    return model.eval()
# ---- model and training code: end


def predictor(model):
    def predict(images):
        with torch.inference_mode():
            return model(torch.from_numpy(images)).numpy()
    return predict


def time_modes(modes, x, y, num_classes, batch_size, steps) -> dict:
    """Eager against torch.compile, the same train steps twice: the first epoch compiles."""
    n = min(len(x), steps * batch_size)
    found = {}
    for mode, compile in (modes.items() if steps else ()):
        timer = EpochClock()
        try:
            train(x[:n], y[:n], num_classes, 2, batch_size, 0, timer.tick, compile=compile)
            found[mode] = {"first_epoch_seconds": timer.seconds[0],
                           "train_images_per_second": n / timer.seconds[1],
                           "train_cpu_ms_per_image": 1000 * timer.cpu[1] / n}
            print(f"  mode {mode}: {found[mode]['train_images_per_second']:.0f} images/s, "
                  f"first epoch {timer.seconds[0]:.1f} s", flush=True)
        except Exception as err:  # noqa: BLE001 - a mode that fails is a result, not a crash
            found[mode] = {"error": first_line(err)}
            print(f"  mode {mode}: fails: {found[mode]['error']}", flush=True)
    return found


def deploy(model, images, out: Path, repeats: int) -> dict:
    """TorchScript, torch.export and ONNX files of the trained model, each run in its runtime."""
    example = torch.from_numpy(images[:2])  # not 1: torch.export would fix a batch of 1
    reference = predictor(model)(images).argmax(-1)

    def torchscript(path):
        torch.jit.save(torch.jit.trace(model, example), path)

    def load_torchscript(path):
        return predictor(torch.jit.load(path))

    def export(path):
        batch = torch.export.Dim("batch", min=1)
        torch.export.save(torch.export.export(model, (example,),
                                              dynamic_shapes={"images": {0: batch}}), path)

    def load_export(path):
        return predictor(torch.export.load(path).module())

    def onnx(path):
        torch.onnx.export(model, (example,), path, input_names=["images"], dynamo=True,
                          dynamic_shapes={"images": {0: "batch"}}, external_data=False,
                          verbose=False)

    def load_onnx(path):
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {"images": batch})[0]

    formats = {"state_dict": ("model.pt", lambda p: torch.save(model.state_dict(), p), None),
               "torchscript": ("model.torchscript.pt", torchscript, load_torchscript),
               "torch_export": ("model.pt2", export, load_export),
               "onnx": ("model.onnx", onnx, load_onnx)}
    found = {}
    for name, (file, save, load) in formats.items():
        path = out / file
        try:
            start = time.perf_counter()
            save(str(path))
            entry = {"size_kb": size_kb(path), "export_seconds": time.perf_counter() - start}
            if load:
                predict = load(str(path))
                predicted = np.concatenate([predict(images[i:i + 1])
                                            for i in range(len(images))]).argmax(-1)
                entry["latency_ms_batch1"] = latency_ms(predict, images, repeats)
                entry["agreement"] = float((predicted == reference).mean())
            found[name] = entry
            print(f"  export {name}: {entry['size_kb']:.0f} KB"
                  + (f", {entry['latency_ms_batch1']:.2f} ms per image, agreement "
                     f"{entry['agreement']:.3f}" if load else ""), flush=True)
        except Exception as err:  # noqa: BLE001 - a format that fails is a result
            found[name] = {"error": first_line(err)}
            print(f"  export {name}: fails: {found[name]['error']}", flush=True)
            if os.environ.get("FRAMEWORKS_DEBUG"):
                traceback.print_exc()
        if path.exists() and name != "state_dict":
            path.unlink()
    return found


def main() -> None:
    args = run_flags(__doc__.splitlines()[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = np.load(args.data)
    # channels first, as PyTorch's convolutions want: the same numbers, another layout
    x = np.ascontiguousarray(arrays["x_train"].transpose(0, 3, 1, 2), dtype="float32")
    x_test = np.ascontiguousarray(arrays["x_test"].transpose(0, 3, 1, 2), dtype="float32")
    y, y_test = arrays["y_train"].astype("int64"), arrays["y_test"]
    num_classes = int(arrays["num_classes"])
    record = {"backend": "torch", "threads": torch.get_num_threads(),
              "import_memory_mb": peak_memory_mb(), "seeds": []}
    model = None
    for seed in args.seeds:
        timer = EpochClock(f"torch_native seed {seed}", args.epochs)
        start = time.perf_counter()
        trained = train(x, y, num_classes, args.epochs, args.batch_size, seed, timer.tick)
        seconds = time.perf_counter() - start
        predict = predictor(trained)
        predicted = np.concatenate([predict(x_test[i:i + 256])
                                    for i in range(0, len(x_test), 256)])
        record["seeds"].append(seed_record("torch_native", seed, timer, seconds, predicted,
                                           y_test, len(x)))
        model = model or trained
    record["training_memory_mb"] = peak_memory_mb()
    predict = predictor(model)
    record["inference_ms_batch1"] = latency_ms(predict, x_test, args.repeats)
    record["inference_images_per_second_batch256"] = throughput(predict, x_test)
    # exports first, so that no latency is measured after a compiled mode ran here
    record["deployment"] = {} if args.no_export else deploy(model, x_test[:args.repeats], out,
                                                            args.repeats)
    modes = {"eager": False, **({} if args.no_torch_compile else {"torch_compile": True})}
    record["modes"] = time_modes(modes, x, y, num_classes, args.batch_size, args.mode_steps)
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
