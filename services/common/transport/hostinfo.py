"""Who can share memory with whom: the host id and the GPU uuid of a device."""

from __future__ import annotations

import functools
import os
import socket

import torch

from diffusion.v1 import tensor_pb2


@functools.cache
def host_id() -> str:
    """Equal in two processes exactly when they can open each other's POSIX shared memory.

    Built from the kernel's boot id, the IPC namespace and the device of the /dev/shm mount, so
    containers of one pod (shared IPC namespace and /dev/shm) match and separate pods on one
    node do not. Falls back to the host name where /proc is missing.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        ipc_ns = os.stat("/proc/self/ns/ipc").st_ino
    except OSError:
        return socket.gethostname()
    try:
        shm_dev = os.stat("/dev/shm").st_dev
    except OSError:
        shm_dev = 0
    return f"{boot}-{ipc_ns:x}-{shm_dev:x}"


def local_peer(gpu_uuid: str = "", inline_max_bytes: int = 0) -> tensor_pb2.PeerInfo:
    """This process as a consumer: send it with a request so producers pick the payload kind."""
    return tensor_pb2.PeerInfo(
        host_id=host_id(), gpu_uuid=gpu_uuid, inline_max_bytes=inline_max_bytes
    )


def gpu_uuid(device: torch.device | str | int) -> str:
    """The uuid of a CUDA device as nvidia-smi prints it (``GPU-...``)."""
    if isinstance(device, int):
        return _uuid_of_index(device)
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"{device} is not a CUDA device")
    return _uuid_of_index(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _uuid_of_index(index: int) -> str:
    props = torch.cuda.get_device_properties(index)
    return "GPU-" + str(props.uuid).removeprefix("GPU-")


def same_gpu(a: str, b: str) -> bool:
    """True when two uuids name the same GPU, with or without the ``GPU-`` prefix."""
    return bool(a) and a.removeprefix("GPU-").lower() == b.removeprefix("GPU-").lower()


def device_of_uuid(uuid: str) -> torch.device | None:
    """The local CUDA device with that uuid, or None when this process cannot see it."""
    if not torch.cuda.is_available():
        return None
    for index in range(torch.cuda.device_count()):
        if same_gpu(uuid, gpu_uuid(index)):
            return torch.device("cuda", index)
    return None
