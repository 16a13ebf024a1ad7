"""Why native PyTorch trails the Keras rows of recipes/frameworks: the initialisation.

    python bench/frameworks_torch_init.py runs/frameworks/data.npz

Trains the recipe's native PyTorch CNN (recipes/frameworks/torch_train.py, same schedule: 3
epochs, batch 64, Adam 1e-3) over seeds 0, 1, 2 twice: with PyTorch's default initialisation
(what the recipe's torch_native row uses), and with Keras's defaults (Glorot-uniform kernels,
zero biases). Prints the test accuracy of each seed and the mean.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the recipe runs its rows
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from recipes.frameworks import torch_train  # noqa: E402


def keras_initialisation(model: nn.Module) -> None:
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


def main(path: str, epochs: int = 3, seeds=(0, 1, 2)) -> None:
    data = np.load(path)
    x = data["x_train"].astype("float32").transpose(0, 3, 1, 2)  # channels first
    x_test = torch.from_numpy(data["x_test"].astype("float32").transpose(0, 3, 1, 2))
    y, y_test = data["y_train"].astype("int64"), data["y_test"].astype("int64")
    num_classes = int(max(y.max(), y_test.max())) + 1
    pytorch_init = torch_train.ReferenceCNN.__init__

    def with_keras_init(self, *shape):
        pytorch_init(self, *shape)
        keras_initialisation(self)

    for name, init in (("pytorch default", pytorch_init), ("keras defaults", with_keras_init)):
        torch_train.ReferenceCNN.__init__ = init
        scores = []
        for seed in seeds:
            model = torch_train.train(x, y, num_classes, epochs, 64, seed)
            with torch.no_grad():
                scores.append(float((model(x_test).argmax(1).numpy() == y_test).mean()))
        print(f"{name:16s} seeds {list(seeds)}: {[round(s, 3) for s in scores]}, "
              f"mean {np.mean(scores):.3f}", flush=True)
    torch_train.ReferenceCNN.__init__ = pytorch_init


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/frameworks/data.npz")
