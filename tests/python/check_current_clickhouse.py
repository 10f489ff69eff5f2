"""Applies every ClickHouse migration of schemas/clickhouse/ on a current
ClickHouse engine (chdb, in process) and runs the read-back queries the
pipeline uses, on rows inserted the way the pipeline lays them out.

The local server is ClickHouse 18.16; production runs current releases.
The Rust test `current_clickhouse` runs this script."""

import pathlib
import sys
from pathlib import Path
import tempfile

from chdb import session

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATABASE = "usage"


def statements(sql: str):
    """Splits a migration as crates/clickhouse/src/migrations.rs does."""
    for chunk in sql.split(";\n"):
        body = "\n".join(l for l in chunk.splitlines() if not l.lstrip().startswith("--")).strip().rstrip(";")
        if body:
            yield body.replace("{database}", DATABASE)


def added_column(stmt: str):
    """(table, column) of `ALTER TABLE db.t ADD COLUMN c ...`, else None: the
    migration runner applies those only when the column is missing (18.16
    has no ADD COLUMN IF NOT EXISTS)."""
    words = stmt.split()
    if len(words) > 5 and words[0] == "ALTER" and words[3:5] == ["ADD", "COLUMN"]:
        return words[2].split(".", 1)[1], words[5]
    return None


def main() -> int:
    passed, failed = 0, 0

    def check(name, fn):
        nonlocal passed, failed
        try:
            fn()
            passed += 1
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - report every failure
            failed += 1
            print(f"FAIL {name}: {e}")

    with tempfile.TemporaryDirectory() as path:
        s = session.Session(path)
        print("ClickHouse", s.query("SELECT version()", "TSV").bytes().decode().strip())
        s.query(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        for file in sorted((ROOT / "schemas" / "clickhouse").glob("*.sql")):
            def apply(file=file):
                for stmt in statements(file.read_text()):
                    for _ in range(2):  # idempotent: applying twice is harmless
                        target = added_column(stmt)
                        if target:
                            present = s.query(
                                f"SELECT count() FROM system.columns WHERE database = '{DATABASE}' "
                                f"AND table = '{target[0]}' AND (name = '{target[1]}' OR name LIKE '{target[1]}.%')",
                                "TSV",
                            ).bytes().decode().strip()
                            if present != "0":
                                continue
                        s.query(stmt)
            check(f"migration {file.name} applies twice", apply)

        def insert_and_read():
            s.query(
                f"INSERT INTO {DATABASE}.priced_events (event_id, account_id, provider, model, matched_model, "
                "rate_card, rate_card_version, occurred_at, currency, cost, `lines.unit`, `lines.quantity`, "
                "`lines.priced_quantity`, `lines.unit_price`, `lines.cost`, kafka_topic, kafka_partition, kafka_offset) VALUES "
                "('e1', 'a1', 'openai', 'gpt-4o-2024-08-06', 'gpt-4o', 'list', 1, '2026-01-01 00:00:00', 'USD', "
                "toDecimal128('0.000000000000000000000001', 24), ['input_tokens'], [1], [1], [toDecimal128('0.0000025', 24)], "
                "[toDecimal128('0.000000000000000000000001', 24)], 'usage.raw', 0, 7), "
                "('e2', 'a1', 'openai', 'gpt-4o', 'gpt-4o', 'list', 1, '2026-01-01 00:00:01', 'USD', "
                "toDecimal128('2.5', 24), [], [], [], [], [], 'usage.raw', 0, 8)"
            )
            cond = "(kafka_topic = 'usage.raw' AND kafka_partition = 0 AND kafka_offset >= 7 AND kafka_offset < 9)"
            totals = s.query(
                f"SELECT count(), toString(sum(cost)) FROM {DATABASE}.priced_events WHERE {cond}", "TSV"
            ).bytes().decode().split()
            assert totals == ["2", "2.500000000000000000000001"], totals
            by = s.query(
                f"SELECT account_id, currency, count(), toString(sum(cost)) AS total FROM {DATABASE}.priced_events WHERE {cond} "
                "GROUP BY account_id, currency ORDER BY sum(cost) DESC, account_id LIMIT 10",
                "TSV",
            ).bytes().decode().split()
            assert by == ["a1", "USD", "2", "2.500000000000000000000001"], by
            for table in ("cost_by_account_model_hour", "cost_by_account_day", "cost_by_api_key_day", "cost_by_project_day"):
                rolled = s.query(
                    f"SELECT sum(events), toString(sum(cost)) FROM {DATABASE}.{table} GROUP BY account_id", "TSV"
                ).bytes().decode().split()
                assert rolled == ["2", "2.500000000000000000000001"], (table, rolled)
            # Rows of two more Kafka partitions, for the rebuild's case below.
            s.query(
                f"INSERT INTO {DATABASE}.priced_events (event_id, account_id, provider, model, matched_model, "
                "rate_card, rate_card_version, occurred_at, currency, cost, kafka_topic, kafka_partition, kafka_offset) "
                "VALUES ('e3', 'a2', 'openai', 'gpt-4o', 'gpt-4o', 'list', 1, '2026-01-01 00:00:02', 'USD', "
                "toDecimal128('1', 24), 'usage.raw', 1, 9), "
                "('e4', 'a3', 'openai', 'gpt-4o', 'gpt-4o', 'list', 1, '2026-01-01 00:00:03', 'USD', "
                "toDecimal128('1', 24), 'usage.raw', 2, 3)"
            )
        check("priced rows insert and read back exactly", insert_and_read)

        # Queries the Rust side builds, with the answers it expects (a JSON
        # file given as the first argument): the duplicate check's row key,
        # rebuild and lookup on today's engine.
        if len(sys.argv) > 1:
            import json
            for case in json.loads(Path(sys.argv[1]).read_text()):
                def run_case(case=case):
                    got = s.query(case["sql"].replace("{database}", DATABASE), "TSV").bytes().decode()
                    assert sorted(got.splitlines()) == sorted(case["expect"]), (got, case["expect"])
                check(case["name"], run_case)

        import re
        queries = re.findall(r"```sql\n(.*?)```", (ROOT / "docs" / "queries.md").read_text(), re.S)
        assert queries, "docs/queries.md has queries"
        for i, q in enumerate(queries):
            check(f"docs/queries.md query {i + 1} runs", lambda q=q: s.query(q.replace("usage.", f"{DATABASE}."), "TSV"))

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
