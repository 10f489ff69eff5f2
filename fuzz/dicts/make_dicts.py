"""Writes the libFuzzer dictionaries of fuzz/dicts from the source: the field
names of the ledger's JSON records and of the rate-card and contract TOML
files (`pub` fields and serde renames), plus a few values. Run from the
repository's root when those structs change: python3 fuzz/dicts/make_dicts.py"""
import glob
import re


def fields(files):
    names = set()
    for f in files:
        src = open(f).read()
        names.update(re.findall(r'^\s*pub(?:\(crate\))?\s+([a-z_][a-z0-9_]*)\s*:', src, re.M))
        names.update(re.findall(r'rename\s*=\s*"([^"]+)"', src))
    return sorted(names)


def write(path, what, names, fmt, extra):
    with open(path, "w") as out:
        out.write(f"# libFuzzer dictionary: {what}. Written by fuzz/dicts/make_dicts.py; used by `make fuzz`.\n")
        out.writelines(fmt(n) + "\n" for n in names)
        out.writelines(e + "\n" for e in extra)


write("fuzz/dicts/changelog_state.dict", "the ledger's JSON field names (crates/ledger/src)",
      fields(glob.glob("crates/ledger/src/*.rs")), lambda n: '"\\"%s\\":"' % n,
      ['"\\"USD\\""', '"\\"prepaid\\""', '"\\"postpaid\\""', '"\\"2026-01-31T23:59:59Z\\""',
       '"\\"input_tokens\\""', '"\\"output_tokens\\""', '"99999999999999.999999999999999999999999"'])
write("fuzz/dicts/rate_card_files.dict", "rate-card and contract TOML keys (crates/pricing/src)",
      fields(glob.glob("crates/pricing/src/*.rs")), lambda n: '"%s = "' % n,
      ['"[[models]]"', '"[[custom_prices]]"', '"input_mtok"', '"output_mtok"', '"cache_read_mtok"'])
