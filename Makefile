# Entry points. Every service the project needs is installed and started by
# deploy/local/*.sh, idempotently, on loopback, with data under .data/.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run test bench fuzz up down build venv lint clean-data

## Start what is missing, run the pipeline end to end on a synthetic stream, show the result.
run: up build
	deploy/local/demo.sh

## Every test, unit and integration, against the real services.
test: up build venv
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi

## Benchmarks (release build): pricing core (criterion), end to end (empty table, 10 M rows stored,
## across a month boundary), alert latency, ledger memory. The runs use a broker and a ClickHouse
## of their own, each on fresh data (deploy/local/bench-broker.sh, bench-clickhouse.sh), stopped
## and deleted at the end. Prints a table; writes target/bench/results.json and
## target/bench/results-<commit>.json.
BENCH_KAFKA_PORT ?= 19092
BENCH_CLICKHOUSE_HTTP_PORT ?= 18123
bench: up
	$(CARGO) build --release --bin usage-pipeline --bin usage-bench
	$(CARGO) bench -p usage-bench --bench pricing
	deploy/local/bench-broker.sh start
	BENCH_CLICKHOUSE_HTTP_PORT=$(BENCH_CLICKHOUSE_HTTP_PORT) deploy/local/bench-clickhouse.sh start
	KAFKA_BROKERS=127.0.0.1:$(BENCH_KAFKA_PORT) CLICKHOUSE_URL=http://127.0.0.1:$(BENCH_CLICKHOUSE_HTTP_PORT) \
	  target/release/usage-bench --fresh-broker 'deploy/local/bench-broker.sh start'; rc=$$?; \
	  deploy/local/bench-broker.sh stop; BENCH_CLICKHOUSE_HTTP_PORT=$(BENCH_CLICKHOUSE_HTTP_PORT) deploy/local/bench-clickhouse.sh stop; exit $$rc

## Coverage-guided fuzzing (cargo fuzz: libFuzzer, no sanitizer on the stable toolchain) of every
## decoder of outside input, FUZZ_SECONDS per target, from the committed corpus (fuzz/corpus, left
## as it is: new inputs go to fuzz/target/corpus). A failing input is left in fuzz/artifacts/<target>/:
## add it to fuzz/regressions/<target>/ once fixed (tests/fuzz_corpora.rs replays both in make test).
## Targets with a dictionary of field names (fuzz/dicts/<target>.dict, from make_dicts.py) get it.
FUZZ_SECONDS ?= 20
FUZZ_TARGETS := usage_json usage_avro usage_confluent billing_commands priced_feed changelog_state rate_card_files
CARGO_FUZZ_VERSION := 0.13.2
fuzz:
	@$(CARGO) fuzz --version 2>/dev/null | grep -q $(CARGO_FUZZ_VERSION) || $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)
	$(CARGO) fuzz build -s none
	@set -eo pipefail; for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/target/corpus/$$t; \
	  echo "[fuzz] $$t, $(FUZZ_SECONDS) s"; \
	  dict=""; if [ -f fuzz/dicts/$$t.dict ]; then dict="-dict=fuzz/dicts/$$t.dict"; fi; \
	  $(CARGO) fuzz run -s none $$t fuzz/target/corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -timeout=10 -rss_limit_mb=2048 $$dict 2>&1 | grep -E '^(Done|==|SUMMARY|.*panicked)' ; \
	done

## Install (once) and start the broker and ClickHouse.
up:
	deploy/local/up.sh

## Stop them (data stays in .data/).
down:
	deploy/local/down.sh

build:
	$(CARGO) build --workspace --bins

## Python reference tools for the tests (chdb: current ClickHouse; genai-prices), once per requirements change.
venv: .venv/.installed
.venv/.installed: tests/python/requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Stop the services and delete their data.
clean-data: down
	rm -rf .data
