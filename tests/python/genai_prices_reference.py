"""Reference costs from pydantic's genai-prices library, for the Rust test
`genai_prices_reference`.

Usage: genai_prices_reference.py CATALOG_JSON OUT_NDJSON [SEED] [PER_MODEL]

Loads the catalog into genai-prices (numbers parsed as exact decimals),
draws a random sample of usage events covering every provider and model with
a price, every priced unit, tiered prices, dated and time-of-day prices, and
writes one line per event: {"event": <usage event>, "expected_cost": "...",
"expected_model": "..."}. Usage is built from random disjoint parts, so
every priced unit is reported and consistent (no inference needed)."""

import json
import random
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from genai_prices import data_snapshot, types
from genai_prices.units import _get_registry

UTC = timezone.utc
START = datetime(2023, 1, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)


def model_refs(clause, rng):
    """Names a clause accepts (regexes skipped)."""
    out = []
    if "equals" in clause:
        out.append(clause["equals"])
    if "starts_with" in clause:
        s = clause["starts_with"]
        out += [s, s + "-2025-01-01", s + "-latest"]
    if "ends_with" in clause:
        out += [clause["ends_with"], "x-" + clause["ends_with"]]
    if "contains" in clause:
        c = clause["contains"]
        out += [c, "pre-" + c + "-post"]
    for key in ("or", "and"):
        for sub in clause.get(key, []):
            out += model_refs(sub, rng)
    return out


def instants(prices, rng):
    """Random instants, plus the edges of every constraint."""
    out = [START + timedelta(seconds=rng.randrange(int((END - START).total_seconds()))) for _ in range(3)]
    if isinstance(prices, list):
        for cp in prices:
            c = cp.get("constraint") or {}
            if "start_date" in c:
                d = datetime.fromisoformat(c["start_date"]).replace(tzinfo=UTC)
                out += [d - timedelta(seconds=1), d, d + timedelta(hours=13)]
            if "start_time" in c:
                day = datetime(2025, 3, 3, tzinfo=UTC)
                for t in (c["start_time"], c["end_time"]):
                    tt = datetime.fromisoformat("2025-03-03T" + t.replace("Z", "+00:00"))
                    out += [tt - timedelta(seconds=1), tt, tt + timedelta(minutes=7)]
    return out


def tier_starts(price_obj):
    starts = []
    for v in price_obj.__dict__.values():
        if isinstance(v, types.TieredPrices):
            starts += [t.start for t in v.tiers]
    return starts


def usage_for(model_price, rng, registry):
    priced = [registry.unit_for_price_key(k) for k, v in model_price.__dict__.items() if v is not None and not k.startswith("_")]
    priced = [u for u in priced if u.usage_key != "requests"]
    leaves = {}
    for u in priced:
        magnitude = rng.choice([0, 1, 2, 3, 4, 5, 6])
        leaves[u.usage_key] = rng.randrange(0, 10 ** magnitude + 1)
    starts = tier_starts(model_price)
    if starts and "input_tokens" in leaves and rng.random() < 0.5:
        # Cross a tier threshold (or sit exactly on it).
        leaves["input_tokens"] = rng.choice(starts) + rng.choice([0, 1, 5000])
    units = {u.usage_key: u for u in priced}
    reported = {}
    for key, unit in units.items():
        reported[key] = sum(leaves[d.usage_key] for d in priced if unit.dimensions.items() <= d.dimensions.items())
    # Always report all input tokens: tiers are chosen on them.
    input_unit = registry.units["input_tokens"]
    input_parts = [u for u in priced if input_unit.dimensions.items() <= u.dimensions.items()]
    if input_parts and "input_tokens" not in reported:
        reported["input_tokens"] = sum(leaves[u.usage_key] for u in input_parts)
    return reported


def main():
    catalog_path, out_path = sys.argv[1], sys.argv[2]
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    per_model = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    rng = random.Random(seed)
    raw = json.load(open(catalog_path), parse_float=Decimal)
    providers = types._providers_from_raw(raw)
    snapshot = data_snapshot.DataSnapshot(providers=providers, from_auto_update=False)
    registry = _get_registry()
    n = 0
    with open(out_path, "w") as out:
        for raw_provider, provider in zip(raw, providers):
            for raw_model, model in zip(raw_provider["models"], provider.models):
                if not raw_model["prices"]:
                    continue
                refs = model_refs(raw_model["match"], rng) or [model.id]
                when = instants(raw_model["prices"], rng)
                for i in range(per_model + len(when) - 3):
                    ref = rng.choice(refs)
                    if rng.random() < 0.2:
                        ref = ref.upper()
                    at = when[i % len(when)]
                    try:
                        found_provider, found = snapshot.find_provider_model(ref, None, provider.id, None)
                    except LookupError:
                        continue
                    price = found.get_prices(at)
                    usage = usage_for(price, rng, registry)
                    if not usage and not price.requests_kcount:
                        continue
                    if found_provider.id == "groq" and found.id.startswith("whisper"):
                        continue  # a minimum-duration rule in code, not in the data
                    try:
                        calc = snapshot.calc(types.Usage(**usage), ref, provider.id, None, at)
                    except ValueError:
                        continue
                    n += 1
                    event = {
                        "event_id": f"ref-{n}",
                        "account_id": "reference",
                        "occurred_at": at.isoformat(),
                        "provider": provider.id,
                        "model": ref,
                        "usage": {k: int(v) for k, v in usage.items()},
                    }
                    out.write(json.dumps({"event": event, "expected_cost": str(calc.total_price), "expected_model": found.id}) + "\n")
    print(f"{n} reference prices written")


if __name__ == "__main__":
    main()
