"""`pip install` of a built wheel gives the released model with no download: the README example, outside the checkout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = """
import json, medcolbert
from medcolbert import ColBERT, rerank
model = ColBERT.from_pretrained()
corpus = {"d1": "Statin therapy is associated with myopathy and muscle pain.",
          "d2": "Influenza vaccines reduce hospital admissions in the elderly.",
          "d3": "Metformin is a first-line treatment for type 2 diabetes."}
hits = rerank(model, "statins and muscle pain", list(corpus.values()), k=2)
print(json.dumps({"file": medcolbert.__file__, "model": model.name, "hits": hits}))
"""


@pytest.mark.skipif(not (ROOT / "checkpoints" / "medcolbert-minilm-v5" / "model.safetensors").is_file(),
                    reason="the released checkpoint is not in this checkout")
def test_wheel_carries_the_released_model(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(wheels)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(wheels.glob("medcolbert-*.whl"))
    # The wheel alone into a fresh folder; its dependencies come from this environment (no network needed).
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "error::UserWarning"}
    out = subprocess.run([sys.executable, "-c", EXAMPLE], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-1500:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(site))           # the installed wheel, not the checkout
    assert result["model"] == "medcolbert-minilm-v5"
    # The README quick start's numbers: the released model's scores, not the untrained base's.
    assert [h[0] for h in result["hits"]] == [0, 2]
    assert result["hits"][0][1] == pytest.approx(56.89, abs=0.01) and result["hits"][1][1] == pytest.approx(23.66, abs=0.01)
