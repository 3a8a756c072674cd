package chembed

import (
	"os"
	"testing"
	"time"
	"unsafe"
)

func expConnect(t *testing.T, l *libchdb, path string) *chConn {
	args := []string{"clickhouse", "--path=" + path}
	var argv []*byte
	for _, a := range args {
		b := append([]byte(a), 0)
		argv = append(argv, &b[0])
	}
	h := l.connect(int32(len(argv)), &argv[0])
	if h == 0 {
		t.Fatal("connect failed")
	}
	return &chConn{lib: l, handle: h}
}

func q(t *testing.T, c *chConn, s string, params ...param) string {
	r, err := c.query(s, "TabSeparated", params)
	if err != nil {
		t.Logf("Q %q -> ERR %v", s, err)
		return ""
	}
	defer r.free()
	out := string(r.bytes())
	t.Logf("Q %q -> %q", s, out)
	return out
}

func TestExp(t *testing.T) {
	l, err := openLib(os.Getenv("CHDB_LIB_PATH"))
	if err != nil {
		t.Fatal(err)
	}
	l.setSignalHandlers(0)
	t.Log("version", cString(l.version()))
	dir := t.TempDir()
	t0 := time.Now()
	c := expConnect(t, l, dir)
	t.Log("boot", time.Since(t0))
	c2 := expConnect(t, l, dir)
	q(t, c, "SET log_comment='chembed-1', max_execution_time=30")
	q(t, c, "SET log_comment=DEFAULT, max_execution_time=DEFAULT")
	q(t, c, "SELECT getSetting('max_execution_time')")
	q(t, c, "SET max_execution_time='2.5'")
	q(t, c, "SELECT getSetting('max_execution_time')")
	q(t, c, "SET log_comment='chembed-1', max_execution_time=30")
	done := make(chan bool)
	t0 = time.Now()
	go func() { q(t, c, "SELECT count() FROM numbers(30000000000) WHERE sleepEachRow(0) = 0"); done <- true }()
	time.Sleep(300 * time.Millisecond)
	q(t, c2, "SELECT query, Settings['log_comment'] FROM system.processes")
	q(t, c2, "KILL QUERY WHERE Settings['log_comment'] = 'chembed-1' ASYNC")
	<-done
	t.Log("killed after", time.Since(t0))
	q(t, c, "SELECT 1")
	t0 = time.Now()
	go func() { q(t, c, "SELECT sum(cityHash64(number)) FROM numbers(200000000)"); done <- true }()
	go func() { q(t, c2, "SELECT sum(cityHash64(number)) FROM numbers(200000000)"); done <- true }()
	<-done
	<-done
	t.Log("two concurrent", time.Since(t0))
	t0 = time.Now()
	q(t, c, "SELECT sum(cityHash64(number)) FROM numbers(200000000)")
	t.Log("one", time.Since(t0))
	_ = unsafe.Pointer(nil)
}
