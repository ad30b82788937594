"""``scanner.runner.usable_cpus``: a container's CPU limit, not the machine's core count."""

from __future__ import annotations

import os
from pathlib import Path

from scanner.runner import usable_cpus


def test_a_cgroup_quota_caps_the_workers(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert usable_cpus(str(tmp_path)) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(str(tmp_path)) == affinity
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert usable_cpus(str(tmp_path)) == affinity
    assert usable_cpus(str(tmp_path / "missing")) == affinity
    (tmp_path / "cpu.max").write_text("1000 100000\n")  # 0.01 CPU: still one worker
    assert usable_cpus(str(tmp_path)) == 1
