module github.com/tallyhq/tally/schemas/clickhouse

go 1.26
