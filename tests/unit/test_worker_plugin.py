"""The vLLM internals the worker plugin patches, pinned: a vLLM upgrade that moves them fails here.

One fresh interpreter (vLLM's import is the slow part), as vLLM's own processes load the plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys

CHECK = """
import inspect
from vllm.lora import model_manager
from vllm.lora.ops.torch_ops import lora_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.v1.worker.worker_base import WorkerBase
from lorafleet.worker import cpu_lora_fix, plugin

# Outside a LoraFleet worker (no LORAFLEET_WORKER=1) the entry point changes nothing.
before = lora_ops.bgmv_shrink
plugin.register()
assert lora_ops.bgmv_shrink is before, "patched outside a worker"
assert not hasattr(WorkerBase, "lorafleet_lora_residency"), "RPCs installed outside a worker"

# Inside one, the CPU LoRA fix finds the functions it wraps, in both places they are looked up.
assert cpu_lora_fix.install() is True
assert getattr(lora_ops.bgmv_shrink, cpu_lora_fix._PATCHED)
assert punica_cpu.bgmv_shrink is lora_ops.bgmv_shrink
# The residency RPCs read these private attributes of the LoRA model manager (vllm#45325).
from vllm.utils import cache
source = inspect.getsource(model_manager) + inspect.getsource(cache)
for name in ("self._active_adapters", "self._registered_adapters", "self.pinned_items", "def pin(", "def _unpin("):
    assert name in source, f"vLLM no longer has {name!r}: lorafleet.worker.plugin's residency RPCs need it"
plugin._install_residency_rpcs()
assert WorkerBase.lorafleet_lora_residency is plugin.lora_residency
print("pinned")
"""


def test_the_plugin_patches_only_inside_workers_and_vllms_internals_have_the_shape_it_knows():
    environment = {k: v for k, v in os.environ.items() if k != "LORAFLEET_WORKER"}
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0 and "pinned" in done.stdout, done.stderr[-3000:]
