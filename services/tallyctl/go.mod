module github.com/tallyhq/tally/services/tallyctl

go 1.26

require github.com/tallyhq/tally/shared v0.0.0

replace github.com/tallyhq/tally/shared => ../../shared
