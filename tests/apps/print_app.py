"""A session app that only writes known output, for the session log tests (run by a session,
maybe as another OS user; standard library only).

    python print_app.py lines N INTERVAL [exit]   "line 1".."line N", one every INTERVAL seconds,
                                                  then "done"
    python print_app.py bytes TOTAL [exit]        TOTAL bytes of numbered 64-byte lines, at once
    python print_app.py flood TOTAL SECONDS       TOTAL bytes as fast as it can (stops after
                                                  SECONDS at the latest), then "flood done"
    python print_app.py hold                      prints nothing

Each then sleeps until it is stopped, or with `exit` ends with code 0. The first line of `lines`
holds multi-byte characters: "héllo → ✓".
"""

import sys
import time


def write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def numbered_lines(total: int) -> bytes:
    """TOTAL bytes of 64-byte lines "000001 xxx...\\n" (the last one cut short)."""
    out = bytearray()
    number = 0
    while len(out) < total:
        number += 1
        out += f"{number:06d} ".encode() + b"x" * 56 + b"\n"
    return bytes(out[:total])


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "lines":
        count, interval = int(argv[1]), float(argv[2])
        write("héllo → ✓\n".encode())
        for i in range(1, count + 1):
            write(f"line {i}\n".encode())
            time.sleep(interval)
        write(b"done\n")
    elif mode == "bytes":
        write(numbered_lines(int(argv[1])))
    elif mode == "flood":
        total, deadline = int(argv[1]), time.monotonic() + float(argv[2])
        block = numbered_lines(64 * 1024)
        written = 0
        while written < total and time.monotonic() < deadline:
            write(block)
            written += len(block)
        write(b"flood done\n")
    if argv[-1] == "exit":
        return
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
