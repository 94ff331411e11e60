"""Emulated target-ISA runs: an arm64 Debian root, aarch64 wheels and qemu-user with the profile's CPU model.

`prepare` builds the root once (cached under `$EDGEKIT_CACHE/arm64-root`); `emulate.run_device_bench` runs the
torch-free on-device bench of a bundle under qemu there. Every figure from it is measured on the ARM kernels,
but its speed is the emulator's, never the device's.
"""

from __future__ import annotations

from edgekit.device.root import EmulatorRoot, find_root, prepare

__all__ = ["EmulatorRoot", "find_root", "prepare"]
