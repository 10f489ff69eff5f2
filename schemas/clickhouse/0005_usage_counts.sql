-- Every count the usage event reported, priced or not (`lines` holds only
-- the units the rate card priced): what `backfill` re-prices from when a
-- new rate-card version prices more units. Rows stored before this
-- migration have it empty; backfill then uses `lines` and the token columns.
ALTER TABLE {database}.priced_events ADD COLUMN usage Nested(unit String, quantity UInt64);
