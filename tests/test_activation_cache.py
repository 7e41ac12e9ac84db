"""The template activation store: byte budget, LRU eviction, disk spill, sharing across processes.

Fills the memory tier past its budget with a stream of new templates and
checks that it never holds more than the budget, that the least recently
used records leave first (a read refreshes a record), that evicted records
move to the spill folder and come back on a read, that a record larger
than the whole budget is refused, and that two stores on one folder (two
denoisers of a node) see each other's records and share one budget.
"""

from __future__ import annotations

from pathlib import Path

import torch

from services.denoiser.activation_cache import ActivationCache, CacheSettings


def record(seed: int, kib: int = 64) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    step = {"down_blocks.0.resnets.0:x": torch.randn(2, kib * 128, generator=gen),
            "eps": torch.randn(2, 16, 4, generator=gen)}
    return [step, {k: v + 1 for k, v in step.items()}]


def store(tmp: Path, budget: int, spill: bool = False) -> ActivationCache:
    return ActivationCache(CacheSettings(memory_dir=str(tmp / "mem"), memory_bytes=budget,
                                         spill_dir=str(tmp / "disk") if spill else "",
                                         spill_bytes=10 << 20))


def test_stream_of_templates_stays_within_budget_evicting_lru(tmp_path: Path) -> None:
    size = store(tmp_path / "probe", 1 << 30).put("probe", record(0))
    cache = store(tmp_path, budget=3 * size + size // 2)  # room for three records
    for i in range(10):
        assert cache.put(f"t{i}", record(i)) == size
        assert cache.used_bytes() <= cache.settings.memory_bytes
        if i == 3:
            assert cache.get("t1") is not None  # t1 is now more recent than t2 and t3
    kept = {f"t{i}" for i in range(10) if cache.contains(f"t{i}")}
    assert kept == {"t7", "t8", "t9"}
    assert cache.stats.evicted == 7
    assert cache.get("t0") is None


def test_a_read_protects_a_record_from_eviction(tmp_path: Path) -> None:
    size = store(tmp_path / "probe", 1 << 30).put("probe", record(0))
    cache = store(tmp_path, budget=2 * size + size // 2)
    cache.put("a", record(1))
    cache.put("b", record(2))
    assert cache.get("a") is not None
    cache.put("c", record(3))
    assert cache.contains("a") and cache.contains("c") and not cache.contains("b")


def test_records_read_back_exactly_and_stay_mapped_after_eviction(tmp_path: Path) -> None:
    size = store(tmp_path / "probe", 1 << 30).put("probe", record(0))
    cache = store(tmp_path, budget=size + size // 2)
    steps = record(5)
    cache.put("x", steps)
    reader = cache.get("x")
    assert reader is not None and reader.steps == 2
    for i, step in enumerate(steps):
        for name, tensor in step.items():
            assert torch.equal(reader.get(i, name), tensor)
    cache.put("y", record(6))  # evicts x, which the reader still maps
    assert not cache.contains("x")
    assert torch.equal(reader.get(1, "eps"), steps[1]["eps"])


def test_evicted_records_spill_to_disk_and_come_back(tmp_path: Path) -> None:
    size = store(tmp_path / "probe", 1 << 30).put("probe", record(0))
    cache = store(tmp_path, budget=size + size // 2, spill=True)
    cache.put("a", record(1))
    cache.put("b", record(2))
    assert cache.stats.spilled == 1 and cache.used_bytes(spill=True) == size
    reader = cache.get("a")  # promoted back; b spills in turn
    assert reader is not None and torch.equal(reader.get(0, "eps"), record(1)[0]["eps"])
    assert cache.stats.promoted == 1
    assert cache.used_bytes() <= cache.settings.memory_bytes
    assert cache.contains("b")


def test_a_record_over_the_whole_budget_is_refused(tmp_path: Path) -> None:
    cache = store(tmp_path, budget=1 << 10)
    assert cache.put("huge", record(1)) == 0
    assert not cache.contains("huge") and cache.used_bytes() == 0


def test_two_stores_on_one_folder_share_records_and_budget(tmp_path: Path) -> None:
    size = store(tmp_path / "probe", 1 << 30).put("probe", record(0))
    first = store(tmp_path, budget=2 * size + size // 2)
    second = store(tmp_path, budget=2 * size + size // 2)
    first.put("a", record(1))
    assert second.get("a") is not None
    second.put("b", record(2))
    second.put("c", record(3))  # over budget: the oldest of all goes, whoever wrote it
    assert first.used_bytes() <= 2 * size + size // 2
    assert not first.contains("a") and first.contains("b") and first.contains("c")
