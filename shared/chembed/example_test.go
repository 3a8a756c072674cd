package chembed_test

import (
	"context"
	"fmt"
	"log"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/tallyhq/tally/shared/chembed"
)

// Serve the embedded engine and talk to it with clickhouse-go over HTTP.
// (Tests use chembedtest.Start and chembedtest.NewDatabase instead.)
func Example() {
	srv, err := chembed.Start(chembed.Config{AllowAnonymous: true}, "127.0.0.1:0") // for tests only; libchdb.so from $CHDB_LIB_PATH
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{srv.Addr()},
		Protocol:    clickhouse.HTTP,
		Compression: &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		log.Fatal(err)
	}
	var v string
	if err := conn.QueryRow(context.Background(), "SELECT version()").Scan(&v); err != nil {
		log.Fatal(err)
	}
	fmt.Println(v != "")
}
