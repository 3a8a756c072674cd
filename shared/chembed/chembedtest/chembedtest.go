// Package chembedtest gives tests a real ClickHouse endpoint: one embedded
// chembed server per test process, shared by every test in it, and a fresh
// database per test for isolation.
//
// libchdb.so is found through CHDB_LIB_PATH or, when that is unset, in the
// cache deployments/chdb.sh fills: $TALLY_CACHE_DIR/chdb/*/libchdb.so, or
// ${XDG_CACHE_HOME:-$HOME/.cache}/tally/chdb/*/libchdb.so. A missing library
// fails the test ("run `make chdb`"); it never skips.
package chembedtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tallyhq/tally/shared/chembed"
)

var (
	mu       sync.Mutex
	shared   *chembed.Server
	startErr error
	dbSeq    atomic.Uint64
)

// Start returns the test process's shared endpoint, starting it on first use.
// It is never closed: it lives as long as the test binary, and its data
// directory is removed by the next test process that finds it abandoned.
func Start(tb testing.TB) *chembed.Server {
	tb.Helper()
	mu.Lock()
	defer mu.Unlock()
	if shared == nil && startErr == nil {
		shared, startErr = start()
	}
	if startErr != nil {
		tb.Fatal(startErr)
	}
	return shared
}

func start() (*chembed.Server, error) {
	lib, err := LibPath()
	if err != nil {
		return nil, err
	}
	sweepAbandoned()
	dir, err := os.MkdirTemp("", dirPrefix+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return nil, fmt.Errorf("chembedtest: %w", err)
	}
	s, err := chembed.Start(chembed.Config{LibPath: lib, DataPath: dir, AllowAnonymous: true}, "127.0.0.1:0")
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("chembedtest: %w", err)
	}
	return s, nil
}

// LibPath locates libchdb.so as the package comment describes.
func LibPath() (string, error) {
	if p := os.Getenv("CHDB_LIB_PATH"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("libchdb.so not found: run `make chdb` (CHDB_LIB_PATH=%s: %v)", p, err)
		}
		return p, nil
	}
	cache := os.Getenv("TALLY_CACHE_DIR")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, _ := os.UserHomeDir()
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "tally")
	}
	pattern := filepath.Join(cache, "chdb", "*", "libchdb.so")
	matches, _ := filepath.Glob(pattern)
	if len(matches) == 0 {
		return "", fmt.Errorf("libchdb.so not found: run `make chdb` (CHDB_LIB_PATH unset, nothing at %s)", pattern)
	}
	sort.Strings(matches)
	return matches[len(matches)-1], nil
}

const dirPrefix = "chembedtest-"

// sweepAbandoned removes data directories of test processes that are gone.
func sweepAbandoned() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		rest := strings.TrimPrefix(filepath.Base(d), dirPrefix)
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			_ = os.RemoveAll(d)
		}
	}
}

var unsafeName = regexp.MustCompile(`[^a-z0-9_]+`)

// NewDatabase creates a fresh database on s for tb, dropped when tb ends, and
// returns its name. s must not require authentication.
func NewDatabase(tb testing.TB, s *chembed.Server) string {
	tb.Helper()
	base := unsafeName.ReplaceAllString(strings.ToLower(tb.Name()), "_")
	if len(base) > 40 {
		base = base[:40]
	}
	name := fmt.Sprintf("t_%s_%d", base, dbSeq.Add(1))
	if err := exec(s, "CREATE DATABASE `"+name+"`"); err != nil {
		tb.Fatalf("chembedtest: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if err := exec(s, "DROP DATABASE IF EXISTS `"+name+"` SYNC"); err != nil {
			tb.Errorf("chembedtest: drop database %s: %v", name, err)
		}
	})
	return name
}

// execTimeout bounds the helper's own DDL.
const execTimeout = time.Minute

func exec(s *chembed.Server, query string) error {
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL()+"/", strings.NewReader(query))
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %s", res.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}
