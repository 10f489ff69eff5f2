"""Which of a fuzz run's new edges are in our own code, and when each was found.

A long run is judged done when it stops finding edges in our functions: new
edges inside dependencies (regex compilation, the TOML and decimal parsers)
keep coming for as long as a fuzzer runs and say nothing about our code.

Run the target under `setarch -R` (no address randomisation, so a PC printed
by libFuzzer maps to the binary at the usual PIE base) with `-print_pcs=1`,
its output saved, then:

    python3 fuzz/new_edges.py fuzz.log changelog_state

Prints one line per new PC in our code: the execution count when it was
found, our source line it belongs to, and whether it is a branch written
there or a branch of Rust's own library inlined there (a loop's iterator, a
slice compare); drop glue (which of a value's fields own memory when it is
dropped) is only counted. An edge of another crate's code (serde_json's parser inside
a derived deserializer, hashbrown's probing, regex compilation) is that
crate's, wherever it was inlined; so is the code a `#[derive(...)]` wrote
(serde's field matching), which is only counted. Needs llvm-symbolizer (Debian's llvm).
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


def ours(location):
    return location.startswith((f"{ROOT}/crates/", f"{ROOT}/fuzz/"))


def rust_library(location):
    # Rust's own library, not a crate it vendors (/rust/deps/hashbrown...).
    return any(f"/library/{lib}/" in location for lib in ("core", "alloc", "std"))


def generated(location):
    """Whether `file:line:column` is code a derive macro wrote (attributed
    to the `#[derive(...)]` line, or to line 0)."""
    path, line = location.rsplit(":", 2)[0], int(location.rsplit(":", 2)[1])
    if line == 0:
        return True
    try:
        lines = open(path).read().split("\n")
        text = lines[line - 1].lstrip()
        # A derive's code is attributed to its line, to a `#[serde(...)]`
        # attribute it reads, or to the name of the type it derives for.
        if text.startswith(("#[derive(", "#[serde(")):
            return True
        # Or to a field or variant of that type: walk up to the enclosing
        # item; a function on the way means hand-written code.
        for k in range(line - 1, max(-1, line - 200), -1):
            text = lines[k].lstrip()
            if re.match(r"(pub(\([a-z]+\))? )?(const )?(unsafe )?(fn|impl)\b", text):
                return False
            if re.match(r"(pub(\([a-z]+\))? )?(struct|enum) ", text):
                return any(l.lstrip().startswith("#[derive(") for l in lines[max(0, k - 5) : k])
        return False
    except (OSError, IndexError):
        return False


def main():
    log, target = sys.argv[1], sys.argv[2]
    binary = ROOT / "fuzz/target/x86_64-unknown-linux-gnu/release" / target
    pcs = new_pcs(log)
    runs = re.findall(r"Done (\d+) runs", open(log, errors="replace").read())
    last = f", the last at {pcs[-1][0]} executions" if pcs else ""
    print(f"{runs[-1] if runs else 'unfinished:'} runs, {len(pcs)} new PCs{last}; those in our code:")
    if not pcs:
        return
    query = "\n".join(hex(pc - PIE_BASE) for _, pc in pcs)
    out = subprocess.run(
        ["llvm-symbolizer", f"--obj={binary}", "--inlining=true", "--demangle"],
        input=query, capture_output=True, text=True, check=True,
    ).stdout
    # One block per PC: its inlined frames, innermost first, two lines each.
    blocks = [b.split("\n") for b in out.strip().split("\n\n") if b.strip()]
    derived = dropped = 0
    for (execs, _), lines in zip(pcs, blocks):
        frames = list(zip(lines[0::2], lines[1::2]))
        if not frames:
            continue
        innermost = frames[0][1]
        if ours(innermost):
            kind, (function, location) = "ours", frames[0]
        elif rust_library(innermost):
            # The first frame outside Rust's library decides whose branch it is.
            outer = next((f for f in frames if not rust_library(f[1])), None)
            if outer is None or not ours(outer[1]):
                continue
            if any(f[0].startswith("drop_in_place<") for f in frames):
                # Drop glue the compiler wrote: which of a value's fields
                # hold memory when it goes, not a branch of ours.
                dropped += 1
                continue
            kind, (function, location) = "ours via std", outer
        else:
            continue
        if generated(location):
            derived += 1
            continue
        print(execs, location.replace(f"{ROOT}/", ""), kind, function[:80])
    if derived:
        print(f"({derived} more in code that #[derive(...)] generated: serde's field matching, not listed)")
    if dropped:
        print(f"({dropped} more in drop glue inlined into our functions: which fields held memory, not listed)")


if __name__ == "__main__":
    main()
