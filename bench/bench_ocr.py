"""OCR: the ocr_crnn recipe's model against Tesseract 5 on the same held-out text lines.

    make ocr_crnn                                  # trains, writes runs/ocr_crnn/heldout/
    apt-get install tesseract-ocr                  # Debian's Tesseract 5 (English model)
    .venv/bin/python bench/bench_ocr.py            # both engines, both conditions, a table
    .venv/bin/python bench/bench_ocr.py --run runs/ocr_long --skip-ours

The lines: runs/ocr_crnn/heldout/{clean,degraded}/ (PNG + labels.tsv), rendered by the
training run in the two font families it never trained on (Caladea, Lato). Clean: text 22-34
px high, dark on light; degraded: 13-18 px, low contrast, coloured textured paper, noise,
blur, rotation and shear, JPEG quality 25-60.

- Ours: the scores the training run wrote for these very lines (RUN/results.json: beam
  search and greedy), and the reading speed of one `python -m recipes.ocr_crnn evaluate`
  per condition (greedy, batches of 64; the recipe times reading and decoding, not the
  model load). `--rescore` scores ours again through `evaluate` (beam search too).
- Tesseract: one `tesseract LIST stdout --psm 7` process per condition (LIST: the image
  paths, one a line; psm 7 = "treat the image as a single text line"), its default LSTM
  English model; lines/s over the whole call (model load included: a fraction of a second).
  Its output is normalised where it only differs in typography from our charset: curly
  quotes to straight ones, en and em dashes to '-', surrounding whitespace stripped, runs of
  spaces to one.

- EasyOCR (when bench/out/.venv-easyocr exists: `python3 -m venv bench/out/.venv-easyocr &&
  bench/out/.venv-easyocr/bin/pip install -r bench/requirements-easyocr.txt`): its English
  recogniser on each whole line image (bench/easyocr_lines.py), the same normalisation as
  Tesseract's output; lines/s without the model load.

All are scored here the same way: CER (character edit distance / reference characters),
WER, line accuracy (exact match). Writes bench/out/ocr_vs_tesseract.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                            "\u2013": "-", "\u2014": "-", "\u00a0": " "})


def edit_distance(a, b) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def score(refs: list[str], hyps: list[str]) -> dict:
    return {
        "cer": sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / sum(map(len, refs)),
        "wer": sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
        / sum(len(r.split()) for r in refs),
        "line_accuracy": sum(r == h for r, h in zip(refs, hyps)) / len(refs),
        "lines": len(refs),
    }


def read_labels(labels: Path) -> tuple[list[Path], list[str]]:
    rows = [r.split("\t", 1) for r in labels.read_text(encoding="utf-8").splitlines() if r]
    return [labels.parent / f for f, _ in rows], [t for _, t in rows]


def tesseract(files: list[Path]) -> tuple[list[str], float, float]:
    """Texts read by one Tesseract process, wall and CPU seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("".join(f"{f}\n" for f in files))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(["tesseract", listing.name, "stdout", "--psm", "7", "-l", "eng"],
                          capture_output=True, text=True, env={**os.environ,
                                                               "OMP_WAIT_POLICY": "PASSIVE"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.unlink(listing.name)
    if done.returncode:
        raise SystemExit(f"error: tesseract exited {done.returncode}: {done.stderr[-500:]}")
    pages = done.stdout.split("\f")  # one page (form feed) per image of the list
    if pages and not pages[-1].strip():
        pages = pages[:-1]
    if len(pages) != len(files):
        raise SystemExit(f"error: tesseract gave {len(pages)} pages for {len(files)} images")
    texts = [" ".join(p.translate(TYPOGRAPHY).split()) for p in pages]
    return texts, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


EASYOCR = ROOT / "bench" / "out" / ".venv-easyocr" / "bin" / "python"


def easyocr(labels: Path) -> tuple[list[str], float]:
    """Texts read by EasyOCR (in its own venv) and its reading seconds."""
    result = OUT / "ocr_easyocr.json"
    done = subprocess.run([str(EASYOCR), str(ROOT / "bench" / "easyocr_lines.py"), str(labels),
                           str(result)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: EasyOCR exited {done.returncode}: {done.stderr[-2000:]}")
    found = json.loads(result.read_text())
    return [" ".join(t.translate(TYPOGRAPHY).split()) for t in found["texts"]], found["seconds"]


def ours(model: Path, labels: Path, beam_width: int, out: Path) -> dict:
    command = [sys.executable, "-m", "recipes.ocr_crnn", "evaluate", "--model", str(model),
               "--dataset", f"lines:{labels}", "--beam-width", str(beam_width), "--out",
               str(out)]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: evaluate exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads((out / "results.json").read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/ocr_crnn",
                        help="a training run's --out: its model.keras and heldout/")
    parser.add_argument("--beam-width", type=int, default=10)
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--skip-easyocr", action="store_true")
    parser.add_argument("--rescore", action="store_true",
                        help="score ours through evaluate instead of reading RUN/results.json")
    args = parser.parse_args()
    run = ROOT / args.run
    if not (run / "heldout" / "clean" / "labels.tsv").is_file():
        raise SystemExit(f"error: no held-out lines in {run}/heldout: run `make ocr_crnn` "
                         "(or pass --run OUT of a training run)")
    if shutil.which("tesseract") is None:
        raise SystemExit("error: tesseract not found: apt-get install tesseract-ocr")
    version = subprocess.run(["tesseract", "--version"], capture_output=True,
                             text=True).stdout.splitlines()[0]
    report = {"run": args.run, "tesseract": version, "conditions": {}}
    for condition in ("clean", "degraded"):
        labels = run / "heldout" / condition / "labels.tsv"
        files, refs = read_labels(labels)
        texts, wall, cpu = tesseract(files)
        rows = {"tesseract_psm7": {**score(refs, texts), "lines_per_second": len(files) / wall,
                                   "cpu_seconds": cpu}}
        if EASYOCR.is_file() and not args.skip_easyocr:
            texts_easy, seconds = easyocr(labels)
            rows["easyocr"] = {**score(refs, texts_easy), "lines_per_second": len(files) / seconds}
            (OUT / f"ocr_easyocr_{condition}.tsv").write_text("".join(
                f"{f.name}\t{r}\t{t}\n" for f, r, t in zip(files, refs, texts_easy)))
        if not args.skip_ours:
            trained = json.loads((run / "results.json").read_text())["metrics"]
            greedy = ours(run / "model.keras", labels, 0, OUT / f"ocr_ours_greedy_{condition}")
            beam = (ours(run / "model.keras", labels, args.beam_width,
                         OUT / f"ocr_ours_beam_{condition}") if args.rescore else
                    {**trained[condition], "lines_per_second": None})
            if not args.rescore:
                greedy = {**trained[f"greedy_{condition}"],
                          "lines_per_second": greedy["lines_per_second"]}
            keys = ("cer", "wer", "line_accuracy", "lines", "lines_per_second")
            rows["ours_greedy"] = {k: greedy[k] for k in keys}
            rows[f"ours_beam{trained['beam_width']}"] = {k: beam[k] for k in keys}
        report["conditions"][condition] = rows
        (OUT / f"ocr_tesseract_{condition}.tsv").write_text("".join(
            f"{f.name}\t{r}\t{t}\n" for f, r, t in zip(files, refs, texts)))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ocr_vs_tesseract.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'condition':<10} {'engine':<16} {'CER':>7} {'WER':>7} {'line acc':>9} "
          f"{'lines/s':>8}")
    for condition, rows in report["conditions"].items():
        for engine, m in rows.items():
            speed = "-" if m["lines_per_second"] is None else f"{m['lines_per_second']:.1f}"
            print(f"{condition:<10} {engine:<16} {m['cer']:>7.4f} {m['wer']:>7.4f} "
                  f"{m['line_accuracy']:>9.3f} {speed:>8}")
    print(f"wrote {OUT / 'ocr_vs_tesseract.json'}")


if __name__ == "__main__":
    main()
