"""Validates rate-card files against schemas/rate-card.schema.json.

Usage: check_rate_card_schema.py FILE_OR_DIR...   (TOML files; directories recursively)
Also checks that files the loader refuses for their shape fail the schema."""

import datetime
import json
import pathlib
import sys
import tomllib

import jsonschema

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "rate-card.schema.json").read_text())


def as_json(value):
    """TOML values as JSON values (date-times become RFC 3339 strings)."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return value


def main():
    validator = jsonschema.Draft202012Validator(SCHEMA)
    files = []
    for arg in sys.argv[1:]:
        p = pathlib.Path(arg)
        files += sorted(p.rglob("*.toml")) if p.is_dir() else [p]
    passed = failed = 0
    for f in files:
        errors = list(validator.iter_errors(as_json(tomllib.loads(f.read_text()))))
        if errors:
            failed += 1
            print(f"FAIL {f}: {errors[0].message} at {list(errors[0].absolute_path)}")
        else:
            passed += 1
    bad = {"rate_card": "x", "version": 1, "effective_from": "2025-01-01T00:00:00Z", "currency": "USD",
           "models": [{"provider": "p", "id": "m", "prices": {"input_mtok": 2.5}}]}
    if validator.is_valid(bad):
        failed += 1
        print("FAIL the schema accepts a float price")
    else:
        passed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
