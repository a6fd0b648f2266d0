"""How this process's CPU memory allocator treats PyTorch's large tensors (``ALIGNN_MALLOC``).

Why this exists: on CPU, training on forces creates hundreds of large temporaries per step (the
line graph's triplets x features, 20-90 MB each with upstream's configs). glibc hands every
allocation over 32 MiB (and smaller ones once its heap is trimmed) to ``mmap``, so each new
tensor is page-faulted in 4 KiB pages on first touch and unmapped again when freed. Profiled on
an mlearn Cu step with upstream's config: multiplying two such tensors took 47 ms into a fresh
tensor and 4 ms in place; the faults, not the arithmetic, were the largest single cost of the
step. Upstream ALIGNN pays the same cost (more of it: it allocates more temporaries).

Policies (measured in ``docs/memory-allocator.md``):

``system``
    Leave the allocator alone.
``retain``
    glibc keeps freed memory for reuse (``mallopt``: no ``mmap`` for large blocks, trim only
    beyond 2 GiB of free heap), so after the first steps a new tensor reuses pages that are
    already mapped and faults nothing. The resident set then stays at its high-water mark
    instead of shrinking between steps. Applied with ``mallopt`` at any time; it affects the
    allocations that follow.
``thp``
    Ask PyTorch to back allocations of 2 MiB and more with transparent huge pages (its own
    ``THP_MEM_ALLOC_ENABLE`` switch): 512x fewer faults, memory still returned when freed.
    PyTorch reads the switch once, at its first allocation, so this only takes effect when
    applied before ``import torch`` (the ``alignn`` command does). It helps only tensors over
    glibc's 32 MiB limit (upstream's mlearn config), and on top of ``retain`` it only added
    resident memory, so the two are not combined.

Only Linux with glibc is affected; elsewhere every policy behaves like ``system``. Nothing here
changes any number a model computes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import MutableMapping

ENV_VAR = "ALIGNN_MALLOC"
POLICIES = ("system", "retain", "thp")
DEFAULT_POLICY = "retain"
"""What the ``alignn`` command applies when ``ALIGNN_MALLOC`` is unset."""

TORCH_THP_VAR = "THP_MEM_ALLOC_ENABLE"
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_RETAINED_FREE_BYTES = 2**31 - 1
"""Free heap glibc may keep before trimming (the largest value ``mallopt`` takes)."""


class AllocatorPolicyError(ValueError):
    """``ALIGNN_MALLOC`` names no policy."""


def policy_from_env(environ: MutableMapping[str, str] | None = None) -> str:
    """The policy ``ALIGNN_MALLOC`` asks for (``DEFAULT_POLICY`` when unset or empty)."""
    environ = os.environ if environ is None else environ
    policy = environ.get(ENV_VAR, "").strip().lower() or DEFAULT_POLICY
    if policy not in POLICIES:
        raise AllocatorPolicyError(
            f"{ENV_VAR}={environ[ENV_VAR]!r} is not a memory-allocator policy; use one of "
            f"{', '.join(POLICIES)} (or leave it unset for {DEFAULT_POLICY!r})"
        )
    return policy


def _glibc_mallopt():
    """glibc's ``mallopt`` for this process, or None (another C library, or not found)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def apply_policy(policy: str, environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Apply ``policy`` to this process; returns what was changed (empty: nothing).

    An explicit ``THP_MEM_ALLOC_ENABLE`` in the environment is the user's and is left as it is.
    Safe to call more than once.
    """
    if policy not in POLICIES:
        raise AllocatorPolicyError(
            f"unknown allocator policy {policy!r}; use one of {', '.join(POLICIES)}"
        )
    environ = os.environ if environ is None else environ
    changed: list[str] = []
    if policy == "system" or sys.platform != "linux":
        return changed
    if policy == "thp":
        if TORCH_THP_VAR not in environ:
            environ[TORCH_THP_VAR] = "1"
            changed.append(f"{TORCH_THP_VAR}=1")
        return changed
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return changed
    # Both settings are tried, and each one glibc accepts is reported: one can take without
    # the other, and the report must not call a half-changed allocator unchanged.
    accepted = [
        name
        for name, option, value in (
            ("M_MMAP_MAX=0", _M_MMAP_MAX, 0),
            ("M_TRIM_THRESHOLD=2 GiB", _M_TRIM_THRESHOLD, _RETAINED_FREE_BYTES),
        )
        if mallopt(option, value)
    ]
    if accepted:
        changed.append("glibc mallopt " + ", ".join(accepted))
    return changed
