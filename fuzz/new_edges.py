"""Which of a fuzz run's new edges are in our own code, and when each was found.

A long run is judged done when it stops finding edges in our functions: new
edges inside dependencies (regex compilation, the TOML and decimal parsers)
keep coming for as long as a fuzzer runs and say nothing about our code.

Run the target under `setarch -R` (no address randomisation, so a PC printed
by libFuzzer maps to the binary at the usual PIE base) with `-print_pcs=1`,
its output saved, then:

    python3 fuzz/new_edges.py fuzz.log changelog_state

Prints one line per new PC in our code: the execution count when it was
found, its source line and function. An edge counts as ours when its source
file is in crates/ or fuzz/, or when it is inlined into one of our functions
(std's iterators and hashbrown's probing inside `usage_*` code are our
branches too). Needs llvm-symbolizer (Debian's llvm package).
"""
import re
import subprocess
import sys
from pathlib import Path

# Where a position-independent executable is mapped when ASLR is off.
PIE_BASE = 0x555555554000
ROOT = Path(__file__).resolve().parent.parent


def new_pcs(log):
    """(executions, pc) of every PC first reported after start-up."""
    found, seen, execs, started = [], set(), 0, False
    for line in open(log, errors="replace"):
        if "INITED" in line:
            started = True
        if not started:
            continue
        m = re.match(r"#(\d+)", line)
        if m:
            execs = int(m.group(1))
        if "NEW_PC" in line:
            pc = next((w for w in line.split() if w.startswith("0x")), None)
            if pc and pc not in seen:
                seen.add(pc)
                found.append((execs, int(pc, 16)))
    return found


def main():
    log, target = sys.argv[1], sys.argv[2]
    binary = ROOT / "fuzz/target/x86_64-unknown-linux-gnu/release" / target
    pcs = new_pcs(log)
    if not pcs:
        return
    query = "\n".join(hex(pc - PIE_BASE) for _, pc in pcs)
    out = subprocess.run(
        ["llvm-symbolizer", f"--obj={binary}", "--inlining=false", "--demangle"],
        input=query, capture_output=True, text=True, check=True,
    ).stdout
    blocks = [b for b in out.strip().split("\n\n") if b.strip()]
    for (execs, _), block in zip(pcs, blocks):
        function, location = (block.split("\n") + [""])[:2]
        ours = f"{ROOT}/crates/" in location or f"{ROOT}/fuzz/" in location or function.startswith("usage_")
        if ours:
            location = location.replace(f"{ROOT}/", "").split("/library/")[-1]
            print(execs, location, function[:100])


if __name__ == "__main__":
    main()
