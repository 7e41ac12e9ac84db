"""``bench/serving.py --quick`` end to end: both presets, both systems, two runs each.

Covers: the production-shaped tree is written and served by the baseline (SDXL pipelines,
LoRAs from its popularity list, its ControlNet and inpainting model); each preset's runs
write their JSON documents and plots, the spread plot and the summary of both presets;
a system that cannot serve a preset is reported with its error, not dropped silently.
Minutes long: marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.serving import main
from bench.serving_presets import SD_MIX, SDXL_MIX

# a few minutes on a quiet machine; far longer on a busy one
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_quick_serving_benchmark(tmp_path: Path) -> None:
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "serving_summary.json").read_text())
    assert set(summary) == {"tiny", "sdxl-shaped"}
    for preset, data in summary.items():
        assert len(data["runs"]) == 2
        assert (tmp_path / preset / "serving_spread.png").stat().st_size > 0
        for path in data["runs"]:
            doc = json.loads(Path(path).read_text())
            baseline = doc["systems"]["baseline"]
            assert not baseline["error"], baseline["error"]
            mix = SD_MIX if doc["settings"]["preset"] == "tiny" else SDXL_MIX
            assert set(baseline["solo_latency_s"]) == set(mix)
            assert baseline["sweep"] and (Path(path).parent / "serving_sweep.png").exists()
            fleet = doc["systems"]["fleet"]
            assert fleet["error"] or fleet["sweep"]
    tree = json.loads((tmp_path / "models-sdxl-shaped" / "tree.json").read_text())
    assert tree["preset"] == "sdxl-shaped" and len(tree["loras"]) == 4
