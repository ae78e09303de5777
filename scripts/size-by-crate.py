#!/usr/bin/env python3
"""Sizes of a binary's symbols summed per crate, from `nm -S --size-sort -C` (BENCHMARKS.md,
"Binary size"). Needs a build with symbols: `cargo build --profile bench -p eddy --bin eddy`.

A heuristic like cargo-bloat's: a symbol counts for the crate its demangled path starts with
(for `drop_in_place<T>`, T's); generics count for the crate that defines them, wherever they
were instantiated. Unnamed C symbols that look like ring's count as ring's.

    scripts/size-by-crate.py target/release/eddy [N]     # the N largest (default 40)
"""
import collections
import re
import subprocess
import sys


def main() -> None:
    binary = sys.argv[1]
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    out = subprocess.run(["nm", "-S", "--size-sort", "-C", binary], capture_output=True, text=True, check=True)
    sizes: collections.Counter = collections.Counter()
    total = 0
    for line in out.stdout.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 4 or parts[2] not in "tTrRdD":
            continue
        size = int(parts[1], 16)
        name = parts[3]
        total += size
        inner = re.match(r"core::ptr::drop_in_place<(.*)>$", name)
        path = (inner.group(1) if inner else name).lstrip("<&*( ").replace("mut ", "").replace("dyn ", "")
        crate = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", path)
        if crate:
            sizes[crate.group(1)] += size
        elif re.match(r"(ring_core|GFp|aes_|chacha|sha|x25519|p256|p384|ecp_|bn_|LIMBS|CRYPTO|OPENSSL|ring)", name, re.I):
            sizes["ring (C/asm)"] += size
        elif parts[2] in "tT":
            sizes["[other text: C/libc/unnamed]"] += size
        else:
            sizes["[other data]"] += size
    print(f"total symbol bytes (text+data, named): {total}")
    for crate, size in sizes.most_common(limit):
        print(f"{size:>10}  {crate}")


if __name__ == "__main__":
    main()
