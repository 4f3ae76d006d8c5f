"""Give the memory of idle argon2 threads back to the operating system (glibc only).

libargon2 mallocs its whole memory (GATEHOUSE_ARGON2_MEMORY_KIB) for each hash and frees
it afterwards. glibc maps the first such block with mmap and unmaps it on free, but that
free raises glibc's dynamic mmap threshold to the block's size and its trim threshold to
twice that. From then on each hash is served from the heap of the hashing thread's arena,
and the freed block stays resident at the top of that heap. glibc shrinks the top of a
thread's arena only inside free(), when the top is larger than the trim threshold, and
malloc_trim() does not shrink it (glibc 2.36: heap_trim in malloc/arena.c, mtrim in
malloc/malloc.c). ArenaRelease makes that free() happen with a trim threshold of zero.
"""

from __future__ import annotations

import ctypes
import mmap
import os

# mallopt parameter, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1

# glibc's free() trims a thread's arena after freeing a chunk of 64 KiB or more
# (FASTBIN_CONSOLIDATION_THRESHOLD). The probe block must also stay below the mmap
# threshold, which the first hash raised to the size of argon2's memory.
_TRIM_PROBE_BYTES = 128 * 1024

# libargon2 allocates memory_kib rounded down to whole segments: 4 per lane
# (ARGON2_SYNC_POINTS) of 1 KiB blocks (ARGON2_BLOCK_SIZE), and at least 2 blocks per segment.
_ARGON2_BLOCK_BYTES = 1024
_ARGON2_SYNC_POINTS = 4

# Setting any of these fixes glibc's malloc thresholds for the whole process.
_THRESHOLD_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_THRESHOLD_TUNABLES = ("glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold", "glibc.malloc.top_pad",
                       "glibc.malloc.mmap_max")


class ArenaRelease:
    """glibc calls that give free heap memory of this process back to the operating system."""

    def __init__(self, libc: ctypes.CDLL, trim_threshold: int) -> None:
        self._libc = libc
        self._trim_threshold = trim_threshold

    def release_thread_arena(self) -> None:
        """Give back the free top of the calling thread's arena.

        Call it on the thread whose arena it is, while no other thread frees argon2
        memory. The trim threshold is process-wide, so a hash freed on another thread
        in the meantime would lose its memory too and fault it in again next time.
        """
        libc = self._libc
        libc.mallopt(M_TRIM_THRESHOLD, 0)
        try:
            libc.free(libc.malloc(_TRIM_PROBE_BYTES))
        finally:
            # Setting a threshold turns glibc's dynamic thresholds off for good, so this
            # restores the value the dynamic rule set after the first hash. The free of
            # a hash's memory then stays below it and keeps the memory for the next hash.
            libc.mallopt(M_TRIM_THRESHOLD, self._trim_threshold)

    def release_free_pages(self) -> None:
        """Give back the whole free pages inside every arena, and the free top of the main heap."""
        self._libc.malloc_trim(0)


def load_arena_release(memory_kib: int, parallelism: int) -> tuple[ArenaRelease | None, str]:
    """Return the release for argon2 memory of these parameters, or None and the reason it is not needed or possible."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):
        return None, "not_glibc"

    if not hasattr(libc, "gnu_get_libc_version"):
        return None, "not_glibc"

    if _thresholds_set_by_environment():
        return None, "malloc_thresholds_set_by_environment"

    chunk_bytes = _mmapped_chunk_bytes(_argon2_memory_bytes(memory_kib, parallelism))
    if chunk_bytes > _max_dynamic_mmap_threshold():
        # glibc keeps mapping and unmapping chunks this large, so each hash already returns its memory.
        return None, "argon2_memory_above_dynamic_mmap_threshold"

    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.restype = None
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    # glibc's dynamic rule: trim threshold = 2 x mmap threshold = 2 x the largest mmapped chunk freed so far.
    # NOTE: when a larger chunk (up to the maximum dynamic threshold) was freed before, glibc's
    # value was higher than this one, so the main heap is trimmed a little sooner afterwards.
    return ArenaRelease(libc, 2 * chunk_bytes), ""


def resident_kib() -> int | None:
    """Return this process's resident memory (VmRSS) in KiB, or None where /proc is missing."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None

    return resident_pages * mmap.PAGESIZE // 1024


def _thresholds_set_by_environment() -> bool:
    if any(name in os.environ for name in _THRESHOLD_VARIABLES):
        return True

    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(setting.partition("=")[0].strip() in _THRESHOLD_TUNABLES for setting in tunables.split(":"))


def _argon2_memory_bytes(memory_kib: int, parallelism: int) -> int:
    """Return the size of libargon2's malloc for one hash (argon2_ctx in its core.c)."""
    blocks = max(memory_kib, 2 * _ARGON2_SYNC_POINTS * parallelism)
    blocks -= blocks % (_ARGON2_SYNC_POINTS * parallelism)
    return blocks * _ARGON2_BLOCK_BYTES


def _mmapped_chunk_bytes(request_bytes: int) -> int:
    """Return the chunk size glibc maps for a malloc of request_bytes (sysmalloc_mmap, 16-byte alignment)."""
    size_bytes = ctypes.sizeof(ctypes.c_size_t)
    chunk_bytes = -(-(request_bytes + size_bytes) // 16) * 16
    return -(-(chunk_bytes + size_bytes) // mmap.PAGESIZE) * mmap.PAGESIZE


def _max_dynamic_mmap_threshold() -> int:
    """Return glibc's DEFAULT_MMAP_THRESHOLD_MAX: freed chunks above it do not raise the mmap threshold."""
    if ctypes.sizeof(ctypes.c_long) == 4:
        return 512 * 1024

    return 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
