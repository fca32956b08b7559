"""Run one command and report its wall time, CPU time and peak RSS (`python -I -S launch.py`).

Why a separate, tiny process: Linux counts the memory of the process that forked a child
into the child's peak RSS (`ru_maxrss` keeps the high-water mark of the address space the
child had before `exec`). Forked from the benchmark itself (~50 MiB of Python with aiohttp
and cryptography loaded), every command would report at least ~50 MiB. Forked from this
launcher, a bare interpreter with only the standard library, the floor is ~5 MiB, which
`/bin/true` measures (see `measure.floor`).

Usage: `launch.py RESULT_JSON COMMAND [ARG...]`; exits with the command's exit status.
Stdlib only, and nothing imported that is not needed: its size is the floor.
"""

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    result_path, command = argv[0], argv[1:]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)  # exec failed; never fall back into the launcher's code
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    with open(result_path, "w") as out:
        json.dump(
            {
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "max_rss_kib": usage.ru_maxrss,
            },
            out,
        )
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
