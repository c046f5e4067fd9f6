"""What a session asks Slurm for (its shape: CPUs, memory, time limit, partition, GPU), and that
shape as sbatch options, for the job script's #SBATCH lines and for `sbatch --test-only`."""

from __future__ import annotations

from typing import Any


def job_options(spec: dict[str, Any], partition: str, gpu_partition: str) -> dict[str, Any]:
    """cpus, memory_mb, time_limit (minutes), partition and gpu, from a launch spec whose
    resource options arrive translated by the resource's parameter_mapping."""
    options = spec.get("resource_options") or {}
    wanted: dict[str, Any] = {"cpus": int(options.get("cpus_per_task") or spec.get("cpus") or 1)}
    if options.get("memory_per_node"):
        wanted["memory_mb"] = int(options["memory_per_node"])
    seconds = spec.get("time_limit_seconds")
    if options.get("time_limit"):
        wanted["time_limit"] = int(options["time_limit"])
    elif seconds:
        wanted["time_limit"] = max(1, -(-int(seconds) // 60))
    if spec.get("gpu"):
        wanted["gpu"] = True
        partition = gpu_partition or partition
    if partition:
        wanted["partition"] = partition
    return wanted


def sbatch_flags(wanted: dict[str, Any]) -> list[str]:
    """The shape as sbatch options (--cpus-per-task=2, --mem=1024M, ...)."""
    flags = [f"--cpus-per-task={wanted['cpus']}"]
    if "memory_mb" in wanted:
        flags.append(f"--mem={wanted['memory_mb']}M")
    if "time_limit" in wanted:
        flags.append(f"--time={wanted['time_limit']}")
    if wanted.get("gpu"):
        flags.append("--gres=gpu:1")
    if "partition" in wanted:
        flags.append(f"--partition={wanted['partition']}")
    return flags
