"""Prepare what bench/device_gpu.sh needs on a GPU machine that gets only the repo (64 MiB in all) and
has torch, lightning, transformers, peft, torchmetrics but no Hydra and no network. Both folders are
git-ignored; the device call names them in `carry`.

  .whl/           pure-Python wheels of hydra-core, omegaconf and antlr4-python3-runtime (built here:
                  4.9.3 has no wheel on PyPI), the versions installed here
  .carry/data/    sst2/, stsb/ (train.tsv, dev.tsv) and imdb/ (train.csv, dev.csv) from ../shared/data
  .carry/minilm/  all-MiniLM-L6-v2 (config, tokenizer) with its weights stored in fp16: the fp32 file
                  (91 MB) alone exceeds the 64 MiB limit. Loaded as fp32 master weights as usual
                  (tunelab.model); CARRY.json records the largest weight change and how close the
                  fp16 copy's sentence outputs stay to the original's.

python bench/device_carry.py          # from the repo root, with network access for pip
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ("hydra-core", "omegaconf")  # pure Python, on PyPI as wheels
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def wheels(out: Path) -> list[str]:
    out.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    for name in WHEELS:
        subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                        "--implementation", "cp", "--platform", "manylinux2014_x86_64", "-d", str(out),
                        f"{name}=={metadata.version(name)}"], check=True)
    antlr = f"antlr4-python3-runtime=={metadata.version('antlr4-python3-runtime')}"
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(out), antlr], check=True)
    return sorted(p.name for p in out.glob("*.whl"))


def data(out: Path) -> list[str]:
    shared = ROOT.parent / "shared" / "data"
    for name, ext in (("sst2", "tsv"), ("stsb", "tsv"), ("imdb", "csv")):
        (out / name).mkdir(parents=True, exist_ok=True)
        for file in (f"train.{ext}", f"dev.{ext}", "SOURCE.txt"):
            shutil.copy2(shared / name / file, out / name / file)
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.?sv"))


def model_fp16(out: Path) -> dict:
    from tunelab.resolvers import minilm_path

    src = Path(minilm_path())
    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy2(src / name, out / name)
    weights = load_file(src / "model.safetensors")
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    save_file(half, out / "model.safetensors", metadata={"format": "pt"})
    worst = max((weights[k] - half[k].float()).abs().max().item() for k in weights if weights[k].is_floating_point())
    report = {"source": str(src), "weights": "fp16 copy of the fp32 model.safetensors",
              "max_abs_weight_change": worst, "pooled_output_cosine_min": _output_agreement(src, out)}
    (out / "CARRY.json").write_text(json.dumps(report, indent=2))
    return report


def _output_agreement(original: Path, copy: Path) -> float:
    """Smallest cosine similarity between the two models' pooled outputs on SST-2 dev sentences."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(original)
    lines = (ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv").read_text().splitlines()[1:65]
    batch = tokenizer([line.split("\t")[0] for line in lines], padding=True, return_tensors="pt")
    outputs = []
    for path in (original, copy):
        model = transformers.AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            outputs.append(model(**batch).last_hidden_state[:, 0])
    return torch.nn.functional.cosine_similarity(*outputs).min().item()


def main() -> None:
    carry = ROOT / ".carry"
    report = {"wheels": wheels(ROOT / ".whl"), "data": data(carry / "data"), "model": model_fp16(carry / "minilm")}
    size = sum(p.stat().st_size for d in (ROOT / ".whl", carry) for p in d.rglob("*") if p.is_file())
    report["carry_mib"] = size / 2**20
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
